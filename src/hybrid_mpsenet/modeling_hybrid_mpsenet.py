"""PyTorch hybrid MP-SENet as a transformers model: [`HybridMPSENetModel`] is the network of
`hybrid_mpsenet.network` (MP-SENet's dense encoder and magnitude/phase decoders around a configurable stack of
TS-Transformer and Mamba blocks, with optional magnitude/phase branches fused by cross-attention) with
`PreTrainedModel`'s loading, saving, Hub and training machinery, strict loading, and growing by added blocks.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from .configuration_hybrid_mpsenet import HybridMPSENetConfig
from .network import (
    BranchFusion,
    HybridMPSENetLayers,
    HybridMPSENetOutput,
    MambaBlock,
    StrictPreTrainedLoading,
    TransformerBlock,
    TSTransformerBlock,
)

__all__ = ["HybridMPSENetModel", "HybridMPSENetOutput", "HybridMPSENetPreTrainedModel"]


@torch.no_grad()
def _start_as_identity(module: nn.Module) -> None:
    """Make an added layer of [`HybridMPSENetModel.grow`] pass its residual stream through unchanged."""
    if isinstance(module, MambaBlock):
        for mamba in module.mambas():
            mamba.out_proj.weight.zero_()
    elif isinstance(module, nn.Conv2d):  # a 1x1 branch projection
        module.weight.copy_(torch.eye(module.out_channels, dtype=module.weight.dtype)[:, :, None, None])
        module.bias.zero_()
    else:  # the Transformer blocks of a TS-Transformer or a fusion are residual branches that end in a LayerNorm
        for block in module.modules():
            if isinstance(block, TransformerBlock):
                block.norm3.weight.zero_()
                block.norm3.bias.zero_()


@torch.no_grad()
def _check_same_output(model: nn.Module, grown: nn.Module, changes: dict) -> None:
    """Raise unless `grown` enhances a random spectrum exactly as `model` does (both in eval mode)."""
    bins = model.config.num_freq_bins
    generator = torch.Generator().manual_seed(0)
    magnitude = torch.rand(1, bins, 24, generator=generator)
    phase = (torch.rand(1, bins, 24, generator=generator) * 2 - 1) * torch.pi
    modes = model.training, grown.training
    model.eval()
    grown.eval()
    try:
        before = model(magnitude, phase).complex_spectrum
        after = grown(magnitude, phase).complex_spectrum
    finally:
        model.train(modes[0])
        grown.train(modes[1])
    error = (after - before).abs().max().item()
    if not error <= 1e-5 * before.abs().max().item():
        raise ValueError(
            f"grow({', '.join(sorted(changes))}) changes what the existing weights compute (largest difference "
            f"{error:.3g}); keep the settings of the existing layers (axes, attention keys and values) as they are."
        )


class HybridMPSENetPreTrainedModel(StrictPreTrainedLoading, PreTrainedModel):
    config_class = HybridMPSENetConfig
    base_model_prefix = "hybrid_mpsenet"
    main_input_name = "magnitude"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TSTransformerBlock", "MambaBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Every layer's own `reset_parameters`: PyTorch's defaults for standard layers (as the original code uses),
        `nn.MultiheadAttention`'s for attention, mamba_ssm's for Mamba."""
        if isinstance(module, HybridMPSENetModel):
            init.copy_(module.window, torch.hann_window(module.config.win_length))
        elif hasattr(module, "reset_parameters"):
            module.reset_parameters()


class HybridMPSENetModel(HybridMPSENetLayers, HybridMPSENetPreTrainedModel):
    """Enhances a compressed magnitude and phase spectrum (see [`HybridMPSENetConfig`] for the architecture).

    Besides `forward` on spectra it offers `spectrum` and `waveform`, the STFT and inverse STFT with the model's
    conventions, for training losses that compare waveforms. The layers and the forward pass are
    [`HybridMPSENetLayers`]', the same as the plain [`HybridMPSENetNetwork`]'s.
    """

    def __init__(self, config: HybridMPSENetConfig):
        super().__init__(config)
        self.build_layers(config)
        self.post_init()

    def grow(self, **changes) -> HybridMPSENetModel:
        """A new model of this class with the config `changes` (more blocks, a fusion, a branch projection), whose
        added layers start as identities, so that it computes exactly what this model computes.

        Blocks are appended to their group (a group's block type may change while it has none), `fusion` may go
        from `"none"` to another mode, and settings that shape no weight (dropout, Mamba init ranges, the kernel
        choice) may change. A change that would alter or drop the existing weights, or change what they compute,
        is a `ValueError`. An added Transformer block or fusion starts with its final LayerNorm at zero, an added
        Mamba with a zero output projection, an added branch projection as the identity: the residuals pass
        through unchanged, and training then shapes the new layers from there.
        """
        signature = inspect.signature(type(self.config).__init__).parameters
        unknown = sorted(set(changes) - set(signature))
        if unknown:
            raise ValueError(f"Unknown config settings {unknown}; see HybridMPSENetConfig.")
        config = type(self.config).from_dict({**self.config.to_dict(), **changes})
        grown = type(self)(config)
        old_state = self.state_dict()
        new_state = grown.state_dict()
        dropped = [name for name in old_state if name not in new_state]
        reshaped = [name for name in old_state if name in new_state and new_state[name].shape != old_state[name].shape]
        if dropped or reshaped:
            raise ValueError(
                f"grow({', '.join(sorted(changes))}) cannot keep the existing weights: "
                + "; ".join(
                    f"{kind}: {', '.join(names[:6])}"
                    for kind, names in (("dropped", dropped), ("reshaped", reshaped))
                    if names
                )
                + ". Only blocks, a fusion and branch projections can be added."
            )
        grown.load_state_dict(old_state, strict=False)
        added = set(new_state) - set(old_state)
        for name, module in grown.named_modules():
            is_layer = isinstance(module, (TSTransformerBlock, MambaBlock, BranchFusion))
            if is_layer or name in ("magnitude_projection", "phase_projection"):
                keys = {f"{name}.{key}" for key in module.state_dict()}
                if keys <= added:
                    _start_as_identity(module)
                    added -= keys
        if added:
            raise ValueError(
                f"grow({', '.join(sorted(changes))}) would add weights inside existing layers "
                f"({', '.join(sorted(added)[:6])}); only whole blocks, a fusion and branch projections can be added."
            )
        _check_same_output(self, grown, changes)
        return grown

    @torch.no_grad()
    def to_causal(self) -> HybridMPSENetModel:
        """A causal model (`config.causal=True`) of the same sizes that starts from this model's weights wherever the
        shapes allow: every convolution, norm, attention projection and layer along frequency, and the forward
        direction of each GRU along time with its output layer's forward half (the backward direction has no
        causal counterpart). It does not compute what this model computes (its norms, frames and attention
        differ), so it is a warm start for training, not a conversion.
        """
        if self.config.causal:
            raise ValueError("This model is already causal.")
        try:
            config = type(self.config).from_dict({**self.config.to_dict(), "causal": True})
        except ValueError as error:
            raise ValueError(f"This architecture has no causal form: {error}") from None
        causal = type(self)(config)
        state = causal.state_dict()
        for name, tensor in self.state_dict().items():
            if name not in state:  # a backward GRU direction along time
                continue
            if state[name].shape == tensor.shape:
                state[name] = tensor
            else:  # a time GRU's output layer: PyTorch orders the forward direction's features first
                state[name] = tensor[:, : state[name].shape[1]]
        causal.load_state_dict(state)
        return causal


HybridMPSENetModel.register_for_auto_class("AutoModel")
