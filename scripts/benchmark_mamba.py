"""Forward + backward time and peak memory of the pure-PyTorch selective scan vs the naive step-by-step reference.

Shapes are those the model's Mamba blocks see on 2-s training crops at batch 4 (d_inner 128, d_state 16):
(batch*freq = 404, length = 321 frames) for the time pass and (batch*time = 642, length = 101 bins) for the
frequency pass. Prints a table and writes JSON.

    python scripts/benchmark_mamba.py --threads 2 --output outputs/benchmark_mamba.json
"""

from __future__ import annotations

import argparse
import time

import torch

from hybrid_mpsenet.mamba import selective_scan, selective_scan_reference
from hybrid_mpsenet.utils import benchmark_environment, peak_rss_gib, run_in_fresh_process, write_json_atomic

SCANS = {"chunked": selective_scan, "reference": selective_scan_reference}


def measure(method: str, batch: int, length: int, threads: int, chunk_size: int, repeats: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    d_inner, d_state = 128, 16
    leaves = [
        torch.randn(batch, d_inner, length),  # u
        torch.randn(batch, d_inner, length) * 0.5,  # delta (before softplus)
        -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1),  # A as mamba_ssm initialises it
        torch.randn(batch, d_state, length),  # B
        torch.randn(batch, d_state, length),  # C
    ]
    leaves = [t.requires_grad_() for t in leaves]
    kwargs = {"delta_softplus": True, **({"chunk_size": chunk_size} if method == "chunked" else {})}
    forward, total = [], []
    # The first repeat also pays for thread start-up and first-touch page faults; the best repeat is reported.
    for _ in range(repeats):
        for leaf in leaves:
            leaf.grad = None
        start = time.perf_counter()
        y = SCANS[method](*leaves, **kwargs)
        forward.append(time.perf_counter() - start)
        y.square().mean().backward()
        total.append(time.perf_counter() - start)
    return {
        "forward_s": min(forward),
        "forward_backward_s": min(total),
        "all_forward_backward_s": total,
        "peak_rss_gib": peak_rss_gib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the fastest is reported")
    parser.add_argument("--shapes", default="404x321,642x101", help="comma-separated BATCHxLENGTH")
    parser.add_argument("--skip-reference", action="store_true", help="time only the chunked scan")
    parser.add_argument("--output", default="outputs/benchmark_mamba.json")
    args = parser.parse_args()

    rows = []
    for shape in args.shapes.split(","):
        batch, length = (int(v) for v in shape.lower().split("x"))
        row = {"batch": batch, "length": length}
        for method in ["chunked"] if args.skip_reference else list(SCANS):
            # A fresh process per measurement, so the peak memory is this run's.
            row[method] = run_in_fresh_process(
                measure, method, batch, length, args.threads, args.chunk_size, args.repeats
            )
        if "reference" in row:
            row["speedup"] = row["reference"]["forward_backward_s"] / row["chunked"]["forward_backward_s"]
        rows.append(row)

    print(f"CPU, {args.threads} threads, chunk size {args.chunk_size}, best of {args.repeats}")
    print("| shape (batch x length) | method | fwd s | fwd+bwd s | peak RSS GiB | speed-up |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        for method in SCANS:
            if method in row:
                r = row[method]
                speedup = f"{row['speedup']:.1f}x" if method == "chunked" and "speedup" in row else ""
                print(
                    f"| {row['batch']} x {row['length']} | {method} | {r['forward_s']:.2f} | "
                    f"{r['forward_backward_s']:.2f} | {r['peak_rss_gib']:.2f} | {speedup} |"
                )
    result = {
        **benchmark_environment(),
        "threads": args.threads,
        "chunk_size": args.chunk_size,
        "repeats": args.repeats,
        "d_inner": 128,
        "d_state": 16,
        "rows": rows,
    }
    print(f"wrote {write_json_atomic(args.output, result)}")


if __name__ == "__main__":
    main()
