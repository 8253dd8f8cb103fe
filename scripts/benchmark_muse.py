"""MUSE on a CPU thread: the original code (huaidanquede/MUSE-Speech-Enhancement, run from its checkout with its own
`inference.py` segmentation, 30,700-sample segments) against this package's port, on the same files.

Rows:
- `original`: the original model and `process_audio_segment` in this process, compute time only.
- `port, original segmentation`: the converted model (`muse-vb` or `--model`) on the same segments, compute only.
- `hybrid-mpsenet enhance`: the whole command in a fresh process (`--threads`), wall time from start to exit:
  imports, loading, reading, enhancing and writing.
- `grown: NAME` (with `--grown NAME ...`): `--model` grown by a MUSE preset's Mamba branches (`hybrid-muse`), or a
  saved grown model folder, on the same segments: what the branches cost.

Without `--original` the segments are cut here the same way (30,700 samples, the last one zero-padded), so the port
and its grown forms can be compared where the original's dependencies are not installed.

Real-time factor = seconds of compute per second of audio (lower is faster). The original needs its own imports
(`pip install einops joblib torchvision librosa`). Prints one table and writes JSON.

    python scripts/benchmark_muse.py --original MUSE-Speech-Enhancement --data ../shared/data/voicebank_dev/noisy
    python scripts/benchmark_muse.py --data ../shared/data/voicebank_dev/noisy --grown hybrid-muse
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf
import torch

from hybrid_mpsenet.utils import benchmark_environment, write_json_atomic


def _original(checkout: Path):
    """The original `MUSE` class, its hyper-parameters and `process_audio_segment`, imported from `checkout`."""
    sys.path.insert(0, str(checkout.resolve()))
    # The original's `datasets/` folder is shadowed by Hugging Face `datasets`: register its file under its name.
    spec = importlib.util.spec_from_file_location("datasets.dataset", checkout / "datasets" / "dataset.py")
    sys.modules["datasets.dataset"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules["datasets.dataset"])
    import inference
    from env import AttrDict
    from models.generator import MUSE

    h = AttrDict(json.loads((checkout / "paper_result" / "config.json").read_text()))
    inference.h = h
    model = MUSE(h)
    state = torch.load(checkout / "paper_result" / "g_best", map_location="cpu", weights_only=True)
    model.load_state_dict(state["generator"])
    return model.eval(), h, inference.process_audio_segment


def _time_segments(model, h, process, waves: list[torch.Tensor]) -> float:
    with torch.inference_mode():
        process(waves[0][: h.segment_size], model, h, "cpu")  # warm-up
        start = time.perf_counter()
        for wave in waves:
            process(wave, model, h, "cpu")
        return time.perf_counter() - start


def _segments(wave: torch.Tensor, model, h, device: str) -> None:
    """The original `process_audio_segment` without its checkout: `segment_size`-sample segments (the last one
    zero-padded), each enhanced whole from its compressed spectrum."""
    size = h.segment_size
    for start in range(0, len(wave), size):
        segment = torch.nn.functional.pad(wave[start : start + size], (0, max(0, start + size - len(wave))))
        magnitude, phase, _ = model.model.spectrum(segment[None])
        model(magnitude, phase)


class _PortAsOriginal(torch.nn.Module):
    """The port with the original's call signature `(amp, pha) -> (amp, pha, com)`."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, magnitude: torch.Tensor, phase: torch.Tensor):
        return self.model(magnitude, phase, return_dict=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", type=Path, help="checkout of MUSE-Speech-Enhancement (optional)")
    parser.add_argument("--data", type=Path, required=True, help="folder of 16 kHz noisy .wav files")
    parser.add_argument("--model", default="muse-vb", help="our MUSE model (default: the bundled muse-vb)")
    parser.add_argument("--grown", nargs="*", default=[], help="MUSE presets or folders of grown models to time too")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path("benchmark_muse.json"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    files = sorted(args.data.glob("*.wav"))
    waves = [torch.from_numpy(sf.read(path, dtype="float32")[0]) for path in files]
    seconds = sum(len(wave) for wave in waves) / 16000
    from hybrid_mpsenet import MuseConfig, MuseForSpeechEnhancement
    from hybrid_mpsenet.configuration_muse import MUSE_PRESETS
    from hybrid_mpsenet.inference import HybridMPSENetEnhancer

    rows = {}
    if args.original is not None:
        model, h, process = _original(args.original)
        rows["original"] = _time_segments(model, h, process, waves)
    else:
        h, process = argparse.Namespace(segment_size=MuseConfig().segment_samples), _segments
    port = _PortAsOriginal(HybridMPSENetEnhancer.from_pretrained(args.model))
    rows["port, original segmentation"] = _time_segments(port, h, process, waves)
    for name in args.grown:
        if name in MUSE_PRESETS:  # the preset's branches added to --model (timing does not depend on the weights)
            start = MuseForSpeechEnhancement.from_pretrained(args.model)
            grown = start.grow(**MUSE_PRESETS[name]).eval()
        else:
            grown = HybridMPSENetEnhancer.from_pretrained(name)
        rows[f"grown: {name}"] = _time_segments(_PortAsOriginal(grown), h, process, waves)
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "hybrid_mpsenet.cli", "enhance", str(args.data), "-o", out, "-q"]
        command += ["--model", args.model, "--threads", str(args.threads)]
        start = time.perf_counter()
        subprocess.run(command, check=True)
        rows["hybrid-mpsenet enhance"] = time.perf_counter() - start

    print(f"{len(files)} files, {seconds:.1f} s of audio, {args.threads} thread(s)\n")
    reference = next(iter(rows))
    print(f"| {'system':<30} | seconds | RTF   | speed vs {reference} |")
    print(f"|{'-' * 32}|---------|-------|------------|")
    for name, value in rows.items():
        print(f"| {name:<30} | {value:7.2f} | {value / seconds:.3f} | {rows[reference] / value:9.2f}x |")
    results = {
        "files": len(files),
        "audio_seconds": seconds,
        "threads": args.threads,
        "seconds": rows,
        "rtf": {name: value / seconds for name, value in rows.items()},
        "environment": benchmark_environment(),
    }
    write_json_atomic(args.output, results)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
