"""STFT with MP-SENet's conventions: power-law compressed magnitude and phase, and the inverse."""

from __future__ import annotations

import torch


def compressed_magnitude_phase(
    real: torch.Tensor, imag: torch.Tensor, compress_factor: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """MP-SENet's compressed magnitude `|X| ** compress_factor` and phase of a spectrum given as its real and
    imaginary parts (any shape). The epsilons are the original implementation's: they keep sqrt and atan2
    differentiable at zero."""
    magnitude = torch.sqrt(real.square() + imag.square() + 1e-9).pow(compress_factor)
    return magnitude, torch.atan2(imag + 1e-10, real + 1e-5)


def mag_phase_stft(
    waveform: torch.Tensor,
    n_fft: int,
    hop_length: int,
    win_length: int,
    compress_factor: float,
    window: torch.Tensor | None = None,
    causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Compressed magnitude, phase and complex spectrum of `waveform`.

    Args:
        waveform: `(batch, samples)` float waveform.
        window: periodic Hann window of `win_length` (made on the fly when omitted).
        causal: pad the centred frames at the edges with zeros, as a stream does (it cannot reflect the end
            before it has arrived), instead of reflecting the signal as MP-SENet does.

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
    magnitude, phase = compressed_magnitude_phase(spec.real, spec.imag, compress_factor)
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


# SEMamba's perceptual contrast stretching (PCS400, RoyChao19477/SEMamba `models/pcs400.py`, MIT licence): an
# exponent on log1p of the magnitude per 40-Hz band of a 400-point STFT at 16 kHz, as (first bin, last bin + 1,
# exponent); bins 10-109 (400-4,360 Hz) are stretched most.
PCS_BANDS = (
    (0, 3, 1.0),
    (3, 5, 1.070175439),
    (5, 8, 1.182456140),
    (8, 10, 1.287719298),
    (10, 110, 1.4),
    (110, 130, 1.322807018),
    (130, 160, 1.238596491),
    (160, 190, 1.161403509),
    (190, 201, 1.077192982),
)
PCS_BAND_HZ = 40.0


def pcs_exponents(n_fft: int, sampling_rate: int) -> torch.Tensor:
    """PCS exponents `(n_fft // 2 + 1,)` for this STFT: each bin takes the exponent of the PCS400 band at its
    frequency (the table itself for n_fft 400 at 16 kHz); bins above 8 kHz take the last band's."""
    table = torch.ones(PCS_BANDS[-1][1])
    for start, stop, exponent in PCS_BANDS:
        table[start:stop] = exponent
    bins = torch.arange(n_fft // 2 + 1) * (sampling_rate / n_fft / PCS_BAND_HZ)
    return table[bins.round().long().clamp(max=len(table) - 1)]


def perceptual_contrast_stretching(magnitude: torch.Tensor, exponents: torch.Tensor, compress_factor: float):
    """Stretch an enhanced compressed magnitude `(batch, freq, frames)`: `expm1(w(f) * log1p(|S|))` on the
    uncompressed magnitude `|S|`, recompressed. Quiet bins stay quiet and loud ones grow, most between 400 Hz and
    4.4 kHz (SEMamba's PCS post-filter; `exponents` from [`pcs_exponents`])."""
    linear = magnitude.pow(1.0 / compress_factor)
    stretched = torch.expm1(exponents[:, None].to(linear) * torch.log1p(linear))
    return stretched.pow(compress_factor)


def attenuation_floor(
    magnitude: torch.Tensor,
    phase: torch.Tensor,
    noisy_magnitude: torch.Tensor,
    noisy_phase: torch.Tensor,
    limit_db: float,
    compress_factor: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Limit the attenuation to `limit_db` in every time-frequency bin: where the enhanced bin is more than
    `limit_db` below the noisy one, it becomes the noisy bin attenuated by exactly `limit_db` (its magnitude and
    phase), a floor mixed from the input (DeepFilterNet's attenuation limit, per bin). All tensors are compressed
    magnitudes or phases `(batch, freq, frames)`; returns the limited magnitude and phase."""
    floor = noisy_magnitude * 10.0 ** (-limit_db * compress_factor / 20.0)
    below = magnitude < floor
    return torch.where(below, floor, magnitude), torch.where(below, noisy_phase, phase)
