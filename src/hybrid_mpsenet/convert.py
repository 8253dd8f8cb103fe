"""Convert checkpoints of the original MP-SENet and hybrid MP-SENet + Mamba repositories: generators (`g_...`) to
model folders, and training states (`g_...` + `do_...`) to run folders that `train --resume` continues."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import torch

from . import checkpointing
from .configuration_hybrid_mpsenet import PRESETS, HybridMPSENetConfig
from .configuration_muse import MuseConfig
from .feature_extraction_hybrid_mpsenet import HybridMPSENetFeatureExtractor
from .losses import MetricDiscriminator
from .modeling_hybrid_mpsenet import HybridMPSENetModel
from .modeling_muse import MuseModel
from .ownership import check_replaceable_folder
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

# MUSE's keys (huaidanquede/MUSE-Speech-Enhancement) -> ours, applied in order.
_MUSE_STAGES = {
    "encoder_level1": "level1",
    "encoder_level2": "level2",
    "latent": "bottom",
    "decoder_level2": "decoder2",
    "decoder_level1": "decoder1",
    "mag_refinement": "magnitude_refine",
    "pha_refinement": "phase_refine",
}
_MUSE_EMBEDDINGS = {
    "patch_embed_encoder_level1": "level1",
    "patch_embed_encoder_level2": "level2",
    "patch_embed_latent": "bottom",
    "patch_embed_decoder_level2": "decoder2",
    "patch_embed_decoder_level1": "decoder1",
    "mag_patch_embed_refinement": "magnitude_refine",
    "pha_patch_embed_refinement": "phase_refine",
}
MUSE_KEY_RENAMES: list[tuple[str, str]] = [
    *(
        (rf"^TCFTransformer\.{old}\.patch_embeds\.0\.patch_conv\.", f"unet.{new}.embedding.")
        for old, new in _MUSE_EMBEDDINGS.items()
    ),
    *(
        (rf"^TCFTransformer\.{old}\.mhca_blks\.0\.transformer_layers\.", f"unet.{new}.blocks.")
        for old, new in _MUSE_STAGES.items()
    ),
    (r"\.embedding\.offset_generator\.0\.", ".embedding.offset_depthwise."),
    (r"\.embedding\.offset_generator\.1\.", ".embedding.offset_pointwise."),
    (r"\.embedding\.dcn\.weight$", ".embedding.deformable_weight"),
    (r"\.embedding\.pwconv\.", ".embedding.pointwise."),
    (r"\.norm([12])\.body\.", r".norm\1."),
    (r"\.attn\.sca\.1\.", ".attn.channel_gate."),
    (r"\.attn\.dwconv\.0\.", ".attn.gate_pointwise."),
    (r"\.attn\.dwconv\.1\.", ".attn.gate_depthwise."),
    (r"\.attn\.qkv_dwconv\.", ".attn.qkv_depthwise."),
    (r"\.attn\.project_out\.", ".attn.output."),
    (r"\.attn\.refine_att\.conv_list\.", ".attn.position.convs."),
    (r"\.ffn\.project_in\.", ".ffn.input."),
    (r"\.ffn\.dwconv\.", ".ffn.depthwise."),
    (r"\.ffn\.project_out\.", ".ffn.output."),
    (r"^TCFTransformer\.down1_2\.body\.", "unet.down1.body."),
    (r"^TCFTransformer\.down2_3\.body\.", "unet.down2.body."),
    (r"^TCFTransformer\.up3_2\.body\.", "unet.up2.body."),
    (r"^TCFTransformer\.up2_1\.body\.", "unet.up1.body."),
    (r"\.body\.0\.", ".depthwise."),
    (r"\.body\.1\.", ".pointwise."),
    (r"^TCFTransformer\.reduce_chan_level2\.0\.", "unet.merge2."),
    (r"^TCFTransformer\.reduce_chan_level1\.0\.", "unet.merge1."),
    (r"^TCFTransformer\.mag_output\.0\.", "unet.magnitude_output."),
    (r"^TCFTransformer\.pha_output\.0\.", "unet.phase_output."),
    (r"^dense_encoder\.dense_conv_1\.", "encoder.input."),
    (r"^dense_encoder\.dense_conv_2\.", "encoder.output."),
    (r"^dense_encoder\.dense_block\.dense_block\.", "encoder.dense.layers."),
    (r"^(mask|phase)_decoder\.dense_block\.dense_block\.", r"\1_decoder.dense.layers."),
    (r"^(encoder\.(?:input|output|dense\.layers\.\d+)|(?:mask|phase)_decoder\.dense\.layers\.\d+)\.0\.", r"\1.conv."),
    (r"^(encoder\.(?:input|output|dense\.layers\.\d+)|(?:mask|phase)_decoder\.dense\.layers\.\d+)\.1\.", r"\1.norm."),
    (r"^(encoder\.(?:input|output|dense\.layers\.\d+)|(?:mask|phase)_decoder\.dense\.layers\.\d+)\.2\.", r"\1.act."),
    (r"^(mask|phase)_decoder\.\1_conv\.0\.", r"\1_decoder.upsample.expand."),
    (r"^(mask|phase)_decoder\.\1_conv\.2\.", r"\1_decoder.upsample.depthwise."),
    (r"^mask_decoder\.mask_conv\.3\.", "mask_decoder.project."),
    (r"^mask_decoder\.mask_conv\.4\.", "mask_decoder.norm."),
    (r"^mask_decoder\.mask_conv\.5\.", "mask_decoder.act."),
    (r"^mask_decoder\.mask_conv\.6\.", "mask_decoder.output."),
    (r"^mask_decoder\.lsigmoid\.", "mask_decoder.sigmoid."),
    (r"^phase_decoder\.phase_conv\.3\.", "phase_decoder.norm."),
    (r"^phase_decoder\.phase_conv\.4\.", "phase_decoder.act."),
    (r"^phase_decoder\.phase_conv_r\.", "phase_decoder.real."),
    (r"^phase_decoder\.phase_conv_i\.", "phase_decoder.imag."),
]
# MUSE's per-stage fusion of its paths (SKFF): with one path per stage, as released, it is a softmax over one value,
# the identity, so its weights are dropped.
MUSE_IDENTITY_KEYS = re.compile(r"^TCFTransformer\.\w+\.aggregate\.")

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


def rename_muse_key(key: str) -> str:
    """Map a state-dict key of the original MUSE code to this package's name."""
    for pattern, replacement in MUSE_KEY_RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def detect_variant(state_dict: dict[str, torch.Tensor]) -> str:
    """Tell `mpsenet`, `hybrid-large`, `hybrid-small` and `muse` apart by their (original) state-dict keys."""
    keys = list(state_dict)
    if any(k.startswith("TCFTransformer.") for k in keys):
        return "muse"
    if any(k.startswith("TSTransformer.") for k in keys):
        return "mpsenet"
    if any(re.match(r"mag_ts_transformer\.\d+\.mamba_t\.", k) for k in keys):
        return "hybrid-large"
    if any(re.match(r"mag_ts_transformer\.\d+\.mamba\.", k) for k in keys):
        return "hybrid-small"
    raise ValueError(
        "Cannot tell which architecture this checkpoint is: none of 'TSTransformer.*', 'TCFTransformer.*', "
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


def _read_original_config(config_json: str | Path | dict | None) -> dict:
    """The original `config.json` as a dict (empty when not given)."""
    if config_json is None or isinstance(config_json, dict):
        return config_json or {}
    try:
        raw = json.loads(Path(config_json).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"Could not read the original config {config_json}: {error}") from error
    if not isinstance(raw, dict):
        raise ValueError(f"The original config {config_json} is not a JSON object.")
    return raw


def original_config(config_json: str | Path | dict | None, state_dict: dict, variant: str) -> HybridMPSENetConfig:
    """Our config for an original checkpoint: the preset, the original `config.json` values, block counts read from
    the keys, and the original code's axis order and point-wise fusion."""
    raw = _read_original_config(config_json)
    values = {ours: raw[theirs] for theirs, ours in CONFIG_FIELDS.items() if theirs in raw}
    if "dense_channel" in values:  # the original FFN's GRU is twice as wide as the blocks
        values["ffn_hidden_size"] = 2 * values["dense_channel"]
    keys = list(state_dict)
    counts = {
        "num_shared_blocks": _count_blocks(keys, "TSTransformer" if variant == "mpsenet" else "shared_ts_transformer"),
        "num_magnitude_blocks": _count_blocks(keys, "mag_ts_transformer"),
        "num_phase_blocks": _count_blocks(keys, "phase_ts_transformer"),
    }
    values.update({k: v for k, v in counts.items() if v is not None})
    fusion = "pointwise" if PRESETS[variant]["fusion"] != "none" else "none"
    return HybridMPSENetConfig.from_preset(variant, **values, ts_transformer_axes="freq_time", fusion=fusion)


def _muse_model(state_dict: dict[str, torch.Tensor], config_json) -> tuple[MuseModel, dict[str, torch.Tensor]]:
    """Our MUSE model for an original MUSE generator, and its state dict under our names."""
    if any(re.search(r"\.mhca_blks\.[1-9]", key) for key in state_dict):
        raise ValueError("This MUSE checkpoint has stages of several paths; only one path per stage is supported.")
    raw = _read_original_config(config_json)
    values = {ours: raw[theirs] for theirs, ours in CONFIG_FIELDS.items() if theirs in raw}
    blocks = _count_blocks(list(state_dict), "TCFTransformer.encoder_level1.mhca_blks.0.transformer_layers")
    config = MuseConfig.from_preset("muse", **values, **({"num_blocks": blocks} if blocks else {}))
    renamed = {rename_muse_key(k): v for k, v in state_dict.items() if not MUSE_IDENTITY_KEYS.match(k)}
    return MuseModel(config), renamed


def _convert_generator(
    state_dict: dict[str, torch.Tensor], config_json, variant: str, **config_overrides
) -> tuple[HybridMPSENetModel | MuseModel, str]:
    """Our model holding an original generator state dict; returns it and the variant."""
    detected = detect_variant(state_dict)
    if variant == "auto":
        variant = detected
    elif variant not in (*PRESETS, "muse"):
        raise ValueError(f"Unknown variant {variant!r}; choose 'auto', 'muse' or one of {sorted(PRESETS)}.")
    if variant == "muse":
        if config_overrides:
            raise ValueError(f"MUSE checkpoints take no config overrides, got {sorted(config_overrides)}.")
        model, renamed = _muse_model(state_dict, config_json)
    else:
        config = original_config(config_json, state_dict, variant)
        config.update(config_overrides)
        model = HybridMPSENetModel(config)
        renamed = {rename_original_key(k): v for k, v in state_dict.items()}
    _check_keys(
        model.state_dict(),
        renamed,
        f"variant {variant!r}" + (f" (the keys look like {detected!r})" if detected != variant else ""),
    )
    model.load_state_dict(renamed, strict=True)
    return model.eval(), variant


def _check_keys(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], what: str) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(found) if expected[k].shape != found[k].shape)
    if missing or unexpected or mismatched:
        raise ValueError(
            f"The checkpoint does not fit {what}. Missing keys ({len(missing)}): {missing[:10]}; "
            f"unexpected keys ({len(unexpected)}): {unexpected[:10]}; shape mismatches: {mismatched[:10]}."
        )


def convert_original_checkpoint(
    checkpoint: str | Path,
    config_json: str | Path | dict | None = None,
    variant: str = "auto",
    output_dir: str | Path | None = None,
    overwrite: bool = False,
) -> HybridMPSENetModel:
    """Load an original generator checkpoint into a [`HybridMPSENetModel`] and optionally save it.

    The converted model computes what the original code computes at batch size 1 (its `time_transformer` ran along
    frequency and its cross-attention was point-wise; the config records both), and is batch-invariant.

    Args:
        checkpoint: file saved by the original training script (`g_XXXXXXXX`).
        config_json: the original `config.json` (STFT settings, channels); the presets' values when omitted.
        variant: `"auto"` (from the keys), `"mpsenet"`, `"hybrid-large"`, `"hybrid-small"` or `"muse"`.
        output_dir: if given, a `save_pretrained` folder (safetensors, config, preprocessor config) is written there
            atomically. An existing model folder this package wrote (unchanged) is replaced only with `overwrite`;
            any other non-empty folder is refused (see [`ownership`]).

    Raises:
        ValueError: unreadable checkpoint, unknown variant, or keys that do not fit the variant (listed).
    """
    if output_dir is not None:
        check_replaceable_folder(output_dir, overwrite, "model folder")
    model, variant = _convert_generator(load_original_state_dict(checkpoint), config_json, variant)
    if output_dir is not None:
        with atomic_directory(output_dir) as tmp:
            model.save_pretrained(tmp)
            HybridMPSENetFeatureExtractor.from_model_config(model.config).save_pretrained(tmp)
        logger.info("Converted %s (%s) to %s", checkpoint, variant, output_dir)
    return model


def convert_original_discriminator(state_dict: dict[str, torch.Tensor]) -> MetricDiscriminator:
    """Our [`MetricDiscriminator`] (same layers and keys) holding an original `MetricDiscriminator` state dict,
    spectral-norm vectors included; its width is read from the first convolution."""
    if "layers.0.weight_orig" not in state_dict:
        raise ValueError(
            "Not a MetricDiscriminator state dict: 'layers.0.weight_orig' is missing (first keys: "
            f"{list(state_dict)[:5]})."
        )
    discriminator = MetricDiscriminator(dim=int(state_dict["layers.0.weight_orig"].shape[0]))
    _check_keys(discriminator.state_dict(), state_dict, "MP-SENet's MetricDiscriminator")
    discriminator.load_state_dict(state_dict, strict=True)
    return discriminator


def _reindex_optimizer(state: dict, original_names: list[str], module: torch.nn.Module, rename, what: str) -> dict:
    """An original optimiser state dict (parameters numbered in the original module's order) renumbered for
    `module`'s parameter order."""
    ours = {name: index for index, (name, _) in enumerate(module.named_parameters())}
    groups = state.get("param_groups", [])
    if len(groups) != 1 or len(groups[0]["params"]) != len(original_names) or len(ours) != len(original_names):
        raise ValueError(
            f"The {what} optimiser state has {sum(len(g['params']) for g in groups)} parameters in {len(groups)} "
            f"groups; expected one group of {len(original_names)} (the checkpoint's parameters)."
        )
    position = {index: ours[rename(name)] for index, name in zip(groups[0]["params"], original_names, strict=True)}
    return {
        "state": {position[index]: value for index, value in state["state"].items()},
        "param_groups": [{**groups[0], "params": list(range(len(ours)))}],
    }


def convert_original_training_state(
    generator_checkpoint: str | Path,
    discriminator_checkpoint: str | Path,
    output_dir: str | Path,
    config_json: str | Path | dict | None = None,
    variant: str = "auto",
    batch_mixed: bool = False,
    overwrite: bool = False,
) -> Path:
    """Turn an original run's `g_XXXXXXXX` and `do_XXXXXXXX` into a run folder that `train --resume` continues.

    The folder gets `checkpoints/step-N` (N = the original `steps` + 1, the updates done) with the generator, the
    discriminator (spectral-norm vectors included), both AdamW states renumbered for this package's parameter order,
    and both ExponentialLR schedules as they stand in an uninterrupted run during the saved epoch (the original
    `train.py`, when it resumes, rebuilds them with `last_epoch=epoch`, which decays the rate once more); the run goes
    on from the start of the saved epoch, as the original does. The original saves no random state: the resumed run
    is seeded from its `--seed`.

    Args:
        batch_mixed: reproduce the original's mixing of batch items in its Transformers
            (`ts_transformer_axes="batch_mixed"`) for a bit-exact continuation; by default the converted generator is
            batch-invariant (`"freq_time"`).
        overwrite: replace an existing run folder this package wrote and nothing has changed since.

    Raises:
        ValueError: unreadable files, or states that do not fit each other (the mismatching keys are named). Nothing
            is written then.
    """
    check_replaceable_folder(output_dir, overwrite, "run folder")
    axes = {"ts_transformer_axes": "batch_mixed"} if batch_mixed else {}
    generator_state = load_original_state_dict(generator_checkpoint)
    generator, _ = _convert_generator(generator_state, config_json, variant, **axes)
    try:
        training = torch.load(discriminator_checkpoint, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"Could not read checkpoint {discriminator_checkpoint}: {error}") from error
    needed = {"discriminator", "optim_g", "optim_d", "steps", "epoch"}
    if not isinstance(training, dict) or not needed <= set(training):
        found = sorted(training) if isinstance(training, dict) else type(training).__name__
        raise ValueError(
            f"{discriminator_checkpoint} is not an MP-SENet do_ checkpoint: expected {sorted(needed)}, found {found}."
        )
    discriminator = convert_original_discriminator(training["discriminator"])
    original_d = [k for k in training["discriminator"] if not k.endswith(("weight_u", "weight_v"))]
    optim_states = {
        "generator": _reindex_optimizer(
            training["optim_g"], list(generator_state), generator, rename_original_key, "generator"
        ),
        "discriminator": _reindex_optimizer(training["optim_d"], original_d, discriminator, str, "discriminator"),
    }
    raw = _read_original_config(config_json)
    gamma = float(raw.get("lr_decay", 0.99))
    optimizers, schedulers = {}, {}
    for name, module in (("generator", generator), ("discriminator", discriminator)):
        optimizer = torch.optim.AdamW(module.parameters())
        try:
            optimizer.load_state_dict(optim_states[name])
        except (ValueError, KeyError) as error:
            raise ValueError(
                f"{discriminator_checkpoint}: the {name} optimiser state does not fit ({error})."
            ) from error
        # The schedule of an uninterrupted run inside epoch `epoch`: `epoch` decays done, the saved learning rate.
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma)
        scheduler.base_lrs = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
        scheduler.last_epoch = int(training["epoch"])
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
        schedulers[name], optimizers[name] = scheduler, optimizer
    step = int(training["steps"]) + 1
    counters = {"step": step, "epoch": int(training["epoch"]), "batch_in_epoch": 0, "best_pesq": -math.inf,
                "skipped_steps": 0, "failed_pesq": 0, "train_seconds": 0.0}  # fmt: skip
    with atomic_directory(output_dir, "run") as tmp:
        checkpointing.write_run_identity(tmp, None)
        folder = tmp / "checkpoints" / checkpointing.checkpoint_name(step)
        folder.mkdir(parents=True)
        checkpointing.save_weights(folder, generator, discriminator, discriminator.dim)
        checkpointing.save_optimizers(folder, optimizers)
        checkpointing.save_trainer_state(
            folder, counters, {name: s.state_dict() for name, s in schedulers.items()}, None, rng_states=False
        )
    logger.info(
        "Converted %s and %s to the run folder %s (step %d)",
        generator_checkpoint,
        discriminator_checkpoint,
        output_dir,
        step,
    )
    return Path(output_dir)
