"""The model family's architectures by model type: [`ARCHITECTURES`] maps each `model_type` to its config class,
its model classes and its presets, and [`SpectralModel`] states what every member provides. Training, the CLI, the
Hub card, ONNX export and the loaders look classes up here instead of naming one architecture, so a new member is
one [`Architecture`] entry (see `register_architecture`).

Classes are named as `"module.Class"` (`".module.Class"` for a module of this package) and imported on first use:
the CLI reads this module without importing PyTorch or transformers.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "SpectralModel",
    "architecture_of",
    "architecture_of_preset",
    "register_architecture",
]


@runtime_checkable
class SpectralModel(Protocol):
    """What every model of the family provides.

    `config` carries the STFT settings (`sampling_rate`, `n_fft`, `hop_length`, `win_length`, `compress_factor`,
    `stft_epsilons`) and `causal`; `forward(magnitude, phase, ...)` takes compressed magnitude and phase
    `(batch, freq, time)` and returns an output with `.magnitude` and `.phase` of the same shape (a causal member
    also takes a stream `cache` dict); `spectrum` and `waveform` are the STFT pair with the member's conventions.
    """

    config: Any

    def forward(self, magnitude: Any, phase: Any, *args: Any, **kwargs: Any) -> Any: ...

    def spectrum(self, waveform: Any) -> tuple[Any, Any, Any]: ...

    def waveform(self, magnitude: Any, phase: Any, length: int | None = None) -> Any: ...


@dataclass(frozen=True)
class Architecture:
    """One member of the family. Each class is `"module.Class"` (`".module.Class"` for a module of this package);
    `presets` names a dict of preset name -> config overrides."""

    model_type: str
    config: str
    model: str  # the transformers `PreTrainedModel` (training, saving, AutoModel)
    enhancement: str  # the model with `enhance`, `enhance_file` and `stream`
    enhancer: str  # the lean `nn.Module` with the same methods, without transformers' model classes
    presets: str

    def load(self, role: str) -> Any:
        """The class (or presets dict) for `role`: one of `config`, `model`, `enhancement`, `enhancer`, `presets`."""
        module_name, _, name = getattr(self, role).rpartition(".")
        return getattr(importlib.import_module(module_name, __package__), name)


ARCHITECTURES: dict[str, Architecture] = {
    "hybrid_mpsenet": Architecture(
        model_type="hybrid_mpsenet",
        config=".configuration_hybrid_mpsenet.HybridMPSENetConfig",
        model=".modeling_hybrid_mpsenet.HybridMPSENetModel",
        enhancement=".enhancement.HybridMPSENetForSpeechEnhancement",
        enhancer=".inference.HybridMPSENetEnhancer",
        presets=".configuration_hybrid_mpsenet.PRESETS",
    ),
    "muse": Architecture(
        model_type="muse",
        config=".configuration_muse.MuseConfig",
        model=".modeling_muse.MuseModel",
        enhancement=".enhancement.MuseForSpeechEnhancement",
        enhancer=".inference.MuseEnhancer",
        presets=".configuration_muse.MUSE_PRESETS",
    ),
}


def register_architecture(architecture: Architecture) -> None:
    """Add (or replace) a member of the family."""
    ARCHITECTURES[architecture.model_type] = architecture


def architecture_of(location: str | Path, **hub: Any) -> Architecture | None:
    """The member whose model is at `location` (a folder or Hub id; `hub`: `revision`, `cache_dir`, `token`,
    `local_files_only`), told by its `config.json`'s `model_type`; None when there is no readable config naming a
    member (the member's own loader then reports what is wrong, in its words)."""
    from transformers.utils import CONFIG_NAME, cached_file

    try:
        path = cached_file(str(location), CONFIG_NAME, **{k: v for k, v in hub.items() if v is not None})
        model_type = json.loads(Path(path).read_text()).get("model_type")
    except (OSError, ValueError, AttributeError, UnicodeDecodeError):
        return None
    return ARCHITECTURES.get(model_type)


def architecture_of_preset(name: str) -> Architecture | None:
    """The member that has a preset called `name`, or None."""
    for architecture in ARCHITECTURES.values():
        if name in architecture.load("presets"):
            return architecture
    return None
