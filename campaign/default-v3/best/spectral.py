"""STFT with MP-SENet's conventions: power-law compressed magnitude and phase, and the inverse."""

from __future__ import annotations

import torch


def mag_phase_stft(
    waveform: torch.Tensor,
    n_fft: int,
    hop_length: int,
    win_length: int,
    compress_factor: float,
    window: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compressed magnitude, phase and complex spectrum of `waveform`.

    Args:
        waveform: `(batch, samples)` float waveform.
        window: periodic Hann window of `win_length` (made on the fly when omitted).

    Returns:
        magnitude `(batch, freq, frames)` raised to `compress_factor`, phase `(batch, freq, frames)` in (-pi, pi],
        and the compressed complex spectrum `(batch, freq, frames, 2)`; `frames = samples // hop_length + 1`.
    """
    if window is None:
        window = torch.hann_window(win_length, device=waveform.device)
    spec = torch.stft(
        waveform,
        n_fft,
        hop_length=hop_length,
        win_length=win_length,
        window=window,
        center=True,
        pad_mode="reflect",
        normalized=False,
        return_complex=True,
    )
    spec = torch.view_as_real(spec)
    # The epsilons are the original implementation's: they keep sqrt and atan2 differentiable at zero.
    magnitude = torch.sqrt(spec.pow(2).sum(-1) + 1e-9)
    phase = torch.atan2(spec[..., 1] + 1e-10, spec[..., 0] + 1e-5)
    magnitude = magnitude.pow(compress_factor)
    complex_spec = torch.stack((magnitude * torch.cos(phase), magnitude * torch.sin(phase)), dim=-1)
    return magnitude, phase, complex_spec


def mag_phase_istft(
    magnitude: torch.Tensor,
    phase: torch.Tensor,
    n_fft: int,
    hop_length: int,
    win_length: int,
    compress_factor: float,
    window: torch.Tensor | None = None,
    length: int | None = None,
) -> torch.Tensor:
    """Waveform `(batch, samples)` from a compressed magnitude and a phase, both `(batch, freq, frames)`."""
    if window is None:
        window = torch.hann_window(win_length, device=magnitude.device)
    magnitude = magnitude.pow(1.0 / compress_factor)
    spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
    return torch.istft(
        spec, n_fft, hop_length=hop_length, win_length=win_length, window=window, center=True, length=length
    )
