"""The STFT pair of the model and its training, in PyTorch, with MP-SENet's conventions (see [`spectral`])."""

from __future__ import annotations

import torch

from .spectral import complex_spectrum, compressed_magnitude_phase


def mag_phase_stft(
    waveform: torch.Tensor,
    n_fft: int,
    hop_length: int,
    win_length: int,
    compress_factor: float,
    window: torch.Tensor | None = None,
    causal: bool = False,
    epsilons: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compressed magnitude, phase and complex spectrum of `waveform`.

    Args:
        waveform: `(batch, samples)` float waveform.
        window: periodic Hann window of `win_length` (made on the fly when omitted).
        causal: pad the centred frames at the edges with zeros, as a stream does (it cannot reflect the end
            before it has arrived), instead of reflecting the signal as MP-SENet does.
        epsilons: MP-SENet's epsilons in the magnitude and phase (see `compressed_magnitude_phase`).

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
        pad_mode="constant" if causal else "reflect",
        normalized=False,
        return_complex=True,
    )
    magnitude, phase = compressed_magnitude_phase(spec.real, spec.imag, compress_factor, epsilons)
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
    spec = complex_spectrum(magnitude, phase, compress_factor)
    return torch.istft(
        spec, n_fft, hop_length=hop_length, win_length=win_length, window=window, center=True, length=length
    )
