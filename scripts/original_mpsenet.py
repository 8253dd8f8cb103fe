"""The original MP-SENet training step (yxlu-0102/MP-SENet, MIT licence), run from a checkout of that repository:
its modules are imported from the checkout, never copied. Shared by `make_training_step_fixtures.py` (parity
fixtures) and `benchmark_training.py` (the side-by-side speed comparison).

The checkout needs the original's own imports: `pip install librosa joblib` beside this package's `train` extra.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F


def import_original(checkout: str | Path) -> SimpleNamespace:
    """The original's classes and functions, imported from `checkout`."""
    sys.path.insert(0, str(Path(checkout).resolve()))
    from dataset import Dataset, mag_pha_istft, mag_pha_stft
    from env import AttrDict
    from models.discriminator import MetricDiscriminator, batch_pesq
    from models.model import MPNet, phase_losses

    return SimpleNamespace(
        Dataset=Dataset,
        mag_pha_istft=mag_pha_istft,
        mag_pha_stft=mag_pha_stft,
        AttrDict=AttrDict,
        MetricDiscriminator=MetricDiscriminator,
        batch_pesq=batch_pesq,
        MPNet=MPNet,
        phase_losses=phase_losses,
    )


def original_step(
    original: SimpleNamespace,
    h,
    generator: torch.nn.Module,
    discriminator: torch.nn.Module,
    optim_g: torch.optim.Optimizer,
    optim_d: torch.optim.Optimizer,
    clean_audio: torch.Tensor,
    noisy_audio: torch.Tensor,
    on_gradients: Callable[[str, torch.nn.Module], None] | None = None,
) -> dict[str, torch.Tensor]:
    """One iteration of the body of the original `train.py` loop (device transfers and logging left out): the
    discriminator update on the re-STFT of the enhanced waveform, then the generator update.

    `on_gradients(name, module)` is called after each backward pass, before the optimiser step (fixtures record the
    gradients there). Returns the PESQ targets and every loss term.
    """
    one_labels = torch.ones(clean_audio.shape[0])
    clean_mag, clean_pha, clean_com = original.mag_pha_stft(
        clean_audio, h.n_fft, h.hop_size, h.win_size, h.compress_factor
    )
    noisy_mag, noisy_pha, _ = original.mag_pha_stft(noisy_audio, h.n_fft, h.hop_size, h.win_size, h.compress_factor)
    mag_g, pha_g, com_g = generator(noisy_mag, noisy_pha)
    audio_g = original.mag_pha_istft(mag_g, pha_g, h.n_fft, h.hop_size, h.win_size, h.compress_factor)
    mag_g_hat, _, com_g_hat = original.mag_pha_stft(audio_g, h.n_fft, h.hop_size, h.win_size, h.compress_factor)
    pesq_target = original.batch_pesq(list(clean_audio.cpu().numpy()), list(audio_g.detach().cpu().numpy()))

    optim_d.zero_grad()
    metric_r = discriminator(clean_mag, clean_mag)
    metric_g = discriminator(clean_mag, mag_g_hat.detach())
    loss_disc_r = F.mse_loss(one_labels, metric_r.flatten())
    loss_disc_g = F.mse_loss(pesq_target, metric_g.flatten()) if pesq_target is not None else torch.tensor(0.0)
    loss_disc_all = loss_disc_r + loss_disc_g
    loss_disc_all.backward()
    if on_gradients is not None:
        on_gradients("discriminator", discriminator)
    optim_d.step()

    optim_g.zero_grad()
    loss_mag = F.mse_loss(clean_mag, mag_g)
    loss_ip, loss_gd, loss_iaf = original.phase_losses(clean_pha, pha_g)
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
    if on_gradients is not None:
        on_gradients("generator", generator)
    optim_g.step()
    return {
        "pesq_target": pesq_target if pesq_target is not None else torch.full(one_labels.shape, float("nan")),
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
