"""Configuration of the hybrid MP-SENet family (MP-SENet, MP-SENet + Mamba hybrids and new variants)."""

from __future__ import annotations

import math

from transformers import PreTrainedConfig

from . import limits
from .limits import MAX_SAMPLING_RATE, MIN_SAMPLING_RATE

BLOCK_TYPES = ("transformer", "mamba")
FUSION_TYPES = ("none", "cross_attention", "pointwise")
TS_TRANSFORMER_AXES = ("time_freq", "freq_time", "batch_mixed")
SELF_ATTENTION_KV = ("normed", "raw")
MAMBA_AXES = ("time_freq", "time")

# What a saved config.json must state: the keys that shape the weights or change the output. A config without one
# of them would silently take the default (hybrid-large's) and fit the weights wrongly; dropout, Mamba init ranges
# and kernel choices may be left out. `mamba_axes` came later and may be missing from older configs, whose Mamba
# blocks all ran along time and frequency (its default); a config that drops it from a time-only model fails the
# strict weight check instead. `causal` and its settings came later too: a config without them is a non-causal model,
# which is what every config saved before them describes.
ARCHITECTURE_KEYS = (
    "sampling_rate",
    "n_fft",
    "hop_length",
    "win_length",
    "compress_factor",
    "dense_channel",
    "dense_depth",
    "beta",
    "num_attention_heads",
    "ffn_hidden_size",
    "num_shared_blocks",
    "shared_block_type",
    "num_magnitude_blocks",
    "magnitude_block_type",
    "num_phase_blocks",
    "phase_block_type",
    "branch_projection",
    "fusion",
    "ts_transformer_axes",
    "self_attention_kv",
    "mamba_d_state",
    "mamba_d_conv",
    "mamba_expand",
    "mamba_dt_rank",
    "mamba_share_time_freq",
)
# The dense blocks dilate by 2**i frames; beyond this depth the receptive field only adds padding.
MAX_DENSE_DEPTH = 8
# A frame overlap beyond this (hop 1 with a 400-sample window) multiplies the compute for no benefit.
MAX_WINDOW_TO_HOP = 16

# Architectures of the original repositories. Parameter counts: mpsenet 2,263,372; hybrid-large 5,948,492;
# hybrid-small 2,037,836 (checked by the tests against checkpoints produced by the original code).
PRESETS: dict[str, dict] = {
    "mpsenet": {
        "num_shared_blocks": 4,
        "shared_block_type": "transformer",
        "num_magnitude_blocks": 0,
        "num_phase_blocks": 0,
        "branch_projection": False,
        "fusion": "none",
        "self_attention_kv": "normed",
    },
    "hybrid-large": {
        "num_shared_blocks": 6,
        "shared_block_type": "transformer",
        "num_magnitude_blocks": 6,
        "magnitude_block_type": "mamba",
        "num_phase_blocks": 6,
        "phase_block_type": "transformer",
        "mamba_share_time_freq": False,
        "branch_projection": True,
        "fusion": "cross_attention",
        "self_attention_kv": "raw",
    },
    "hybrid-small": {
        "num_shared_blocks": 2,
        "shared_block_type": "mamba",
        "num_magnitude_blocks": 2,
        "magnitude_block_type": "mamba",
        "num_phase_blocks": 2,
        "phase_block_type": "transformer",
        "mamba_share_time_freq": True,
        "branch_projection": True,
        "fusion": "cross_attention",
        "self_attention_kv": "raw",
    },
}

# Causal members (streaming, see `causal`). mpsenet-causal is MP-SENet's sizes with causal windowed attention and
# forward GRUs along time, the reference point. hybrid-causal carries a fixed-size Mamba state per bin along time
# (no attention window to cache) in the shared blocks and the magnitude branch, keeps a TS-Transformer for the phase
# branch and fuses the branches pointwise (criss-cross fusion attends to future frames). At 32 channels one hop
# costs 20 ms on one CPU thread against mpsenet-causal's 35 ms (PyTorch, frame by frame; docs/streaming.md).
PRESETS["mpsenet-causal"] = {**PRESETS["mpsenet"], "causal": True}
PRESETS["hybrid-causal"] = {
    **PRESETS["hybrid-small"],
    "causal": True,
    "dense_channel": 32,
    "ffn_hidden_size": 64,
    "num_magnitude_blocks": 1,
    "num_phase_blocks": 1,
    "mamba_share_time_freq": False,
    "fusion": "pointwise",
    "self_attention_kv": "normed",
}


class FamilyConfig(PreTrainedConfig):
    """What every config of the family shares: strict reading (a `config.json` that is not a JSON object, or lacks
    one of the class's `architecture_keys`, is an error naming it) and the STFT conventions the feature extractor
    and the waveform paths read (`sampling_rate`, `n_fft`, `hop_length`, `win_length`, `compress_factor`, `causal`,
    `stft_epsilons`)."""

    # The keys that shape the weights or change the output; a saved config must state every one.
    architecture_keys = ()
    # MP-SENet's epsilons in the compressed magnitude and the phase (see `spectral.compressed_magnitude_phase`).
    stft_epsilons = True
    # Inference pads inputs shorter than this many samples with zeros (0: only to one STFT frame).
    segment_samples = 0
    # Whether the model only looks back (it can stream); members that can be causal set it per config.
    causal = False

    @classmethod
    def _dict_from_json_file(cls, json_file) -> dict:
        """transformers' reader of `config.json`, refusing a file whose JSON is not an object (`null`, `42`) with a
        message naming it instead of a `TypeError` deep inside transformers."""
        config_dict = super()._dict_from_json_file(json_file)
        if not isinstance(config_dict, dict):
            raise ValueError(
                f"{json_file}: a model config is a JSON object of settings, got {str(config_dict)[:40]!r}; the file is "
                "damaged. Restore it, or write it with save_pretrained."
            )
        return config_dict

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> FamilyConfig:
        """Like `PreTrainedConfig.from_dict` (used by `from_pretrained`), but a dict that lacks any of
        `architecture_keys` is an error naming them, not a config silently completed with defaults."""
        if not isinstance(config_dict, dict):
            raise ValueError(f"A model config is a dict of settings, got {type(config_dict).__name__}.")
        missing = [key for key in cls.architecture_keys if key not in config_dict]
        if missing:
            raise ValueError(
                f"The model config lacks {', '.join(missing)}; without them the defaults would be used and the weights "
                "would not fit. Was config.json edited or truncated? Restore it, or write it with save_pretrained."
            )
        return super().from_dict(config_dict, **kwargs)

    @property
    def num_freq_bins(self) -> int:
        """Frequency bins of the one-sided STFT, `n_fft // 2 + 1`."""
        return self.n_fft // 2 + 1

    def describe(self) -> dict:
        """The architecture in a few readable entries (`hybrid-mpsenet info`)."""
        raise NotImplementedError

    @staticmethod
    def check_positive_integers(values: dict) -> None:
        """Refuse any of `values` (name -> value) that is not a positive integer (booleans included)."""
        for name, value in values.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")

    @staticmethod
    def check_upper_bounds(bounds: tuple) -> None:
        """Refuse any `(name, value, bound)` whose value exceeds its bound: a damaged or mistyped config."""
        for name, value, bound in bounds:
            if value > bound:
                raise ValueError(f"{name} must be at most {bound}, got {value}; is the config damaged or mistyped?")


class HybridMPSENetConfig(FamilyConfig):
    r"""
    Configuration of [`HybridMPSENetModel`]. The defaults reproduce the `hybrid-large` architecture; use
    [`HybridMPSENetConfig.from_preset`] for `mpsenet`, `hybrid-large` or `hybrid-small`.

    The network reads a compressed magnitude and phase spectrum `(batch, freq, time)`, encodes it with a dense
    encoder, runs `num_shared_blocks` sequence blocks, optionally splits into a magnitude branch and a phase branch
    (each with its own blocks), optionally fuses the branches, and decodes a magnitude mask and a phase.

    Args:
        sampling_rate (`int`, defaults to 16000): sample rate of the audio the model works at, in Hz.
        n_fft (`int`, defaults to 400): FFT size of the STFT; the model sees `n_fft // 2 + 1` frequency bins.
        hop_length (`int`, defaults to 100): STFT hop in samples.
        win_length (`int`, defaults to 400): STFT (periodic Hann) window length in samples.
        compress_factor (`float`, defaults to 0.3): power-law compression exponent of the magnitude.
        dense_channel (`int`, defaults to 64): channel width of the encoder, decoders and sequence blocks.
        dense_depth (`int`, defaults to 4): number of dilated convolutions in each dense block.
        beta (`float`, defaults to 2.0): upper bound of the learnable sigmoid that produces the magnitude mask.
        num_attention_heads (`int`, defaults to 4): heads of every attention layer.
        ffn_hidden_size (`int`, defaults to 128): hidden size of the bidirectional GRU in the Transformer FFN.
        dropout (`float`, defaults to 0.0): dropout of the Transformer and Mamba residual paths.
        attention_dropout (`float`, defaults to 0.0): dropout on attention weights.
        num_shared_blocks (`int`): sequence blocks before the branches split.
        shared_block_type (`str`): `"transformer"` (TS-Transformer: MHSA + bi-GRU FFN along time, then
            frequency) or `"mamba"` (unidirectional Mamba along time, then frequency).
        num_magnitude_blocks, magnitude_block_type: blocks of the magnitude branch (0 = no branch).
        num_phase_blocks, phase_block_type: blocks of the phase branch (0 = no branch).
        branch_projection (`bool`): a 1x1 convolution per branch before the branch blocks.
        fusion (`str`): how the branches exchange information before decoding. `"none"`; `"cross_attention"`
            (each position of one branch attends to the other branch's features along its time axis and its
            frequency axis, criss-cross, then a bi-GRU FFN along time); `"pointwise"` (each position attends
            only to the same position of the other branch, which is what the original hybrid code computes).
        ts_transformer_axes (`str`): axes along which the first and second Transformer of each TS-Transformer
            block run. `"time_freq"` (default) runs `time_transformer` along time. `"freq_time"` reproduces the
            original checkpoints, whose `time_transformer` ran along frequency because of `batch_first=False`.
            `"batch_mixed"` reproduces the original code at any batch size, including its mixing of the items of
            a batch (each frame's frequency sequences of all items form one sequence, and each bin's frame
            sequences likewise); only for exact parity with original training runs, it takes no `frame_mask`.
        self_attention_kv (`str`): keys and values of the Transformer self-attention: `"normed"` (the pre-norm
            output, as MP-SENet) or `"raw"` (the block input, as the original hybrid code; queries are normed).
        mamba_d_state (`int`, defaults to 16), mamba_d_conv (`int`, defaults to 4), mamba_expand (`int`,
            defaults to 2), mamba_dt_rank (`int` or `"auto"`): Mamba sizes, as in `mamba_ssm.Mamba`.
        mamba_dt_min, mamba_dt_max, mamba_dt_init_floor (`float`): initial range of the Mamba step size.
        mamba_share_time_freq (`bool`): one Mamba for the time and the frequency pass of a block.
        mamba_axes (`str`, defaults to `"time_freq"`): the passes of every Mamba block: `"time_freq"` (along time,
            then along frequency, as the original hybrids) or `"time"` (along time only: half the cost, the
            cheap choice for CPU inference, where the frequency pass costs as much as the time pass).
        causal (`bool`, defaults to False): every layer sees only present and past STFT frames, so the model can
            enhance a stream frame by frame (`enhancer.stream(...)`) with exactly its offline output. The STFT pads
            with zeros instead of reflecting; the instance norms become moving instance norms (statistics over
            frequency, averaged over past frames with an exponential window of `causal_norm_seconds`); attention
            along time sees the last `causal_attention_window` frames and the GRUs along time run forwards only;
            layers along frequency (within a frame) are unchanged. There is no whole-utterance RMS normalisation:
            the model sees the signal at its own level and trains on randomised levels.
        causal_attention_window (`int`, defaults to 64): frames a causal time-attention query sees, itself
            included (64 frames = 0.4 s at the default hop).
        causal_norm_seconds (`float`, defaults to 1.0): time constant of the causal models' moving norms.
        use_mamba_kernels (`bool`, defaults to True): use `mamba_ssm`/`causal_conv1d` CUDA kernels when installed
            and the input is on CUDA; the pure-PyTorch scan is used otherwise.
        mamba_scan_chunk_size (`int`, defaults to 16): time steps per chunk of the pure-PyTorch scan.
    """

    model_type = "hybrid_mpsenet"
    architecture_keys = ARCHITECTURE_KEYS

    def __init__(
        self,
        sampling_rate: int = 16000,
        n_fft: int = 400,
        hop_length: int = 100,
        win_length: int = 400,
        compress_factor: float = 0.3,
        dense_channel: int = 64,
        dense_depth: int = 4,
        beta: float = 2.0,
        num_attention_heads: int = 4,
        ffn_hidden_size: int = 128,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        num_shared_blocks: int = 6,
        shared_block_type: str = "transformer",
        num_magnitude_blocks: int = 6,
        magnitude_block_type: str = "mamba",
        num_phase_blocks: int = 6,
        phase_block_type: str = "transformer",
        branch_projection: bool = True,
        fusion: str = "cross_attention",
        ts_transformer_axes: str = "time_freq",
        self_attention_kv: str = "normed",
        mamba_d_state: int = 16,
        mamba_d_conv: int = 4,
        mamba_expand: int = 2,
        mamba_dt_rank: int | str = "auto",
        mamba_dt_min: float = 0.001,
        mamba_dt_max: float = 0.1,
        mamba_dt_init_floor: float = 1e-4,
        mamba_share_time_freq: bool = False,
        mamba_axes: str = "time_freq",
        use_mamba_kernels: bool = True,
        mamba_scan_chunk_size: int = 16,
        causal: bool = False,
        causal_attention_window: int = 64,
        causal_norm_seconds: float = 1.0,
        **kwargs,
    ):
        self.check_positive_integers(
            {
                "sampling_rate": sampling_rate,
                "n_fft": n_fft,
                "hop_length": hop_length,
                "win_length": win_length,
                "dense_channel": dense_channel,
                "dense_depth": dense_depth,
                "num_attention_heads": num_attention_heads,
                "ffn_hidden_size": ffn_hidden_size,
                "mamba_d_state": mamba_d_state,
                "mamba_d_conv": mamba_d_conv,
                "mamba_expand": mamba_expand,
                "mamba_scan_chunk_size": mamba_scan_chunk_size,
                "causal_attention_window": causal_attention_window,
            }
        )
        for name, value in {
            "num_shared_blocks": num_shared_blocks,
            "num_magnitude_blocks": num_magnitude_blocks,
            "num_phase_blocks": num_phase_blocks,
        }.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}.")
        for name, value in {
            "shared_block_type": shared_block_type,
            "magnitude_block_type": magnitude_block_type,
            "phase_block_type": phase_block_type,
        }.items():
            if value not in BLOCK_TYPES:
                raise ValueError(f"{name} must be one of {BLOCK_TYPES}, got {value!r}.")
        if fusion not in FUSION_TYPES:
            raise ValueError(f"fusion must be one of {FUSION_TYPES}, got {fusion!r}.")
        if ts_transformer_axes not in TS_TRANSFORMER_AXES:
            raise ValueError(f"ts_transformer_axes must be one of {TS_TRANSFORMER_AXES}, got {ts_transformer_axes!r}.")
        if self_attention_kv not in SELF_ATTENTION_KV:
            raise ValueError(f"self_attention_kv must be one of {SELF_ATTENTION_KV}, got {self_attention_kv!r}.")
        if mamba_axes not in MAMBA_AXES:
            raise ValueError(f"mamba_axes must be one of {MAMBA_AXES}, got {mamba_axes!r}.")
        if fusion != "none" and (num_magnitude_blocks == 0) != (num_phase_blocks == 0):
            raise ValueError(
                f"fusion={fusion!r} needs both a magnitude and a phase branch, got num_magnitude_blocks="
                f"{num_magnitude_blocks} and num_phase_blocks={num_phase_blocks}; set both or use fusion='none'."
            )
        if win_length > n_fft:
            raise ValueError(f"win_length ({win_length}) must not exceed n_fft ({n_fft}).")
        if not win_length / MAX_WINDOW_TO_HOP <= hop_length <= win_length:
            raise ValueError(
                f"hop_length ({hop_length}) must be between win_length / {MAX_WINDOW_TO_HOP} and win_length "
                f"({win_length}): a larger hop leaves gaps the inverse STFT cannot fill, a much smaller one only "
                "multiplies the compute."
            )
        if not MIN_SAMPLING_RATE <= sampling_rate <= MAX_SAMPLING_RATE:
            raise ValueError(
                f"sampling_rate must be between {MIN_SAMPLING_RATE} and {MAX_SAMPLING_RATE} Hz, got {sampling_rate}."
            )
        if dense_depth > MAX_DENSE_DEPTH:
            raise ValueError(f"dense_depth must be at most {MAX_DENSE_DEPTH}, got {dense_depth}.")
        self.check_upper_bounds(
            (
                ("dense_channel", dense_channel, limits.MAX_DENSE_CHANNEL),
                ("num_shared_blocks", num_shared_blocks, limits.MAX_BLOCKS_PER_GROUP),
                ("num_magnitude_blocks", num_magnitude_blocks, limits.MAX_BLOCKS_PER_GROUP),
                ("num_phase_blocks", num_phase_blocks, limits.MAX_BLOCKS_PER_GROUP),
                ("ffn_hidden_size", ffn_hidden_size, limits.MAX_FFN_HIDDEN_SIZE),
                ("n_fft", n_fft, limits.MAX_N_FFT),
                ("mamba_d_state", mamba_d_state, limits.MAX_MAMBA_D_STATE),
                ("mamba_d_conv", mamba_d_conv, limits.MAX_MAMBA_D_CONV),
                ("mamba_expand", mamba_expand, limits.MAX_MAMBA_EXPAND),
            )
        )
        if n_fft % 4 != 0:
            # The encoder halves n_fft // 2 + 1 bins with a stride-2 conv and the decoders double them back:
            # that round trip is exact only for an odd bin count.
            raise ValueError(f"n_fft must be a multiple of 4, got {n_fft}.")
        if dense_channel % num_attention_heads != 0:
            raise ValueError(
                f"dense_channel ({dense_channel}) must be divisible by num_attention_heads ({num_attention_heads})."
            )
        for name, value in {
            "compress_factor": compress_factor,
            "beta": beta,
            "dropout": dropout,
            "attention_dropout": attention_dropout,
            "mamba_dt_min": mamba_dt_min,
            "mamba_dt_max": mamba_dt_max,
            "mamba_dt_init_floor": mamba_dt_init_floor,
            "causal_norm_seconds": causal_norm_seconds,
        }.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}.")
        for name, value in {
            "branch_projection": branch_projection,
            "mamba_share_time_freq": mamba_share_time_freq,
            "causal": causal,
        }.items():
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false, got {value!r}.")
        if not 0.0 < compress_factor <= 1.0:
            raise ValueError(f"compress_factor must be in (0, 1], got {compress_factor}.")
        if not 0 < beta < math.inf:
            raise ValueError(f"beta must be positive and finite, got {beta}.")
        if not (0.0 <= dropout < 1.0 and 0.0 <= attention_dropout < 1.0):
            raise ValueError(f"dropout and attention_dropout must be in [0, 1), got {dropout}, {attention_dropout}.")
        if mamba_dt_rank != "auto" and (not isinstance(mamba_dt_rank, int) or mamba_dt_rank <= 0):
            raise ValueError(f"mamba_dt_rank must be 'auto' or a positive integer, got {mamba_dt_rank!r}.")
        if not 0 < mamba_dt_min <= mamba_dt_max:
            raise ValueError(f"need 0 < mamba_dt_min <= mamba_dt_max, got {mamba_dt_min} and {mamba_dt_max}.")
        if not 0 < causal_norm_seconds < math.inf:
            raise ValueError(f"causal_norm_seconds must be positive and finite, got {causal_norm_seconds}.")
        if causal_attention_window > limits.MAX_ATTENTION_WINDOW:
            raise ValueError(
                f"causal_attention_window must be at most {limits.MAX_ATTENTION_WINDOW}, got {causal_attention_window}."
            )
        if causal:
            non_causal = {
                "fusion='cross_attention'": fusion == "cross_attention",  # criss-cross attends to every frame
                f"ts_transformer_axes={ts_transformer_axes!r}": ts_transformer_axes != "time_freq",
                "hop_length == win_length": hop_length >= win_length,  # frames that do not overlap leave gaps
            }
            asked = [name for name, present in non_causal.items() if present]
            if asked:
                raise ValueError(
                    f"causal=True cannot have {', '.join(asked)}: it would look at future frames (or, for the hop, "
                    "leave samples no frame covers). Use fusion='pointwise' or 'none', ts_transformer_axes='time_freq' "
                    "and a hop shorter than the window."
                )

        self.sampling_rate = sampling_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.win_length = win_length
        self.compress_factor = compress_factor
        self.dense_channel = dense_channel
        self.dense_depth = dense_depth
        self.beta = beta
        self.num_attention_heads = num_attention_heads
        self.ffn_hidden_size = ffn_hidden_size
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.num_shared_blocks = num_shared_blocks
        self.shared_block_type = shared_block_type
        self.num_magnitude_blocks = num_magnitude_blocks
        self.magnitude_block_type = magnitude_block_type
        self.num_phase_blocks = num_phase_blocks
        self.phase_block_type = phase_block_type
        self.branch_projection = branch_projection
        self.fusion = fusion
        self.ts_transformer_axes = ts_transformer_axes
        self.self_attention_kv = self_attention_kv
        self.mamba_d_state = mamba_d_state
        self.mamba_d_conv = mamba_d_conv
        self.mamba_expand = mamba_expand
        self.mamba_dt_rank = mamba_dt_rank
        self.mamba_dt_min = mamba_dt_min
        self.mamba_dt_max = mamba_dt_max
        self.mamba_dt_init_floor = mamba_dt_init_floor
        self.mamba_share_time_freq = mamba_share_time_freq
        self.mamba_axes = mamba_axes
        self.use_mamba_kernels = use_mamba_kernels
        self.mamba_scan_chunk_size = mamba_scan_chunk_size
        self.causal = causal
        self.causal_attention_window = causal_attention_window
        self.causal_norm_seconds = causal_norm_seconds
        super().__init__(**kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> HybridMPSENetConfig:
        """Build the configuration of a named architecture (`mpsenet`, `hybrid-large`, `hybrid-small`,
        `mpsenet-causal`, `hybrid-causal`)."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})

    def describe(self) -> dict:
        """The block groups, the fusion and the attention axes (`hybrid-mpsenet info`)."""
        return {
            "blocks": {name: f"{count} x {kind}" for name, (count, kind) in self.block_groups.items() if count},
            "fusion": self.fusion,
            "ts_transformer_axes": self.ts_transformer_axes,
        }

    @property
    def norm_decay(self) -> float:
        """Per-frame weight of the past in the causal moving norms: `exp(-hop / (causal_norm_seconds * rate))`."""
        return math.exp(-self.hop_length / (self.causal_norm_seconds * self.sampling_rate))

    @property
    def block_groups(self) -> dict[str, tuple[int, str]]:
        """`{"shared" | "magnitude" | "phase": (number of blocks, block type)}` in network order."""
        return {
            "shared": (self.num_shared_blocks, self.shared_block_type),
            "magnitude": (self.num_magnitude_blocks, self.magnitude_block_type),
            "phase": (self.num_phase_blocks, self.phase_block_type),
        }

    @property
    def has_branches(self) -> bool:
        return self.num_magnitude_blocks > 0 or self.num_phase_blocks > 0


# Saved folders carry this code and an auto_map, so they also load with trust_remote_code=True where the package
# is not installed.
HybridMPSENetConfig.register_for_auto_class()
