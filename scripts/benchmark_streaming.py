"""Streaming on a CPU: the bundled causal model frame by frame (PyTorch and ONNX Runtime), the offline default and
DeepFilterNet3's runtime.

For each system, in a fresh process on one thread: the algorithmic latency, the compute time of each hop (mean and 99th
percentile, over every hop of every file; `process()` calls of one hop for ours, libDF's `df_process_frame` for DFN3;
with blocks of 2 frames the network runs every other call, so the 99th percentile is that of the two calls of a block,
due within two hops), the real-time factor (mean hop compute / hop duration), the peak RSS, and PESQ, CSIG, CBAK, COVL,
STOI and SI-SDR of what came out of the stream, for each `--data` folder (any layout `hybrid-mpsenet evaluate` reads).
The offline `default` has no hop: its row gives its whole-file RTF on one thread and its scores, for reference. DFN3
runs as in `benchmark_vs_deepfilternet.py` (48 kHz, soxr up and down, its delay removed).

Prints one table and writes JSON.

    python scripts/benchmark_streaming.py --data ../shared/data/voicebank_dev --data outputs/heldout
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from benchmark_vs_deepfilternet import DFN_RATE, METRICS, RATE, DeepFilterNet3, load_enhancer, load_pairs, score

from hybrid_mpsenet.utils import benchmark_environment, measured, run_in_fresh_process, write_json_atomic


def hop_statistics(timings: list[float], hop_seconds: float, hops_per_block: int = 1) -> dict:
    """Mean compute per hop (ms), the real-time factor, and the 99th-percentile compute of a block of
    `hops_per_block` consecutive calls (`timings` holds whole blocks): what must finish within the block's duration
    (`deadline_ms`)."""
    ms = 1000 * np.asarray(timings)
    blocks = ms.reshape(-1, hops_per_block).sum(axis=1)
    return {
        "hop_ms": 1000 * hop_seconds,
        "deadline_ms": 1000 * hop_seconds * hops_per_block,
        "compute_mean_ms": float(ms.mean()),
        "compute_p99_ms": float(np.percentile(blocks, 99)),
        "rtf": float(ms.mean() / (1000 * hop_seconds)),
    }


def run_stream(model: str, noisy: list[np.ndarray], backend: str, frames_per_block: int = 1) -> dict:
    """Our causal model on `backend` (pytorch or onnx), one thread, fed one hop per `process()` call; the network
    runs on blocks of `frames_per_block` frames (every that many calls)."""
    enhancer = load_enhancer(model, 1, backend)
    hop = enhancer.config.hop_length * RATE // enhancer.config.sampling_rate
    enhancer.enhance(noisy[0][:RATE], RATE)  # warm-up
    timings, outputs = [], []
    with measured("cpu") as result:
        for audio in noisy:
            stream = enhancer.stream(sampling_rate=RATE, frames_per_block=frames_per_block)
            pieces, calls = [], []
            for start in range(0, len(audio), hop):
                began = time.perf_counter()
                pieces.append(stream.process(audio[start : start + hop]))
                calls.append(time.perf_counter() - began)
            pieces.append(stream.flush())
            outputs.append(np.concatenate(pieces))
            # Blocks start at the file's first call; a file's unfinished block does not pair with the next file's.
            timings += calls[: len(calls) - len(calls) % frames_per_block]
    latency = 1000 * stream.latency_seconds
    stats = hop_statistics(timings, hop / RATE, frames_per_block)
    return {**result, **stats, "latency_ms": latency, "frames_per_block": frames_per_block, "outputs": outputs}


def run_offline(model: str, noisy: list[np.ndarray]) -> dict:
    """The offline model on whole files, one thread."""
    enhancer = load_enhancer(model, 1)
    enhancer.enhance(noisy[0][:RATE], RATE)
    with measured("cpu") as result:
        outputs = [enhancer.enhance(audio, RATE) for audio in noisy]
    return {**result, "outputs": outputs}


def run_dfn3(noisy: list[np.ndarray]) -> dict:
    dfn = DeepFilterNet3()
    dfn.enhance(noisy[0][:RATE])  # warm-up; also measures the delay
    timings: list[float] = []
    with measured("cpu") as result:
        outputs = [dfn.enhance(audio, timings) for audio in noisy]
    stats = hop_statistics(timings, dfn.hop / DFN_RATE)
    return {**result, **stats, "latency_ms": 1000 * dfn.delay / DFN_RATE, "version": dfn.version, "outputs": outputs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", required=True, help="a folder of clean/noisy pairs (repeat)")
    parser.add_argument("--streaming-model", default="default-streaming", help="our causal model")
    parser.add_argument("--offline-model", default="default", help="the offline model for reference")
    parser.add_argument("--workers", type=int, default=2, help="processes computing the metrics")
    parser.add_argument("--output", default="outputs/benchmark_streaming.json")
    args = parser.parse_args()
    results = {}
    for folder in args.data:
        clean, noisy, seconds = load_pairs(folder)
        systems = {"noisy": {"metrics": score(clean, noisy, args.workers)}}
        runs = {
            f"{args.streaming_model} (stream, PyTorch)": (run_stream, args.streaming_model, noisy, "pytorch"),
            f"{args.streaming_model} (stream, ONNX)": (run_stream, args.streaming_model, noisy, "onnx"),
            f"{args.streaming_model} (stream, ONNX, 2-frame blocks)": (
                run_stream,
                args.streaming_model,
                noisy,
                "onnx",
                2,
            ),
            f"{args.offline_model} (offline)": (run_offline, args.offline_model, noisy),
            "DeepFilterNet3 (stream)": (run_dfn3, noisy),
        }
        for name, (target, *inputs) in runs.items():
            try:
                run = run_in_fresh_process(target, *inputs)
            except (ImportError, OSError, RuntimeError) as error:
                systems[name] = {"error": f"{type(error).__name__}: {error}"}
                continue
            run["file_rtf"] = run["seconds"] / seconds
            systems[name] = {"metrics": score(clean, run.pop("outputs"), args.workers), **run}
        results[folder] = {"pairs": len(clean), "audio_s": seconds, "systems": systems}

    print(
        "\none CPU thread per system; compute mean = per process() / df_process_frame call of one hop; p99 = of a "
        "block's calls, due within the block's duration (the deadline)"
    )
    print(
        "| data | system | latency ms | deadline ms | compute mean / p99 ms | RTF | peak RSS MiB | "
        + " | ".join(m.upper().replace("_", "-") for m in METRICS)
        + " |"
    )
    print("|---|---|---|---|---|---|---|" + "---|" * len(METRICS))
    for folder, result in results.items():
        for name, system in result["systems"].items():
            label = f"| {Path(folder).name} ({result['pairs']}) | {name} |"
            if "error" in system:
                print(f"{label} not run: {system['error']} |")
                continue
            if "compute_mean_ms" in system:
                timing = (
                    f"{system['latency_ms']:.1f} | {system['deadline_ms']:.2f} | "
                    f"{system['compute_mean_ms']:.2f} / {system['compute_p99_ms']:.2f} | {system['rtf']:.2f} |"
                )
            elif "file_rtf" in system:
                timing = f"whole file | | | {system['file_rtf']:.2f} (file) |"
            else:
                timing = " | | | |"
            memory = f" {1024 * system['peak_rss_gib']:.0f} |" if "peak_rss_gib" in system else " |"
            cells = " | ".join(f"{system['metrics'][metric]:.2f}" for metric in METRICS)
            print(f"{label} {timing}{memory} {cells} |")
    environment = benchmark_environment()
    print(f"wrote {write_json_atomic(args.output, {'environment': environment, 'results': results})}")


if __name__ == "__main__":
    main()
