"""The layers of MUSE (Lin, Chen and Wang, "MUSE: Flexible Voiceprint Receptive Fields and Multi-Path Fusion Enhanced
Taylor Transformer for U-Net-based Speech Enhancement", Interspeech 2024) as a member of the family: MP-SENet's dense
encoder and magnitude/phase decoders around a two-level U-Net of MET Transformer blocks, as plain PyTorch: the
layers and forward pass ([`MuseLayers`]) shared by [`MuseModel`] (transformers, in `modeling_muse`) and the lean
[`MuseNetwork`], which enhancing uses without importing transformers' model classes.

Written for this package from the paper and the behaviour of the authors' MIT-licensed code
(github.com/huaidanquede/MUSE-Speech-Enhancement); `convert.py` maps the released checkpoints onto these layers,
and the parity tests check every output against that code's. Everything runs channels-first on `(batch, channels,
time, freq)` maps, so no layer permutes its input to normalise or attend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_muse import REFINE_WINDOWS, UNET_MULTIPLE, MuseConfig
from .network import HybridMPSENetOutput, MambaBlock, MultiHeadAttention, SpectralLayers, StrictNetwork

__all__ = ["MuseLayers", "MuseNetwork", "deform_conv2d"]


def deform_conv2d(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Deformable convolution (Dai et al. 2017; with `mask`, v2), computing what `torchvision.ops.deform_conv2d`
    computes: every kernel tap samples the input at its regular position plus a learned offset, bilinearly, with
    zeros outside the input.

    The samples of all taps come from one `grid_sample` (bilinear, zero padding) and meet the weights in one
    grouped matmul, so it runs wherever PyTorch runs, on any offsets, and exports to ONNX as `GridSample` + `MatMul`.
    On a CPU it is about four times faster than gathering the four bilinear corners of every tap.

    Args:
        input: `(batch, in_channels, height, width)`.
        offset: `(batch, 2 * offset_groups * kh * kw, out_height, out_width)`: per offset group and tap (row-major
            over the kernel), the (row, column) displacement in input pixels.
        weight: `(out_channels, in_channels // groups, kh, kw)`.
        bias: `(out_channels,)` or None.
        mask: `(batch, offset_groups * kh * kw, out_height, out_width)` modulation of each tap, or None.

    Returns:
        `(batch, out_channels, out_height, out_width)`.
    """
    batch, in_channels, height, width = input.shape
    out_channels, group_channels, kh, kw = weight.shape
    groups = in_channels // group_channels
    taps = kh * kw
    out_height, out_width = offset.shape[-2:]
    offset_groups = offset.shape[1] // (2 * taps)
    if offset.shape[1] != 2 * offset_groups * taps or in_channels % offset_groups or in_channels % group_channels:
        raise ValueError(
            f"deform_conv2d: offset has {offset.shape[1]} channels, weight {tuple(weight.shape)}, input "
            f"{in_channels} channels; need 2 * offset_groups * {taps} offset channels and channels divisible by the "
            "groups."
        )
    positions = out_height * out_width
    dtype = input.dtype
    rows = torch.arange(out_height, device=input.device, dtype=dtype) * stride[0] - padding[0]
    cols = torch.arange(out_width, device=input.device, dtype=dtype) * stride[1] - padding[1]
    tap_rows = (torch.arange(kh, device=input.device, dtype=dtype) * dilation[0]).repeat_interleave(kw)
    tap_cols = (torch.arange(kw, device=input.device, dtype=dtype) * dilation[1]).repeat(kh)
    offset = offset.reshape(batch * offset_groups, taps, 2, out_height, out_width)
    y = offset[:, :, 0] + (tap_rows[:, None, None] + rows[:, None])  # (batch * groups, taps, out_h, out_w)
    x = offset[:, :, 1] + (tap_cols[:, None, None] + cols)
    # grid_sample's pixel centres without align_corners: pixel i sits at (2 i + 1) / size - 1.
    grid = torch.stack(((2 * x + 1) / width - 1, (2 * y + 1) / height - 1), -1)
    group_size = in_channels // offset_groups
    samples = F.grid_sample(
        input.reshape(batch * offset_groups, group_size, height, width),
        grid.reshape(batch * offset_groups, taps * out_height, out_width, 2),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    ).reshape(batch, offset_groups, group_size, taps, positions)
    if mask is not None:
        samples = samples * mask.reshape(batch, offset_groups, 1, taps, positions)
    columns = samples.reshape(batch, groups, group_channels * taps, positions)
    out = weight.reshape(groups, out_channels // groups, group_channels * taps) @ columns
    out = out.reshape(batch, out_channels, out_height, out_width)
    return out if bias is None else out + bias[:, None, None]


class ChannelNorm(nn.Module):
    """MUSE's bias-free LayerNorm over the channels of each time-frequency cell: `x / sqrt(var + 1e-5) * weight`
    (the variance is taken about the mean, but the mean is not subtracted)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Two passes over the channels: over a non-contiguous dim, `Tensor.var` is ten times slower on a CPU.
        centred = x - x.mean(1, keepdim=True)
        variance = (centred * centred).mean(1, keepdim=True)
        return x / torch.sqrt(variance + 1e-5) * self.weight[:, None, None]


class ConvNormActivation(nn.Module):
    """Conv2d -> InstanceNorm2d (affine) -> PReLU with one slope per channel."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation)
        self.norm = nn.InstanceNorm2d(out_channels, affine=True)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class DenseBlock(nn.Module):
    """MP-SENet's dense block at MUSE's settings: `depth` 3x3 convolutions dilated 1, 2, 4, ... frames in time
    (padded on both sides), each reading the concatenation of the block input and all earlier outputs."""

    def __init__(self, channels: int, depth: int):
        super().__init__()
        self.layers = nn.ModuleList(
            ConvNormActivation(channels * (i + 1), channels, (3, 3), padding=(2**i, 1), dilation=(2**i, 1))
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x
        for layer in self.layers:
            x = layer(skip)
            skip = torch.cat((x, skip), 1)
        return x


class DenseEncoder(nn.Module):
    """`(batch, 2, time, freq)` magnitude and phase -> `(batch, channels, time, freq // 2)`."""

    def __init__(self, channels: int, depth: int):
        super().__init__()
        self.input = ConvNormActivation(2, channels, 1)
        self.dense = DenseBlock(channels, depth)
        self.output = ConvNormActivation(channels, channels, (1, 3), stride=(1, 2), padding=(0, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.dense(self.input(x)))


class SubPixelUpsampler(nn.Module):
    """Doubles frequency: a pointwise conv to 4x the channels, a pixel shuffle (doubling time and frequency) and a
    depthwise (1, 3) conv of stride 2 in time, which keeps only the even frames of the shuffle, those of the first
    sub-pixel row. The pointwise conv therefore computes only the channels that reach them."""

    def __init__(self, channels: int):
        super().__init__()
        self.expand = nn.Conv2d(channels, channels * 4, 1, bias=False)
        self.depthwise = nn.Conv2d(channels, channels, (1, 3), padding=(0, 1), groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, bins = x.shape
        # PixelShuffle(2) puts channel 4c + 2i + j at (2t + i, 2f + j); the stride-2 conv reads i = 0 only.
        weight = self.expand.weight.reshape(channels, 2, 2, channels)[:, 0].reshape(2 * channels, channels, 1, 1)
        x = F.conv2d(x, weight).reshape(batch, channels, 2, frames, bins)
        return self.depthwise(x.permute(0, 1, 3, 4, 2).reshape(batch, channels, frames, 2 * bins))


class LearnableSigmoid(nn.Module):
    """`beta * sigmoid(slope * x)` with one slope per frequency bin."""

    def __init__(self, num_freq_bins: int, beta: float):
        super().__init__()
        self.beta = beta
        self.slope = nn.Parameter(torch.ones(num_freq_bins, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.beta * torch.sigmoid(self.slope * x)


class MaskDecoder(nn.Module):
    """`(batch, channels, time, freq // 2)` -> magnitude mask `(batch, freq, time)` in `(0, beta)`."""

    def __init__(self, config: MuseConfig):
        super().__init__()
        c = config.dense_channel
        self.dense = DenseBlock(c, config.dense_depth)
        self.upsample = SubPixelUpsampler(c)
        self.project = nn.Conv2d(c, 1, 1)
        self.norm = nn.InstanceNorm2d(1, affine=True)
        self.act = nn.PReLU(1)
        self.output = nn.Conv2d(1, 1, 1)
        self.sigmoid = LearnableSigmoid(config.num_freq_bins, config.beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.output(self.act(self.norm(self.project(self.upsample(self.dense(x))))))
        return self.sigmoid(x[:, 0].transpose(1, 2))


class PhaseDecoder(nn.Module):
    """`(batch, channels, time, freq // 2)` -> phase `(batch, freq, time)`: the angle of a predicted (real, imag)."""

    def __init__(self, config: MuseConfig):
        super().__init__()
        c = config.dense_channel
        self.dense = DenseBlock(c, config.dense_depth)
        self.upsample = SubPixelUpsampler(c)
        self.norm = nn.InstanceNorm2d(c, affine=True)
        self.act = nn.PReLU(c)
        self.real = nn.Conv2d(c, 1, 1)
        self.imag = nn.Conv2d(c, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm(self.upsample(self.dense(x))))
        return torch.atan2(self.imag(x), self.real(x))[:, 0].transpose(1, 2)


class DeformableEmbedding(nn.Module):
    """A stage's input embedding: a depthwise 3x3 deformable convolution whose offsets (clamped to +-`clamp`) come
    from a depthwise + pointwise conv of the input, then a pointwise conv and Hardswish."""

    def __init__(self, channels: int, clamp: float):
        super().__init__()
        self.clamp = clamp
        self.offset_depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.offset_pointwise = nn.Conv2d(channels, 18, 1, bias=False)
        self.deformable_weight = nn.Parameter(torch.empty(channels, 1, 3, 3))
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.deformable_weight, a=5**0.5)  # torchvision's DeformConv2d init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.offset_pointwise(self.offset_depthwise(x)).clamp(-self.clamp, self.clamp)
        x = deform_conv2d(x, offset, self.deformable_weight, padding=(1, 1))
        return F.hardswish(self.pointwise(x))


class PositionGate(nn.Module):
    """MET attention's convolutional relative-position term: per head, a conv over the (query, key) channel maps
    gives one weight per cell, in (0, 1) after a sigmoid. Heads are split over window sizes as MUSE splits them."""

    def __init__(self, head_channels: int, heads: int):
        super().__init__()
        windows = REFINE_WINDOWS[heads]
        self.splits = [count * 2 * head_channels for count in windows.values()]
        self.convs = nn.ModuleList(
            nn.Conv2d(count * 2 * head_channels, count, window, padding=window // 2, groups=count)
            for window, count in windows.items()
        )

    def forward(self, q: torch.Tensor, k: torch.Tensor, frames: int, bins: int) -> torch.Tensor:
        """`q`, `k`: `(batch, heads, head_channels, cells)` -> `(batch, heads, 1, cells)`."""
        batch, heads, channels, cells = q.shape
        maps = torch.cat((q, k), 2).reshape(batch, heads * 2 * channels, frames, bins)
        gates = [conv(part) for conv, part in zip(self.convs, maps.split(self.splits, 1), strict=True)]
        return torch.sigmoid(torch.cat(gates, 1)).reshape(batch, heads, 1, cells)


def _channel_norm(x: torch.Tensor) -> torch.Tensor:
    """L2 norm over dim 2, kept, as sqrt(sum of squares): `linalg.vector_norm` over a non-contiguous dim is thirty
    times slower on a CPU. The floor keeps the gradient at a zero vector (zero padding) zero, as `vector_norm`'s
    is, where sqrt's would be infinite; it is far below the 1e-6 the norm is added to."""
    return (x * x).sum(2, keepdim=True).clamp_min(1e-30).sqrt()


class TaylorAttention(nn.Module):
    """MET attention: first-order Taylor (linear) attention over all cells of the map,
    `(sum v + q k^T v) / (N + q sum k)` with L2-normalised q and k per head, scaled per head, gated by the position
    term, by channel attention (a pointwise conv of the global mean) and by a GELU-gated depthwise branch."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.channel_gate = nn.Conv2d(channels, channels, 1)
        self.gate_pointwise = nn.Conv2d(channels, channels * 2, 1, bias=False)
        self.gate_depthwise = nn.Conv2d(channels * 2, channels, 3, padding=1, groups=channels, bias=False)
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(channels, channels * 3, 1, bias=False)
        self.qkv_depthwise = nn.Conv2d(channels * 3, channels * 3, 3, padding=1, groups=channels * 3, bias=False)
        self.position = PositionGate(channels // heads, heads)
        self.output = nn.Conv2d(channels, channels, 1, bias=False)

    def _gate_kernel(self) -> torch.Tensor:
        """The gate's pointwise conv and its grouped 3x3 conv (two inputs per group, no biases) folded into one 3x3
        kernel `(C, C, 3, 3)`: the same linear map, computed by one fast convolution instead of a grouped one that
        CPUs run slowly."""
        channels = self.gate_depthwise.out_channels
        grouped = self.gate_depthwise.weight.reshape(channels, 2, 9)  # output c reads pointwise outputs 2c, 2c + 1
        pointwise = self.gate_pointwise.weight.reshape(channels, 2, channels)
        return torch.einsum("cgk,cgi->cik", grouped, pointwise).reshape(channels, channels, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, bins = x.shape
        cells = frames * bins
        channel_gate = self.channel_gate(x.mean((2, 3), keepdim=True))
        local = F.gelu(F.conv2d(x, self._gate_kernel(), padding=1))
        q, k, v = self.qkv_depthwise(self.qkv(x)).reshape(batch, 3, self.heads, channels // self.heads, cells).unbind(1)
        q = q / (_channel_norm(q) + 1e-6)
        k = k / (_channel_norm(k) + 1e-6)
        position = self.position(q, k, frames, bins)
        numerator = v.sum(-1, keepdim=True) + (k @ v.transpose(2, 3)).transpose(2, 3) @ q
        denominator = (cells + k.sum(-1, keepdim=True).transpose(2, 3) @ q) + 1e-6
        out = numerator / denominator * self.temperature * position
        out = out.reshape(batch, channels, frames, bins) * channel_gate * local
        return self.output(out)


class GatedFeedForward(nn.Module):
    """Pointwise expansion, depthwise 3x3, `gelu(a) * b` over the two halves, pointwise projection back."""

    def __init__(self, channels: int, expansion: float):
        super().__init__()
        hidden = int(channels * expansion)
        self.input = nn.Conv2d(channels, hidden * 2, 1, bias=False)
        self.depthwise = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=False)
        self.output = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.depthwise(self.input(x)).chunk(2, 1)
        return self.output(F.gelu(a) * b)


class MetBlock(nn.Module):
    """A MET Transformer block: pre-norm Taylor attention and gated feed-forward, each residual."""

    def __init__(self, channels: int, heads: int, expansion: float):
        super().__init__()
        self.norm1 = ChannelNorm(channels)
        self.attn = TaylorAttention(channels, heads)
        self.norm2 = ChannelNorm(channels)
        self.ffn = GatedFeedForward(channels, expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class MambaBranch(nn.Module):
    """The hybrid's branch beside a stage's MET blocks: a [`MambaBlock`] (along time, then frequency) reads the
    stage's embedded input, and the MET blocks' output queries it with criss-cross cross-attention, added
    residually. Its attention's output projection at zero makes it the identity (a model grown from MUSE)."""

    def __init__(self, channels: int, heads: int, config: MuseConfig):
        super().__init__()
        self.mamba = MambaBlock(config, channels)
        self.norm = nn.LayerNorm(channels)
        self.attention = MultiHeadAttention(channels, heads)

    @torch.no_grad()
    def start_as_identity(self) -> None:
        self.attention.out_proj.weight.zero_()
        self.attention.out_proj.bias.zero_()

    def forward(self, transformer: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        """The MET blocks' output and their input, `(batch, C, time, freq)` -> fused `(batch, C, time, freq)`."""
        context = self.mamba(embedded).permute(0, 2, 3, 1)
        query = self.norm(transformer.permute(0, 2, 3, 1))
        # Channels-first like the MET path, so the convolutions after the stage keep their (exact) algorithm.
        return transformer + self.attention.criss_cross(query, context).permute(0, 3, 1, 2).contiguous()


class MetStage(nn.Module):
    """A U-Net stage: the deformable embedding, `num_blocks` MET blocks (with `mamba`, a [`MambaBranch`] beside
    them), and a residual around all. (MUSE's multi-path fusion over one path is a softmax over one value, the
    identity, so it is not computed.)"""

    def __init__(self, channels: int, heads: int, config: MuseConfig, mamba: bool = False):
        super().__init__()
        self.embedding = DeformableEmbedding(channels, config.offset_clamp)
        self.blocks = nn.ModuleList(
            MetBlock(channels, heads, config.ffn_expansion_factor) for _ in range(config.num_blocks)
        )
        self.mamba_branch = MambaBranch(channels, heads, config) if mamba else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embedded = out = self.embedding(x)
        for block in self.blocks:
            out = block(out)
        if self.mamba_branch is not None:
            out = self.mamba_branch(out, embedded)
        return out + x


class Resample(nn.Module):
    """Halves (pixel unshuffle) or doubles (pixel shuffle) time and frequency after a depthwise 3x3 and a pointwise
    conv to `out_channels`."""

    def __init__(self, in_channels: int, out_channels: int, down: bool):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels // 4 if down else out_channels * 4, 1, bias=False)
        self.shuffle = nn.PixelUnshuffle(2) if down else nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.pointwise(self.depthwise(x)))


class MetUNet(nn.Module):
    """`(batch, C, time, bins)` -> magnitude and phase features of the same shape; `time` and `bins` multiples of
    4. Levels of C, 2C and 3C channels; skip connections merged by pointwise convs; a refinement stage and a 3x3
    conv per output, each added to the U-Net input."""

    def __init__(self, config: MuseConfig):
        super().__init__()
        c = config.dense_channel
        heads1, heads2, heads3 = config.attention_heads

        def stage(name: str, level: int, heads: int) -> MetStage:
            return MetStage(level * c, heads, config, mamba=name in config.mamba_stages)

        self.level1 = stage("level1", 1, heads1)
        self.down1 = Resample(c, 2 * c, down=True)
        self.level2 = stage("level2", 2, heads2)
        self.down2 = Resample(2 * c, 3 * c, down=True)
        self.bottom = stage("bottom", 3, heads3)
        self.up2 = Resample(3 * c, 2 * c, down=False)
        self.merge2 = nn.Conv2d(4 * c, 2 * c, 1, bias=False)
        self.decoder2 = stage("decoder2", 2, heads2)
        self.up1 = Resample(2 * c, c, down=False)
        self.merge1 = nn.Conv2d(2 * c, c, 1, bias=False)
        self.decoder1 = stage("decoder1", 1, heads1)
        self.magnitude_refine = stage("magnitude_refine", 1, heads1)
        self.magnitude_output = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.phase_refine = stage("phase_refine", 1, heads1)
        self.phase_output = nn.Conv2d(c, c, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        level1 = self.level1(x)
        level2 = self.level2(self.down1(level1))
        bottom = self.bottom(self.down2(level2))
        decoded2 = self.decoder2(self.merge2(torch.cat((self.up2(bottom), level2), 1)))
        decoded1 = self.decoder1(self.merge1(torch.cat((self.up1(decoded2), level1), 1)))
        magnitude = self.magnitude_output(self.magnitude_refine(decoded1)) + x
        phase = self.phase_output(self.phase_refine(decoded1)) + x
        return magnitude, phase


class MuseLayers(SpectralLayers):
    """MUSE's layers and forward pass on spectra, shared by [`MuseModel`] (transformers) and [`MuseNetwork`]
    (plain PyTorch), as `HybridMPSENetLayers` is for the TS-Transformer members."""

    config: MuseConfig

    def build_layers(self, config: MuseConfig) -> None:
        self.encoder = DenseEncoder(config.dense_channel, config.dense_depth)
        self.unet = MetUNet(config)
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
            magnitude: `(batch, freq, time)` compressed magnitude (`freq = n_fft // 2 + 1`), any number of frames:
                the U-Net's input is padded with zeros to a multiple of 4 frames and its output cropped back.
            phase: `(batch, freq, time)` phase in radians.
            frame_mask: `(batch, time)` as for the other members; MUSE normalises and attends over whole maps, so
                a padded batch is enhanced as it is (items of different lengths are best enhanced one by one).
            norm_factor, num_samples: accepted and unused (`model(**feature_extractor(audio))`).
            cache: not supported: MUSE looks at the whole utterance.

        Returns:
            `HybridMPSENetOutput` with the enhanced `magnitude`, `phase` `(batch, freq, time)` and
            `complex_spectrum` `(batch, freq, time, 2)`.
        """
        self.check_spectra(magnitude, phase)
        if cache is not None:
            raise ValueError("MUSE is not causal and carries no stream cache.")
        frames = magnitude.shape[-1]
        x = self.encoder(torch.stack((magnitude, phase), 1).transpose(2, 3))  # (batch, C, time, freq // 2)
        pad = -frames % UNET_MULTIPLE
        mag_features, phase_features = self.unet(F.pad(x, (0, 0, 0, pad)))
        mag_features, phase_features = mag_features[:, :, :frames], phase_features[:, :, :frames]
        enhanced_magnitude = magnitude * self.mask_decoder(mag_features)
        enhanced_phase = self.phase_decoder(phase_features)
        return self.output(enhanced_magnitude, enhanced_phase, return_dict)


class MuseNetwork(StrictNetwork, MuseLayers, nn.Module):
    """[`MuseModel`]'s network as a plain `nn.Module` (no transformers model classes), for lean inference: the same
    parameter names and outputs, loaded from the same folders as strictly."""

    config_class = MuseConfig

    def __init__(self, config: MuseConfig):
        nn.Module.__init__(self)
        self.config = config
        self.build_layers(config)
