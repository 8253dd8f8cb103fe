"""Deployment on a CPU: the PyTorch path, the ONNX Runtime path (no PyTorch) and DeepFilterNet3, side by side.

For the bundled default (or `--model`) on `--data` (e.g. `voicebank_dev`): the start-up to the first enhanced file
(a fresh interpreter that imports the runtime, loads the model and enhances the first file), the peak RSS of a
process that enhances every file, the real-time factor on 1 and 2 threads (PyTorch threads, onnxruntime intra-op
threads; DFN3's libDF runtime has its own), and PESQ, CSIG, CBAK, COVL, STOI and SI-SDR of each system's output.
Then the same speed and memory for each preset with random weights (exported to a temporary folder), so a user
sees what the bigger models cost on a CPU.

Each system runs in a fresh process that imports only what it needs (the ONNX one never imports PyTorch). DFN3 runs
as in `benchmark_vs_deepfilternet.py` (48 kHz libDF stream, resampled with soxr both ways).

Prints the tables and writes JSON.

    python scripts/benchmark_deployment.py --data ../shared/data/voicebank_dev
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from benchmark_vs_deepfilternet import METRICS, RATE, load_enhancer, load_pairs, run_dfn3, score

from hybrid_mpsenet.utils import benchmark_environment, measured, run_in_fresh_process, write_json_atomic

# A fresh interpreter that loads a system and enhances one file: the start-up a user of each runtime waits for.
STARTUP = {
    "pytorch": """
        import torch, soundfile as sf
        torch.set_num_threads(1)
        from hybrid_mpsenet.inference import HybridMPSENetEnhancer
        audio, rate = sf.read({path!r}, dtype="float32")
        HybridMPSENetEnhancer.from_pretrained({model!r}).enhance(audio, rate)
    """,
    "onnx": """
        import soundfile as sf
        from hybrid_mpsenet.onnx import OnnxEnhancer
        audio, rate = sf.read({path!r}, dtype="float32")
        OnnxEnhancer.from_pretrained({model!r}, threads=1).enhance(audio, rate)
    """,
    "dfn3": """
        import sys, soundfile as sf
        sys.path.insert(0, {scripts!r})
        from benchmark_vs_deepfilternet import DeepFilterNet3
        audio, rate = sf.read({path!r}, dtype="float32")
        DeepFilterNet3().enhance(audio)
    """,
}


def run_system(system: str, model: str, noisy: list[np.ndarray], threads: int) -> dict:
    """Enhance every signal with `system` ("pytorch" or "onnx") on `threads` threads, in this (fresh) process."""
    enhancer = load_enhancer(model, threads, system)
    enhancer.enhance(noisy[0][:RATE], RATE)  # warm-up
    with measured("cpu") as result:
        outputs = [enhancer.enhance(audio, RATE) for audio in noisy]
    result["torch_imported"] = "torch" in sys.modules
    return {**result, "outputs": outputs, "threads": threads}


def startup_seconds(system: str, model: str, path: Path, repeats: int) -> float:
    """Median wall time of a fresh interpreter that loads `system` and enhances the file at `path`."""
    code = textwrap.dedent(STARTUP[system]).format(path=str(path), model=model, scripts=str(Path(__file__).parent))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def export_preset(name: str, folder: Path) -> Path:
    """A preset with random weights (seed 0), exported to ONNX in `folder / name`."""
    import torch

    from hybrid_mpsenet import HybridMPSENetConfig
    from hybrid_mpsenet.inference import HybridMPSENetEnhancer
    from hybrid_mpsenet.onnx_export import export_onnx

    torch.manual_seed(0)
    return export_onnx(HybridMPSENetEnhancer(HybridMPSENetConfig.from_preset(name)).eval(), folder / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a folder of clean/noisy pairs")
    parser.add_argument("--model", default="default", help="folder with an exported graph, Hub id or `default`")
    parser.add_argument("--presets", nargs="*", default=None, help="presets to time on random weights (default all)")
    parser.add_argument("--preset-files", type=int, default=3, help="files enhanced per preset")
    parser.add_argument("--repeats", type=int, default=3, help="start-up runs per system (median)")
    parser.add_argument("--workers", type=int, default=2, help="processes computing the metrics")
    parser.add_argument("--output", default="outputs/benchmark_deployment.json")
    args = parser.parse_args()
    from hybrid_mpsenet import PRESETS

    clean, noisy, seconds = load_pairs(args.data)
    first = sorted((Path(args.data) / "noisy").glob("*.wav"))[0]
    systems: dict[str, dict] = {"noisy": {"metrics": score(clean, noisy, args.workers)}}
    for system in ("pytorch", "onnx"):
        runs = {threads: run_in_fresh_process(run_system, system, args.model, noisy, threads) for threads in (1, 2)}
        outputs = runs[1].pop("outputs")
        runs[2].pop("outputs")
        systems[system] = {
            "metrics": score(clean, outputs, args.workers),
            "rtf": {threads: run["seconds"] / seconds for threads, run in runs.items()},
            "peak_rss_mib": max(1024 * run["peak_rss_gib"] for run in runs.values()),
            "startup_s": startup_seconds(system, args.model, first, args.repeats),
            "torch_imported": runs[1]["torch_imported"],
        }
        print(system, systems[system], flush=True)
    try:
        dfn3 = run_in_fresh_process(run_dfn3, noisy)
    except (ImportError, OSError, RuntimeError) as error:
        systems["dfn3"] = {"error": f"{type(error).__name__}: {error}"}
    else:
        systems["dfn3"] = {
            "metrics": score(clean, dfn3.pop("outputs"), args.workers),
            "rtf": {"libDF": dfn3["seconds"] / seconds},
            "peak_rss_mib": 1024 * dfn3["peak_rss_gib"],
            "startup_s": startup_seconds("dfn3", args.model, first, args.repeats),
            "version": dfn3["version"],
        }

    presets = {}
    subset = noisy[: args.preset_files]
    subset_seconds = sum(len(audio) for audio in subset) / RATE
    with tempfile.TemporaryDirectory() as tmp:
        for name in PRESETS if args.presets is None else args.presets:
            folder = str(run_in_fresh_process(export_preset, name, Path(tmp)))
            presets[name] = {}
            for system in ("pytorch", "onnx"):
                run = run_in_fresh_process(run_system, system, folder, subset, 1)
                presets[name][system] = {
                    "rtf": run["seconds"] / subset_seconds,
                    "peak_rss_mib": 1024 * run["peak_rss_gib"],
                }
            print(name, presets[name], flush=True)

    print(f"\n{Path(args.data).name}: {len(noisy)} files, {seconds:.1f} s; model {args.model}")
    print(
        "| system | start-up to first output s | peak RSS MiB | RTF 1 thread | RTF 2 threads | "
        + " | ".join(m.upper() for m in METRICS)
        + " |"
    )
    print("|---|---|---|---|---|" + "---|" * len(METRICS))
    for name, system in systems.items():
        if "error" in system:
            print(f"| {name} | not run: {system['error']} |")
            continue
        cells = " | ".join(f"{system['metrics'][metric]:.2f}" for metric in METRICS)
        if name == "noisy":
            print(f"| noisy | | | | | {cells} |")
            continue
        rtf = system["rtf"]
        one, two = (f"{rtf[1]:.3f}", f"{rtf[2]:.3f}") if 1 in rtf else (f"{rtf['libDF']:.3f}", "")
        print(f"| {name} | {system['startup_s']:.2f} | {system['peak_rss_mib']:.0f} | {one} | {two} | {cells} |")
    print(f"\nPresets, random weights, {len(subset)} files ({subset_seconds:.1f} s), 1 thread")
    print("| preset | PyTorch RTF | PyTorch peak RSS MiB | ONNX RTF | ONNX peak RSS MiB |")
    print("|---|---|---|---|---|")
    for name, result in presets.items():
        cells = " | ".join(f"{run['rtf']:.3f} | {run['peak_rss_mib']:.0f}" for run in result.values())
        print(f"| {name} | {cells} |")
    result = {"environment": benchmark_environment(), "data": args.data, "systems": systems, "presets": presets}
    print(f"wrote {write_json_atomic(args.output, result)}")


if __name__ == "__main__":
    main()
