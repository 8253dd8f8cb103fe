"""Training steps per second and peak memory for each preset at batch 4 x 2 s, on CPU and on CUDA when present;
with `--original CHECKOUT`, also the original MP-SENet `train.py` step beside ours at the same width, batch and
crop, and what each of our speed options buys.

A step is one discriminator and one generator update with the full objective, as in `hybrid_mpsenet.training`
(PESQ targets included), on real speech with noise. Each measurement runs in a fresh process with the same torch
threads. Prints tables, writes JSON.

    python scripts/benchmark_training.py --threads 2 --steps 3 --output outputs/benchmark_training.json
    # side by side (the original's imports: pip install librosa joblib):
    git clone https://github.com/yxlu-0102/MP-SENet /tmp/MP-SENet
    python scripts/benchmark_training.py --original /tmp/MP-SENet --presets none --threads 1 --segment-seconds 1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from hybrid_mpsenet import PRESETS
from hybrid_mpsenet.utils import benchmark_environment, measured, run_in_fresh_process, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
# The default model's width: what the side-by-side compares (`mpsenet` with these sizes).
DEFAULT_WIDTH = {"dense_channel": 16, "num_shared_blocks": 1, "ffn_hidden_size": 32}
# Our speed options against the recipe (name, training settings).
OPTIONS = [
    ("recipe (PESQ in 2 worker processes)", {}),
    ("PESQ in-process", {"pesq_workers": 0}),
    ("discriminator every 2 steps", {"discriminator_every": 2}),
    ("discriminator every 4 steps", {"discriminator_every": 4}),
]


def speech_batch(batch: int, seconds: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` crops of real speech and the same with real noise at 5 dB, RMS-normalised as training does."""
    clean, _ = sf.read(ROOT / "examples/audio/p257_418_clean.wav", dtype="float32")
    noise, _ = sf.read(ROOT / "tests/data/running_tap_8s.wav", dtype="float32")
    length = int(seconds * 16000)
    clean = np.tile(clean, 1 + batch * length // len(clean))
    crops = np.stack([clean[i * length // 2 :][:length] for i in range(batch)])
    noisy = crops + 10 ** (-5 / 20) * noise[:length] * np.sqrt((crops**2).mean() / (noise[:length] ** 2).mean())
    scale = np.sqrt(length / (noisy**2).sum(axis=1, keepdims=True))
    return torch.from_numpy(crops * scale).float(), torch.from_numpy(noisy * scale).float()


def measure(
    preset: str, device: str, threads: int, steps: int, batch: int, seconds: float, precision: str, options: dict
) -> dict:
    from accelerate import Accelerator

    from hybrid_mpsenet.losses import MetricDiscriminator
    from hybrid_mpsenet.metrics import make_pool
    from hybrid_mpsenet.training import TrainingArguments, TrainingState, build_model, build_optimizers, train_step

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    overrides = {"config_overrides": json.dumps(DEFAULT_WIDTH), "preset": "mpsenet"}
    if preset != "default-width":
        overrides = {"preset": preset}
    args = TrainingArguments(
        output_dir="unused", train_data="unused", mixed_precision=precision, **overrides, **options
    )
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=precision)
    model, discriminator = build_model(args), MetricDiscriminator()
    optim_g, optim_d, _, _ = build_optimizers(args, model, discriminator)
    parts = accelerator.prepare(model, discriminator, optim_g, optim_d)
    unwrapped = accelerator.unwrap_model(parts[0])
    clean, noisy = speech_batch(batch, seconds)
    batch_data = {"clean": clean.to(accelerator.device), "noisy": noisy.to(accelerator.device)}
    state = TrainingState()
    pool = make_pool(args.pesq_workers)

    def step() -> None:
        train_step(accelerator, args, unwrapped, *parts, batch_data, args.loss_weights, pool, state)
        state.step += 1

    step()  # warm-up (and the pool's start)
    with measured(device) as result:
        for _ in range(steps):
            step()
    if pool is not None:
        pool.shutdown()
    per_step = result.pop("seconds") / steps
    return {"seconds_per_step": per_step, "steps_per_second": 1 / per_step, **result}


def measure_original(checkout: str, threads: int, steps: int, batch: int, seconds: float) -> dict:
    """The original `train.py` step (its MPNet at the default model's width, its discriminator and its PESQ) on
    the same batch."""
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    from original_mpsenet import import_original, original_step

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    original = import_original(checkout)
    h = original.AttrDict({**json.loads((Path(checkout) / "config.json").read_text()), "dense_channel": 16})
    generator = original.MPNet(h, num_tsblocks=DEFAULT_WIDTH["num_shared_blocks"])
    discriminator = original.MetricDiscriminator()
    optim_g = torch.optim.AdamW(generator.parameters(), h.learning_rate, betas=[h.adam_b1, h.adam_b2])
    optim_d = torch.optim.AdamW(discriminator.parameters(), h.learning_rate, betas=[h.adam_b1, h.adam_b2])
    clean, noisy = speech_batch(batch, seconds)

    def step() -> None:
        original_step(original, h, generator, discriminator, optim_g, optim_d, clean, noisy)

    step()  # warm-up (and joblib's workers)
    with measured("cpu") as result:
        for _ in range(steps):
            step()
    per_step = result.pop("seconds") / steps
    return {"seconds_per_step": per_step, "steps_per_second": 1 / per_step, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets, or none")
    parser.add_argument("--original", help="checkout of github.com/yxlu-0102/MP-SENet: compare its step with ours")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--segment-seconds", type=float, default=2.0)
    parser.add_argument("--output", default="outputs/benchmark_training.json")
    args = parser.parse_args()

    shape = (args.threads, args.steps, args.batch_size, args.segment_seconds)
    side_by_side = []
    if args.original:
        side_by_side.append(
            {"code": "original train.py", **run_in_fresh_process(measure_original, args.original, *shape)}
        )
        print(side_by_side[-1], flush=True)
        for name, options in OPTIONS:
            result = run_in_fresh_process(measure, "default-width", "cpu", *shape, "no", options)
            side_by_side.append({"code": f"hybrid-mpsenet: {name}", "options": options, **result})
            print(side_by_side[-1], flush=True)
        base = side_by_side[0]["steps_per_second"]
        print(f"\nthe default model's width (16 channels, 1 TS-Transformer block), batch {args.batch_size} x "
              f"{args.segment_seconds} s, {args.threads} CPU threads")  # fmt: skip
        print("| code | s/step | steps/s | vs original | peak RSS GiB |")
        print("|---|---|---|---|---|")
        for r in side_by_side:
            print(
                f"| {r['code']} | {r['seconds_per_step']:.2f} | {r['steps_per_second']:.3f} | "
                f"{r['steps_per_second'] / base:.2f}x | {r['peak_rss_gib']:.2f} |"
            )

    rows = []
    presets = [] if args.presets == "none" else args.presets.split(",")
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if presets else []:
        precision = "bf16" if device == "cuda" else "no"
        for preset in presets:
            result = run_in_fresh_process(measure, preset, device, *shape, precision, {})
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
        "side_by_side": side_by_side,
    }
    print(f"wrote {write_json_atomic(args.output, result)}")


if __name__ == "__main__":
    main()
