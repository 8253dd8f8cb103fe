"""Audio input/output for enhancement and training: sample formats, validation, resampling, atomic writes."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

logger = logging.getLogger(__name__)

# A sample this close to full scale counts as clipped; this share of clipped samples earns a warning.
CLIP_LEVEL = 0.999
CLIP_WARN_FRACTION = 1e-3


class AudioError(ValueError):
    """An audio input that cannot be enhanced; the message says which file or array and why."""


def to_float(samples: np.ndarray) -> np.ndarray:
    """Float32 samples in [-1, 1] from float or integer PCM samples of any shape."""
    if np.issubdtype(samples.dtype, np.floating):
        return samples.astype(np.float32, copy=False)
    if samples.dtype == np.uint8:
        return (samples.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(samples.dtype, np.signedinteger):
        return samples.astype(np.float32) / float(-np.iinfo(samples.dtype).min)
    raise AudioError(f"Unsupported sample type {samples.dtype}; expected float or integer PCM samples.")


def from_float(samples: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Inverse of [`to_float`]: samples in `dtype`, clipped to its range for integer types."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.floating):
        return samples.astype(dtype, copy=False)
    if dtype == np.uint8:
        return np.clip(np.round(samples * 128.0 + 128.0), 0, 255).astype(np.uint8)
    info = np.iinfo(dtype)
    return np.clip(np.round(samples * float(-info.min)), info.min, info.max).astype(dtype)


class StreamResampler:
    """Resamples `(samples, channels)` blocks one after another, exactly like one call on the whole signal.

    A thin wrapper over `soxr.ResampleStream` (VHQ quality) that passes blocks through when the rates are equal.
    """

    def __init__(self, in_rate: int, out_rate: int, channels: int):
        self.stream = None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, channels, quality="VHQ")

    def __call__(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        if self.stream is None:
            return block
        return self.stream.resample_chunk(np.ascontiguousarray(block, dtype=np.float32), last=last)


def open_audio(path: str | Path) -> sf.SoundFile:
    """Open an audio file for reading, turning libsndfile's errors into an [`AudioError`] naming the file."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file.")
    try:
        handle = sf.SoundFile(path)
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioError(f"{path}: not a readable audio file ({error}).") from error
    if handle.frames == 0:
        handle.close()
        raise AudioError(f"{path}: the file contains no samples.")
    return handle


def read_blocks(handle: sf.SoundFile, block_frames: int) -> Iterator[np.ndarray]:
    """Yield `(frames, channels)` float32 blocks from the start of an open file."""
    handle.seek(0)
    try:
        yield from handle.blocks(blocksize=block_frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as error:
        raise AudioError(f"{handle.name}: reading failed at frame {handle.tell()} ({error}).") from error


# Extensions whose soundfile format name differs from the extension itself.
FORMAT_ALIASES = {"AIF": "AIFF", "OGA": "OGG", "OPUS": "OGG"}


def output_format(path: str | Path) -> str:
    """The soundfile format name for `path`'s extension, or an [`AudioError`] listing the known ones."""
    extension = Path(path).suffix.lstrip(".").upper()
    name = FORMAT_ALIASES.get(extension, extension)
    formats = sf.available_formats()
    if name not in formats:
        raise AudioError(
            f"{path}: unknown audio format '.{extension.lower()}'; use one of "
            f"{', '.join('.' + f.lower() for f in sorted(formats))}."
        )
    return name


def output_subtype(in_subtype: str, out_format: str) -> str:
    """The input's subtype if the output format can store it, else the format's default."""
    if sf.check_format(out_format, in_subtype):
        return in_subtype
    return sf.default_subtype(out_format)


@contextlib.contextmanager
def atomic_audio_writer(
    path: str | Path, samplerate: int, channels: int, subtype: str | None = None
) -> Iterator[sf.SoundFile]:
    """Yield a `SoundFile` writing to a temporary file beside `path`, renamed to `path` only on success."""
    path = Path(path)
    file_format = output_format(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    except OSError as error:
        raise AudioError(f"{path.parent}: cannot write the output here ({error.strerror}).") from error
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with sf.SoundFile(tmp, "w", samplerate, channels, subtype=subtype, format=file_format) as handle:
            yield handle
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
