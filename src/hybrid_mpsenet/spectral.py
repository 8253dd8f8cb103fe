"""MP-SENet's spectral conventions (power-law compressed magnitude and phase) and the enhancement controls, on numpy
arrays and PyTorch tensors alike, plus the numpy STFT pair of the PyTorch-free runtime. Importing this module does
not import PyTorch: a function given tensors uses the `torch` module that made them."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

Array = Any  # a numpy array or a torch tensor; the functions below return the same kind


def array_namespace(array: Array):
    """The module whose functions apply to `array`: `numpy` for numpy arrays, `torch` for tensors."""
    return sys.modules[type(array).__module__.partition(".")[0]]


def compressed_magnitude_phase(
    real: Array, imag: Array, compress_factor: float, epsilons: bool = True
) -> tuple[Array, Array]:
    """MP-SENet's compressed magnitude `|X| ** compress_factor` and phase of a spectrum given as its real and
    imaginary parts (any shape). With `epsilons`, those of the original implementation, which keep sqrt and atan2
    differentiable at zero; without, the exact `|X|` and `angle(X)` (MUSE's convention), whose gradients at an exact
    zero (a silent frame of enhanced audio in the training losses) are taken as zero instead of NaN."""
    xp = array_namespace(real)
    if not epsilons:
        power = real * real + imag * imag
        # Zero bins go through safe inputs (power 1, the point (1, 0)) and are then set to 0, so that no NaN from
        # pow or atan2 at the origin reaches the gradient; every other value is computed exactly as written.
        nonzero = power > 0
        magnitude = xp.where(nonzero, xp.sqrt(xp.where(nonzero, power, 1.0)) ** compress_factor, 0.0)
        return magnitude, xp.arctan2(xp.where(nonzero, imag, 0.0), xp.where(nonzero, real, 1.0))
    magnitude = xp.sqrt(real * real + imag * imag + 1e-9) ** compress_factor
    return magnitude, xp.arctan2(imag + 1e-10, real + 1e-5)


def complex_spectrum(magnitude: Array, phase: Array, compress_factor: float) -> Array:
    """The complex (uncompressed) spectrum of a compressed magnitude and a phase, any shape."""
    xp = array_namespace(magnitude)
    linear = magnitude ** (1.0 / compress_factor)
    return linear * xp.cos(phase) + 1j * (linear * xp.sin(phase))


def hann_window(win_length: int, n_fft: int) -> np.ndarray:
    """The periodic Hann window of `win_length` (`torch.hann_window`'s), zero-padded on both sides to `n_fft` as
    `torch.stft` centres it: `(n_fft,)` float32."""
    window = np.zeros(n_fft, np.float32)
    start = (n_fft - win_length) // 2
    window[start : start + win_length] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win_length) / win_length)
    return window


def stft(
    waveform: np.ndarray,
    n_fft: int,
    hop_length: int,
    window: np.ndarray,
    compress_factor: float,
    causal: bool,
    epsilons: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Numpy counterpart of `mag_phase_stft` (centred frames, reflected at the edges, or zero-padded for a causal
    model): `(batch, samples)` float32 in, compressed magnitude and phase `(batch, freq, samples // hop + 1)` out.
    `window` from [`hann_window`]."""
    pad = n_fft // 2
    padded = np.pad(waveform, ((0, 0), (pad, pad)), mode="constant" if causal else "reflect")
    frames = sliding_window_view(padded, n_fft, axis=-1)[:, ::hop_length]  # (batch, frames, n_fft)
    spectrum = np.fft.rfft(frames * window.astype(np.float64), axis=-1).swapaxes(1, 2)
    magnitude, phase = compressed_magnitude_phase(spectrum.real, spectrum.imag, compress_factor, epsilons)
    return magnitude.astype(np.float32), phase.astype(np.float32)


def istft(
    magnitude: np.ndarray,
    phase: np.ndarray,
    n_fft: int,
    hop_length: int,
    window: np.ndarray,
    compress_factor: float,
    length: int,
) -> np.ndarray:
    """Numpy counterpart of `mag_phase_istft`: compressed magnitude and phase `(batch, freq, frames)` in, the
    `(batch, length)` float32 waveform out (overlap-add divided by the summed squared windows, as `torch.istft`)."""
    frames = np.fft.irfft(complex_spectrum(magnitude, phase, compress_factor).swapaxes(1, 2), n_fft, axis=-1)
    count = frames.shape[1]
    total = n_fft + (count - 1) * hop_length
    signal = np.zeros((frames.shape[0], total))
    envelope = np.zeros(total)
    squared_window = window.astype(np.float64) ** 2
    for index in range(count):
        start = index * hop_length
        signal[:, start : start + n_fft] += frames[:, index] * window
        envelope[start : start + n_fft] += squared_window
    pad = n_fft // 2
    signal = signal[:, pad : pad + length] / np.where(envelope > 1e-11, envelope, 1.0)[pad : pad + length]
    if signal.shape[1] < length:
        signal = np.pad(signal, ((0, 0), (0, length - signal.shape[1])))
    return signal.astype(np.float32)


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


def pcs_exponents(n_fft: int, sampling_rate: int) -> np.ndarray:
    """PCS exponents `(n_fft // 2 + 1,)` float32 for this STFT: each bin takes the exponent of the PCS400 band at its
    frequency (the table itself for n_fft 400 at 16 kHz); bins above 8 kHz take the last band's."""
    table = np.ones(PCS_BANDS[-1][1], np.float32)
    for start, stop, exponent in PCS_BANDS:
        table[start:stop] = exponent
    bins = np.arange(n_fft // 2 + 1) * (sampling_rate / n_fft / PCS_BAND_HZ)
    return table[np.minimum(np.round(bins).astype(np.int64), len(table) - 1)]


def perceptual_contrast_stretching(magnitude: Array, exponents: Array, compress_factor: float) -> Array:
    """Stretch an enhanced compressed magnitude `(batch, freq, frames)`: `expm1(w(f) * log1p(|S|))` on the
    uncompressed magnitude `|S|`, recompressed. Quiet bins stay quiet and loud ones grow, most between 400 Hz and
    4.4 kHz (SEMamba's PCS post-filter; `exponents` `(freq,)` from [`pcs_exponents`], of `magnitude`'s kind)."""
    xp = array_namespace(magnitude)
    linear = magnitude ** (1.0 / compress_factor)
    return xp.expm1(exponents[:, None] * xp.log1p(linear)) ** compress_factor


def attenuation_floor(
    magnitude: Array,
    phase: Array,
    noisy_magnitude: Array,
    noisy_phase: Array,
    limit_db: float,
    compress_factor: float,
) -> tuple[Array, Array]:
    """Limit the attenuation to `limit_db` in every time-frequency bin: where the enhanced bin is more than
    `limit_db` below the noisy one, it becomes the noisy bin attenuated by exactly `limit_db` (its magnitude and
    phase), a floor mixed from the input (DeepFilterNet's attenuation limit, per bin). All arguments are compressed
    magnitudes or phases `(batch, freq, frames)`; returns the limited magnitude and phase."""
    xp = array_namespace(magnitude)
    floor = noisy_magnitude * 10.0 ** (-limit_db * compress_factor / 20.0)
    below = magnitude < floor
    return xp.where(below, floor, magnitude), xp.where(below, noisy_phase, phase)


def apply_controls(
    magnitude: Array,
    phase: Array,
    noisy_magnitude: Array,
    noisy_phase: Array,
    compress_factor: float,
    attenuation_limit_db: float | None = None,
    exponents: Array | None = None,
    level: Array | None = None,
) -> tuple[Array, Array]:
    """The enhancement controls on an enhanced compressed magnitude and phase `(batch, freq, frames)`: with
    `exponents` (see [`pcs_exponents`]), perceptual contrast stretching at the input's own level (`level` `(batch,)`:
    the input's amplitude per unit of the enhanced signal's) rescaled to the enhanced energy, so the loudness stays;
    then the attenuation limit against the noisy spectrum. Returns the new magnitude and phase."""
    xp = array_namespace(magnitude)
    if exponents is not None:
        scale = level[:, None, None] ** compress_factor
        stretched = perceptual_contrast_stretching(magnitude * scale, exponents, compress_factor) / scale
        energy = (magnitude ** (2 / compress_factor)).sum(-1).sum(-1)
        stretched_energy = (stretched ** (2 / compress_factor)).sum(-1).sum(-1)
        gain = (energy / xp.clip(stretched_energy, 1e-20, None)) ** 0.5
        magnitude = stretched * gain[:, None, None] ** compress_factor
    if attenuation_limit_db is not None:
        magnitude, phase = attenuation_floor(
            magnitude, phase, noisy_magnitude, noisy_phase, attenuation_limit_db, compress_factor
        )
    return magnitude, phase


def enhance_frames(
    frames: Array,
    window: Array,
    network: Callable[[Array, Array], tuple[Array, Array]],
    compress_factor: float,
    attenuation_limit_db: float | None,
) -> Array:
    """One step of a stream: `(channels, count, n_fft)` analysis frames through FFT, `network` (compressed
    magnitude and phase `(channels, freq, count)` in, enhanced ones out) and the attenuation limit, back to windowed
    inverse FFTs `(channels, count, n_fft)` ready for overlap-add. `window` `(n_fft,)` as [`hann_window`]."""
    xp = array_namespace(frames)
    n_fft = frames.shape[-1]
    spectrum = xp.fft.rfft(frames * window).swapaxes(1, 2)
    magnitude, phase = compressed_magnitude_phase(spectrum.real, spectrum.imag, compress_factor)
    enhanced, enhanced_phase = network(magnitude, phase)
    enhanced, enhanced_phase = apply_controls(
        enhanced, enhanced_phase, magnitude, phase, compress_factor, attenuation_limit_db
    )
    return xp.fft.irfft(complex_spectrum(enhanced, enhanced_phase, compress_factor).swapaxes(1, 2), n_fft) * window
