"""Training steps per second and peak memory for each preset at batch 4 x 2 s, on CPU and on CUDA when present.

A step is one discriminator and one generator update with the full objective, as in `hybrid_mpsenet.training`,
on random audio (PESQ targets included). Each measurement runs in a fresh process. Prints a table, writes JSON.

    python scripts/benchmark_training.py --threads 2 --steps 3 --output outputs/benchmark_training.json
"""

from __future__ import annotations

import argparse

import torch

from hybrid_mpsenet import PRESETS
from hybrid_mpsenet.utils import benchmark_environment, measured, run_in_fresh_process, write_json_atomic


def measure(preset: str, device: str, threads: int, steps: int, batch: int, seconds: float, precision: str) -> dict:
    from accelerate import Accelerator

    from hybrid_mpsenet.losses import MetricDiscriminator
    from hybrid_mpsenet.training import TrainingArguments, TrainingState, build_model, build_optimizers, train_step

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    args = TrainingArguments(output_dir="unused", train_data="unused", preset=preset, mixed_precision=precision)
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=precision)
    model, discriminator = build_model(args), MetricDiscriminator()
    optim_g, optim_d, _, _ = build_optimizers(args, model, discriminator)
    parts = accelerator.prepare(model, discriminator, optim_g, optim_d)
    unwrapped = accelerator.unwrap_model(parts[0])
    clean = 0.1 * torch.randn(batch, int(seconds * 16000), device=accelerator.device)
    batch_data = {"clean": clean, "noisy": clean + 0.05 * torch.randn_like(clean)}
    state = TrainingState()

    def step() -> None:
        train_step(accelerator, args, unwrapped, *parts, batch_data, args.loss_weights, None, state)

    step()  # warm-up
    with measured(device) as result:
        for _ in range(steps):
            step()
    per_step = result.pop("seconds") / steps
    return {"seconds_per_step": per_step, "steps_per_second": 1 / per_step, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--segment-seconds", type=float, default=2.0)
    parser.add_argument("--output", default="outputs/benchmark_training.json")
    args = parser.parse_args()

    rows = []
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        precision = "bf16" if device == "cuda" else "no"
        for preset in args.presets.split(","):
            result = run_in_fresh_process(
                measure, preset, device, args.threads, args.steps, args.batch_size, args.segment_seconds, precision
            )
            rows.append({"device": device, "precision": precision, "preset": preset, **result})
            print(rows[-1], flush=True)

    print(f"\nbatch {args.batch_size} x {args.segment_seconds} s, {args.threads} CPU threads")
    print("| device | preset | s/step | steps/s | peak RSS GiB | peak CUDA GiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cuda = f"{r['peak_cuda_gib']:.2f}" if "peak_cuda_gib" in r else ""
        print(
            f"| {r['device']} {r['precision']} | {r['preset']} | {r['seconds_per_step']:.2f} | "
            f"{r['steps_per_second']:.3f} | {r['peak_rss_gib']:.2f} | {cuda} |"
        )
    result = {
        **benchmark_environment(),
        "threads": args.threads,
        "batch_size": args.batch_size,
        "segment_seconds": args.segment_seconds,
        "rows": rows,
    }
    print(f"wrote {write_json_atomic(args.output, result)}")


if __name__ == "__main__":
    main()
