"""The README's before/after picture: spectrograms of the bundled noisy example, the bundled default model's output
and the clean reference, written to `docs/images/before_after.png`.

    python scripts/make_readme_figure.py [--model default] [--output docs/images/before_after.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import soundfile as sf

from hybrid_mpsenet import HybridMPSENetEnhancer
from hybrid_mpsenet.plotting import save_figure, spectrogram_figure

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="model folder, Hub id or a bundled name")
    parser.add_argument("--output", default=str(ROOT / "docs/images/before_after.png"))
    args = parser.parse_args()
    noisy, rate = sf.read(ROOT / "examples/audio/p257_418_noisy.wav", dtype="float32")
    clean, _ = sf.read(ROOT / "examples/audio/p257_418_clean.wav", dtype="float32")
    enhanced = HybridMPSENetEnhancer.from_pretrained(args.model).enhance(noisy, sampling_rate=rate)
    waveforms = {"noisy (VoiceBank+DEMAND p257_418)": noisy, f"enhanced ({args.model})": enhanced, "clean": clean}
    print(f"wrote {save_figure(spectrogram_figure(waveforms, rate), args.output)}")


if __name__ == "__main__":
    main()
