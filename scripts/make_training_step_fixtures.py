"""Regenerate `tests/fixtures/training_step/` by running the original MP-SENet training step (yxlu-0102/MP-SENet).

The original code is imported from a checkout of that repository, never copied. The steps are its `train.py` loop
body (`original_mpsenet.original_step`: discriminator update on the re-STFT of the enhanced waveform, then the
generator update), on CPU, with a reduced-width generator (`dense_channel` 8, one TS-Transformer block) and
discriminator (`dim` 4) so the files stay small. The batch is two clean/noisy pairs as its `Dataset` produces
them: one utterance longer than the segment (normalised by the whole noisy utterance, then cropped) and one shorter
(normalised, zero-padded).

The steps run in float64 (`torch.set_default_dtype`, the original code unchanged) from float32-representable
initial weights: in float32 a training step is chaotic at the gradient level (the consistency and phase terms
differentiate through atan2 and sqrt at near-zero bins, so the original code's own float32 gradients differ from
its float64 ones by up to 2x in places), which would hide a real deviation under rounding noise. In float64 the
original and this package agree to ~1e-12. Everything is stored in float32.

    git clone https://github.com/yxlu-0102/MP-SENet /tmp/MP-SENet     # the original code (MIT licence)
    pip install librosa joblib                                       # its extra imports
    python scripts/make_training_step_fixtures.py /tmp/MP-SENet

Written: `g_0000000N`, `do_0000000N` (original format) for N = 0 (initial state) to 3 (after each step), so that
each step can be checked from the original's own state; `config.json` (the original config with the reduced sizes)
and `io.safetensors`: the full utterances, the batch, and per step the PESQ targets, every loss term and (after
three steps) the discriminator's state. Before each step the torch RNG is seeded with `1000 + step` (the
discriminator's dropout).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import soundfile as sf
import torch
from original_mpsenet import import_original, original_step
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
# (clean, noisy, (start, end) seconds kept or None): the first is longer than the segment, the second shorter.
UTTERANCES = [
    (ROOT / "examples/audio/p257_418_clean.wav", ROOT / "examples/audio/p257_418_noisy.wav", None),
    (ROOT / "tests/data/p232_001_clean.wav", ROOT / "tests/data/p232_001_noisy.wav", (0.55, 1.0)),
]
SIZES = {"dense_channel": 8, "segment_size": 8000, "batch_size": 2, "num_workers": 0}
NUM_TSBLOCKS = 1
DISCRIMINATOR_DIM = 4
STEPS = 3


def load_utterance(clean_path: Path, noisy_path: Path, span: tuple[float, float] | None):
    """Clean and noisy float32 `(samples,)` of one pair, trimmed to the same length (and to `span`)."""
    clean, rate = sf.read(clean_path, dtype="float32")
    noisy, _ = sf.read(noisy_path, dtype="float32")
    length = min(len(clean), len(noisy))
    start, end = (0, length) if span is None else (int(span[0] * rate), int(span[1] * rate))
    return clean[start:end], noisy[start:end]


def to_float32(state):
    """`state` (nested dicts and lists of tensors) with every floating-point tensor cast to float32."""
    if isinstance(state, dict):
        return {key: to_float32(value) for key, value in state.items()}
    if isinstance(state, list):
        return [to_float32(value) for value in state]
    if isinstance(state, torch.Tensor) and state.is_floating_point():
        return state.detach().float().clone()
    return state


def step_seed(step: int) -> int:
    """Seed of the torch RNG before training step `step` (0-based)."""
    return 1000 + step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("original", help="checkout of github.com/yxlu-0102/MP-SENet")
    parser.add_argument("--output", default=str(ROOT / "tests/fixtures/training_step"))
    args = parser.parse_args()
    original = import_original(args.original)
    h = original.AttrDict({**json.loads((Path(args.original) / "config.json").read_text()), **SIZES})
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}

    # The batch, from the original Dataset (split=True), on float32 copies of the recordings.
    with tempfile.TemporaryDirectory() as tmp:
        names = []
        for index, (clean_path, noisy_path, span) in enumerate(UTTERANCES):
            clean, noisy = load_utterance(clean_path, noisy_path, span)
            name = f"utterance_{index}"
            for folder, audio in (("clean", clean), ("noisy", noisy)):
                os.makedirs(f"{tmp}/{folder}", exist_ok=True)
                sf.write(f"{tmp}/{folder}/{name}.wav", audio, h.sampling_rate, subtype="FLOAT")
            names.append(name)
        dataset = original.Dataset(names, f"{tmp}/clean", f"{tmp}/noisy", h.segment_size, h.sampling_rate, split=True,
                          shuffle=False, n_cache_reuse=0)  # fmt: skip
        items = [dataset[i] for i in range(len(names))]
    clean_audio = torch.stack([item[0] for item in items])
    noisy_audio = torch.stack([item[1] for item in items])
    tensors["batch_clean"], tensors["batch_noisy"] = clean_audio, noisy_audio
    clean_audio, noisy_audio = clean_audio.double(), noisy_audio.double()

    torch.set_default_dtype(torch.float64)
    torch.manual_seed(h.seed)
    generator = original.MPNet(h, num_tsblocks=NUM_TSBLOCKS)
    discriminator = original.MetricDiscriminator(dim=DISCRIMINATOR_DIM)
    with torch.no_grad():  # float32-representable, so that the float32 files hold the exact initial state
        for value in [*generator.state_dict().values(), *discriminator.state_dict().values()]:
            value.copy_(value.float())
    optim_g = torch.optim.AdamW(generator.parameters(), h.learning_rate, betas=[h.adam_b1, h.adam_b2])
    optim_d = torch.optim.AdamW(discriminator.parameters(), h.learning_rate, betas=[h.adam_b1, h.adam_b2])
    # As train.py on a fresh run (they are stepped once per epoch; the three steps stay within the first).
    torch.optim.lr_scheduler.ExponentialLR(optim_g, gamma=h.lr_decay, last_epoch=-1)
    torch.optim.lr_scheduler.ExponentialLR(optim_d, gamma=h.lr_decay, last_epoch=-1)

    def save(steps: int) -> None:
        torch.save({"generator": to_float32(generator.state_dict())}, output / f"g_{steps:08d}")
        state = {"discriminator": discriminator.state_dict(), "optim_g": optim_g.state_dict(),
                 "optim_d": optim_d.state_dict(), "steps": steps, "epoch": 0}  # fmt: skip
        torch.save(to_float32(state), output / f"do_{steps:08d}")

    save(0)
    generator.train()
    discriminator.train()
    for step in range(STEPS):
        torch.manual_seed(step_seed(step))
        gradients: dict[str, torch.Tensor] = {}

        def record(name: str, module: torch.nn.Module, gradients: dict = gradients) -> None:
            gradients.update({f"{name}.{k}": p.grad.clone() for k, p in module.named_parameters()})

        values = original_step(
            original, h, generator, discriminator, optim_g, optim_d, clean_audio, noisy_audio, on_gradients=record
        )
        for name, value in values.items():
            tensors[f"step_{step + 1}/{name}"] = torch.as_tensor(value).detach().clone().float()
        if step == 0:
            tensors.update({f"step_1/grad.{name}": value for name, value in gradients.items()})
        save(step + 1)
    for key, value in discriminator.state_dict().items():
        tensors[f"step_{STEPS}/discriminator.{key}"] = value.detach().clone()
    save_file({k: v.contiguous() for k, v in to_float32(tensors).items()}, output / "io.safetensors")
    (output / "config.json").write_text(json.dumps({**h, "num_tsblocks": NUM_TSBLOCKS,
                                                    "discriminator_dim": DISCRIMINATOR_DIM}, indent=2))  # fmt: skip
    sizes = sum(f.stat().st_size for f in output.iterdir())
    print(f"wrote {output} ({sizes / 1024:.0f} KiB)")
    for step in range(1, STEPS + 1):
        prefix = f"step_{step}/"
        print(step, {k[len(prefix) :]: round(float(v.mean()), 5) for k, v in tensors.items()
                     if k.startswith(prefix) and "." not in k})  # fmt: skip


if __name__ == "__main__":
    main()
