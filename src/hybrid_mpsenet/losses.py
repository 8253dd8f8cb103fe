"""MP-SENet's training objective: magnitude, anti-wrapping phase, complex, consistency and time losses, and the
metric discriminator that learns normalised PESQ (Lu et al., 2023; after yxlu-0102/MP-SENet, MIT licence)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm


@dataclass
class LossWeights:
    """Weights of the generator loss terms (MP-SENet's values). `complex` and `consistency` are applied on top of
    the factor 2 that MP-SENet puts inside those terms, as in the original code."""

    magnitude: float = 0.9
    phase: float = 0.3
    complex: float = 0.1
    consistency: float = 0.1
    time: float = 0.2
    metric: float = 0.05


def anti_wrapping(x: torch.Tensor) -> torch.Tensor:
    """`|x - 2 pi round(x / 2 pi)|`: the distance of a phase difference to the nearest multiple of 2 pi."""
    return torch.abs(x - torch.round(x / (2 * math.pi)) * 2 * math.pi)


def phase_losses(clean_phase: torch.Tensor, enhanced_phase: torch.Tensor) -> dict[str, torch.Tensor]:
    """Instantaneous phase, group delay (difference along frequency) and instantaneous angular frequency
    (difference along time) losses, all anti-wrapped; phases are `(batch, freq, time)`."""
    return {
        "instantaneous_phase": anti_wrapping(clean_phase - enhanced_phase).mean(),
        "group_delay": anti_wrapping(torch.diff(clean_phase, dim=1) - torch.diff(enhanced_phase, dim=1)).mean(),
        "instantaneous_frequency": anti_wrapping(
            torch.diff(clean_phase, dim=2) - torch.diff(enhanced_phase, dim=2)
        ).mean(),
    }


class _ScaledSigmoid(nn.Module):
    """`beta * sigmoid(slope * x)` with one learnable slope (MP-SENet's `LearnableSigmoid1d(1)`)."""

    def __init__(self, beta: float):
        super().__init__()
        self.beta = beta
        self.slope = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.beta * torch.sigmoid(self.slope * x)


class MetricDiscriminator(nn.Module):
    """Predicts normalised PESQ in [0, 1] (times `beta`) from a reference and a test compressed magnitude.

    Four strided spectral-normalised convolutions with instance norm and PReLU, global max pooling and two
    linear layers, ending in a learnable sigmoid, as in MP-SENet; the layers and state-dict keys are the original's.
    Spectral norm is `torch.nn.utils.spectral_norm`, whose power iteration (v, then u, once per call in training)
    is the one MP-SENet trained with; the newer parametrisation iterates in the other order and gives other weights.

    Args:
        dim: channels of the first convolution (doubled three times).
        beta: upper bound of the output (MP-SENet's `LearnableSigmoid1d(1)` has 1; targets are in [0, 1]).
    """

    def __init__(self, dim: int = 16, beta: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = []
        channels = [2, dim, dim * 2, dim * 4, dim * 8]
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            layers += [
                spectral_norm(nn.Conv2d(c_in, c_out, (4, 4), (2, 2), (1, 1), bias=False)),
                nn.InstanceNorm2d(c_out, affine=True),
                nn.PReLU(c_out),
            ]
        layers += [
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
            spectral_norm(nn.Linear(dim * 8, dim * 4)),
            nn.Dropout(0.3),
            nn.PReLU(dim * 4),
            spectral_norm(nn.Linear(dim * 4, 1)),
            _ScaledSigmoid(beta),
        ]
        self.layers = nn.Sequential(*layers)
        self.dim = dim

    def forward(self, reference: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
        """`reference`, `test`: `(batch, freq, time)` compressed magnitudes -> scores `(batch,)`."""
        return self.layers(torch.stack((reference, test), dim=1)).flatten()


def generator_losses(
    clean: dict[str, torch.Tensor],
    enhanced: dict[str, torch.Tensor],
    consistency_spectrum: torch.Tensor,
    metric_score: torch.Tensor | None,
    weights: LossWeights,
) -> dict[str, torch.Tensor]:
    """All generator terms and their weighted sum `total`.

    Args:
        clean, enhanced: `magnitude`, `phase` `(batch, freq, time)`, `complex` `(batch, freq, time, 2)` and
            `audio` `(batch, samples)`.
        consistency_spectrum: `(batch, freq, time, 2)` compressed STFT of the enhanced waveform.
        metric_score: the discriminator's score of the enhanced magnitude `(batch,)`, or `None` (no metric term).
    """
    losses = {
        "magnitude": F.mse_loss(enhanced["magnitude"], clean["magnitude"]),
        **phase_losses(clean["phase"], enhanced["phase"]),
        "complex": 2 * F.mse_loss(enhanced["complex"], clean["complex"]),
        "consistency": 2 * F.mse_loss(enhanced["complex"], consistency_spectrum),
        "time": F.l1_loss(enhanced["audio"], clean["audio"]),
    }
    losses["phase"] = losses["instantaneous_phase"] + losses["group_delay"] + losses["instantaneous_frequency"]
    total = sum(
        getattr(weights, name) * losses[name] for name in ("magnitude", "phase", "complex", "consistency", "time")
    )
    if metric_score is not None:
        losses["metric"] = F.mse_loss(metric_score, torch.ones_like(metric_score))
        total = total + weights.metric * losses["metric"]
    losses["total"] = total
    return losses
