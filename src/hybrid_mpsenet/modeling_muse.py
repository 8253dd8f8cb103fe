"""PyTorch MUSE (Lin, Chen and Wang, Interspeech 2024) as a transformers model of the family: [`MuseModel`] is the
network of `network_muse` with `PreTrainedModel`'s loading, saving, Hub and training machinery, and strict loading.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from .configuration_muse import MuseConfig
from .network import GrowableModel, StrictPreTrainedLoading
from .network_muse import ChannelNorm, LearnableSigmoid, MuseLayers, TaylorAttention

__all__ = ["MuseModel", "MusePreTrainedModel"]


class MusePreTrainedModel(StrictPreTrainedLoading, PreTrainedModel):
    config_class = MuseConfig
    base_model_prefix = "muse"
    main_input_name = "magnitude"
    _no_split_modules = ["MetStage"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Every layer's own `reset_parameters` (PyTorch's defaults, torchvision's for the deformable weights)."""
        if isinstance(module, MuseModel):
            init.copy_(module.window, torch.hann_window(module.config.win_length))
        elif isinstance(module, ChannelNorm):
            init.ones_(module.weight)
        elif isinstance(module, TaylorAttention):
            init.ones_(module.temperature)
        elif isinstance(module, LearnableSigmoid):
            init.ones_(module.slope)
        elif hasattr(module, "reset_parameters"):
            module.reset_parameters()


class MuseModel(GrowableModel, MuseLayers, MusePreTrainedModel):
    """Enhances a compressed magnitude and phase spectrum with MUSE (see [`MuseConfig`]); `grow(mamba_stages=...)`
    adds Mamba branches that start as identities ([`GrowableModel`])."""

    def __init__(self, config: MuseConfig):
        super().__init__(config)
        self.build_layers(config)
        self.post_init()


MuseModel.register_for_auto_class("AutoModel")
