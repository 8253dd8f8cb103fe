"""The PyTorch backend of waveform enhancement: [`WaveformEnhancementMixin`], which gives both model classes of the
family `enhance`, `enhance_file` and `stream` (see [`waveform`]), and [`HybridMPSENetEnhancer`], the lean inference
model that does not import transformers' model classes."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from .bundled import BUNDLED_MODELS, DEFAULT_MODEL, DEFAULT_MODEL_DIR, model_location
from .configuration_hybrid_mpsenet import HybridMPSENetConfig
from .network import HybridMPSENetNetwork
from .network_muse import MuseNetwork
from .registry import architecture_of
from .spectral import apply_controls, enhance_frames, pcs_exponents
from .waveform import CHANNEL_GROUP, WaveformEnhancer, enhancement_controls

__all__ = [
    "BUNDLED_MODELS",
    "CHANNEL_GROUP",
    "DEFAULT_MODEL",
    "DEFAULT_MODEL_DIR",
    "HybridMPSENetEnhancer",
    "MuseEnhancer",
    "WaveformEnhancementMixin",
    "enhancement_controls",
    "model_location",
    "resolve_dtype",
]

# Autocast precisions by the names the CLI and the usual shorthands give them; float32 means no autocast.
DTYPE_NAMES = {
    "float32": None,
    "fp32": None,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


class TorchFrameEnhancer:
    """The PyTorch step of a stream ([`FrameEnhancer`]): a causal model with its layer cache (empty at the start)."""

    def __init__(self, model: WaveformEnhancementMixin, attenuation_limit_db: float | None, dtype: torch.dtype | None):
        self.model, self.attenuation_limit_db, self.dtype = model, attenuation_limit_db, dtype
        self.cache: dict = {}
        config = model.config
        window = torch.zeros(config.n_fft)
        start = (config.n_fft - config.win_length) // 2
        window[start : start + config.win_length] = model.window.detach().cpu()
        self.window = window.numpy()
        self._window = window.to(model.device)

    def _network(self, magnitude: torch.Tensor, phase: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.model.device
        autocast = torch.autocast(device.type, dtype=self.dtype) if self.dtype is not None else contextlib.nullcontext()
        with autocast:
            output = self.model(magnitude, phase, cache=self.cache)
        return output.magnitude.float(), output.phase.float()

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        frames = torch.from_numpy(frames).to(self.model.device)
        config = self.model.config
        out = enhance_frames(frames, self._window, self._network, config.compress_factor, self.attenuation_limit_db)
        return out.cpu().numpy()


class WaveformEnhancementMixin(WaveformEnhancer):
    """[`WaveformEnhancer`] for a network of the family (an `nn.Module` with `config`, `device`, `spectrum`,
    `waveform` and the forward pass on spectra): shared by [`HybridMPSENetForSpeechEnhancement`] (transformers) and
    [`HybridMPSENetEnhancer`] (plain PyTorch). `dtype` arguments take an autocast dtype or its name."""

    config: HybridMPSENetConfig

    def _check_dtype(self, dtype: torch.dtype | str | None) -> torch.dtype | None:
        return resolve_dtype(dtype)

    @torch.inference_mode()
    def _enhance_waveform(
        self,
        waveform: np.ndarray,
        dtype: torch.dtype | None,
        attenuation_limit_db: float | None,
        pcs: bool,
        level: np.ndarray | None,
    ) -> np.ndarray:
        waveform = torch.from_numpy(waveform).to(self.device)
        magnitude, phase, _ = self.spectrum(waveform)
        autocast = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with autocast:
            output = self(magnitude, phase)
        config = self.config
        exponents = torch.from_numpy(pcs_exponents(config.n_fft, config.sampling_rate)).to(self.device) if pcs else None
        enhanced, enhanced_phase = apply_controls(
            output.magnitude.float(),
            output.phase.float(),
            magnitude,
            phase,
            config.compress_factor,
            attenuation_limit_db,
            exponents,
            torch.from_numpy(level).to(self.device) if pcs else None,
        )
        return self.waveform(enhanced, enhanced_phase, length=waveform.shape[-1]).cpu().numpy()

    def _frame_enhancer(self, attenuation_limit_db: float | None, dtype: torch.dtype | None) -> TorchFrameEnhancer:
        return TorchFrameEnhancer(self, attenuation_limit_db, dtype)


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """The autocast dtype for `dtype` (`None`, a torch dtype or a name such as "bfloat16"); `None` = float32."""
    if dtype is None or dtype == torch.float32:
        return None
    if dtype in (torch.bfloat16, torch.float16):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPE_NAMES:
        return DTYPE_NAMES[dtype.lower()]
    raise ValueError(
        f"dtype must be None, torch.float32/bfloat16/float16 or one of {', '.join(DTYPE_NAMES)}; got {dtype!r}."
    )


class HybridMPSENetEnhancer(WaveformEnhancementMixin, HybridMPSENetNetwork):
    """[`HybridMPSENetForSpeechEnhancement`] without transformers' model classes: the same `enhance` and
    `enhance_file`, the same outputs, from the same checkpoints, in a process 84–127 MiB smaller (PyTorch, the
    config class and the network only; the saving depends on which optional packages transformers finds).
    `hybrid-mpsenet enhance` runs on it.

    Example:
        ```python
        from hybrid_mpsenet.inference import HybridMPSENetEnhancer

        model = HybridMPSENetEnhancer.from_pretrained()  # bundled default; or a folder / Hub id
        clean = model.enhance(noisy, sampling_rate=48000)
        ```
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path | None = None, **kwargs) -> WaveformEnhancer:
        """[`HybridMPSENetNetwork.from_pretrained`]; with no name or the string `"default"`, the package's bundled
        checkpoint. A folder of another member of the family (a MUSE model, say) loads into that member's enhancer
        ([`MuseEnhancer`]), which has the same methods."""
        location = model_location(pretrained_model_name_or_path)
        if cls is HybridMPSENetEnhancer:
            member = architecture_of(location, **kwargs)
            if member is not None and member.load("enhancer") is not cls:
                return member.load("enhancer").from_pretrained(location, **kwargs)
        return super().from_pretrained(location, **kwargs)


class MuseEnhancer(WaveformEnhancementMixin, MuseNetwork):
    """[`HybridMPSENetEnhancer`] for MUSE models: the same `enhance` and `enhance_file`, without transformers' model
    classes.

    Example:
        ```python
        from hybrid_mpsenet.inference import MuseEnhancer

        model = MuseEnhancer.from_pretrained("muse-vb")  # the bundled conversion of MUSE's released weights
        clean = model.enhance(noisy, sampling_rate=16000)
        ```
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path | None = None, **kwargs) -> MuseEnhancer:
        """[`MuseNetwork.from_pretrained`]; bundled names (`"muse-vb"`) load the checkpoints shipped inside."""
        return super().from_pretrained(model_location(pretrained_model_name_or_path), **kwargs)
