"""Waveform-level enhancement for any backend of the family (PyTorch, ONNX Runtime): any rate, any channel count,
any length, in bounded memory. Nothing here imports PyTorch.

Long signals are enhanced in overlapping chunks aligned to the STFT hop, so a chunk's frames are the whole
signal's frames, and joined with a constant-power-sum raised-cosine crossfade. The RMS normalisation uses one
factor per channel computed over the whole signal (a first streaming pass), so chunks do not change the level.

Causal models need neither: they run through an [`EnhancementStream`] fed with chunk-sized blocks, which carries
every layer's state from block to block, so the whole signal gets one pass of the network in bounded memory and
the output is exactly what a live stream of the same signal gives.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from .audio import (
    CLIP_LEVEL,
    CLIP_WARN_FRACTION,
    DEFAULT_CHUNK_SECONDS,
    DEFAULT_OVERLAP_SECONDS,
    FLOAT_SUBTYPES,
    AudioError,
    StreamResampler,
    atomic_audio_writer,
    check_output_audio,
    check_sampling_rate,
    from_float,
    open_audio,
    output_format,
    output_subtype,
    read_blocks,
    to_float,
)
from .spectral import array_namespace
from .streaming import EnhancementStream, FrameEnhancer

logger = logging.getLogger(__name__)

# Files are read in blocks of this many seconds (fewer for many channels: at most READ_BLOCK_SAMPLES samples in
# all); with the chunk size and the channel group it bounds the memory of `enhance_file` whatever the file.
READ_BLOCK_SECONDS = 5.0
READ_BLOCK_SAMPLES = 2**22
# Channels enhanced together as one batch: the network's memory grows with it (about 28 MB per channel for a
# 2-s chunk of the default model), so a 1024-channel file runs in groups.
CHANNEL_GROUP = 8
# Beyond this many channels a 2-D array is more likely (samples, channels) than (channels, samples).
MAX_CHANNELS = 32


class _Chunker:
    """Enhances a signal fed block by block in overlapping chunks and yields the crossfaded result in order.

    Blocks and results are `(channels, samples)` at the model's rate; the signal must already be normalised.

    For a model with a training segment (`config.segment_samples`, MUSE) the final chunk, when shorter than the
    others, reaches back into the input before it, as MUSE's own inference does: every chunk the model sees is then
    a whole chunk of real audio, not a short one padded with zeros.
    """

    def __init__(self, model: WaveformEnhancer, chunk: int, overlap: int, dtype: Any, controls: dict):
        self.model, self.chunk, self.overlap, self.dtype, self.controls = model, chunk, overlap, dtype, controls
        self.buffer: np.ndarray | None = None
        self.tail: np.ndarray | None = None  # the previous chunk's enhanced overlap, waiting to be crossfaded
        self.reach_back = model.config.segment_samples > 0
        self.history: np.ndarray | None = None  # the input before `buffer` (one chunk step), for the reach-back
        ramp = np.sin(0.5 * np.pi * (np.arange(overlap, dtype=np.float64) + 0.5) / max(overlap, 1)) ** 2
        self.fade_in = ramp.astype(np.float32)

    def _emit(self, segment: np.ndarray, last: bool, context: int = 0) -> np.ndarray:
        """Enhance `segment` and return its crossfaded output, less its first `context` samples (already output)."""
        enhanced = self.model.enhance_segment(segment, self.dtype, **self.controls)[:, context:]
        if self.tail is not None:
            head = enhanced[:, : self.overlap]
            enhanced[:, : self.overlap] = self.tail + (head - self.tail) * self.fade_in
        if last:
            self.tail = None
            return enhanced
        self.tail = enhanced[:, -self.overlap :].copy()
        return enhanced[:, : -self.overlap]

    def feed(self, block: np.ndarray) -> Iterator[np.ndarray]:
        self.buffer = block if self.buffer is None else np.concatenate([self.buffer, block], axis=1)
        # Keep more than one chunk buffered so that the final chunk is never shorter than the overlap.
        while self.buffer.shape[1] > self.chunk + self.overlap:
            yield self._emit_next_chunk()

    def _emit_next_chunk(self) -> np.ndarray:
        out = self._emit(self.buffer[:, : self.chunk], last=False)
        self.history = self.buffer[:, : self.chunk - self.overlap]
        self.buffer = self.buffer[:, self.chunk - self.overlap :]
        return out

    def finish(self) -> Iterator[np.ndarray]:
        if self.buffer is None:
            return
        if self.buffer.shape[1] > self.chunk:
            yield self._emit_next_chunk()
        context = 0
        if self.reach_back and self.history is not None:
            context = min(self.chunk - self.buffer.shape[1], self.history.shape[1])
        segment = self.buffer if context <= 0 else np.concatenate([self.history[:, -context:], self.buffer], axis=1)
        yield self._emit(segment, last=True, context=max(context, 0))
        self.buffer = self.history = None


class WaveformEnhancer:
    """Waveform and file enhancement on top of a backend that enhances one normalised segment
    (`_enhance_waveform`) and opens streams (`stream`): shared by the PyTorch model classes (through
    [`WaveformEnhancementMixin`]) and the ONNX Runtime [`OnnxEnhancer`]. `config` is the model's configuration (or
    any object with its `sampling_rate`, `n_fft`, `hop_length`, `causal` and `segment_samples`)."""

    config: Any

    def _chunk_sizes(self, chunk_seconds: float | None, overlap_seconds: float) -> tuple[int, int]:
        """Chunk and overlap in samples at the model rate, as multiples of the hop; for a causal model, the blocks
        its stream is fed (`overlap_seconds` unused). `chunk_seconds=None` is the model's own: its training
        segment where the config names one (`segment_samples`, MUSE's 3.07 s), else `DEFAULT_CHUNK_SECONDS`."""
        hop, rate = self.config.hop_length, self.config.sampling_rate
        if chunk_seconds is None:
            chunk_seconds = max(DEFAULT_CHUNK_SECONDS, self.config.segment_samples / rate)
        for name, value in (("chunk_seconds", chunk_seconds), ("overlap_seconds", overlap_seconds)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number of seconds, got {value!r}.")
        if self.config.causal and chunk_seconds > 0:  # streamed blocks: no overlap, any whole number of hops
            return max(hop, round(chunk_seconds * rate / hop) * hop), 0
        if overlap_seconds <= 0 or chunk_seconds < 2 * overlap_seconds:
            raise ValueError(
                f"Need overlap_seconds > 0 and chunk_seconds >= 2 * overlap_seconds, got chunk_seconds="
                f"{chunk_seconds} and overlap_seconds={overlap_seconds}."
            )
        overlap = max(1, round(overlap_seconds * rate / hop)) * hop
        chunk = max(2 * overlap, round(chunk_seconds * rate / hop) * hop)
        return chunk, overlap

    def _enhance_waveform(
        self, waveform: np.ndarray, dtype: Any, attenuation_limit_db: float | None, pcs: bool, level: np.ndarray | None
    ) -> np.ndarray:
        """The backend's pass: `(channels, samples)` float32 at least one STFT frame long in, the enhanced
        `(channels, samples)` out; arguments as [`enhance_segment`]."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _enhance_waveform.")

    def _check_dtype(self, dtype: Any) -> Any:
        """The backend's form of `dtype` (see `enhance`), or a `ValueError` naming the ones it takes."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _check_dtype.")

    def enhance_segment(
        self,
        segment: np.ndarray,
        dtype: Any = None,
        attenuation_limit_db: float | None = None,
        pcs: bool = False,
        level: np.ndarray | None = None,
    ) -> np.ndarray:
        """Enhance normalised audio at the model rate in one pass.

        Args:
            segment: `(channels, samples)` float32, already RMS-normalised; inputs shorter than one STFT frame
                (or than the config's `segment_samples`) are zero-padded and trimmed back.
            dtype: the backend's precision (see `enhance`), already checked.
            attenuation_limit_db: no bin of the output is more than this many dB below the input's
                ([`attenuation_floor`]); `None`: no limit.
            pcs: apply SEMamba's perceptual contrast stretching to the enhanced magnitude (before the limit), at
                the input's own level (`level`: per channel, the input's amplitude per unit of `segment`'s; 1 when
                omitted), then rescaled to the enhanced segment's energy, so the loudness stays.

        Returns:
            `(channels, samples)` float32 enhanced audio.
        """
        if segment.shape[0] > CHANNEL_GROUP:
            groups = [slice(i, i + CHANNEL_GROUP) for i in range(0, len(segment), CHANNEL_GROUP)]
            return np.concatenate(
                [
                    self.enhance_segment(
                        segment[g], dtype, attenuation_limit_db, pcs, None if level is None else level[g]
                    )
                    for g in groups
                ]
            )
        length = segment.shape[-1]
        # MUSE (`segment_samples`) is run on whole training segments, shorter inputs zero-padded, as its own
        # inference does; any model needs at least one STFT frame.
        minimum = max(self.config.n_fft // 2 + 1, self.config.segment_samples)
        waveform = np.ascontiguousarray(segment, dtype=np.float32)
        if length < minimum:
            waveform = np.pad(waveform, ((0, 0), (0, minimum - length)))
        if pcs:
            level = np.ones(len(segment), np.float32) if level is None else np.asarray(level, np.float32)
        return self._enhance_waveform(waveform, dtype, attenuation_limit_db, pcs, level)[:, :length]

    def _normalisation(self, blocks: Iterable[np.ndarray], rate: int, channels: int, name: str) -> np.ndarray:
        """First pass: per-channel RMS normalisation factors `(channels, 1)` at the model rate; checks samples."""
        resample = StreamResampler(rate, self.config.sampling_rate, channels)
        energy = np.zeros(channels)
        count = clipped = 0
        for block in blocks:
            if not np.isfinite(block).all():
                raise AudioError(f"{name} contains NaN or Inf samples; repair or drop it before enhancing.")
            # Full scale is 1.0: a float sample beyond it is loud, not clipped.
            magnitude = np.abs(block)
            clipped += np.count_nonzero((magnitude >= CLIP_LEVEL) & (magnitude <= 1.0))
            count += block.shape[0]
            energy += np.square(resample(block), dtype=np.float64).sum(axis=0)
        energy += np.square(resample(np.zeros((0, channels), np.float32), last=True), dtype=np.float64).sum(axis=0)
        if clipped > CLIP_WARN_FRACTION * count * channels:
            logger.warning(
                "%s looks clipped (%d samples at full scale); enhancement removes noise but cannot restore the "
                "clipped peaks.",
                name,
                clipped,
            )
        model_samples = count * self.config.sampling_rate / rate
        if not energy.any():
            logger.warning("%s is silent; the output is silent too.", name)
        factors = np.where(energy > 0, np.sqrt(model_samples / np.maximum(energy, 1e-30)), 1.0)
        return factors.astype(np.float32)[:, None]

    def _enhance_blocks(
        self,
        blocks: Iterable[np.ndarray],
        rate: int,
        channels: int,
        norm: np.ndarray,
        chunk_sizes: tuple[int, int],
        dtype: Any,
        name: str,
        controls: dict,
    ) -> Iterator[np.ndarray]:
        """Second pass: `(frames, channels)` blocks at `rate` in, enhanced blocks at `rate` out (same total length
        up to a few samples of resampler rounding, which the callers trim or pad). `chunk_sizes` comes from
        `_chunk_sizes`, `dtype` from `_check_dtype`, `controls` from [`enhancement_controls`]; a non-finite
        output sample is an [`AudioError`] naming `name`, so nothing non-finite is ever returned or written."""
        if self.config.causal:
            yield from self._stream_blocks(blocks, rate, channels, chunk_sizes[0], dtype, name, controls)
            return
        to_model = StreamResampler(rate, self.config.sampling_rate, channels)
        to_input = StreamResampler(self.config.sampling_rate, rate, channels)
        if controls.get("pcs"):
            controls = {**controls, "level": 1.0 / norm[:, 0]}
        chunker = _Chunker(self, *chunk_sizes, dtype, controls)

        def restore(enhanced: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
            for out in enhanced:
                if not np.isfinite(out).all():
                    raise AudioError(
                        f"{name}: the model produced non-finite samples (NaN/Inf); its weights may be damaged or "
                        "the dtype too narrow. Nothing was written."
                    )
                yield to_input((out / norm).T)

        for block in blocks:
            yield from restore(chunker.feed(to_model(block).T * norm))
        yield from restore(chunker.feed(to_model(np.zeros((0, channels), np.float32), last=True).T * norm))
        yield from restore(chunker.finish())
        yield to_input(np.zeros((0, channels), np.float32), last=True)

    def _stream_blocks(
        self,
        blocks: Iterable[np.ndarray],
        rate: int,
        channels: int,
        chunk: int,
        dtype: Any,
        name: str,
        controls: dict,
    ) -> Iterator[np.ndarray]:
        """`_enhance_blocks` for a causal model: the blocks, cut to about `chunk` model-rate samples, through one
        [`EnhancementStream`] per group of channels; the signal keeps its own level (no RMS normalisation)."""
        if controls["pcs"]:
            raise ValueError(
                "pcs rescales each segment to its energy, which a causal model's stream cannot know ahead; enhance "
                "without pcs, or with a non-causal model."
            )
        groups = [slice(i, min(i + CHANNEL_GROUP, channels)) for i in range(0, channels, CHANNEL_GROUP)]
        streams = [
            self._open_stream(rate, g.stop - g.start, controls["attenuation_limit_db"], dtype, 1) for g in groups
        ]
        step = max(1, chunk * rate // self.config.sampling_rate)

        def run(block: np.ndarray | None) -> np.ndarray:
            outputs = [
                stream.flush() if block is None else stream.process(block[g])
                for stream, g in zip(streams, groups, strict=True)
            ]
            return np.concatenate([np.atleast_2d(out) for out in outputs]).T

        try:
            for block in blocks:
                for start in range(0, block.shape[0], step):
                    yield run(np.ascontiguousarray(block[start : start + step].T))
            yield run(None)
        except AudioError as error:
            raise AudioError(f"{name}: {error}") from None

    def stream(
        self,
        sampling_rate: int,
        channels: int = 1,
        attenuation_limit_db: float | None = None,
        dtype: Any = None,
        frames_per_block: int = 1,
    ) -> EnhancementStream:
        """Start enhancing a live stream with a causal model (`config.causal`), frame by frame.

        Args:
            sampling_rate: rate of the stream in Hz (resampled to the model's and back inside the stream).
            channels: channels of the stream; `process` then takes `(channels, samples)` (or `(samples,)` mono).
            attenuation_limit_db, dtype: as for [`enhance`].
            frames_per_block: STFT frames enhanced together; each adds one hop of latency and cuts the per-call
                overhead (on a CPU, 2 nearly halve the compute per hop). The output does not depend on it.

        Returns:
            An [`EnhancementStream`]: `process(samples)` returns the enhanced samples delayed by exactly
            `latency_samples`, `flush()` the rest; together they equal `enhance()` of the whole signal.

        Example:
            ```python
            stream = model.stream(sampling_rate=16000)
            for block in blocks:  # any sizes, float32
                play(stream.process(block))
            play(stream.flush())
            ```
        """
        limit = enhancement_controls(attenuation_limit_db, False)["attenuation_limit_db"]
        return self._open_stream(sampling_rate, channels, limit, self._check_dtype(dtype), frames_per_block)

    def _open_stream(
        self, sampling_rate: int, channels: int, attenuation_limit_db: float | None, dtype: Any, frames_per_block: int
    ) -> EnhancementStream:
        return EnhancementStream(
            self._frame_enhancer(attenuation_limit_db, dtype), self.config, sampling_rate, channels, frames_per_block
        )

    def _frame_enhancer(self, attenuation_limit_db: float | None, dtype: Any) -> FrameEnhancer:
        """The backend's step of a new stream (a fresh state): see [`FrameEnhancer`]."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _frame_enhancer.")

    def enhance(
        self,
        waveform: Any,
        sampling_rate: int,
        chunk_seconds: float | None = None,
        overlap_seconds: float = DEFAULT_OVERLAP_SECONDS,
        downmix: bool = False,
        dtype: Any = None,
        attenuation_limit_db: float | None = None,
        pcs: bool = False,
    ) -> Any:
        """Enhance a waveform at any sampling rate.

        Args:
            waveform: `(samples,)` mono or `(channels, samples)`, float in [-1, 1] or integer PCM, a numpy array
                (or, with the PyTorch backend, a torch tensor).
            sampling_rate: rate of `waveform` in Hz; it is resampled to the model's rate and back.
            chunk_seconds, overlap_seconds: inputs longer than `chunk_seconds` (default: the model's choice, 2 s,
                or MUSE's 3.07-s training segment) are enhanced in chunks that overlap by `overlap_seconds` and are
                crossfaded. A causal model streams the signal in blocks of
                `chunk_seconds` instead (no overlap): the output is the same for any block size.
            downmix: average the channels and return mono.
            dtype: the PyTorch backend's autocast dtype (`torch.bfloat16`, `torch.float16`, or a name such as
                "bfloat16") or `None` for full precision (the only choice of the ONNX backend).
            attenuation_limit_db: the strength control: no time-frequency bin of the output is more than this
                many dB below the input's (0 keeps every bin at least as loud as the input; 12 lets noise drop by
                12 dB at most). `None` (default): no limit.
            pcs: SEMamba's perceptual contrast stretching of the enhanced magnitude (default off).

        Returns:
            The enhanced waveform with the input's shape (`(samples,)` when downmixed), type (numpy or torch) and
            dtype, at `sampling_rate`.
        """
        is_tensor = not isinstance(waveform, np.ndarray) and hasattr(waveform, "detach")  # a torch tensor
        array = waveform.detach().cpu().numpy() if is_tensor else np.asarray(waveform)
        if array.ndim not in (1, 2) or array.size == 0:
            raise AudioError(f"Expected a non-empty (samples,) or (channels, samples) waveform, got {array.shape}.")
        if array.ndim == 2 and array.shape[0] > MAX_CHANNELS and array.shape[1] <= MAX_CHANNELS:
            raise AudioError(
                f"Got shape {array.shape}: multi-channel audio must be (channels, samples); pass the transpose."
            )
        sampling_rate = check_sampling_rate(sampling_rate)
        dtype, chunk_sizes = self._check_dtype(dtype), self._chunk_sizes(chunk_seconds, overlap_seconds)
        controls = enhancement_controls(attenuation_limit_db, pcs)
        samples = np.atleast_2d(to_float(array)).T  # (frames, channels)
        if downmix:
            samples = samples.mean(axis=1, keepdims=True)
        frames, channels = samples.shape
        norm = self._normalisation([samples], sampling_rate, channels, "The waveform")
        pieces = self._enhance_blocks(
            [samples], sampling_rate, channels, norm, chunk_sizes, dtype, "The waveform", controls
        )
        enhanced = _fit_length(np.concatenate(list(pieces), axis=0), frames).T
        if array.ndim == 1 or downmix:
            enhanced = enhanced[0]
        enhanced = from_float(enhanced, array.dtype)
        return array_namespace(waveform).from_numpy(enhanced) if is_tensor else enhanced

    def enhance_file(
        self,
        input_path: str | Path,
        output_path: str | Path,
        chunk_seconds: float | None = None,
        overlap_seconds: float = DEFAULT_OVERLAP_SECONDS,
        downmix: bool = False,
        dtype: Any = None,
        subtype: str | None = None,
        overwrite: bool = False,
        progress: bool = True,
        attenuation_limit_db: float | None = None,
        pcs: bool = False,
    ) -> Path:
        """Enhance an audio file (any format soundfile reads) into `output_path`, streaming from disk to disk.

        Memory stays bounded by the chunk size whatever the duration. The output keeps the input's sampling
        rate, channel count (mono with `downmix`) and subtype (when the output format supports it, else the
        format's default; `subtype` overrides). `attenuation_limit_db` and `pcs` are [`enhance`]'s. It is written
        to a temporary file and moved into place when complete, so an interrupted run never leaves a truncated
        output. Returns the output path.
        """
        input_path, output_path = Path(input_path), Path(output_path)
        if output_path.is_dir():
            raise AudioError(
                f"{output_path} is a folder; give an output file name, e.g. {output_path / input_path.name}."
            )
        if output_path.exists() and output_path.resolve() == input_path.resolve():
            raise AudioError(f"{output_path}: refusing to overwrite the input file; choose another output path.")
        check_output_audio(output_path, overwrite)
        dtype, chunk_sizes = self._check_dtype(dtype), self._chunk_sizes(chunk_seconds, overlap_seconds)
        controls = enhancement_controls(attenuation_limit_db, pcs)
        file_format = output_format(output_path)
        if subtype is not None and not sf.check_format(file_format, subtype):
            raise AudioError(
                f"{output_path}: {file_format} cannot store subtype {subtype!r}; choose one of "
                f"{', '.join(sf.available_subtypes(file_format))}."
            )
        with open_audio(input_path) as source:
            rate, channels, frames = source.samplerate, source.channels, source.frames
            block = max(1, min(int(READ_BLOCK_SECONDS * rate), READ_BLOCK_SAMPLES // channels))

            def blocks() -> Iterator[np.ndarray]:
                for piece in read_blocks(source, block):
                    yield piece.mean(axis=1, keepdims=True) if downmix else piece

            out_channels = 1 if downmix else channels
            norm = self._normalisation(blocks(), rate, out_channels, str(input_path))
            subtype = subtype or output_subtype(source.subtype, output_path, rate, out_channels)
            bounded = subtype not in FLOAT_SUBTYPES
            written = clipped = 0
            bar = tqdm(
                total=frames,
                unit="sample",
                unit_scale=True,
                desc=input_path.name,
                disable=not progress,
                mininterval=PROGRESS_SECONDS,
            )
            with bar, atomic_audio_writer(output_path, rate, out_channels, subtype, overwrite) as sink:
                pieces = self._enhance_blocks(
                    blocks(), rate, out_channels, norm, chunk_sizes, dtype, str(input_path), controls
                )
                for piece in pieces:
                    piece = piece[: frames - written]
                    if bounded:
                        clipped += np.count_nonzero(np.abs(piece) > 1.0)
                        piece = np.clip(piece, -1.0, 1.0)
                    sink.write(piece)
                    written += piece.shape[0]
                    bar.update(piece.shape[0])
                if written < frames:
                    sink.write(np.zeros((frames - written, out_channels), np.float32))
        if clipped:
            logger.warning("%s: %d output samples exceeded full scale and were clipped.", output_path, clipped)
        return output_path


# Progress bars redraw at most this often (seconds): a stream's many small blocks would otherwise redraw hundreds
# of times for one short file.
PROGRESS_SECONDS = 0.5


def enhancement_controls(attenuation_limit_db: float | None, pcs: bool) -> dict:
    """The checked controls of [`WaveformEnhancementMixin.enhance_segment`] as keyword arguments.

    Raises:
        ValueError: a limit that is not a finite number of dB >= 0, or a `pcs` that is not a bool.
    """
    if attenuation_limit_db is not None:
        value = attenuation_limit_db
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"attenuation_limit_db must be a finite number of dB >= 0 (or None), got {value!r}.")
        attenuation_limit_db = float(value)
    if not isinstance(pcs, bool):
        raise ValueError(f"pcs must be True or False, got {pcs!r}.")
    return {"attenuation_limit_db": attenuation_limit_db, "pcs": pcs}


def _fit_length(samples: np.ndarray, frames: int) -> np.ndarray:
    """Trim or zero-pad `(frames', channels)` to exactly `frames` rows."""
    if samples.shape[0] >= frames:
        return samples[:frames]
    return np.pad(samples, ((0, frames - samples.shape[0]), (0, 0)))
