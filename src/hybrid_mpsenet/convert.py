"""Convert generator checkpoints of the original MP-SENet and hybrid MP-SENet + Mamba repositories."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from .configuration_hybrid_mpsenet import PRESETS, HybridMPSENetConfig
from .feature_extraction_hybrid_mpsenet import HybridMPSENetFeatureExtractor
from .modeling_hybrid_mpsenet import HybridMPSENetModel
from .utils import atomic_directory

logger = logging.getLogger(__name__)

# Original key prefix -> ours, applied in order (first match wins for each rule).
KEY_RENAMES: list[tuple[str, str]] = [
    (r"^TSTransformer\.", "shared_blocks."),
    (r"^shared_ts_transformer\.", "shared_blocks."),
    (r"^mag_ts_transformer\.", "magnitude_blocks."),
    (r"^phase_ts_transformer\.", "phase_blocks."),
    (r"^mag_proj\.", "magnitude_projection."),
    (r"^phase_proj\.", "phase_projection."),
    (r"^cross_attention\.phase_to_mag_attn\.", "fusion.phase_to_magnitude."),
    (r"^cross_attention\.mag_to_phase_attn\.", "fusion.magnitude_to_phase."),
    (r"^dense_encoder\.dense_conv_1\.0\.", "encoder.input_conv.conv."),
    (r"^dense_encoder\.dense_conv_1\.1\.", "encoder.input_conv.norm."),
    (r"^dense_encoder\.dense_conv_1\.2\.", "encoder.input_conv.activation."),
    (r"^dense_encoder\.dense_conv_2\.0\.", "encoder.output_conv.conv."),
    (r"^dense_encoder\.dense_conv_2\.1\.", "encoder.output_conv.norm."),
    (r"^dense_encoder\.dense_conv_2\.2\.", "encoder.output_conv.activation."),
    (r"^dense_encoder\.", "encoder."),
    (r"dense_block\.dense_block\.(\d+)\.1\.", r"dense_block.layers.\1.conv."),
    (r"dense_block\.dense_block\.(\d+)\.2\.", r"dense_block.layers.\1.norm."),
    (r"dense_block\.dense_block\.(\d+)\.3\.", r"dense_block.layers.\1.activation."),
    (r"^mask_decoder\.mask_conv\.0\.", "mask_decoder.upsample."),
    (r"^mask_decoder\.mask_conv\.1\.", "mask_decoder.norm."),
    (r"^mask_decoder\.mask_conv\.2\.", "mask_decoder.activation."),
    (r"^mask_decoder\.mask_conv\.3\.", "mask_decoder.output_conv."),
    (r"^mask_decoder\.lsigmoid\.", "mask_decoder.mask_activation."),
    (r"^phase_decoder\.phase_conv\.0\.", "phase_decoder.upsample."),
    (r"^phase_decoder\.phase_conv\.1\.", "phase_decoder.norm."),
    (r"^phase_decoder\.phase_conv\.2\.", "phase_decoder.activation."),
    (r"^phase_decoder\.phase_conv_r\.", "phase_decoder.real_conv."),
    (r"^phase_decoder\.phase_conv_i\.", "phase_decoder.imag_conv."),
]

# Fields of the original config.json that map onto ours.
CONFIG_FIELDS = {
    "sampling_rate": "sampling_rate",
    "n_fft": "n_fft",
    "hop_size": "hop_length",
    "win_size": "win_length",
    "compress_factor": "compress_factor",
    "dense_channel": "dense_channel",
    "beta": "beta",
}


def rename_original_key(key: str) -> str:
    """Map a state-dict key of the original code to this package's name."""
    for pattern, replacement in KEY_RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def detect_variant(state_dict: dict[str, torch.Tensor]) -> str:
    """Tell `mpsenet`, `hybrid-large` and `hybrid-small` apart by their (original) state-dict keys."""
    keys = list(state_dict)
    if any(k.startswith("TSTransformer.") for k in keys):
        return "mpsenet"
    if any(re.match(r"mag_ts_transformer\.\d+\.mamba_t\.", k) for k in keys):
        return "hybrid-large"
    if any(re.match(r"mag_ts_transformer\.\d+\.mamba\.", k) for k in keys):
        return "hybrid-small"
    raise ValueError(
        "Cannot tell which architecture this checkpoint is: none of 'TSTransformer.*', "
        "'mag_ts_transformer.N.mamba_t.*' or 'mag_ts_transformer.N.mamba.*' is present. First keys: "
        f"{keys[:5]}"
    )


def _count_blocks(keys: list[str], prefix: str) -> int | None:
    indices = {int(m.group(1)) for k in keys if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))}
    return max(indices) + 1 if indices else None


def load_original_state_dict(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """Read `{"generator": state_dict}` (or a bare state dict) safely, with `torch.load(weights_only=True)`."""
    try:
        data = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"Could not read checkpoint {checkpoint}: {error}") from error
    if isinstance(data, dict) and "generator" in data:
        data = data["generator"]
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(
            f"{checkpoint} is not a generator checkpoint: expected {{'generator': state_dict}} or a state dict of "
            "tensors."
        )
    return data


def original_config(config_json: str | Path | dict | None, state_dict: dict, variant: str) -> HybridMPSENetConfig:
    """Our config for an original checkpoint: the preset, the original `config.json` values, block counts read from
    the keys, and the original code's axis order and point-wise fusion."""
    values = {}
    if config_json is not None:
        if isinstance(config_json, dict):
            raw = config_json
        else:
            try:
                raw = json.loads(Path(config_json).read_text())
            except (OSError, json.JSONDecodeError) as error:
                raise ValueError(f"Could not read the original config {config_json}: {error}") from error
        values = {ours: raw[theirs] for theirs, ours in CONFIG_FIELDS.items() if theirs in raw}
    keys = list(state_dict)
    counts = {
        "num_shared_blocks": _count_blocks(keys, "TSTransformer" if variant == "mpsenet" else "shared_ts_transformer"),
        "num_magnitude_blocks": _count_blocks(keys, "mag_ts_transformer"),
        "num_phase_blocks": _count_blocks(keys, "phase_ts_transformer"),
    }
    values.update({k: v for k, v in counts.items() if v is not None})
    fusion = "pointwise" if PRESETS[variant]["fusion"] != "none" else "none"
    return HybridMPSENetConfig.from_preset(variant, **values, ts_transformer_axes="freq_time", fusion=fusion)


def convert_original_checkpoint(
    checkpoint: str | Path,
    config_json: str | Path | dict | None = None,
    variant: str = "auto",
    output_dir: str | Path | None = None,
) -> HybridMPSENetModel:
    """Load an original generator checkpoint into a [`HybridMPSENetModel`] and optionally save it.

    The converted model computes what the original code computes at batch size 1 (its `time_transformer` ran along
    frequency and its cross-attention was point-wise; the config records both), and is batch-invariant.

    Args:
        checkpoint: file saved by the original training script (`g_XXXXXXXX`).
        config_json: the original `config.json` (STFT settings, channels); the presets' values when omitted.
        variant: `"auto"` (from the keys), `"mpsenet"`, `"hybrid-large"` or `"hybrid-small"`.
        output_dir: if given, a `save_pretrained` folder (safetensors, config, preprocessor config) is written there
            atomically.

    Raises:
        ValueError: unreadable checkpoint, unknown variant, or keys that do not fit the variant (listed).
    """
    state_dict = load_original_state_dict(checkpoint)
    detected = detect_variant(state_dict)
    if variant == "auto":
        variant = detected
    elif variant not in PRESETS:
        raise ValueError(f"Unknown variant {variant!r}; choose 'auto' or one of {sorted(PRESETS)}.")
    config = original_config(config_json, state_dict, variant)
    model = HybridMPSENetModel(config)
    renamed = {rename_original_key(k): v for k, v in state_dict.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(renamed))
    unexpected = sorted(set(renamed) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(renamed) if expected[k].shape != renamed[k].shape)
    if missing or unexpected or mismatched:
        hint = f" (the keys look like {detected!r})" if detected != variant else ""
        raise ValueError(
            f"The checkpoint does not fit variant {variant!r}{hint}. Missing keys ({len(missing)}): {missing[:10]}; "
            f"unexpected keys ({len(unexpected)}): {unexpected[:10]}; shape mismatches: {mismatched[:10]}."
        )
    model.load_state_dict(renamed, strict=True)
    model.eval()
    if output_dir is not None:
        with atomic_directory(output_dir) as tmp:
            model.save_pretrained(tmp)
            HybridMPSENetFeatureExtractor.from_model_config(config).save_pretrained(tmp)
        logger.info("Converted %s (%s) to %s", checkpoint, variant, output_dir)
    return model
