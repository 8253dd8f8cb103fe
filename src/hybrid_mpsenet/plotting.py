"""Spectrogram plots for comparing noisy and enhanced speech (needs the `demo` extra: matplotlib)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def spectrogram_figure(waveforms: dict[str, np.ndarray], sampling_rate: int, n_fft: int = 512, hop_length: int = 128):
    """A matplotlib figure with one log-magnitude spectrogram per waveform, stacked, on a shared colour scale.

    Args:
        waveforms: title -> mono waveform `(samples,)`, e.g. `{"noisy": x, "enhanced": y}`.
        sampling_rate: rate of the waveforms in Hz (sets the axes).

    Returns:
        `matplotlib.figure.Figure` (drawn with the non-interactive Agg backend; save it or hand it to a UI).
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("Plotting needs matplotlib: pip install 'hybrid-mpsenet[demo]'.") from error
    import torch

    window = torch.hann_window(n_fft)
    spectra = {}
    for title, audio in waveforms.items():
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        if audio.shape[0] < n_fft:
            audio = np.pad(audio, (0, n_fft - audio.shape[0]))
        spec = torch.stft(torch.from_numpy(audio), n_fft, hop_length, window=window, return_complex=True).abs()
        spectra[title] = 20 * np.log10(spec.numpy() + 1e-8)
    top = max(float(s.max()) for s in spectra.values())
    figure = Figure(figsize=(9, 2.6 * len(spectra)), layout="constrained")
    axes = figure.subplots(len(spectra), 1, squeeze=False)[:, 0]
    for axis, (title, db) in zip(axes, spectra.items(), strict=True):
        extent = (0, db.shape[1] * hop_length / sampling_rate, 0, sampling_rate / 2000)
        image = axis.imshow(db, origin="lower", aspect="auto", extent=extent, vmin=top - 80, vmax=top, cmap="magma")
        axis.set_title(title)
        axis.set_ylabel("kHz")
    axes[-1].set_xlabel("seconds")
    figure.colorbar(image, ax=list(axes), label="dB")
    return figure


def save_figure(figure, path: str | Path, dpi: int = 80) -> Path:
    """Write a matplotlib figure as a PNG at `path` (its folder created), atomically: a temporary file renamed, so
    an interrupted write never leaves a truncated image. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.tmp")
    figure.savefig(partial, dpi=dpi, format="png")
    partial.replace(path)
    return path
