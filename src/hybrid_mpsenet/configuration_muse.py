"""Configuration of MUSE (Lin, Chen and Wang, Interspeech 2024): MP-SENet's dense encoder and magnitude/phase
decoders around a small U-Net of MET ("multi-path enhanced Taylor") Transformer blocks instead of the TS-Transformer
stack. The STFT keys carry the family's names, so the feature extractor, the waveform path and the ONNX runtime read
them exactly as they read a [`HybridMPSENetConfig`]'s."""

from __future__ import annotations

from . import limits
from .configuration_hybrid_mpsenet import MAMBA_AXES, FamilyConfig
from .limits import MAX_SAMPLING_RATE, MIN_SAMPLING_RATE

# Attention heads -> {window of the convolutional relative-position term: heads that use it}, as MUSE splits them.
REFINE_WINDOWS = {1: {3: 1}, 2: {3: 2}, 4: {3: 2, 5: 2}, 8: {3: 2, 5: 3, 7: 3}}
# The U-Net halves time and frequency twice, so both must be multiples of this inside the model.
UNET_MULTIPLE = 4

# The U-Net's stages in network order; `mamba_stages` names those that get a Mamba branch.
MUSE_STAGES = ("level1", "level2", "bottom", "decoder2", "decoder1", "magnitude_refine", "phase_refine")

# What a saved config.json must state (see `configuration_hybrid_mpsenet.ARCHITECTURE_KEYS`).
MUSE_ARCHITECTURE_KEYS = (
    "sampling_rate",
    "n_fft",
    "hop_length",
    "win_length",
    "compress_factor",
    "dense_channel",
    "dense_depth",
    "beta",
    "num_blocks",
    "attention_heads",
    "ffn_expansion_factor",
    "offset_clamp",
    "stft_epsilons",
)

# The released VoiceBank+DEMAND model's sizes (0.51 M parameters), and the hybrid grown from it: a Mamba branch
# beside the MET blocks of the three inner stages, where time and frequency are 2x and 4x shorter than at the
# first level (see docs/models.md for what the other placements cost).
MUSE_PRESETS: dict[str, dict] = {
    "muse": {},
    "hybrid-muse": {"mamba_stages": ["level2", "bottom", "decoder2"]},
}


class MuseConfig(FamilyConfig):
    r"""
    Configuration of [`MuseModel`]. The defaults are the released VoiceBank+DEMAND model's.

    The network encodes the compressed magnitude and phase `(batch, freq, time)` with MP-SENet's dense encoder
    (3x3 kernels, halving frequency), runs a two-level U-Net of MET Transformer blocks (each stage: a deformable
    depthwise embedding, then `num_blocks` blocks of Taylor-linearised attention with channel attention and a gated
    depthwise feed-forward), and decodes a magnitude mask and a phase from two refinement stages.

    Args:
        sampling_rate, n_fft, hop_length, win_length, compress_factor: the STFT (16 kHz; 510, 100, 510; 0.3).
        dense_channel (`int`, defaults to 16): channels of the encoder, the decoders and the U-Net's first level
            (the second has twice as many, the bottom three times).
        dense_depth (`int`, defaults to 4): convolutions per dense block.
        beta (`float`, defaults to 2.0): the largest magnitude mask value.
        num_blocks (`int`, defaults to 4): MET Transformer blocks per U-Net stage.
        attention_heads (`list[int]`, defaults to `[1, 2, 8]`): heads at the first level, the second and the bottom
            (each 1, 2, 4 or 8).
        ffn_expansion_factor (`float`, defaults to 2.66): feed-forward width over the stage's channels.
        offset_clamp (`float`, defaults to 1.0): the deformable embedding's offsets are clamped to +-this (frames and
            bins).
        stft_epsilons (`bool`, defaults to False): MUSE takes `|X|` and `angle(X)` exactly; True would add
            MP-SENet's epsilons.
        segment_samples (`int`, defaults to 30700): MUSE's training segment (3.07 s, 308 frames). Waveform
            enhancement runs it on chunks of this length by default and zero-pads shorter inputs to it, as MUSE's
            own inference does (on 10 VoiceBank test pairs: PESQ 3.05 against 3.03 unpadded in 2-s chunks; the
            original code's own inference scores 3.09).
        mamba_stages (`list[str]`, defaults to `[]`): the U-Net stages (of `MUSE_STAGES`) that run a Mamba block
            beside their MET blocks, on the same embedded input, fused into the MET blocks' output by criss-cross
            cross-attention (the `hybrid-muse` preset: `level2`, `bottom`, `decoder2`). Empty: MUSE as released.
        mamba_d_state, mamba_d_conv, mamba_expand (`int`, defaults to 16, 4, 2), mamba_axes (`str`, defaults to
            `"time_freq"`), use_mamba_kernels (`bool`), mamba_scan_chunk_size (`int`, defaults to 16): the Mamba
            blocks' settings, as [`HybridMPSENetConfig`]'s.
    """

    model_type = "muse"
    architecture_keys = MUSE_ARCHITECTURE_KEYS
    # Mamba settings the hybrid keeps at mamba_ssm's defaults (MambaBlock reads them).
    mamba_dt_rank = "auto"
    mamba_dt_min = 0.001
    mamba_dt_max = 0.1
    mamba_dt_init_floor = 1e-4
    mamba_share_time_freq = False
    dropout = 0.0

    def __init__(
        self,
        sampling_rate: int = 16000,
        n_fft: int = 510,
        hop_length: int = 100,
        win_length: int = 510,
        compress_factor: float = 0.3,
        dense_channel: int = 16,
        dense_depth: int = 4,
        beta: float = 2.0,
        num_blocks: int = 4,
        attention_heads: list[int] | tuple[int, ...] = (1, 2, 8),
        ffn_expansion_factor: float = 2.66,
        offset_clamp: float = 1.0,
        stft_epsilons: bool = False,
        segment_samples: int = 30700,
        mamba_stages: list[str] | tuple[str, ...] = (),
        mamba_d_state: int = 16,
        mamba_d_conv: int = 4,
        mamba_expand: int = 2,
        mamba_axes: str = "time_freq",
        use_mamba_kernels: bool = True,
        mamba_scan_chunk_size: int = 16,
        **kwargs,
    ):
        self.check_positive_integers(
            {
                "mamba_d_state": mamba_d_state,
                "mamba_d_conv": mamba_d_conv,
                "mamba_expand": mamba_expand,
                "mamba_scan_chunk_size": mamba_scan_chunk_size,
                "sampling_rate": sampling_rate,
                "n_fft": n_fft,
                "hop_length": hop_length,
                "win_length": win_length,
                "dense_channel": dense_channel,
                "dense_depth": dense_depth,
                "num_blocks": num_blocks,
            }
        )
        self.check_upper_bounds(
            (
                ("dense_channel", dense_channel, limits.MAX_DENSE_CHANNEL),
                ("num_blocks", num_blocks, limits.MAX_BLOCKS_PER_GROUP),
                ("n_fft", n_fft, limits.MAX_N_FFT),
                ("dense_depth", dense_depth, 8),
                ("mamba_d_state", mamba_d_state, limits.MAX_MAMBA_D_STATE),
                ("mamba_d_conv", mamba_d_conv, limits.MAX_MAMBA_D_CONV),
                ("mamba_expand", mamba_expand, limits.MAX_MAMBA_EXPAND),
            )
        )
        mamba_stages = list(mamba_stages) if isinstance(mamba_stages, (list, tuple)) else mamba_stages
        if not isinstance(mamba_stages, list) or any(stage not in MUSE_STAGES for stage in mamba_stages):
            raise ValueError(f"mamba_stages must list stages of {MUSE_STAGES}, got {mamba_stages!r}.")
        if mamba_axes not in MAMBA_AXES:
            raise ValueError(f"mamba_axes must be one of {MAMBA_AXES}, got {mamba_axes!r}.")
        if not isinstance(use_mamba_kernels, bool):
            raise ValueError(f"use_mamba_kernels must be true or false, got {use_mamba_kernels!r}.")
        if not MIN_SAMPLING_RATE <= sampling_rate <= MAX_SAMPLING_RATE:
            raise ValueError(
                f"sampling_rate must be between {MIN_SAMPLING_RATE} and {MAX_SAMPLING_RATE} Hz, got {sampling_rate}."
            )
        if win_length > n_fft or not 0 < hop_length <= win_length:
            raise ValueError(f"Need hop_length <= win_length <= n_fft, got {hop_length}, {win_length}, {n_fft}.")
        if (n_fft // 2 + 1) % (2 * UNET_MULTIPLE) != 0:
            # The encoder halves the bins, and the U-Net halves them twice more.
            raise ValueError(
                f"n_fft // 2 + 1 must be a multiple of {2 * UNET_MULTIPLE} for MUSE's U-Net, got n_fft={n_fft}."
            )
        attention_heads = list(attention_heads) if isinstance(attention_heads, (list, tuple)) else attention_heads
        if not isinstance(attention_heads, list) or len(attention_heads) != 3:
            raise ValueError(
                f"attention_heads must list 3 head counts (level 1, level 2, bottom), got {attention_heads!r}."
            )
        for level, heads in zip((1, 2, 3), attention_heads, strict=True):
            if heads not in REFINE_WINDOWS or (dense_channel * level) % heads:
                raise ValueError(
                    f"attention_heads[{level - 1}] must be one of {sorted(REFINE_WINDOWS)} and divide the level's "
                    f"{dense_channel * level} channels, got {heads!r}."
                )
        for name, value in {
            "compress_factor": compress_factor,
            "beta": beta,
            "ffn_expansion_factor": ffn_expansion_factor,
            "offset_clamp": offset_clamp,
        }.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e3:
                raise ValueError(f"{name} must be a positive number, got {value!r}.")
        if (
            isinstance(segment_samples, bool)
            or not isinstance(segment_samples, int)
            or not 0 <= segment_samples <= 10**7
        ):
            raise ValueError(f"segment_samples must be a number of samples (0 to 10^7), got {segment_samples!r}.")
        if not isinstance(stft_epsilons, bool):
            raise ValueError(f"stft_epsilons must be true or false, got {stft_epsilons!r}.")
        self.sampling_rate = sampling_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.win_length = win_length
        self.compress_factor = float(compress_factor)
        self.dense_channel = dense_channel
        self.dense_depth = dense_depth
        self.beta = float(beta)
        self.num_blocks = num_blocks
        self.attention_heads = attention_heads
        self.ffn_expansion_factor = float(ffn_expansion_factor)
        self.offset_clamp = float(offset_clamp)
        self.stft_epsilons = stft_epsilons
        self.segment_samples = segment_samples
        # In network order, so that a config names its stages one way only.
        self.mamba_stages = [stage for stage in MUSE_STAGES if stage in mamba_stages]
        self.mamba_d_state = mamba_d_state
        self.mamba_d_conv = mamba_d_conv
        self.mamba_expand = mamba_expand
        self.mamba_axes = mamba_axes
        self.use_mamba_kernels = use_mamba_kernels
        self.mamba_scan_chunk_size = mamba_scan_chunk_size
        super().__init__(**kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> MuseConfig:
        """The config of a named MUSE architecture (`muse`, `hybrid-muse`), with `overrides`."""
        if name not in MUSE_PRESETS:
            raise ValueError(f"Unknown MUSE preset {name!r}; choose one of {sorted(MUSE_PRESETS)}.")
        return cls(**{**MUSE_PRESETS[name], **overrides})

    def describe(self) -> dict:
        """The U-Net's stages, its Mamba branches and their fusion (`hybrid-mpsenet info`)."""
        c = self.dense_channel
        blocks = {
            "u-net": f"7 stages x {self.num_blocks} x MET transformer (levels of {c}, {2 * c}, {3 * c} channels)",
            "attention_heads": "/".join(map(str, self.attention_heads)),
        }
        if self.mamba_stages:
            axes = "time, then frequency" if self.mamba_axes == "time_freq" else "time"
            blocks["mamba"] = f"1 x mamba ({axes}) beside the MET blocks of {', '.join(self.mamba_stages)}"
        return {"blocks": blocks, "fusion": "cross_attention" if self.mamba_stages else "none"}


MuseConfig.register_for_auto_class()
