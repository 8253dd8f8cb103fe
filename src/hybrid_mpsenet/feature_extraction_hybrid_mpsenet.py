"""Feature extractor: waveforms <-> RMS-normalised, power-law-compressed magnitude and phase spectra."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from transformers import BatchFeature, SequenceFeatureExtractor

from .bundled import model_location
from .stft import mag_phase_istft, mag_phase_stft

logger = logging.getLogger(__name__)


class HybridMPSENetFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Turns mono waveforms into the model's inputs and the model's outputs back into waveforms.

    Each waveform is scaled to unit RMS (`x * sqrt(N / sum(x^2))`, as MP-SENet does), transformed with a centred
    STFT (periodic Hann window, reflect padding) and split into a compressed magnitude `|X|^compress_factor` and a
    phase. A batch of different lengths is transformed item by item, then right-padded; `frame_mask` marks the
    real frames. [`~HybridMPSENetFeatureExtractor.post_process`] inverts all of it, back to the original lengths and
    levels. For a causal model (`causal=True`) the frames are zero-padded at the edges and the level is left as it
    is (a stream cannot know a whole utterance's RMS; the model's moving norms handle the level).

    Args:
        sampling_rate (`int`, defaults to 16000): the rate the model works at; inputs must already be at it.
        n_fft, hop_length, win_length (`int`): STFT settings (400, 100, 400).
        compress_factor (`float`, defaults to 0.3): magnitude compression exponent.
        causal (`bool`, defaults to False): the features of a causal model (see [`HybridMPSENetConfig`]).
        stft_epsilons (`bool`, defaults to True): MP-SENet's epsilons in the magnitude and phase; False for MUSE,
            which takes `|X|` and `angle(X)` exactly.
    """

    model_input_names = ["magnitude", "phase", "frame_mask"]

    def __init__(
        self,
        feature_size: int = 1,
        sampling_rate: int = 16000,
        padding_value: float = 0.0,
        n_fft: int = 400,
        hop_length: int = 100,
        win_length: int = 400,
        compress_factor: float = 0.3,
        causal: bool = False,
        stft_epsilons: bool = True,
        **kwargs,
    ):
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs)
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.win_length = win_length
        self.compress_factor = compress_factor
        self.causal = causal
        self.stft_epsilons = stft_epsilons

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> HybridMPSENetFeatureExtractor:
        """Like `FeatureExtractionMixin.from_pretrained`; `"default"` and `"default-streaming"` name the checkpoints
        bundled with the package (offline)."""
        return super().from_pretrained(model_location(pretrained_model_name_or_path), *args, **kwargs)

    @classmethod
    def from_model_config(cls, config) -> HybridMPSENetFeatureExtractor:
        """The feature extractor matching the config of any member of the family."""
        return cls(
            sampling_rate=config.sampling_rate,
            n_fft=config.n_fft,
            hop_length=config.hop_length,
            win_length=config.win_length,
            compress_factor=config.compress_factor,
            causal=config.causal,
            stft_epsilons=config.stft_epsilons,
        )

    @property
    def min_num_samples(self) -> int:
        """Shortest input the centred STFT accepts (its reflect padding needs more than `n_fft // 2` samples)."""
        return self.n_fft // 2 + 1

    def _stft_args(self) -> tuple[int, int, int, float]:
        return self.n_fft, self.hop_length, self.win_length, self.compress_factor

    def _as_waveforms(self, raw_speech) -> list[np.ndarray]:
        if isinstance(raw_speech, torch.Tensor):
            raw_speech = raw_speech.detach().cpu().numpy()
        if isinstance(raw_speech, np.ndarray):
            if raw_speech.ndim == 1:
                return [raw_speech]
            if raw_speech.ndim == 2:
                return list(raw_speech)
            raise ValueError(
                f"Expected a waveform (samples,) or a batch (batch, samples), got shape {raw_speech.shape}."
            )
        if isinstance(raw_speech, Sequence) and len(raw_speech) > 0 and not np.isscalar(raw_speech[0]):
            return [np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x) for x in raw_speech]
        return [np.asarray(raw_speech)]

    def __call__(
        self,
        raw_speech: np.ndarray | torch.Tensor | list,
        sampling_rate: int | None = None,
        return_tensors: str | None = "pt",
    ) -> BatchFeature:
        """
        Args:
            raw_speech: one mono waveform `(samples,)`, a batch `(batch, samples)`, or a list of waveforms of
                different lengths. Integer samples are not accepted: convert them to float in [-1, 1] first.
            sampling_rate: the rate of `raw_speech`; must equal `self.sampling_rate`.

        Returns:
            [`BatchFeature`] with `magnitude` and `phase` `(batch, freq, frames)`, `frame_mask` `(batch, frames)`,
            `norm_factor` `(batch,)` and `num_samples` `(batch,)` (what `post_process` needs to undo the transform).
        """
        if sampling_rate is None:
            logger.warning(
                "No sampling_rate given to HybridMPSENetFeatureExtractor; assuming %d Hz. Pass it to avoid silent "
                "errors.",
                self.sampling_rate,
            )
        elif sampling_rate != self.sampling_rate:
            raise ValueError(
                f"The model works at {self.sampling_rate} Hz but the audio is at {sampling_rate} Hz. Resample it "
                f"first (model.enhance(...) resamples automatically)."
            )
        waveforms = self._as_waveforms(raw_speech)
        magnitudes, phases, norm_factors, lengths = [], [], [], []
        for index, waveform in enumerate(waveforms):
            if waveform.ndim != 1:
                raise ValueError(
                    f"Item {index} has shape {waveform.shape}; expected a mono waveform (samples,). Enhance each "
                    f"channel separately or downmix first."
                )
            if not np.issubdtype(waveform.dtype, np.floating):
                raise ValueError(f"Item {index} has dtype {waveform.dtype}; expected float samples in [-1, 1].")
            if waveform.shape[0] < self.min_num_samples:
                raise ValueError(
                    f"Item {index} has {waveform.shape[0]} samples; at least {self.min_num_samples} "
                    f"({self.min_num_samples / self.sampling_rate * 1000:.1f} ms) are needed for the STFT."
                )
            if not np.isfinite(waveform).all():
                raise ValueError(f"Item {index} contains NaN or Inf samples.")
            samples = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))
            energy = float(samples.double().pow(2).sum())
            # Silence has no level to normalise; it passes through unscaled.
            norm_factor = (samples.shape[0] / energy) ** 0.5 if energy > 0 and not self.causal else 1.0
            magnitude, phase, _ = mag_phase_stft(
                (samples * norm_factor)[None], *self._stft_args(), causal=self.causal, epsilons=self.stft_epsilons
            )
            magnitudes.append(magnitude[0])
            phases.append(phase[0])
            norm_factors.append(norm_factor)
            lengths.append(samples.shape[0])

        frames = max(m.shape[-1] for m in magnitudes)
        frame_mask = torch.zeros(len(magnitudes), frames, dtype=torch.long)
        for i, m in enumerate(magnitudes):
            frame_mask[i, : m.shape[-1]] = 1
        data = {
            "magnitude": torch.stack([torch.nn.functional.pad(m, (0, frames - m.shape[-1])) for m in magnitudes]),
            "phase": torch.stack([torch.nn.functional.pad(p, (0, frames - p.shape[-1])) for p in phases]),
            "frame_mask": frame_mask,
            "norm_factor": torch.tensor(norm_factors, dtype=torch.float32),
            "num_samples": torch.tensor(lengths, dtype=torch.long),
        }
        if return_tensors != "pt":
            data = {k: v.numpy() for k, v in data.items()}
        return BatchFeature(data, tensor_type=return_tensors)

    def post_process(
        self,
        magnitude: torch.Tensor,
        phase: torch.Tensor,
        norm_factor: torch.Tensor,
        num_samples: torch.Tensor,
    ) -> list[np.ndarray]:
        """Waveforms from (enhanced) spectra: inverse STFT, trimmed to each item's length, original level restored.

        Args:
            magnitude, phase: `(batch, freq, frames)` compressed magnitude and phase (padded frames are ignored).
            norm_factor, num_samples: `(batch,)` as returned by `__call__`.

        Returns:
            A list of float32 waveforms `(num_samples[i],)`.
        """
        waveforms = []
        for i in range(magnitude.shape[0]):
            length = int(num_samples[i])
            frames = length // self.hop_length + 1
            audio = mag_phase_istft(
                magnitude[i : i + 1, :, :frames].float(),
                phase[i : i + 1, :, :frames].float(),
                *self._stft_args(),
                length=length,
            )
            waveforms.append((audio[0] / float(norm_factor[i])).detach().cpu().numpy().astype(np.float32))
        return waveforms


HybridMPSENetFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
