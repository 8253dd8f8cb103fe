"""The hybrid MP-SENet network as plain PyTorch modules: MP-SENet's dense encoder and magnitude/phase decoders
around a configurable stack of TS-Transformer and Mamba blocks, with optional magnitude/phase branches fused by
cross-attention.

Nothing here imports transformers' model classes (`PreTrainedModel` brings in distributed, compiler and optional
integration modules: 127 MiB of a process's memory with the development extras installed, 84 MiB without), so
[`HybridMPSENetNetwork`] serves inference in a lean process: `hybrid-mpsenet enhance` runs on it.
[`HybridMPSENetModel`] in `modeling_hybrid_mpsenet` has the same layers and forward pass ([`HybridMPSENetLayers`])
with transformers' loading, saving and training machinery.

Feature maps inside the network are `(batch, channels, time, freq)`. Every sequence module is batch-first and runs
along the axis its name says, so an item's output never depends on the other items of a batch; right-padded
batches are handled with a `frame_mask` that masks statistics, attention keys and GRU sequences.

Causal models (`config.causal`) look only at present and past frames, and every layer that looks at past frames
carries what it needs between calls in a `cache`: a dict, owned by the caller and empty at the start of a stream,
that maps each such layer to its state tensors (each layer's docstring says which). The forward pass of consecutive
pieces of a spectrum with one cache equals the forward pass of the whole spectrum. Right padding never reaches an
earlier frame of a causal model, so it needs no `frame_mask`.
"""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.utils import ModelOutput

from .bundled import model_location
from .configuration_hybrid_mpsenet import FamilyConfig, HybridMPSENetConfig
from .mamba import Mamba
from .stft import mag_phase_istft, mag_phase_stft


@dataclass
class HybridMPSENetOutput(ModelOutput):
    """
    Args:
        magnitude: `(batch, freq, time)` enhanced magnitude, power-law compressed.
        phase: `(batch, freq, time)` enhanced phase in radians.
        complex_spectrum: `(batch, freq, time, 2)` real and imaginary parts of `magnitude * exp(i * phase)`.
    """

    magnitude: torch.FloatTensor | None = None
    phase: torch.FloatTensor | None = None
    complex_spectrum: torch.FloatTensor | None = None


def _to_sequences(x: torch.Tensor, axis: str) -> torch.Tensor:
    """`(batch, channels, time, freq)` -> `(batch * freq, time, channels)` for "time", `(batch * time, freq, channels)`
    for "freq"."""
    b, c, t, f = x.shape
    if axis == "time":
        return x.permute(0, 3, 2, 1).reshape(b * f, t, c)
    return x.permute(0, 2, 3, 1).reshape(b * t, f, c)


def _from_sequences(x: torch.Tensor, axis: str, shape: torch.Size) -> torch.Tensor:
    """Inverse of [`_to_sequences`] for a feature map of `shape`."""
    b, c, t, f = shape
    if axis == "time":
        return x.reshape(b, f, t, c).permute(0, 3, 2, 1)
    return x.reshape(b, t, f, c).permute(0, 3, 1, 2)


def _sequence_masks(frame_mask: torch.Tensor | None, axis: str, repeats: int):
    """Key mask `(sequences, time)` and lengths `(sequences,)` for sequences along time; `None, None` otherwise."""
    if frame_mask is None or axis != "time":
        return None, None
    key_mask = frame_mask.repeat_interleave(repeats, dim=0)
    return key_mask, key_mask.sum(1)


class InstanceNorm(nn.InstanceNorm2d):
    """Affine instance norm over (time, freq) whose statistics ignore padded frames when a mask is given. It carries
    no state: `cache` is there so that it and [`MovingInstanceNorm`] are called alike (non-causal models never get
    one)."""

    def forward(
        self, x: torch.Tensor, frame_mask: torch.Tensor | None = None, cache: dict | None = None
    ) -> torch.Tensor:
        if frame_mask is None:
            return super().forward(x)
        mask = frame_mask[:, None, :, None].to(x.dtype)
        count = mask.sum(dim=(2, 3), keepdim=True) * x.shape[3]
        mean = (x * mask).sum(dim=(2, 3), keepdim=True) / count
        var = ((x - mean).pow(2) * mask).sum(dim=(2, 3), keepdim=True) / count
        x = (x - mean) / torch.sqrt(var + self.eps)
        return x * self.weight[None, :, None, None] + self.bias[None, :, None, None]


class MovingInstanceNorm(nn.Module):
    """The causal models' instance norm on `(batch, C, time, freq)`: each channel's mean and variance over frequency
    in each frame, averaged over the frames so far with weights `decay ** age` (bias-corrected, so the first frame
    uses its own statistics), then the affine map of `nn.InstanceNorm2d` (same parameter names and shapes).

    Carried state (`cache[self]`): the weighted sums of the frame means and mean squares `(batch, 2, C)` and the
    number of frames seen `(1,)`, float64.
    """

    # Frames averaged per matrix product; bounds the `(piece, piece)` weight matrix of a long input.
    PIECE = 256

    def __init__(self, channels: int, decay: float, eps: float = 1e-5):
        super().__init__()
        self.decay, self.eps = decay, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def reset_parameters(self) -> None:
        init.ones_(self.weight)
        init.zeros_(self.bias)

    def forward(
        self, x: torch.Tensor, frame_mask: torch.Tensor | None = None, cache: dict | None = None
    ) -> torch.Tensor:
        # Float64 statistics: a stream's pieces and the whole input then give the same float32 outputs.
        x64 = x.double()
        stats = torch.stack((x64.mean(-1), x64.square().mean(-1)), dim=1)  # (batch, 2, C, time)
        past = cache.get(self) if cache is not None else None
        sums, seen = (stats.new_zeros(stats.shape[:3]), stats.new_zeros(1)) if past is None else past
        if stats.shape[-1] == 1:  # one frame of a stream: the recurrence itself, a few operations
            sums, seen = sums * self.decay + stats[..., 0], seen + 1
            averages = (sums * ((1 - self.decay) / (1 - self.decay**seen)))[..., None]
        else:
            pieces = []
            for start in range(0, stats.shape[-1], self.PIECE):
                piece = stats[..., start : start + self.PIECE]
                age = torch.arange(piece.shape[-1], device=x.device, dtype=torch.float64)
                lag = age[:, None] - age[None, :]
                weights = torch.where(lag >= 0, self.decay ** lag.clamp(min=0), 0.0)  # (frame, earlier frame)
                totals = piece @ weights.T + sums[..., None] * self.decay ** (age + 1)
                pieces.append(totals * ((1 - self.decay) / (1 - self.decay ** (seen + age + 1))))
                sums, seen = totals[..., -1], seen + piece.shape[-1]
            averages = torch.cat(pieces, dim=-1)
        if cache is not None:
            cache[self] = (sums, seen)
        mean, mean_square = averages.unbind(1)  # (batch, C, time) each
        scale = torch.rsqrt((mean_square - mean.square()).clamp(min=0) + self.eps).float()
        normed = (x - mean.float()[..., None].to(x.dtype)) * scale[..., None].to(x.dtype)
        return normed * self.weight[:, None, None] + self.bias[:, None, None]


def make_norm(config: HybridMPSENetConfig, channels: int) -> nn.Module:
    """The feature norm of the encoder and decoders: MP-SENet's instance norm, or for a causal model its moving
    form."""
    if config.causal:
        return MovingInstanceNorm(channels, config.norm_decay)
    return InstanceNorm(channels, affine=True)


class ConvNormActivation(nn.Module):
    """Zero padding -> Conv2d -> instance norm -> PReLU on `(batch, channels, time, freq)`.

    `padding` is `(freq_left, freq_right, time_before, time_after)`; MP-SENet pads time only before, so every
    convolution is causal in time.
    """

    def __init__(
        self,
        config: HybridMPSENetConfig,
        in_channels,
        out_channels,
        kernel_size,
        stride=(1, 1),
        dilation=(1, 1),
        padding=(0, 0, 0, 0),
    ):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, dilation=dilation)
        self.norm = make_norm(config, out_channels)
        self.activation = nn.PReLU(out_channels)

    def forward(
        self, x: torch.Tensor, frame_mask: torch.Tensor | None = None, cache: dict | None = None
    ) -> torch.Tensor:
        return self.forward_padded(F.pad(x, self.padding), frame_mask, cache)

    def forward_padded(
        self, x: torch.Tensor, frame_mask: torch.Tensor | None = None, cache: dict | None = None
    ) -> torch.Tensor:
        """`forward` on an input that already carries the zero padding."""
        return self.activation(self.norm(self.conv(x), frame_mask, cache))


class DenseBlock(nn.Module):
    """Densely connected causal (2, 3) convolutions with time dilations 1, 2, 4, 8, ...; `(b, C, t, f)` in and out.

    Carried state (`cache[layer]` for each convolution `layer`): its last `2**i` input frames `(batch, (i + 1) * C,
    2**i, freq)`.
    """

    def __init__(self, config: HybridMPSENetConfig):
        super().__init__()
        channels = config.dense_channel
        self.layers = nn.ModuleList(
            ConvNormActivation(
                config, channels * (i + 1), channels, (2, 3), dilation=(2**i, 1), padding=(1, 1, 2**i, 0)
            )
            for i in range(config.dense_depth)
        )

    def forward(
        self, x: torch.Tensor, frame_mask: torch.Tensor | None = None, cache: dict | None = None
    ) -> torch.Tensor:
        if cache is not None:
            return self._forward_cached(x, cache)
        if not torch.is_grad_enabled():
            return self._forward_in_place(x, frame_mask)
        skip = x
        for layer in self.layers:
            x = layer(skip, frame_mask)
            skip = torch.cat([x, skip], dim=1)
        return x

    def _forward_in_place(self, x: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
        """The same computation without gradients and without the concatenated and padded copies: every layer's
        output is written into one zero-margined buffer (newest channels first, as the concatenation orders them)
        whose margins are the layers' padding. At full resolution this block sets the network's peak memory.
        Autograd cannot take it: later writes would change what earlier layers saved."""
        b, c, t, f = x.shape
        depth = len(self.layers)
        reach = 2 ** (depth - 1)  # the longest causal time padding
        buffer = x.new_zeros(b, c * depth, reach + t, f + 2)
        buffer[:, (depth - 1) * c :, reach:, 1:-1] = x
        for i, layer in enumerate(self.layers):
            start = (depth - 1 - i) * c
            x = layer.forward_padded(buffer[:, start:, reach - 2**i :], frame_mask)
            if i < depth - 1:
                buffer[:, start - c : start, reach:, 1:-1] = x
        return x

    def _forward_cached(self, x: torch.Tensor, cache: dict) -> torch.Tensor:
        """The forward pass continuing a stream: each convolution's time padding is its input's previous frames."""
        skip = x
        for layer in self.layers:
            reach = layer.padding[2]
            past = cache.get(layer)
            if past is None:
                past = skip.new_zeros(*skip.shape[:2], reach, skip.shape[3])
            frames = torch.cat([past, skip], dim=2)
            cache[layer] = frames[:, :, frames.shape[2] - reach :]
            x = layer.forward_padded(F.pad(frames, (*layer.padding[:2], 0, 0)), None, cache)
            skip = torch.cat([x, skip], dim=1)
        return x


class DenseEncoder(nn.Module):
    """`(batch, 2, time, freq)` magnitude/phase -> `(batch, C, time, (freq + 1) // 2)` features."""

    def __init__(self, config: HybridMPSENetConfig):
        super().__init__()
        channels = config.dense_channel
        self.input_conv = ConvNormActivation(config, 2, channels, (1, 1))
        self.dense_block = DenseBlock(config)
        self.output_conv = ConvNormActivation(config, channels, channels, (1, 3), stride=(1, 2), padding=(1, 1, 0, 0))

    def forward(
        self, x: torch.Tensor, frame_mask: torch.Tensor | None = None, cache: dict | None = None
    ) -> torch.Tensor:
        x = self.input_conv(x, frame_mask, cache)
        x = self.dense_block(x, frame_mask, cache)
        return self.output_conv(x, frame_mask, cache)


class SubPixelConv(nn.Module):
    """Sub-pixel up-sampling along frequency: conv to `r * C` channels, then interleave them.

    `(batch, C, time, freq)` -> `(batch, C, time, r * freq)`.
    """

    def __init__(self, channels: int, upscale: int = 2):
        super().__init__()
        self.upscale = upscale
        self.conv = nn.Conv2d(channels, channels * upscale, (1, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(F.pad(x, (1, 1, 0, 0)))
        b, c, t, f = out.shape
        out = out.view(b, self.upscale, c // self.upscale, t, f).permute(0, 2, 3, 4, 1)
        return out.reshape(b, c // self.upscale, t, f * self.upscale)


class LearnableSigmoid(nn.Module):
    """`beta * sigmoid(slope * x)` with one learnable slope per frequency bin; `x` is `(batch, freq, time)`."""

    def __init__(self, num_freq_bins: int, beta: float):
        super().__init__()
        self.beta = beta
        self.slope = nn.Parameter(torch.ones(num_freq_bins, 1))

    def reset_parameters(self) -> None:
        init.ones_(self.slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.beta * torch.sigmoid(self.slope * x)


class DecoderTrunk(nn.Module):
    """Dense block -> sub-pixel up-sampling -> instance norm -> PReLU, shared by both decoders:
    `(batch, C, time, f')` -> `(batch, C, time, 2 * f')`."""

    def __init__(self, config: HybridMPSENetConfig):
        super().__init__()
        channels = config.dense_channel
        self.dense_block = DenseBlock(config)
        self.upsample = SubPixelConv(channels)
        self.norm = make_norm(config, channels)
        self.activation = nn.PReLU(channels)

    def upsampled(
        self, x: torch.Tensor, frame_mask: torch.Tensor | None = None, cache: dict | None = None
    ) -> torch.Tensor:
        x = self.upsample(self.dense_block(x, frame_mask, cache))
        return self.activation(self.norm(x, frame_mask, cache))


class MaskDecoder(DecoderTrunk):
    """Features `(batch, C, time, f')` -> magnitude mask `(batch, freq, time)` in `(0, beta)`."""

    def __init__(self, config: HybridMPSENetConfig):
        super().__init__(config)
        self.output_conv = nn.Conv2d(config.dense_channel, 1, (1, 2))
        self.mask_activation = LearnableSigmoid(config.num_freq_bins, config.beta)

    def forward(
        self, x: torch.Tensor, frame_mask: torch.Tensor | None = None, cache: dict | None = None
    ) -> torch.Tensor:
        x = self.output_conv(self.upsampled(x, frame_mask, cache)).squeeze(1).transpose(1, 2)
        return self.mask_activation(x)


class PhaseDecoder(DecoderTrunk):
    """Features `(batch, C, time, f')` -> phase `(batch, freq, time)` as atan2 of two predicted maps."""

    def __init__(self, config: HybridMPSENetConfig):
        super().__init__(config)
        self.real_conv = nn.Conv2d(config.dense_channel, 1, (1, 2))
        self.imag_conv = nn.Conv2d(config.dense_channel, 1, (1, 2))

    def forward(
        self, x: torch.Tensor, frame_mask: torch.Tensor | None = None, cache: dict | None = None
    ) -> torch.Tensor:
        x = self.upsampled(x, frame_mask, cache)
        phase = torch.atan2(self.imag_conv(x), self.real_conv(x))
        return phase.squeeze(1).transpose(1, 2)


class MultiHeadAttention(nn.Module):
    """Batch-first multi-head attention with the parameter names of `nn.MultiheadAttention`
    (`in_proj_weight`, `in_proj_bias`, `out_proj`)."""

    def __init__(self, hidden: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden // num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * hidden, hidden))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * hidden))
        self.out_proj = nn.Linear(hidden, hidden)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """`nn.MultiheadAttention`'s initialisation (its `out_proj.weight` keeps the Linear default)."""
        init.xavier_uniform_(self.in_proj_weight)
        init.zeros_(self.in_proj_bias)
        init.zeros_(self.out_proj.bias)

    def project(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Query (0), key (1) or value (2) projection of `(..., C)`, split into heads: `(..., heads, head_dim)`."""
        hidden = x.shape[-1]
        rows = slice(index * hidden, (index + 1) * hidden)
        return F.linear(x, self.in_proj_weight[rows], self.in_proj_bias[rows]).unflatten(-1, (self.num_heads, -1))

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """query `(N, L, C)`, key/value `(N, S, C)`, key_mask `(N, S)` (True = real frame) -> `(N, L, C)`."""
        q, k, v = (self.project(x, i).transpose(1, 2) for i, x in enumerate((query, key, value)))
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        return self._attend(q, k, v, attn_mask)

    def _attend(self, q, k, v, attn_mask):
        """Scaled dot-product attention of `(N, heads, L, head_dim)` queries on `(N, heads, S, head_dim)` keys and
        values -> `(N, L, C)`."""
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        return self.out_proj(out.transpose(1, 2).flatten(2))

    def windowed(self, query: torch.Tensor, context: torch.Tensor, window: int, cache: dict | None = None):
        """Causal attention along time over a bounded window: the query at frame t attends to the context at frames
        `t - window + 1 ... t`. query/context `(N, L, C)` -> `(N, L, C)`.

        Carried state (`cache[self]`): the projected keys and values of the last `window - 1` context frames, each
        `(N, heads, window - 1, head_dim)` (zeros before the stream's first frame), and how many of them are frames
        of the stream, `(1,)`: fixed shapes, so a step of a stream is one static graph.
        """
        q, k, v = (self.project(x, i).transpose(1, 2) for i, x in enumerate((query, context, context)))
        past = cache.get(self) if cache is not None else None
        if cache is not None and past is None:
            empty = k.new_zeros(*k.shape[:2], window - 1, k.shape[3])
            past = (empty, empty, k.new_zeros(1))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        offset = k.shape[2] - q.shape[2]  # key index of the first query's own frame
        frame = torch.arange(q.shape[2], device=q.device)[:, None] + offset
        key = torch.arange(k.shape[2], device=q.device)[None, :]
        mask = (key <= frame) & (key > frame - window)
        if past is not None:
            filled = past[2]
            mask = mask & (key >= window - 1 - filled)  # the window's slots before the stream began
            length = q.shape[2]
            cache[self] = (k[:, :, length:], v[:, :, length:], (filled + length).clamp(max=window - 1))
        return self._attend(q, k, v, mask)

    def criss_cross(
        self, query: torch.Tensor, context: torch.Tensor, frame_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Axial cross-attention on `(batch, time, freq, C)` maps: the query at (t, f) attends, in one softmax, to the
        context along its frequency bin (all frames) and along its frame (all bins). Cost O(T * F * (T + F))."""
        t, f = query.shape[1], query.shape[2]
        q = self.project(query, 0) * self.head_dim**-0.5
        k, v = self.project(context, 1), self.project(context, 2)
        time_scores = torch.einsum("btfhd,bsfhd->bhtfs", q, k)
        freq_scores = torch.einsum("btfhd,btghd->bhtfg", q, k)
        # The key at (t, f) itself is already among the time keys.
        freq_scores = freq_scores.masked_fill(torch.eye(f, dtype=torch.bool, device=q.device), float("-inf"))
        if frame_mask is not None:
            time_scores = time_scores.masked_fill(~frame_mask[:, None, None, None, :], float("-inf"))
        weights = torch.softmax(torch.cat([time_scores, freq_scores], dim=-1), dim=-1)
        weights = F.dropout(weights, self.dropout, self.training)
        time_weights, freq_weights = weights.split([t, f], dim=-1)
        out = torch.einsum("bhtfs,bsfhd->btfhd", time_weights, v) + torch.einsum("bhtfg,btghd->btfhd", freq_weights, v)
        return self.out_proj(out.flatten(-2))


class GRUFeedForward(nn.Module):
    """MP-SENet's FFN: bidirectional GRU -> LeakyReLU -> Linear, on `(N, L, C)`; padded steps are packed away.

    `causal`: a forward-only GRU (the causal models' FFN along time). Carried state (`cache[self]`): its hidden
    state `(1, N, ffn_hidden_size)`.
    """

    def __init__(self, config: HybridMPSENetConfig, causal: bool = False):
        super().__init__()
        directions = 1 if causal else 2
        self.gru = nn.GRU(config.dense_channel, config.ffn_hidden_size, batch_first=True, bidirectional=not causal)
        self.dropout = nn.Dropout(config.dropout)
        self.linear = nn.Linear(directions * config.ffn_hidden_size, config.dense_channel)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None, cache: dict | None = None) -> torch.Tensor:
        if cache is not None:
            x, cache[self] = self.gru(x, cache.get(self))
        elif lengths is None:
            x, _ = self.gru(x)
        else:
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            x, _ = nn.utils.rnn.pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=x.shape[1])
        return self.linear(self.dropout(F.leaky_relu(x)))


class TransformerBlock(nn.Module):
    """Pre-norm attention + GRU FFN with residuals, then a final LayerNorm, on `(N, L, C)` sequences.

    With `context` it is a cross-attention block: the normalised input queries the raw `context`. Without it, the
    keys and values are the normalised input or the raw input (`config.self_attention_kv`). `causal` (a causal
    model's block along time): windowed causal attention and a forward-only GRU, each carrying its state in
    `cache`; key masks and lengths are then not needed (padding only follows the real frames).
    """

    def __init__(self, config: HybridMPSENetConfig, causal: bool = False):
        super().__init__()
        hidden = config.dense_channel
        self.norm1 = nn.LayerNorm(hidden)
        self.attention = MultiHeadAttention(hidden, config.num_attention_heads, config.attention_dropout)
        self.dropout1 = nn.Dropout(config.dropout)
        self.norm2 = nn.LayerNorm(hidden)
        self.ffn = GRUFeedForward(config, causal)
        self.dropout2 = nn.Dropout(config.dropout)
        self.norm3 = nn.LayerNorm(hidden)
        self.normed_self_attention_kv = config.self_attention_kv == "normed"
        self.window = config.causal_attention_window if causal else None

    def attend(self, query, context, key_mask, cache):
        if self.window is not None:
            return self.attention.windowed(query, context, self.window, cache)
        return self.attention(query, context, context, key_mask)

    def feed_forward(self, x, lengths, cache):
        # A causal FFN runs forwards only, so padded steps (after the real ones) need no packing.
        return self.ffn(x, None if self.window is not None else lengths, cache)

    def forward(self, hidden, context=None, key_mask=None, lengths=None, cache=None):
        normed = self.norm1(hidden)
        if context is None:
            context = normed if self.normed_self_attention_kv else hidden
        hidden = hidden + self.dropout1(self.attend(normed, context, key_mask, cache))
        hidden = hidden + self.dropout2(self.feed_forward(self.norm2(hidden), lengths, cache))
        return self.norm3(hidden)


class CrissCrossTransformerBlock(TransformerBlock):
    """[`TransformerBlock`] on `(batch, time, freq, C)` maps: criss-cross attention, GRU FFN along time.
    `key_mask` is the `(batch, time)` frame mask and `lengths` the `(batch,)` frame counts."""

    def attend(self, query, context, key_mask, cache):
        return self.attention.criss_cross(query, context, key_mask)

    def feed_forward(self, x, lengths, cache):
        b, t, f, c = x.shape
        sequences = x.transpose(1, 2).reshape(b * f, t, c)
        lengths = None if lengths is None else lengths.repeat_interleave(f)
        return self.ffn(sequences, lengths).reshape(b, f, t, c).transpose(1, 2)


class SequenceBlock(nn.Module):
    """A block of the sequence stack, `(batch, C, time, freq)` in and out, that can be recomputed in the backward
    pass instead of keeping its activations: [`HybridMPSENetModel`]'s `activation_checkpointing_enable` sets
    `gradient_checkpointing` and `_gradient_checkpointing_func` on every module that has the attribute."""

    gradient_checkpointing = False

    def run(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None, cache: dict | None = None) -> torch.Tensor:
        """`self(x, frame_mask, cache)`, checkpointed when enabled and training with gradients."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled() and cache is None:
            return self._gradient_checkpointing_func(self.__call__, x, frame_mask)
        return self(x, frame_mask, cache)


class TSTransformerBlock(SequenceBlock):
    """Two Transformer blocks, each with an outer residual: `time_transformer` then `freq_transformer`.
    `(batch, C, time, freq)` in and out."""

    def __init__(self, config: HybridMPSENetConfig):
        super().__init__()
        self.axes = ("time", "freq") if config.ts_transformer_axes == "time_freq" else ("freq", "time")
        # The original modules were batch_first=False on (batch * freq, time, C) and (batch * time, freq, C) inputs:
        # swapping the first two dimensions of those layouts gives the sequences they actually ran on.
        self.batch_mixed = config.ts_transformer_axes == "batch_mixed"
        self.time_transformer = TransformerBlock(config, causal=config.causal)
        self.freq_transformer = TransformerBlock(config)

    def start_as_identity(self) -> None:
        _zero_final_norms(self)

    def forward(
        self, x: torch.Tensor, frame_mask: torch.Tensor | None = None, cache: dict | None = None
    ) -> torch.Tensor:
        if self.batch_mixed:
            if frame_mask is not None:
                raise ValueError("ts_transformer_axes='batch_mixed' mixes a batch's items; it takes no frame_mask.")
            for module, axis in ((self.time_transformer, "time"), (self.freq_transformer, "freq")):
                shape = x.shape
                sequences = _to_sequences(x, axis).transpose(0, 1)
                x = _from_sequences((module(sequences) + sequences).transpose(0, 1), axis, shape)
            return x
        for module, axis in zip((self.time_transformer, self.freq_transformer), self.axes, strict=True):
            shape = x.shape
            sequences = _to_sequences(x, axis)
            key_mask, lengths = _sequence_masks(frame_mask, axis, shape[3])
            out = module(sequences, key_mask=key_mask, lengths=lengths, cache=cache if axis == "time" else None)
            x = _from_sequences(out + sequences, axis, shape)
        return x


class MambaBlock(SequenceBlock):
    """Pre-norm unidirectional Mamba along time, then along frequency (or along time only, `mamba_axes="time"`),
    each pass with a residual (one LayerNorm shared by the passes). `(batch, C, time, freq)` in and out; causal in
    time, so right padding never leaks back.

    Carried state (`cache[self]`): the time pass's Mamba state ([`Mamba.allocate_state`]) for each of the
    `batch * freq` sequences; a stream of one frame per call takes [`Mamba.step`].
    """

    def __init__(self, config: FamilyConfig, channels: int | None = None):
        """`config`: any member's config with the `mamba_*` settings; `channels`: the features' (default
        `config.dense_channel`)."""
        super().__init__()
        channels = channels or config.dense_channel
        self.norm = nn.LayerNorm(channels)

        def make_mamba():
            return Mamba(
                channels,
                d_state=config.mamba_d_state,
                d_conv=config.mamba_d_conv,
                expand=config.mamba_expand,
                dt_rank=None if config.mamba_dt_rank == "auto" else config.mamba_dt_rank,
                dt_min=config.mamba_dt_min,
                dt_max=config.mamba_dt_max,
                dt_init_floor=config.mamba_dt_init_floor,
                use_kernels=config.use_mamba_kernels,
                chunk_size=config.mamba_scan_chunk_size,
            )

        self.axes = ("time", "freq") if config.mamba_axes == "time_freq" else ("time",)
        if config.mamba_share_time_freq:
            self.mamba = make_mamba()
        else:
            self.mamba_t = make_mamba()
            if "freq" in self.axes:
                self.mamba_f = make_mamba()
        self.dropout = nn.Dropout(config.dropout)

    @torch.no_grad()
    def start_as_identity(self) -> None:
        """Zero every output projection, so that the block passes its input through (a grown model's new block)."""
        for mamba in self.mambas():
            mamba.out_proj.weight.zero_()

    def mambas(self) -> list[Mamba]:
        """The Mamba of each pass, in the order of `self.axes`."""
        if hasattr(self, "mamba"):
            return [self.mamba] * len(self.axes)
        return [self.mamba_t, self.mamba_f] if "freq" in self.axes else [self.mamba_t]

    def forward(
        self, x: torch.Tensor, frame_mask: torch.Tensor | None = None, cache: dict | None = None
    ) -> torch.Tensor:
        for mamba, axis in zip(self.mambas(), self.axes, strict=True):
            shape = x.shape
            sequences = _to_sequences(x, axis)
            normed = self.norm(sequences)
            if cache is not None and axis == "time":
                state = cache.get(self) or mamba.allocate_state(len(normed), normed.device)
                if normed.shape[1] == 1:
                    out, cache[self] = mamba.step(normed[:, 0], state)
                    out = out[:, None]
                else:
                    out, cache[self] = mamba.forward_with_state(normed, state)
            else:
                out = mamba(normed)
            x = _from_sequences(self.dropout(out + sequences), axis, shape)
        return x


@torch.no_grad()
def _zero_final_norms(module: nn.Module) -> None:
    """Zero the final LayerNorm of every [`TransformerBlock`] in `module`: each is a residual branch, so the
    module then passes its input through (a grown model's new layer)."""
    for block in module.modules():
        if isinstance(block, TransformerBlock):
            block.norm3.weight.zero_()
            block.norm3.bias.zero_()


class BranchProjection(nn.Conv2d):
    """The 1x1 convolution that feeds a magnitude or phase branch from the shared features."""

    def __init__(self, channels: int):
        super().__init__(channels, channels, 1)

    @torch.no_grad()
    def start_as_identity(self) -> None:
        self.weight.copy_(torch.eye(self.out_channels, dtype=self.weight.dtype)[:, :, None, None])
        self.bias.zero_()


class BranchFusion(nn.Module):
    """Each branch queries the other and adds the result residually; both directions read the pre-fusion features.

    `cross_attention`: criss-cross attention along time and frequency. `pointwise`: every (t, f) attends only to
    the same (t, f) of the other branch, which is what the original hybrid implementation computes.
    """

    def __init__(self, config: HybridMPSENetConfig):
        super().__init__()
        self.mode = config.fusion
        block = CrissCrossTransformerBlock if self.mode == "cross_attention" else TransformerBlock
        self.phase_to_magnitude = block(config)
        self.magnitude_to_phase = block(config)

    def start_as_identity(self) -> None:
        _zero_final_norms(self)

    def forward(self, magnitude, phase, frame_mask=None):
        """`(batch, C, time, freq)` magnitude and phase features -> fused features of the same shape."""
        b, c, t, f = magnitude.shape
        mag, pha = magnitude.permute(0, 2, 3, 1), phase.permute(0, 2, 3, 1)
        if self.mode == "pointwise":
            mag, pha = mag.reshape(b * t * f, 1, c), pha.reshape(b * t * f, 1, c)
            kwargs = {}
        else:
            kwargs = {"key_mask": frame_mask, "lengths": None if frame_mask is None else frame_mask.sum(1)}
        new_mag = mag + self.phase_to_magnitude(mag, context=pha, **kwargs)
        new_pha = pha + self.magnitude_to_phase(pha, context=mag, **kwargs)
        return (x.reshape(b, t, f, c).permute(0, 3, 1, 2) for x in (new_mag, new_pha))


def _make_blocks(config: HybridMPSENetConfig, count: int, kind: str) -> nn.ModuleList:
    block = TSTransformerBlock if kind == "transformer" else MambaBlock
    return nn.ModuleList(block(config) for _ in range(count))


def check_loaded_weights(
    source: object, problems: Mapping[str, list[str]], state_dict: Mapping[str, torch.Tensor]
) -> None:
    """Raise a `ValueError` naming the tensors when a checkpoint from `source` does not fit its config exactly
    (`problems`: `missing_keys`, `unexpected_keys` -> names, `mismatched_keys` -> `(name, checkpoint shape, model
    shape)`) or holds values that are NaN/Inf in float32: this family has no task head to initialise, so a partial
    load is never usable. Both loaders run it (after [`check_stored_dtypes`]): the lean one on the tensors as
    stored, transformers' on the loaded model (where a float64 overflow already shows as Inf)."""
    problems = {
        kind: sorted(
            name if isinstance(name, str) else f"{name[0]} ({list(name[1])} in the checkpoint, {list(name[2])} here)"
            for name in names
        )
        for kind, names in problems.items()
        if names
    }
    if problems:
        listed = "; ".join(
            f"{kind.replace('_', ' ')}: {', '.join(names[:8])}" + (" ..." if len(names) > 8 else "")
            for kind, names in problems.items()
        )
        raise ValueError(
            f"The weights in {source} do not fit its config ({listed}). Likely causes: weights of another variant "
            "beside this config, a truncated model.safetensors, or an edited config.json."
        )
    # Checked in float32, the dtype the model computes in: a float64 value beyond its range would load as Inf.
    non_finite = [name for name, tensor in state_dict.items() if not torch.isfinite(tensor.float()).all()]
    if non_finite:
        raise ValueError(
            f"The weights in {source} contain NaN or Inf in {', '.join(non_finite[:8])}; the checkpoint is damaged "
            "(or saved from a diverged run)."
        )


class SpectralLayers:
    """What every network of the family shares around its layers: the STFT pair with the config's conventions, the
    check of its input spectra and the output with the complex spectrum. Needs `config` and a `window` buffer."""

    config: HybridMPSENetConfig

    def spectrum(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(batch, samples)` -> compressed magnitude, phase `(batch, freq, frames)` and complex `(..., 2)`."""
        c = self.config
        return mag_phase_stft(
            waveform,
            c.n_fft,
            c.hop_length,
            c.win_length,
            c.compress_factor,
            self.window,
            causal=c.causal,
            epsilons=c.stft_epsilons,
        )

    def waveform(self, magnitude: torch.Tensor, phase: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """Compressed magnitude and phase `(batch, freq, frames)` -> waveform `(batch, samples)`."""
        c = self.config
        return mag_phase_istft(
            magnitude, phase, c.n_fft, c.hop_length, c.win_length, c.compress_factor, self.window, length
        )

    def check_spectra(self, magnitude: torch.Tensor, phase: torch.Tensor) -> None:
        """Refuse spectra that are not `(batch, freq, time)` pairs with the config's number of bins."""
        if magnitude.dim() != 3 or magnitude.shape != phase.shape:
            raise ValueError(
                f"magnitude and phase must both be (batch, freq, time), got {tuple(magnitude.shape)} and "
                f"{tuple(phase.shape)}."
            )
        if magnitude.shape[1] != self.config.num_freq_bins:
            raise ValueError(
                f"Expected {self.config.num_freq_bins} frequency bins (n_fft={self.config.n_fft}), got "
                f"{magnitude.shape[1]}. Compute features with HybridMPSENetFeatureExtractor.from_model_config(config)."
            )

    def output(
        self, magnitude: torch.Tensor, phase: torch.Tensor, return_dict: bool | None
    ) -> HybridMPSENetOutput | tuple:
        """The enhanced `magnitude` and `phase` with their complex spectrum `(batch, freq, time, 2)`."""
        complex_spectrum = torch.stack((magnitude * torch.cos(phase), magnitude * torch.sin(phase)), dim=-1)
        if not (return_dict if return_dict is not None else self.config.return_dict):
            return magnitude, phase, complex_spectrum
        return HybridMPSENetOutput(magnitude=magnitude, phase=phase, complex_spectrum=complex_spectrum)


class HybridMPSENetLayers(SpectralLayers):
    """The network's layers and its forward pass on spectra, for an `nn.Module` with a `config`; shared by
    [`HybridMPSENetModel`] (transformers) and [`HybridMPSENetNetwork`] (plain PyTorch), so both have the same
    parameter names and compute the same outputs."""

    config: HybridMPSENetConfig

    def build_layers(self, config: HybridMPSENetConfig) -> None:
        """Create the encoder, the block groups, the fusion and the decoders as submodules of `self`."""
        self.encoder = DenseEncoder(config)
        self.shared_blocks = _make_blocks(config, config.num_shared_blocks, config.shared_block_type)
        proj = config.has_branches and config.branch_projection
        c = config.dense_channel
        self.magnitude_projection = BranchProjection(c) if proj else None
        self.phase_projection = BranchProjection(c) if proj else None
        self.magnitude_blocks = _make_blocks(config, config.num_magnitude_blocks, config.magnitude_block_type)
        self.phase_blocks = _make_blocks(config, config.num_phase_blocks, config.phase_block_type)
        self.fusion = BranchFusion(config) if config.fusion != "none" else None
        self.mask_decoder = MaskDecoder(config)
        self.phase_decoder = PhaseDecoder(config)
        self.register_buffer("window", torch.hann_window(config.win_length), persistent=False)

    def forward(
        self,
        magnitude: torch.Tensor,
        phase: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
        return_dict: bool | None = None,
        norm_factor: torch.Tensor | None = None,
        num_samples: torch.Tensor | None = None,
        cache: dict | None = None,
    ) -> HybridMPSENetOutput | tuple:
        r"""
        Args:
            magnitude: `(batch, freq, time)` compressed magnitude (`freq = n_fft // 2 + 1`).
            phase: `(batch, freq, time)` phase in radians.
            frame_mask: `(batch, time)`, 1 for real frames and 0 for right padding; batches of different lengths
                then give each item the output it would get alone.
            norm_factor, num_samples: accepted and unused, so that `model(**feature_extractor(audio))` works; the
                feature extractor's `post_process` needs them.
            cache: causal models only: a dict (empty at the start of a stream) in which every layer carries its
                state from one call to the next, so that consecutive pieces of a spectrum, fed with one cache, give
                the output of the whole spectrum. Inference only.
        """
        self.check_spectra(magnitude, phase)
        if cache is not None and not self.config.causal:
            raise ValueError("Only causal models (config.causal=True) carry a stream cache; this one looks ahead.")
        if self.config.causal:
            frame_mask = None  # right padding never reaches an earlier frame of a causal model
        if frame_mask is not None:
            frame_mask = frame_mask.to(device=magnitude.device, dtype=torch.bool)
            if bool(frame_mask.all()):
                frame_mask = None

        x = torch.stack((magnitude, phase), dim=1).transpose(2, 3)  # (batch, 2, time, freq)
        x = self.encoder(x, frame_mask, cache)
        for block in self.shared_blocks:
            x = block.run(x, frame_mask, cache)
        mag_features = self.magnitude_projection(x) if self.magnitude_projection is not None else x
        phase_features = self.phase_projection(x) if self.phase_projection is not None else x
        for block in self.magnitude_blocks:
            mag_features = block.run(mag_features, frame_mask, cache)
        for block in self.phase_blocks:
            phase_features = block.run(phase_features, frame_mask, cache)
        if self.fusion is not None:
            mag_features, phase_features = self.fusion(mag_features, phase_features, frame_mask)

        enhanced_magnitude = magnitude * self.mask_decoder(mag_features, frame_mask, cache)
        enhanced_phase = self.phase_decoder(phase_features, frame_mask, cache)
        return self.output(enhanced_magnitude, enhanced_phase, return_dict)


class StrictNetwork:
    """Loading and `device` for the plain `nn.Module` networks of the family ([`HybridMPSENetNetwork`],
    `MuseNetwork`): `config_class` names the member's config."""

    config_class: type

    @property
    def device(self) -> torch.device:
        return self.window.device

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
    ):
        """Load a folder or Hub repository written by the member's `save_pretrained` (config and safetensors
        weights, also sharded) as strictly as its transformers class: a config without its architecture keys,
        missing, unexpected or mis-shaped tensors, and NaN/Inf are `ValueError`s. Weights are float32, in eval mode,
        on the CPU."""
        hub = {"revision": revision, "cache_dir": cache_dir, "token": token, "local_files_only": local_files_only}
        config = cls.config_class.from_pretrained(pretrained_model_name_or_path, **hub)
        state_dict = _load_safetensors(pretrained_model_name_or_path, hub)
        model = cls(config)
        expected = model.state_dict()
        problems = {
            "missing_keys": [name for name in expected if name not in state_dict],
            "unexpected_keys": [name for name in state_dict if name not in expected],
            "mismatched_keys": [
                (name, state_dict[name].shape, tensor.shape)
                for name, tensor in expected.items()
                if name in state_dict and state_dict[name].shape != tensor.shape
            ],
        }
        check_loaded_weights(pretrained_model_name_or_path, problems, state_dict)
        model.load_state_dict(state_dict)
        return model.eval()


class StrictPreTrainedLoading:
    """`from_pretrained` for the family's `PreTrainedModel`s: like transformers', but strict. This family has no
    task head to initialise, so a checkpoint with missing, unexpected, mis-shaped or non-float tensors, a damaged
    file, or NaN/Inf in any, is a `ValueError` that names them, never a model with freshly initialised layers.
    `"default"` and the other bundled names load the checkpoints shipped with the package (offline)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        pretrained_model_name_or_path = model_location(pretrained_model_name_or_path)
        want_info = kwargs.pop("output_loading_info", False)
        hub = {key: kwargs[key] for key in ("revision", "cache_dir", "token", "local_files_only") if key in kwargs}
        try:
            files = safetensors_files(pretrained_model_name_or_path, hub)
        except OSError:
            files = []  # no safetensors: transformers reports what it finds (or does not)
        check_stored_dtypes(files)
        # transformers then lists mis-shaped tensors with the missing and unexpected ones instead of failing without
        # naming them; the check below refuses all three.
        kwargs["ignore_mismatched_sizes"] = True
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        problems = {kind: info.get(kind) or [] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        check_loaded_weights(pretrained_model_name_or_path, problems, model.state_dict())
        return (model, info) if want_info else model


class GrowableModel:
    """`grow`: a wider or deeper model of the same member that starts exactly where this one is. Layers that can be
    added have a `start_as_identity` method that makes them pass their residual stream through unchanged."""

    config: FamilyConfig

    def grow(self, **changes):
        """A new model of this class with the config `changes` (more blocks, a fusion, a branch projection, a
        Mamba branch), whose added layers start as identities, so that it computes exactly what this model computes.

        Settings that shape no weight (dropout, Mamba init ranges, the kernel choice) may change too. A change that
        would alter or drop the existing weights, add weights inside an existing layer, or change what the
        existing weights compute, is a `ValueError`. Training then shapes the new layers from there.
        """
        signature = inspect.signature(type(self.config).__init__).parameters
        unknown = sorted(set(changes) - set(signature))
        if unknown:
            raise ValueError(f"Unknown config settings {unknown}; see {type(self.config).__name__}.")
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
                + ". Only whole layers (blocks, fusions, branch projections, Mamba branches) can be added."
            )
        grown.load_state_dict(old_state, strict=False)
        added = set(new_state) - set(old_state)
        for name, module in grown.named_modules():  # outer layers come before the layers inside them
            keys = {f"{name}.{key}" for key in module.state_dict()}
            if callable(getattr(module, "start_as_identity", None)) and keys and keys <= added:
                module.start_as_identity()
                added -= keys
        if added:
            raise ValueError(
                f"grow({', '.join(sorted(changes))}) would add weights inside existing layers "
                f"({', '.join(sorted(added)[:6])}); only whole layers can be added."
            )
        _check_same_output(self, grown, changes)
        return grown


@torch.no_grad()
def _check_same_output(model: nn.Module, grown: nn.Module, changes: dict) -> None:
    """Raise unless `grown` enhances a random spectrum as `model` does. Both run as float64 copies in eval mode:
    in float32 even two copies of one model differ by rounding that depends on where their weights lie in memory
    (1e-5 for MUSE on random input), which would hide or fake a change."""
    bins = model.config.num_freq_bins
    generator = torch.Generator().manual_seed(0)
    magnitude = torch.rand(1, bins, 24, generator=generator, dtype=torch.float64)
    phase = (torch.rand(1, bins, 24, generator=generator, dtype=torch.float64) * 2 - 1) * torch.pi
    before, after = (copy.deepcopy(net).double().eval()(magnitude, phase).complex_spectrum for net in (model, grown))
    error = (after - before).abs().max().item()
    if not error <= 1e-9 * before.abs().max().item():
        raise ValueError(
            f"grow({', '.join(sorted(changes))}) changes what the existing weights compute (largest difference "
            f"{error:.3g}); keep the settings of the existing layers (axes, attention keys and values) as they are."
        )


class HybridMPSENetNetwork(StrictNetwork, HybridMPSENetLayers, nn.Module):
    """[`HybridMPSENetModel`]'s network as a plain `nn.Module`: the same layers, parameter names and outputs, loaded
    from the same folders and Hub repositories, for inference in a process that does not import transformers' model
    classes. Training, saving, the Auto classes and the pipeline use [`HybridMPSENetModel`]."""

    config_class = HybridMPSENetConfig

    def __init__(self, config: HybridMPSENetConfig):
        nn.Module.__init__(self)
        self.config = config
        self.build_layers(config)


def _load_safetensors(location: str | Path, hub: dict) -> dict[str, torch.Tensor]:
    """The tensors of `model.safetensors` at a folder or Hub id, or of the shards its index lists; damaged files
    and non-float tensors are `ValueError`s naming them."""
    files = safetensors_files(location, hub)
    check_stored_dtypes(files)
    state_dict = {}
    for path in files:
        state_dict.update(read_safetensors(path))
    return state_dict


def safetensors_files(location: str | Path, hub: dict) -> list[Path]:
    """The weight files of a folder or Hub id: `model.safetensors`, or the shards its index lists.

    Raises:
        OSError: neither file exists (transformers' message).
        ValueError: a damaged index, or one naming a shard that is not a file beside it.
    """
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file

    try:
        return [Path(cached_file(location, SAFE_WEIGHTS_NAME, **hub))]
    except OSError as single_error:
        try:
            index_file = Path(cached_file(location, SAFE_WEIGHTS_INDEX_NAME, **hub))
        except OSError:
            raise single_error from None
    try:
        shards = sorted(set(json.loads(index_file.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{index_file}: not a safetensors shard index ({error!r}).") from None
    for shard in shards:
        if not isinstance(shard, str) or Path(shard).name != shard:
            raise ValueError(f"{index_file}: names a shard that is not a file beside it ({shard!r}).")
    return [Path(cached_file(location, shard, **hub)) for shard in shards]


def check_stored_dtypes(files: list[Path]) -> None:
    """Refuse weight files that are damaged or hold non-float tensors (read from the headers only); both loaders
    run it before loading, so neither casts an integer or boolean tensor silently.

    Raises:
        ValueError: naming the file and the tensors.
    """
    from safetensors import SafetensorError, safe_open

    for path in files:
        try:
            with safe_open(str(path), "pt") as handle:
                dtypes = {key: handle.get_slice(key).get_dtype() for key in handle.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise _damaged(path, error) from None
        not_float = [f"{key} ({dtype})" for key, dtype in sorted(dtypes.items()) if not dtype.startswith(("F", "BF"))]
        if not_float:
            raise ValueError(
                f"{path} holds non-float tensors: {', '.join(not_float[:8])}; a model of this family has float weights "
                "only, so the file is damaged or of another model."
            )


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a zero-byte, truncated or damaged file is a `ValueError` naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise _damaged(path, error) from None


def _damaged(path: str | Path, error: Exception) -> ValueError:
    return ValueError(
        f"{path}: not a readable safetensors file ({error}); it is truncated or damaged, download or save it again."
    )
