"""Real-time factor and peak memory of `enhance` for each preset and duration, on CPU and on CUDA when present.

Each measurement runs in a fresh process on random weights (speed does not depend on them) and white noise.
RTF = compute time / audio duration (below 1 is faster than real time). Prints a table and writes JSON.

    python scripts/benchmark_inference.py --threads 2 --durations 1,10,60,600 --output outputs/benchmark_inference.json
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from hybrid_mpsenet import PRESETS, HybridMPSENetConfig, HybridMPSENetEnhancer
from hybrid_mpsenet.audio import DEFAULT_CHUNK_SECONDS
from hybrid_mpsenet.utils import benchmark_environment, measured, run_in_fresh_process, write_json_atomic


def measure(preset: str, seconds: float, device: str, threads: int, chunk_seconds: float, dtype: str) -> dict:
    torch.set_num_threads(threads)
    model = HybridMPSENetEnhancer(HybridMPSENetConfig.from_preset(preset)).to(device).eval()
    audio = (0.1 * np.random.default_rng(0).standard_normal(int(seconds * 16000))).astype(np.float32)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)
    if device == "cuda":
        model.enhance(audio[:16000], 16000, dtype=autocast)  # warm-up: kernels and allocator
    with measured(device) as result:
        model.enhance(audio, 16000, chunk_seconds=chunk_seconds, dtype=autocast)
    return {**result, "rtf": result["seconds"] / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--durations", default="1,10,60,600", help="comma-separated seconds of audio")
    parser.add_argument("--chunk-seconds", type=float, default=DEFAULT_CHUNK_SECONDS)
    parser.add_argument("--dtype", default="bf16", choices=["fp32", "bf16", "fp16"], help="CUDA autocast dtype")
    parser.add_argument("--output", default="outputs/benchmark_inference.json")
    args = parser.parse_args()

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        dtype = args.dtype if device == "cuda" else "fp32"
        for preset in args.presets.split(","):
            for seconds in (float(d) for d in args.durations.split(",")):
                result = run_in_fresh_process(measure, preset, seconds, device, args.threads, args.chunk_seconds, dtype)
                rows.append({"device": device, "dtype": dtype, "preset": preset, "audio_s": seconds, **result})
                print(rows[-1], flush=True)

    print(f"\nthreads {args.threads}, chunks of {args.chunk_seconds} s")
    print("| device | preset | audio s | RTF | peak RSS GiB | peak CUDA GiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cuda = f"{r['peak_cuda_gib']:.2f}" if "peak_cuda_gib" in r else ""
        print(
            f"| {r['device']} {r['dtype']} | {r['preset']} | {r['audio_s']:g} | {r['rtf']:.2f} | "
            f"{r['peak_rss_gib']:.2f} | {cuda} |"
        )
    result = {
        **benchmark_environment(),
        "threads": args.threads,
        "chunk_seconds": args.chunk_seconds,
        "rows": rows,
    }
    print(f"wrote {write_json_atomic(args.output, result)}")


if __name__ == "__main__":
    main()
