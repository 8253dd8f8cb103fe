"""hybrid-mpsenet: MP-SENet speech enhancement with parallel Mamba and Transformer blocks."""

from transformers import AutoConfig, AutoFeatureExtractor, AutoModel
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_hybrid_mpsenet import PRESETS, HybridMPSENetConfig
from .convert import convert_original_checkpoint
from .enhancement import HybridMPSENetForSpeechEnhancement
from .feature_extraction_hybrid_mpsenet import HybridMPSENetFeatureExtractor
from .mamba import Mamba, selective_scan, selective_scan_reference
from .modeling_hybrid_mpsenet import HybridMPSENetModel, HybridMPSENetOutput, HybridMPSENetPreTrainedModel
from .pipeline import SpeechEnhancementPipeline

__version__ = "0.1.0"

AutoConfig.register(HybridMPSENetConfig.model_type, HybridMPSENetConfig, exist_ok=True)
AutoModel.register(HybridMPSENetConfig, HybridMPSENetModel, exist_ok=True)
AutoFeatureExtractor.register(HybridMPSENetConfig, HybridMPSENetFeatureExtractor, exist_ok=True)
# Saved folders carry the model code and an auto_map, so they also load with trust_remote_code=True
# where this package is not installed.
HybridMPSENetConfig.register_for_auto_class()
HybridMPSENetModel.register_for_auto_class("AutoModel")
HybridMPSENetFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
PIPELINE_REGISTRY.register_pipeline(
    "speech-enhancement",
    pipeline_class=SpeechEnhancementPipeline,
    pt_model=HybridMPSENetForSpeechEnhancement,
    type="audio",
)


__all__ = [
    "PRESETS",
    "HybridMPSENetConfig",
    "HybridMPSENetFeatureExtractor",
    "HybridMPSENetForSpeechEnhancement",
    "HybridMPSENetModel",
    "HybridMPSENetOutput",
    "HybridMPSENetPreTrainedModel",
    "Mamba",
    "SpeechEnhancementPipeline",
    "convert_original_checkpoint",
    "selective_scan",
    "selective_scan_reference",
]
