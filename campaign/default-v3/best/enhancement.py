"""[`HybridMPSENetForSpeechEnhancement`]: [`HybridMPSENetModel`] with waveform and file enhancement."""

from __future__ import annotations

from pathlib import Path

from .feature_extraction_hybrid_mpsenet import HybridMPSENetFeatureExtractor
from .inference import WaveformEnhancementMixin, model_location
from .modeling_hybrid_mpsenet import HybridMPSENetModel


class HybridMPSENetForSpeechEnhancement(WaveformEnhancementMixin, HybridMPSENetModel):
    """[`HybridMPSENetModel`] with waveform and file enhancement.

    The weights are those of [`HybridMPSENetModel`], so any checkpoint of the family loads into either class.
    `from_pretrained()` without a name loads the default checkpoint shipped inside the package.

    Example:
        ```python
        from hybrid_mpsenet import HybridMPSENetForSpeechEnhancement

        model = HybridMPSENetForSpeechEnhancement.from_pretrained()
        clean = model.enhance(noisy, sampling_rate=48000)  # (samples,) or (channels, samples)
        ```
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path | None = None, *args, **kwargs):
        """Like `PreTrainedModel.from_pretrained`; with no name or the string `"default"`, the package's bundled
        checkpoint (offline; a local folder named `default` is reached as `"./default"` or a `Path`)."""
        return super().from_pretrained(model_location(pretrained_model_name_or_path), *args, **kwargs)

    def save_pretrained(self, save_directory: str | Path, *args, **kwargs) -> None:
        """Like `PreTrainedModel.save_pretrained`, plus the matching `preprocessor_config.json`, so the folder
        also serves `AutoFeatureExtractor` and the pipeline."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            HybridMPSENetFeatureExtractor.from_model_config(self.config).save_pretrained(save_directory)
