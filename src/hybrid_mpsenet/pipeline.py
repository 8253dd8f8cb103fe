"""The `speech-enhancement` pipeline: `pipeline("speech-enhancement", model=...)` on paths, arrays or lists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Pipeline

from .audio import DEFAULT_OVERLAP_SECONDS, open_audio


class SpeechEnhancementPipeline(Pipeline):
    """Enhances speech with a [`HybridMPSENetForSpeechEnhancement`].

    Inputs: an audio file path, a `(samples,)` or `(channels, samples)` array or tensor (then pass
    `sampling_rate=`, default the model's rate), a `{"array": ..., "sampling_rate": ...}` dict as produced by
    `datasets`, or a list of any of these.

    Returns `{"audio": np.ndarray, "sampling_rate": int}` per input, the audio shaped like the input (file
    audio is `(channels, samples)` when multi-channel) and at the input's rate.

    Keyword arguments at call time: `sampling_rate` (required for arrays and tensors), `chunk_seconds`,
    `overlap_seconds`, `downmix`, `attenuation_limit_db`, `pcs` (see `enhance`). `batch_size` is accepted, but
    inputs are enhanced one after another: each is already cut into chunks of `chunk_seconds`, and inputs of
    different lengths would only be padded.
    """

    # The model does its own feature extraction; loading no other component also avoids remote-code prompts.
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def _sanitize_parameters(
        self,
        sampling_rate: int | None = None,
        chunk_seconds: float | None = None,
        overlap_seconds: float | None = None,
        downmix: bool | None = None,
        attenuation_limit_db: float | None = None,
        pcs: bool | None = None,
        **kwargs: Any,
    ) -> tuple[dict, dict, dict]:
        preprocess = {"sampling_rate": sampling_rate} if sampling_rate is not None else {}
        forward = {
            key: value
            for key, value in (
                ("chunk_seconds", chunk_seconds),
                ("overlap_seconds", overlap_seconds),
                ("downmix", downmix),
                ("attenuation_limit_db", attenuation_limit_db),
                ("pcs", pcs),
            )
            if value is not None
        }
        return preprocess, forward, {}

    def preprocess(self, inputs: Any, sampling_rate: int | None = None) -> dict:
        if isinstance(inputs, (str, Path)):
            with open_audio(inputs) as handle:
                audio = handle.read(dtype="float32", always_2d=True).T
                rate = handle.samplerate
            return {"waveform": audio[0] if audio.shape[0] == 1 else audio, "sampling_rate": rate}
        if isinstance(inputs, dict):
            if "array" not in inputs or "sampling_rate" not in inputs:
                raise ValueError(f"A dict input needs 'array' and 'sampling_rate' keys, got {sorted(inputs)}.")
            return {"waveform": np.asarray(inputs["array"]), "sampling_rate": int(inputs["sampling_rate"])}
        if isinstance(inputs, (np.ndarray, torch.Tensor)):
            if sampling_rate is None:
                raise ValueError(
                    "An array or tensor input needs its rate: pass sampling_rate=<Hz>, or a dict "
                    "{'array': ..., 'sampling_rate': ...}."
                )
            return {"waveform": inputs, "sampling_rate": sampling_rate}
        raise ValueError(
            f"Unsupported input of type {type(inputs).__name__}; pass a path, an array/tensor, or a dict with "
            f"'array' and 'sampling_rate'."
        )

    def get_iterator(
        self, inputs, num_workers: int, batch_size: int, preprocess_params, forward_params, postprocess_params
    ):
        # One input at a time (see the class docstring); transformers' padding collator has nothing to pad with.
        return super().get_iterator(inputs, num_workers, 1, preprocess_params, forward_params, postprocess_params)

    def _forward(
        self,
        model_inputs: dict,
        chunk_seconds: float | None = None,
        overlap_seconds: float = DEFAULT_OVERLAP_SECONDS,
        downmix: bool = False,
        attenuation_limit_db: float | None = None,
        pcs: bool = False,
    ) -> dict:
        audio = self.model.enhance(
            model_inputs["waveform"],
            model_inputs["sampling_rate"],
            chunk_seconds=chunk_seconds,
            overlap_seconds=overlap_seconds,
            downmix=downmix,
            attenuation_limit_db=attenuation_limit_db,
            pcs=pcs,
        )
        return {"audio": audio, "sampling_rate": model_inputs["sampling_rate"]}

    def postprocess(self, model_outputs: dict) -> dict:
        audio = model_outputs["audio"]
        if isinstance(audio, torch.Tensor):
            audio = audio.numpy()
        return {"audio": audio, "sampling_rate": model_outputs["sampling_rate"]}
