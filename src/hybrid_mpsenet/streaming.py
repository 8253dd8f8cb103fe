"""Frame-by-frame enhancement with a causal model: [`EnhancementStream`], the session behind `model.stream(...)`,
`hybrid-mpsenet stream` and the offline enhancement of causal models.

A session carries every state between calls: the resamplers' input history, the STFT analysis buffer, each layer's
cache (convolution inputs, moving-norm statistics, Mamba conv/SSM states, GRU hidden states, attention keys and
values) and the overlap-add buffer with its window envelope. Its output is the offline output of the same model,
delayed by exactly `latency_samples`: the STFT frames, the network's pass and the inverse STFT are those of
`model.spectrum`, `model(...)` and `model.waveform` on the whole signal (zero-padded centred frames), computed
piece by piece.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from .audio import AudioError, check_sampling_rate

# Resampling filter of the stream: a Kaiser-windowed sinc spanning this many periods of the lower rate on each side
# (2 ms at 16 kHz, the latency each conversion adds), passing 92% of the lower Nyquist band.
RESAMPLER_ZERO_CROSSINGS = 32
RESAMPLER_ROLLOFF = 0.92
RESAMPLER_KAISER_BETA = 8.6
# Rate pairs with at most this many output phases tabulate their weights; others compute them per sample.
MAX_TABULATED_PHASES = 4096
RESAMPLER_OUTPUTS_PER_PIECE = 4096


class StreamingResampler:
    """Band-limited resampling of `(channels, samples)` blocks with a fixed look-ahead, for streams.

    Output sample `m` is `sum_k x[k] g(m / out_rate - k / in_rate)`, `g` a Kaiser-windowed sinc low-pass at
    `RESAMPLER_ROLLOFF` of the lower Nyquist frequency and `x` zero outside the signal, so the output is aligned with
    the input (no delay to undo) and `ceil(len * out_rate / in_rate)` samples long. Each output sample is computed
    as soon as its last input sample has arrived, with the same arithmetic whatever the blocks, so any chunking
    gives identical samples. (soxr, the offline resampler, buffers internally up to ~75 ms and so cannot stream at
    a fixed latency.)
    """

    def __init__(self, in_rate: int, out_rate: int, channels: int):
        gcd = math.gcd(in_rate, out_rate)
        self.up, self.down = out_rate // gcd, in_rate // gcd
        self.in_rate, self.out_rate = in_rate, out_rate
        low = min(in_rate, out_rate)
        self.cutoff = 0.5 * low * RESAMPLER_ROLLOFF
        self.half_width = RESAMPLER_ZERO_CROSSINGS / low  # seconds on each side of an output sample
        self.reach = math.floor(self.half_width * in_rate)  # input samples on each side
        self.history = np.zeros((channels, self.reach), np.float32)  # x[-reach:0] (zeros) before the signal
        self.base = -self.reach  # input index of history[:, 0]
        self.received = 0
        self.emitted = 0
        self.taps = np.arange(-self.reach, self.reach + 2)  # inputs around the one at or before each output time
        # The weights depend only on the output's phase (m * down) % up: tabulated when there are few phases.
        self.table = self._weights(np.arange(self.up)) if self.up <= MAX_TABULATED_PHASES else None

    @property
    def lookahead(self) -> float:
        """Seconds of input that an output sample waits for (at most)."""
        return (self.reach + 1) / self.in_rate

    def _kernel(self, offsets: np.ndarray) -> np.ndarray:
        """`g` at time offsets in seconds."""
        inside = np.abs(offsets) <= self.half_width
        window = np.i0(RESAMPLER_KAISER_BETA * np.sqrt(np.clip(1 - (offsets / self.half_width) ** 2, 0, 1)))
        taps = 2 * self.cutoff / self.in_rate * np.sinc(2 * self.cutoff * offsets) * window
        return np.where(inside, taps / np.i0(RESAMPLER_KAISER_BETA), 0.0)

    def _weights(self, phases: np.ndarray) -> np.ndarray:
        """`(len(phases), taps)` float32 weights of the inputs `centre + taps` for outputs of these phases."""
        offsets = (phases[:, None] - self.taps[None, :] * self.up) / (self.in_rate * self.up)
        return self._kernel(offsets).astype(np.float32)

    def _emit(self, stop: int) -> np.ndarray:
        """Output samples `emitted ... stop - 1` from the history, computed in bounded pieces."""
        pieces = [np.zeros((self.history.shape[0], 0), np.float32)]
        for start in range(self.emitted, stop, RESAMPLER_OUTPUTS_PER_PIECE):
            outputs = np.arange(start, min(stop, start + RESAMPLER_OUTPUTS_PER_PIECE))
            centre = (outputs * self.down) // self.up  # the input sample at or before each output time
            phases = (outputs * self.down) % self.up
            weights = self.table[phases] if self.table is not None else self._weights(phases)
            window = self.history[:, centre[:, None] + self.taps[None, :] - self.base]  # (channels, outputs, taps)
            pieces.append(np.einsum("cot,ot->co", window, weights))
        self.emitted = max(self.emitted, stop)
        return np.concatenate(pieces, axis=1)

    def __call__(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        """Feed `(channels, samples)`; returns the output samples that are now complete (all of them with `last`)."""
        self.history = np.concatenate([self.history, block], axis=1)
        self.received += block.shape[1]
        if last:
            self.history = np.pad(self.history, ((0, 0), (0, self.reach + 2)))
            out = self._emit(math.ceil(self.received * self.up / self.down))
        else:
            # Output m needs inputs up to centre(m) + reach + 1 < received.
            ready = max(0, math.ceil((self.received - self.reach - 1) * self.up / self.down))
            out = self._emit(max(self.emitted, ready))
        # Keep the inputs the next output sample may still read.
        keep_from = (self.emitted * self.down) // self.up - self.reach
        if keep_from > self.base:
            self.history = self.history[:, keep_from - self.base :]
            self.base = keep_from
        return out


class FrameEnhancer(Protocol):
    """A backend's step of a stream, holding the network's carried state: `(channels, count, n_fft)` float32
    analysis frames in (a stream's next frames, in order), the windowed inverse FFTs of the enhanced spectra out (same
    shape; see [`enhance_frames`]). `window` is the `(n_fft,)` analysis and synthesis window."""

    window: np.ndarray

    def __call__(self, frames: np.ndarray) -> np.ndarray: ...


class EnhancementStream:
    """A stream of audio enhanced frame by frame by a causal model; see `model.stream(...)`.

    `process(samples)` takes the next samples, `(samples,)` for mono or `(channels, samples)`, float32 in any number
    per call, and returns the enhanced samples of the same layout, delayed by exactly `latency_samples`: after `n`
    input samples in all, `max(0, n - latency_samples)` output samples have come out. `flush()` returns the rest, so
    the outputs concatenated have the input's length and equal `model.enhance(...)` of the whole input.

    `frames_per_block` frames go through the network together: the per-call overhead of a small network dominates
    on a CPU, so blocks of 2 nearly halve the compute per hop, for one hop more latency (the output is the same).
    """

    def __init__(
        self, frames: FrameEnhancer, config: Any, sampling_rate: int, channels: int = 1, frames_per_block: int = 1
    ):
        """`frames`: the backend's step; `config`: the model's configuration (its STFT settings and `causal`)."""
        if not config.causal:
            raise ValueError(
                "This model looks at future frames (config.causal is False), so it cannot stream with its offline "
                "output; use a causal model such as `default-streaming`, or enhance whole files."
            )
        for name, value in (("channels", channels), ("frames_per_block", frames_per_block)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        self.frames_per_block = frames_per_block
        self.enhance_frames, self.channels = frames, channels
        self.sampling_rate = check_sampling_rate(sampling_rate)
        rate, self.n_fft, self.hop = config.sampling_rate, config.n_fft, config.hop_length
        self.resample_in = StreamingResampler(self.sampling_rate, rate, channels) if sampling_rate != rate else None
        self.resample_out = StreamingResampler(rate, self.sampling_rate, channels) if sampling_rate != rate else None
        self.squared_window = frames.window.astype(np.float64) ** 2
        # Centred frames: the signal is preceded by n_fft // 2 zeros; frame t starts at t * hop of the padded signal.
        self.analysis = np.zeros((channels, self.n_fft // 2), np.float32)
        self.overlap = np.zeros((channels, self.n_fft), np.float64)
        self.envelope = np.zeros(self.n_fft, np.float64)
        self.cache: dict = {}
        self.frames = 0  # frames enhanced
        self.model_samples = 0  # samples at the model rate received
        self.model_emitted = -(self.n_fft // 2)  # next sample of the inverse STFT, padded samples counted negative
        self.received = self.returned = 0
        self.pending = np.zeros((channels, 0), np.float32)  # output waiting for the fixed delay
        self.finished = False
        model_latency = self.n_fft - 1 + (frames_per_block - 1) * self.hop
        if self.resample_in is None:
            self.latency_samples = model_latency
        else:
            seconds = self.resample_in.lookahead + model_latency / rate + self.resample_out.lookahead
            self.latency_samples = math.ceil(seconds * self.sampling_rate) + 1

    @property
    def latency_seconds(self) -> float:
        return self.latency_samples / self.sampling_rate

    def _as_block(self, samples: np.ndarray) -> np.ndarray:
        array = np.asarray(samples)
        if self.channels == 1 and array.ndim == 1:
            array = array[None]
        if array.ndim != 2 or array.shape[0] != self.channels:
            layout = "(samples,) or (1, samples)" if self.channels == 1 else f"({self.channels}, samples)"
            raise AudioError(f"This stream has {self.channels} channel(s): pass {layout}, got shape {array.shape}.")
        if not np.issubdtype(array.dtype, np.floating):
            raise AudioError(f"Stream samples must be float in [-1, 1], got dtype {array.dtype}.")
        if not np.isfinite(array).all():
            raise AudioError("The stream contains NaN or Inf samples; nothing of this block was enhanced.")
        return np.ascontiguousarray(array, dtype=np.float32)

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Enhance the next samples; returns the enhanced samples now due (see the class docstring)."""
        if self.finished:
            raise RuntimeError("This stream was flushed; start a new one with model.stream(...).")
        block = self._as_block(samples)
        self.received += block.shape[1]
        model_block = block if self.resample_in is None else self.resample_in(block)
        out = self._enhance(model_block, last=False)
        if self.resample_out is not None:
            out = self.resample_out(out)
        return self._release(out, due=max(0, self.received - self.latency_samples))

    def flush(self) -> np.ndarray:
        """The rest of the enhanced signal: the last `latency_samples` (or all, for a shorter stream)."""
        if self.finished:
            raise RuntimeError("This stream was already flushed.")
        self.finished = True
        empty = np.zeros((self.channels, 0), np.float32)
        model_block = empty if self.resample_in is None else self.resample_in(empty, last=True)
        out = self._enhance(model_block, last=True)
        if self.resample_out is not None:
            out = self.resample_out(out, last=True)
        return self._release(out, due=self.received)

    def _release(self, out: np.ndarray, due: int) -> np.ndarray:
        """Queue `out` and return the samples up to `due` in all, shaped like the input."""
        self.pending = np.concatenate([self.pending, out], axis=1)
        count = due - self.returned
        if self.pending.shape[1] < count:
            if not self.finished:
                raise RuntimeError("The enhanced signal fell behind the stream's latency; this is a bug.")
            self.pending = np.pad(self.pending, ((0, 0), (0, count - self.pending.shape[1])))
        released, self.pending = self.pending[:, :count], self.pending[:, count:]
        self.returned += count
        if not np.isfinite(released).all():
            raise AudioError(
                "The model produced non-finite samples (NaN/Inf); its weights may be damaged or the dtype too narrow."
            )
        return released[0] if self.channels == 1 else released

    def _enhance(self, block: np.ndarray, last: bool) -> np.ndarray:
        """Model-rate samples in, the inverse STFT's completed samples out (`(channels, samples)`)."""
        self.model_samples += block.shape[1]
        self.analysis = np.concatenate([self.analysis, block], axis=1)
        if last:
            # The offline STFT has samples // hop + 1 frames, the last ones reaching into n_fft // 2 zeros.
            total = self.model_samples // self.hop + 1 if self.model_samples else 0
            needed = self.n_fft + (total - self.frames - 1) * self.hop
            if total > self.frames and self.analysis.shape[1] < needed:
                self.analysis = np.pad(self.analysis, ((0, 0), (0, needed - self.analysis.shape[1])))
        count = max(0, (self.analysis.shape[1] - self.n_fft) // self.hop + 1)
        if last:
            count = min(count, total - self.frames)
        else:
            count -= count % self.frames_per_block
        if count:
            starts = np.arange(count) * self.hop
            frames = self.analysis[:, starts[:, None] + np.arange(self.n_fft)]  # (channels, count, n_fft)
            self.analysis = self.analysis[:, count * self.hop :]
            self._overlap_add(self.enhance_frames(frames))
        stop = self.frames * self.hop - self.n_fft // 2  # samples no later frame overlaps
        if last:
            stop = self.model_samples
        return self._take(stop)

    def _overlap_add(self, signal: np.ndarray) -> None:
        """Add `(channels, count, n_fft)` windowed frames and their squared windows to the overlap-add buffers,
        whose first sample is the next one to come out (`model_emitted`)."""
        first = self.frames * self.hop - (self.model_emitted + self.n_fft // 2)  # offset of this call's first frame
        needed = first + (signal.shape[1] - 1) * self.hop + self.n_fft
        if self.overlap.shape[1] < needed:
            grow = needed - self.overlap.shape[1]
            self.overlap = np.pad(self.overlap, ((0, 0), (0, grow)))
            self.envelope = np.pad(self.envelope, (0, grow))
        for index in range(signal.shape[1]):
            offset = first + index * self.hop
            self.overlap[:, offset : offset + self.n_fft] += signal[:, index]
            self.envelope[offset : offset + self.n_fft] += self.squared_window
        self.frames += signal.shape[1]

    def _take(self, stop: int) -> np.ndarray:
        """Remove and return the inverse STFT's samples before `stop` (signal coordinates), dropping the padding."""
        count = stop - self.model_emitted
        if count <= 0:
            return np.zeros((self.channels, 0), np.float32)
        if count > self.overlap.shape[1]:
            self.overlap = np.pad(self.overlap, ((0, 0), (0, count - self.overlap.shape[1])))
            self.envelope = np.pad(self.envelope, (0, count - self.envelope.shape[0]))
        samples = self.overlap[:, :count] / np.where(self.envelope[:count] > 1e-11, self.envelope[:count], 1.0)
        self.overlap, self.envelope = self.overlap[:, count:], self.envelope[count:]
        skip = max(0, -self.model_emitted)  # the n_fft // 2 zeros before the signal
        self.model_emitted = stop
        return samples[:, skip:].astype(np.float32)
