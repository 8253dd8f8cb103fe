"""A browser demo: upload or record speech, hear and see it before and after enhancement.

pip install "hybrid-mpsenet[demo]"
python examples/gradio_app.py                 # bundled default model
python examples/gradio_app.py --model MODEL   # a folder or Hub id
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gradio as gr
import numpy as np

from hybrid_mpsenet import HybridMPSENetForSpeechEnhancement
from hybrid_mpsenet.audio import to_float
from hybrid_mpsenet.plotting import spectrogram_figure

EXAMPLE = Path(__file__).resolve().parent / "audio" / "p257_418_noisy.wav"
# Uploads are enhanced in memory on a shared server; longer files belong to `hybrid-mpsenet enhance`.
MAX_SECONDS = 120


def make_enhancer(model: HybridMPSENetForSpeechEnhancement):
    """The demo's callback: Gradio's `(rate, samples)` audio -> enhanced audio and a before/after figure."""

    def enhance(audio: tuple[int, np.ndarray] | None):
        if audio is None:
            raise gr.Error("Upload or record some audio first.")
        rate, samples = audio
        if len(samples) > MAX_SECONDS * rate:
            raise gr.Error(
                f"The clip is {len(samples) / rate:.0f} s long; the demo takes up to {MAX_SECONDS} s. "
                "Use `hybrid-mpsenet enhance` for long files."
            )
        samples = to_float(np.asarray(samples))
        mono = samples.mean(axis=1) if samples.ndim == 2 else samples  # Gradio gives (samples, channels)
        try:
            enhanced = model.enhance(mono, rate)
        except ValueError as error:
            raise gr.Error(str(error)) from error
        figure = spectrogram_figure({"noisy": mono, "enhanced": enhanced}, rate)
        return (rate, enhanced), figure

    return enhance


def build_demo(model: HybridMPSENetForSpeechEnhancement, name: str = "default") -> gr.Blocks:
    """The page: the model's name and size, an input (upload, microphone or the bundled example), the output and
    before/after spectrograms."""
    with gr.Blocks(title="hybrid-mpsenet speech enhancement") as demo:
        gr.Markdown(
            f"# Speech enhancement with hybrid MP-SENet\nModel: `{name}` ({model.num_parameters():,} parameters). "
            f"Upload or record noisy speech (up to {MAX_SECONDS} s), or pick the example, then press Enhance."
        )
        with gr.Row():
            noisy = gr.Audio(sources=["upload", "microphone"], type="numpy", label="noisy")
            enhanced = gr.Audio(type="numpy", label="enhanced")
        gr.Examples([[str(EXAMPLE)]], inputs=noisy, label="example: a VoiceBank+DEMAND recording")
        button = gr.Button("Enhance", variant="primary")
        plot = gr.Plot(label="spectrograms")
        button.click(make_enhancer(model), inputs=noisy, outputs=[enhanced, plot])
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="model folder or Hub id (default: the bundled one)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()
    model = HybridMPSENetForSpeechEnhancement.from_pretrained(args.model).eval()
    build_demo(model, args.model).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
