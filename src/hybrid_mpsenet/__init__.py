"""hybrid-mpsenet: MP-SENet speech enhancement with parallel Mamba and Transformer blocks.

Importing the package is cheap: the public names below load their modules (and PyTorch, transformers) on first
use, and the Auto classes and the `speech-enhancement` pipeline are registered when transformers' own Auto and
pipeline modules are imported (or at once if they already are), so `AutoModel.from_pretrained(...)` and
`pipeline("speech-enhancement", ...)` work after `import hybrid_mpsenet` without paying for them in the CLI.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import wrapt

from .registry import ARCHITECTURES

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "PRESETS": "configuration_hybrid_mpsenet",
    "HybridMPSENetConfig": "configuration_hybrid_mpsenet",
    "HybridMPSENetFeatureExtractor": "feature_extraction_hybrid_mpsenet",
    "HybridMPSENetForSpeechEnhancement": "enhancement",
    "HybridMPSENetModel": "modeling_hybrid_mpsenet",
    "HybridMPSENetEnhancer": "inference",
    "HybridMPSENetNetwork": "network",
    "HybridMPSENetOutput": "network",
    "HybridMPSENetPreTrainedModel": "modeling_hybrid_mpsenet",
    "Mamba": "mamba",
    "MuseConfig": "configuration_muse",
    "MuseEnhancer": "inference",
    "MuseForSpeechEnhancement": "enhancement",
    "MuseModel": "modeling_muse",
    "ARCHITECTURES": "registry",
    "SpeechEnhancementPipeline": "pipeline",
    "convert_original_checkpoint": "convert",
    "selective_scan": "mamba",
    "selective_scan_reference": "mamba",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # static analysers see the names; at run time __getattr__ loads them
    from .configuration_hybrid_mpsenet import PRESETS, HybridMPSENetConfig
    from .configuration_muse import MuseConfig
    from .convert import convert_original_checkpoint
    from .enhancement import HybridMPSENetForSpeechEnhancement, MuseForSpeechEnhancement
    from .feature_extraction_hybrid_mpsenet import HybridMPSENetFeatureExtractor
    from .inference import HybridMPSENetEnhancer, MuseEnhancer
    from .mamba import Mamba, selective_scan, selective_scan_reference
    from .modeling_hybrid_mpsenet import HybridMPSENetModel, HybridMPSENetPreTrainedModel
    from .modeling_muse import MuseModel
    from .network import HybridMPSENetNetwork, HybridMPSENetOutput
    from .pipeline import SpeechEnhancementPipeline


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


def _register_when_imported(transformers_module: str, own_module: str, register: Callable[[Any], None]) -> None:
    """Call `register(own)` once `own_module` is imported, and import it as soon as `transformers_module` is.

    The registration lives on our module's import hook, not transformers', because our modules import those
    transformers modules themselves: a hook on transformers' side would run while ours is half initialised.
    """
    own = f"{__name__}.{own_module}"

    @wrapt.when_imported(transformers_module)
    def _import_own(_: Any) -> None:
        if own not in sys.modules:
            importlib.import_module(own)

    wrapt.register_post_import_hook(register, own)


def _register_config(name: str) -> Callable[[Any], None]:
    def register(module: Any) -> None:
        from transformers import AutoConfig

        config = getattr(module, name)
        AutoConfig.register(config.model_type, config, exist_ok=True)

    return register


def _register_model(name: str) -> Callable[[Any], None]:
    def register(module: Any) -> None:
        from transformers import AutoModel

        model = getattr(module, name)
        AutoModel.register(model.config_class, model, exist_ok=True)

    return register


def _register_feature_extractor(module: Any) -> None:
    from transformers import AutoFeatureExtractor

    for architecture in ARCHITECTURES.values():
        config = architecture.load("config")
        AutoFeatureExtractor.register(config, module.HybridMPSENetFeatureExtractor, exist_ok=True)


def _register_pipeline(module: Any) -> None:
    from transformers.pipelines import PIPELINE_REGISTRY

    from .enhancement import HybridMPSENetForSpeechEnhancement
    from .inference import DEFAULT_MODEL_DIR

    PIPELINE_REGISTRY.register_pipeline(
        "speech-enhancement",
        pipeline_class=module.SpeechEnhancementPipeline,
        pt_model=HybridMPSENetForSpeechEnhancement,
        default={"model": (str(DEFAULT_MODEL_DIR), None)},  # the bundled checkpoint: no download
        type="audio",
    )


# Every member of the family's registry (a module of its own without imports beyond the standard library).
for _architecture in ARCHITECTURES.values():
    for _auto_module, _role, _register in (
        ("transformers.models.auto.configuration_auto", "config", _register_config),
        ("transformers.models.auto.modeling_auto", "model", _register_model),
    ):
        _module, _, _name = getattr(_architecture, _role).rpartition(".")
        _register_when_imported(_auto_module, _module.lstrip("."), _register(_name))
_register_when_imported(
    "transformers.models.auto.feature_extraction_auto", "feature_extraction_hybrid_mpsenet", _register_feature_extractor
)
_register_when_imported("transformers.pipelines", "pipeline", _register_pipeline)
