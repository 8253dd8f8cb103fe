"""[`HybridMPSENetForSpeechEnhancement`] and [`MuseForSpeechEnhancement`]: the family's transformers models with
waveform and file enhancement."""

from __future__ import annotations

from pathlib import Path

from .feature_extraction_hybrid_mpsenet import HybridMPSENetFeatureExtractor
from .inference import WaveformEnhancementMixin, model_location
from .modeling_hybrid_mpsenet import HybridMPSENetModel
from .modeling_muse import MuseModel
from .registry import architecture_of


class EnhancementModelMixin(WaveformEnhancementMixin):
    """`from_pretrained` that knows the bundled names, and `save_pretrained` that adds the feature extractor."""

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


class HybridMPSENetForSpeechEnhancement(EnhancementModelMixin, HybridMPSENetModel):
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
        checkpoint. A folder of another member of the family (a MUSE model, say) loads into that member's class
        ([`MuseForSpeechEnhancement`]), which has the same methods."""
        location = model_location(pretrained_model_name_or_path)
        if cls is HybridMPSENetForSpeechEnhancement:
            hub = {key: kwargs.get(key) for key in ("revision", "cache_dir", "token", "local_files_only")}
            member = architecture_of(location, **hub)
            if member is not None and member.load("enhancement") is not cls:
                return member.load("enhancement").from_pretrained(location, *args, **kwargs)
        return super().from_pretrained(location, *args, **kwargs)


class MuseForSpeechEnhancement(EnhancementModelMixin, MuseModel):
    """[`MuseModel`] with waveform and file enhancement (see [`HybridMPSENetForSpeechEnhancement`]).

    Example:
        ```python
        from hybrid_mpsenet import MuseForSpeechEnhancement

        model = MuseForSpeechEnhancement.from_pretrained("muse-vb")
        clean = model.enhance(noisy, sampling_rate=16000)
        ```
    """
