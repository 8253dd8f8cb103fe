"""Audio input/output for enhancement and training: sample formats, validation, resampling, atomic writes."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .limits import MAX_SAMPLING_RATE, MIN_SAMPLING_RATE
from .ownership import WRITTEN_BY, check_replaceable_file, new_file_mode, publish_file, temporary_name

logger = logging.getLogger(__name__)

# A sample this close to full scale counts as clipped; this share of clipped samples earns a warning.
CLIP_LEVEL = 0.999
CLIP_WARN_FRACTION = 1e-3
# Chunked enhancement: chunk length and crossfade (s) unless the caller chooses. The bundled model scores the same
# on VoiceBank with 2-s and 4-s chunks (PESQ 2.311 and 2.307), and 2-s chunks take about 60 MiB less at the peak.
DEFAULT_CHUNK_SECONDS = 2.0
DEFAULT_OVERLAP_SECONDS = 0.5


class AudioError(ValueError):
    """An audio input that cannot be enhanced; the message says which file or array and why."""


def check_sampling_rate(sampling_rate: object, name: str = "sampling_rate") -> int:
    """`sampling_rate` as an int, or a `ValueError` saying what was received and what is expected."""
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, float, np.integer, np.floating)):
        raise AudioError(f"{name} must be a number of Hz (an int such as 16000), got {sampling_rate!r}.")
    if not math.isfinite(sampling_rate) or sampling_rate != int(sampling_rate):
        raise AudioError(f"{name} must be a whole number of Hz, got {sampling_rate!r}.")
    if not MIN_SAMPLING_RATE <= sampling_rate <= MAX_SAMPLING_RATE:
        raise AudioError(
            f"{name} of {int(sampling_rate)} Hz is outside the supported {MIN_SAMPLING_RATE}-{MAX_SAMPLING_RATE} Hz; "
            "check the file header or the argument."
        )
    return int(sampling_rate)


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
        handle = sf.SoundFile(os.fsencode(path))  # bytes: soundfile cannot encode names that are not UTF-8
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioError(f"{path}: not a readable audio file ({error}).") from error
    if handle.frames == 0:
        handle.close()
        raise AudioError(f"{path}: the file contains no samples.")
    try:
        check_sampling_rate(handle.samplerate, f"{path}: the sampling rate")
    except AudioError:
        handle.close()
        raise
    if "(should be" in handle.extra_info:  # libsndfile's note when a chunk size disagrees with the file length
        logger.warning(
            "%s looks truncated (its header promises more data than the file holds); using the %d frames present.",
            path,
            handle.frames,
        )
    return handle


def read_blocks(handle: sf.SoundFile, block_frames: int) -> Iterator[np.ndarray]:
    """Yield `(frames, channels)` float32 blocks from the start of an open file.

    Formats libsndfile cannot seek in (XI) are read from a fresh handle, so every pass starts at frame 0.
    """
    with contextlib.ExitStack() as stack:
        source = handle
        if handle.seekable():
            handle.seek(0)
        else:
            source = stack.enter_context(sf.SoundFile(handle.name))  # the same (bytes) name
        done = 0
        try:
            for block in source.blocks(blocksize=block_frames, frames=source.frames, dtype="float32", always_2d=True):
                done += len(block)
                yield block
        except (sf.LibsndfileError, RuntimeError) as error:
            raise AudioError(f"{os.fsdecode(handle.name)}: reading failed at frame {done} ({error}).") from error


# Extensions whose soundfile format name differs from the extension itself.
FORMAT_ALIASES = {"AIF": "AIFF", "OGA": "OGG", "OPUS": "OGG"}
# Extensions that fix the subtype too: `.opus` is Opus in an Ogg container, not Vorbis.
EXTENSION_SUBTYPES = {"OPUS": "OPUS"}
# What the encoders accept, checked before libsndfile is asked: outside these the encoders crash the process
# (libvorbis at 256 kHz and above) or fail obscurely, so they are refused by these bounds instead of probed.
ENCODER_RATES = {
    "VORBIS": range(8_000, 192_001),
    "OPUS": (8_000, 12_000, 16_000, 24_000, 48_000),
}
ENCODER_CHANNELS = {"VORBIS": 255, "OPUS": 255}
# Subtypes that store samples beyond full scale; every other output is clipped to [-1, 1] first (LAME aborts on
# huge floats, integer PCM wraps).
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")


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
    if name == "SD2":  # libsndfile keeps its header in a sidecar `._NAME`, which a rename would leave behind
        raise AudioError(f"{path}: Sound Designer II files cannot be written safely; choose another format.")
    return name


def default_subtype(path: str | Path) -> str:
    """The subtype an output named `path` gets when neither the input's nor the caller's applies."""
    extension = Path(path).suffix.lstrip(".").upper()
    file_format = output_format(path)
    return EXTENSION_SUBTYPES.get(extension) or sf.default_subtype(file_format) or "PCM_16"


@functools.cache
def write_problem(file_format: str, subtype: str, samplerate: int, channels: int) -> str | None:
    """Why libsndfile cannot write this combination faithfully, or `None` if it can.

    Encoder bounds are checked first (some encoders crash natively outside them); then a short silent file is
    written to memory and read back: `sf.check_format` accepts pairs libsndfile only reads (MP3 data in a WAV
    container), and some formats silently store another rate (WVE 8 kHz, XI 44.1 kHz).
    """
    if not sf.check_format(file_format, subtype):
        return f"{file_format} cannot store {subtype} samples"
    if subtype in ENCODER_RATES and samplerate not in ENCODER_RATES[subtype]:
        rates = ENCODER_RATES[subtype]
        allowed = f"{rates.start}-{rates.stop - 1} Hz" if isinstance(rates, range) else ", ".join(map(str, rates))
        return f"the {subtype} encoder takes only {allowed}"
    if channels > ENCODER_CHANNELS.get(subtype, channels):
        return f"the {subtype} encoder takes at most {ENCODER_CHANNELS[subtype]} channels"
    buffer = io.BytesIO()
    raw = {"samplerate": samplerate, "channels": channels, "subtype": subtype} if file_format == "RAW" else {}
    try:
        with sf.SoundFile(buffer, "w", samplerate, channels, subtype=subtype, format=file_format) as handle:
            handle.write(np.zeros((4096, channels), np.float32))  # a whole MP3 frame / Ogg page
        buffer.seek(0)
        with sf.SoundFile(buffer, format=file_format if raw else None, **raw) as stored:
            kept = (stored.samplerate, stored.channels)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as error:
        return getattr(error, "error_string", str(error)).removeprefix("Error : ").rstrip(".")
    if kept != (samplerate, channels):
        return f"the format stores {kept[0]} Hz, {kept[1]} channels instead"
    return None


def output_subtype(in_subtype: str, path: str | Path, samplerate: int, channels: int) -> str:
    """The input's subtype if the output `path`'s format can store it (and its extension does not fix one), else
    the extension's default."""
    extension = Path(path).suffix.lstrip(".").upper()
    if (
        extension not in EXTENSION_SUBTYPES
        and write_problem(output_format(path), in_subtype, samplerate, channels) is None
    ):
        return in_subtype
    return default_subtype(path)


def audio_is_ours(path: Path) -> bool:
    """Whether the audio file `path` carries this package's `software` tag (see [`atomic_audio_writer`])."""
    try:
        with sf.SoundFile(os.fsencode(path)) as handle:
            return handle.software.startswith(WRITTEN_BY)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return False


def check_output_audio(path: str | Path, overwrite: bool) -> None:
    """Refuse early (before any work) an output path that exists and may not be replaced; see [`ownership`]."""
    check_replaceable_file(Path(path), overwrite, audio_is_ours, "output")


@contextlib.contextmanager
def atomic_audio_writer(
    path: str | Path, samplerate: int, channels: int, subtype: str | None = None, overwrite: bool = False
) -> Iterator[sf.SoundFile]:
    """Yield a `SoundFile` writing to a temporary file beside `path`, moved to `path` only on success.

    The file is tagged (`software`: hybrid-mpsenet) where the format holds tags. A new `path` is created
    exclusively; an existing one is replaced only with `overwrite` and if it carries the tag (see [`ownership`]).
    """
    path = Path(path)
    file_format = output_format(path)
    subtype = subtype or default_subtype(path)
    problem = write_problem(file_format, subtype, samplerate, channels)
    if problem:
        raise AudioError(
            f"{path}: cannot write {file_format} audio with {subtype} samples at {samplerate} Hz, {channels} "
            f"channel(s): {problem}. Choose another output format or --subtype."
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=temporary_name(path, "partial"), suffix=path.suffix, dir=path.parent)
    except OSError as error:
        raise AudioError(f"{path.parent}: cannot write the output here ({error.strerror}).") from error
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        tmp.chmod(new_file_mode())  # mkstemp makes it private; the output is an ordinary file
        try:
            with sf.SoundFile(
                os.fsencode(tmp), "w", samplerate, channels, subtype=subtype, format=file_format
            ) as handle:
                with contextlib.suppress(RuntimeError):  # formats without tags (AU, W64, RAW, MP3) cannot carry it
                    handle.software = WRITTEN_BY
                yield handle
        except (sf.LibsndfileError, RuntimeError) as error:
            free = shutil.disk_usage(path.parent).free
            raise AudioError(
                f"{path}: writing failed ({error}); {free // 2**20} MiB are free on that disk, so it may be full "
                "or not writable. Nothing was replaced."
            ) from error
        publish_file(tmp, path, overwrite, audio_is_ours, "output")
    finally:
        tmp.unlink(missing_ok=True)
