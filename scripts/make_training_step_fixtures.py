"""Regenerate `tests/fixtures/training_step/` by running the original MP-SENet training step (yxlu-0102/MP-SENet).

The original code is imported from a checkout of that repository, never copied. The steps below follow its
`train.py` line by line (discriminator update on the re-STFT of the enhanced waveform, then the generator update),
on CPU, with a reduced-width generator (`dense_channel` 8, one TS-Transformer block) and discriminator (`dim` 4) so
the files stay small. The batch is two clean/noisy pairs as its `Dataset` produces them: one utterance longer than
the segment (normalised by the whole noisy utterance, then cropped) and one shorter (normalised, zero-padded).

The steps run in float64 (`torch.set_default_dtype`, the original code unchanged) from float32-representable
initial weights: in float32 a training step is chaotic at the gradient level (the consistency and phase terms
differentiate through atan2 and sqrt at near-zero bins, so the original code's own float32 gradients differ from
its float64 ones by up to 2x in places), which would hide a real deviation under rounding noise. In float64 the
original and this package agree to ~1e-12. Everything is stored in float32.

    git clone https://github.com/yxlu-0102/MP-SENet /tmp/MP-SENet     # the original code (MIT licence)
    pip install librosa joblib                                       # its extra imports
    python scripts/make_training_step_fixtures.py /tmp/MP-SENet

Written: `g_00000000`, `do_00000000` (initial state, original format), `g_00000001`, `do_00000001` (after one
step), `g_00000003` (after three), `config.json` (the original config with the reduced sizes) and `io.safetensors`:
the full utterances, the batch, and per step the PESQ targets, every loss term and (after three steps) the
discriminator's state. Before each step the torch RNG is seeded with `1000 + step` (the discriminator's dropout).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import soundfile as sf
import torch
import torch.nn.functional as F
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
    sys.path.insert(0, str(Path(args.original).resolve()))
    from dataset import Dataset, mag_pha_istft, mag_pha_stft
    from env import AttrDict
    from models.discriminator import MetricDiscriminator, batch_pesq
    from models.model import MPNet, phase_losses

    h = AttrDict({**json.loads((Path(args.original) / "config.json").read_text()), **SIZES})
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
        dataset = Dataset(names, f"{tmp}/clean", f"{tmp}/noisy", h.segment_size, h.sampling_rate, split=True,
                          shuffle=False, n_cache_reuse=0)  # fmt: skip
        items = [dataset[i] for i in range(len(names))]
    clean_audio = torch.stack([item[0] for item in items])
    noisy_audio = torch.stack([item[1] for item in items])
    tensors["batch_clean"], tensors["batch_noisy"] = clean_audio, noisy_audio
    clean_audio, noisy_audio = clean_audio.double(), noisy_audio.double()

    torch.set_default_dtype(torch.float64)
    torch.manual_seed(h.seed)
    generator = MPNet(h, num_tsblocks=NUM_TSBLOCKS)
    discriminator = MetricDiscriminator(dim=DISCRIMINATOR_DIM)
    with torch.no_grad():  # float32-representable, so that the float32 files hold the exact initial state
        for value in [*generator.state_dict().values(), *discriminator.state_dict().values()]:
            value.copy_(value.float())
    optim_g = torch.optim.AdamW(generator.parameters(), h.learning_rate, betas=[h.adam_b1, h.adam_b2])
    optim_d = torch.optim.AdamW(discriminator.parameters(), h.learning_rate, betas=[h.adam_b1, h.adam_b2])
    # As train.py on a fresh run (they are stepped once per epoch; the three steps stay within the first).
    torch.optim.lr_scheduler.ExponentialLR(optim_g, gamma=h.lr_decay, last_epoch=-1)
    torch.optim.lr_scheduler.ExponentialLR(optim_d, gamma=h.lr_decay, last_epoch=-1)

    def save(steps: int, with_discriminator: bool = True) -> None:
        torch.save({"generator": to_float32(generator.state_dict())}, output / f"g_{steps:08d}")
        if with_discriminator:
            state = {"discriminator": discriminator.state_dict(), "optim_g": optim_g.state_dict(),
                     "optim_d": optim_d.state_dict(), "steps": steps, "epoch": 0}  # fmt: skip
            torch.save(to_float32(state), output / f"do_{steps:08d}")

    save(0)
    generator.train()
    discriminator.train()
    one_labels = torch.ones(h.batch_size)
    for step in range(STEPS):
        torch.manual_seed(step_seed(step))
        # From here on, train.py's loop body (device transfers and logging left out).
        clean_mag, clean_pha, clean_com = mag_pha_stft(clean_audio, h.n_fft, h.hop_size, h.win_size, h.compress_factor)
        noisy_mag, noisy_pha, _ = mag_pha_stft(noisy_audio, h.n_fft, h.hop_size, h.win_size, h.compress_factor)
        mag_g, pha_g, com_g = generator(noisy_mag, noisy_pha)
        audio_g = mag_pha_istft(mag_g, pha_g, h.n_fft, h.hop_size, h.win_size, h.compress_factor)
        mag_g_hat, _, com_g_hat = mag_pha_stft(audio_g, h.n_fft, h.hop_size, h.win_size, h.compress_factor)
        pesq_target = batch_pesq(list(clean_audio.cpu().numpy()), list(audio_g.detach().cpu().numpy()))

        optim_d.zero_grad()
        metric_r = discriminator(clean_mag, clean_mag)
        metric_g = discriminator(clean_mag, mag_g_hat.detach())
        loss_disc_r = F.mse_loss(one_labels, metric_r.flatten())
        loss_disc_g = F.mse_loss(pesq_target, metric_g.flatten()) if pesq_target is not None else torch.tensor(0.0)
        loss_disc_all = loss_disc_r + loss_disc_g
        loss_disc_all.backward()
        gradients = {f"discriminator.{k}": p.grad.clone() for k, p in discriminator.named_parameters()}
        optim_d.step()

        optim_g.zero_grad()
        loss_mag = F.mse_loss(clean_mag, mag_g)
        loss_ip, loss_gd, loss_iaf = phase_losses(clean_pha, pha_g)
        loss_pha = loss_ip + loss_gd + loss_iaf
        loss_com = F.mse_loss(clean_com, com_g) * 2
        loss_stft = F.mse_loss(com_g, com_g_hat) * 2
        loss_time = F.l1_loss(clean_audio, audio_g)
        metric_g = discriminator(clean_mag, mag_g_hat)
        loss_metric = F.mse_loss(metric_g.flatten(), one_labels)
        loss_gen_all = (
            loss_mag * 0.9 + loss_pha * 0.3 + loss_com * 0.1 + loss_stft * 0.1 + loss_metric * 0.05 + loss_time * 0.2
        )
        loss_gen_all.backward()
        gradients.update({f"generator.{k}": p.grad.clone() for k, p in generator.named_parameters()})
        optim_g.step()

        values = {
            "pesq_target": pesq_target if pesq_target is not None else torch.full((h.batch_size,), float("nan")),
            "discriminator_real": loss_disc_r,
            "discriminator_fake": loss_disc_g,
            "discriminator": loss_disc_all,
            "magnitude": loss_mag,
            "instantaneous_phase": loss_ip,
            "group_delay": loss_gd,
            "instantaneous_frequency": loss_iaf,
            "phase": loss_pha,
            "complex": loss_com,
            "consistency": loss_stft,
            "time": loss_time,
            "metric": loss_metric,
            "total": loss_gen_all,
        }
        for name, value in values.items():
            tensors[f"step_{step + 1}/{name}"] = torch.as_tensor(value).detach().clone().float()
        if step == 0:
            tensors.update({f"step_1/grad.{name}": value for name, value in gradients.items()})
            save(1)
    save(STEPS, with_discriminator=False)
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
