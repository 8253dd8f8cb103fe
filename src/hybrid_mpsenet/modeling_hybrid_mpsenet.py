"""PyTorch hybrid MP-SENet as a transformers model: [`HybridMPSENetModel`] is the network of
`hybrid_mpsenet.network` (MP-SENet's dense encoder and magnitude/phase decoders around a configurable stack of
TS-Transformer and Mamba blocks, with optional magnitude/phase branches fused by cross-attention) with
`PreTrainedModel`'s loading, saving, Hub and training machinery, strict loading, and growing by added blocks.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from .configuration_hybrid_mpsenet import HybridMPSENetConfig
from .network import GrowableModel, HybridMPSENetLayers, HybridMPSENetOutput, StrictPreTrainedLoading

__all__ = ["HybridMPSENetModel", "HybridMPSENetOutput", "HybridMPSENetPreTrainedModel"]


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


class HybridMPSENetModel(GrowableModel, HybridMPSENetLayers, HybridMPSENetPreTrainedModel):
    """Enhances a compressed magnitude and phase spectrum (see [`HybridMPSENetConfig`] for the architecture).

    Besides `forward` on spectra it offers `grow` ([`GrowableModel`]), and `spectrum` and `waveform`, the STFT and
    inverse STFT with the model's conventions, for training losses that compare waveforms. The layers and the
    forward pass are [`HybridMPSENetLayers`]', the same as the plain [`HybridMPSENetNetwork`]'s.
    """

    def __init__(self, config: HybridMPSENetConfig):
        super().__init__(config)
        self.build_layers(config)
        self.post_init()

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
