"""Training and fine-tuning with Accelerate: one loop for CPU, one GPU, or many GPUs (`accelerate launch`).

The generator is trained with MP-SENet's objective and a metric discriminator that learns normalised PESQ.
Checkpoints ([`checkpointing`]: safetensors, JSON and weights-only optimiser states, nothing that runs code when
loaded) are written to a temporary folder and renamed, so the newest complete one is always usable; `resume=True`
continues from it exactly (same data order, crops, RNG and optimiser states).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import shutil
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, gather_object, set_seed
from tqdm.auto import tqdm

from . import checkpointing
from .data import (
    LOADER_PREFETCH,
    NoiseMixer,
    NoiseMixingDataset,
    PairedSpeechDataset,
    SharedBatches,
    StreamingMixingDataset,
    check_audio_files,
    check_source_weights,
    dns_tree,
    hold_out_stream,
    in_worker_order,
    list_audio,
    list_weighted_audio,
    load_stream,
    load_voicebank,
)
from .enhancement import HybridMPSENetForSpeechEnhancement
from .losses import LossWeights, MetricDiscriminator, generator_losses
from .metrics import batch_pesq, make_pool, stoi_score
from .ownership import apply_new_file_modes, check_replaceable_folder, read_small_text
from .registry import ARCHITECTURES, architecture_of_preset
from .utils import atomic_directory, write_json_atomic

logger = logging.getLogger(__name__)

# Training crops longer than this are a typo (`segment_seconds: 200`), not a recipe; they would exhaust memory.
MAX_SEGMENT_SECONDS = 60.0


@dataclass
class TrainingArguments:
    """Everything a run needs; `hybrid-mpsenet train` reads it from a YAML file plus command-line overrides."""

    output_dir: str = field(metadata={"help": "run folder: checkpoints/, best/ (the exported model), logs/"})
    preset: str = field(default="hybrid-small", metadata={"help": "architecture preset for a new model"})
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "JSON dict of config values: of the --preset for a new model, or, with --model, blocks (or a "
            "fusion) to add to that model, starting as identities (HybridMPSENetModel.grow)"
        },
    )
    model: str | None = field(default=None, metadata={"help": "start from this model folder or Hub id"})
    distill_weight: float = field(
        default=0.0,
        metadata={
            "help": "weight of a distillation term toward --model's own outputs on the same noisy input (the L1 "
            "distance of the compressed magnitudes plus that of the complex spectra), so that a grown model keeps "
            "what the model it grew from does well; 0: none"
        },
    )
    distill_from: str | None = field(
        default=None,
        metadata={"help": "the model distil_weight pulls toward (default: --model); e.g. muse-vb for a later stage"},
    )
    train_only_new: bool = field(
        default=False,
        metadata={"help": "train only the layers that config_overrides added to --model; the others stay frozen"},
    )
    train_data: str | None = field(default=None, metadata={"help": "VoiceBank+DEMAND folder, saved dataset or id"})
    eval_data: str | None = field(default=None, metadata={"help": "pairs for validation (default: train_data test)"})
    clean_dirs: list[str] | None = field(
        default=None,
        metadata={
            "help": "clean speech (mixing mode): folders, audio files, file lists (path [weight] per line) or Kaldi "
            "wav.scp files"
        },
    )
    noise_dirs: list[str] | None = field(
        default=None, metadata={"help": "noise folders, files or file lists (mixing mode)"}
    )
    clean_weights: list[float] | None = field(
        default=None, metadata={"help": "share of the draws for each of clean_dirs (default: each file alike)"}
    )
    noise_weights: list[float] | None = field(
        default=None, metadata={"help": "share of the draws for each of noise_dirs (default: each file alike)"}
    )
    clean_streams: list[str] | None = field(
        default=None,
        metadata={
            "help": "clean speech streamed by datasets instead of clean_dirs: Hub ids, folders (or globs) of parquet, "
            "arrow or WebDataset tar shards, save_to_disk folders"
        },
    )
    clean_stream_weights: list[float] | None = field(
        default=None, metadata={"help": "share of the utterances from each of clean_streams (default: alternate)"}
    )
    stream_split: str = field(default="train", metadata={"help": "split of clean_streams to train on"})
    shuffle_buffer: int = field(default=1000, metadata={"help": "utterances shuffled together (clean_streams)"})
    stream_eval_items: int = field(
        default=64, metadata={"help": "first utterances of clean_streams held out for validation"}
    )
    rir_dirs: list[str] | None = field(
        default=None,
        metadata={
            "help": "measured impulse responses (folders, files or lists), drawn alike with the simulated rooms when "
            "reverb_prob fires"
        },
    )
    dns_root: str | None = field(
        default=None,
        metadata={
            "help": "a DNS Challenge tree: its clean*/, noise*/ and impulse_responses/ folders become clean_dirs, "
            "noise_dirs and rir_dirs (mixing mode)"
        },
    )
    eval_fraction: float = field(default=0.1, metadata={"help": "share of clean files held out (mixing mode)"})
    snr_low: float = field(default=-5.0, metadata={"help": "lowest SNR (dB) of the mixtures (mixing mode)"})
    snr_high: float = field(default=20.0, metadata={"help": "highest SNR (dB) of the mixtures (mixing mode)"})
    items_per_epoch: int | None = field(default=None, metadata={"help": "mixtures per epoch (mixing mode)"})
    coloured_noise_prob: float = field(default=0.0, metadata={"help": "share of mixtures with coloured noise"})
    babble_prob: float = field(default=0.0, metadata={"help": "share of mixtures with babble of other talkers"})
    speech_shaped_prob: float = field(
        default=0.0, metadata={"help": "share of mixtures with noise shaped like the spectrum of other talkers"}
    )
    eq_prob: float = field(default=0.0, metadata={"help": "share of noises through a random equaliser"})
    reverb_prob: float = field(default=0.0, metadata={"help": "share of mixtures with speech in a simulated room"})
    segment_seconds: float = field(default=2.0, metadata={"help": "length of the training crops (s)"})
    check_audio: str = field(
        default="header",
        metadata={
            "help": "start-up check of the mixing-mode files: header (read headers only, in parallel, cached in the "
            "run folder: unreadable, empty, impossible rates), full (decode every file: also NaN/Inf and silence) "
            "or none (list only, for corpora of very many files: a file is read when first drawn, and one that "
            "cannot be read is skipped, named in a warning, and another drawn)"
        },
    )
    batch_size: int = field(default=4, metadata={"help": "pairs per step (per process)"})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes"})
    max_steps: int = field(default=1000, metadata={"help": "total training steps (the run ends there)"})
    learning_rate: float = field(default=5e-4, metadata={"help": "AdamW learning rate of both networks"})
    adam_beta1: float = 0.8
    adam_beta2: float = 0.99
    lr_decay: float = field(default=0.99, metadata={"help": "ExponentialLR gamma, applied once per epoch"})
    gradient_accumulation_steps: int = 1
    max_grad_norm: float | None = field(default=None, metadata={"help": "clip gradients to this norm"})
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16"})
    discriminator: bool = field(default=True, metadata={"help": "train with the PESQ metric discriminator"})
    discriminator_every: int = field(
        default=1,
        metadata={
            "help": "update the discriminator (and compute PESQ) every k-th step only; the generator's metric loss "
            "still uses it every step. 1 is MP-SENet's recipe; k > 1 is faster and changes the results"
        },
    )
    pesq_workers: int = field(default=2, metadata={"help": "processes computing PESQ (0: in-process)"})
    pesq_failures: str = field(
        default="drop_batch",
        metadata={
            "help": "when PESQ fails for an item (e.g. silence): drop_batch skips the discriminator's fake term for "
            "the whole batch (MP-SENet), mask_items leaves out only the failed items"
        },
    )
    # Defaults are MP-SENet's, kept in one place: LossWeights.
    weight_magnitude: float = LossWeights.magnitude
    weight_phase: float = LossWeights.phase
    weight_complex: float = LossWeights.complex
    weight_consistency: float = LossWeights.consistency
    weight_time: float = LossWeights.time
    weight_metric: float = LossWeights.metric
    eval_every: int = field(default=500, metadata={"help": "validate (and maybe export best/) every N steps"})
    eval_at_start: bool = field(
        default=False,
        metadata={"help": "validate the starting model at step 0 (finetune: on), so best/ is never worse than it"},
    )
    eval_max_items: int | None = field(default=None, metadata={"help": "validate on at most this many items"})
    eval_seconds: float | None = field(
        default=10.0,
        metadata={
            "help": "validate on the first N seconds of each held-out item, so that validation does not cost more "
            "as files get longer (none: whole items)"
        },
    )
    save_every: int = field(default=500, metadata={"help": "write a resumable checkpoint every N steps"})
    keep_checkpoints: int = field(default=2, metadata={"help": "newest checkpoints kept on disk"})
    log_with: str | None = field(default="tensorboard", metadata={"help": "Accelerate tracker, or none"})
    seed: int = field(default=1234, metadata={"help": "seed of the model init, mixing and data order"})
    eval_seed: int | None = field(
        default=None,
        metadata={
            "help": "seed of the held-out clean files and the validation mixtures (default: seed); keep it when a "
            "later stage changes seed, so that it validates on the same files and never trains on them"
        },
    )
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in output_dir"})
    cpu: bool = field(default=False, metadata={"help": "train on CPU even when a GPU is present"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self):
        if self.dns_root is not None:
            if self.clean_dirs is not None or self.noise_dirs is not None:
                raise ValueError("Give dns_root or clean_dirs/noise_dirs, not both.")
            tree = dns_tree(self.dns_root)
            self.clean_dirs, self.noise_dirs = [str(f) for f in tree["clean"]], [str(f) for f in tree["noise"]]
            if self.rir_dirs is None and tree["impulse_responses"]:
                self.rir_dirs = [str(f) for f in tree["impulse_responses"]]
        if self.rir_dirs is not None and not self.reverb_prob:
            raise ValueError("rir_dirs are drawn only for reverberant mixtures: set reverb_prob > 0 as well.")
        if sum(x is not None for x in (self.train_data, self.clean_dirs, self.clean_streams)) != 1:
            raise ValueError(
                "Give one of train_data (clean/noisy pairs), clean_dirs or clean_streams (mixing with noise_dirs)."
            )
        if (self.distill_weight or self.train_only_new) and self.model is None:
            raise ValueError("distill_weight and train_only_new need --model, the model to distil from or grow.")
        if self.distill_weight < 0:
            raise ValueError(f"distill_weight must be 0 or more, got {self.distill_weight}.")
        if self.train_data is None and not self.noise_dirs:
            raise ValueError("Mixing mode needs noise_dirs as well as clean_dirs or clean_streams.")
        if self.clean_stream_weights is not None and len(self.clean_stream_weights) != len(self.clean_streams or []):
            raise ValueError("Give one clean_stream_weights value per clean_streams source.")
        if self.shuffle_buffer < 1 or self.stream_eval_items < 1:
            raise ValueError("shuffle_buffer and stream_eval_items must be positive.")
        if self.check_audio not in ("header", "full", "none"):
            raise ValueError(f"check_audio must be header, full or none, got {self.check_audio!r}.")
        if self.pesq_failures not in ("drop_batch", "mask_items"):
            raise ValueError(f"pesq_failures must be drop_batch or mask_items, got {self.pesq_failures!r}.")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}.")
        if self.log_with in ("none", ""):
            self.log_with = None
        for name in (
            "max_steps",
            "batch_size",
            "eval_every",
            "save_every",
            "gradient_accumulation_steps",
            "keep_checkpoints",
            "discriminator_every",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        for name, value in asdict(self).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}.")
        if self.eval_seconds is not None and not self.eval_seconds > 0:
            raise ValueError(f"eval_seconds must be positive (or none for whole items), got {self.eval_seconds}.")
        if not 0 < self.segment_seconds <= MAX_SEGMENT_SECONDS:
            raise ValueError(f"segment_seconds must be in (0, {MAX_SEGMENT_SECONDS}] s, got {self.segment_seconds}.")
        if self.snr_low > self.snr_high:
            raise ValueError(f"snr_low ({self.snr_low}) must not exceed snr_high ({self.snr_high}).")
        if self.num_workers < 0 or self.pesq_workers < 0:
            raise ValueError("num_workers and pesq_workers must be 0 or more.")

    @property
    def loss_weights(self) -> LossWeights:
        return LossWeights(**{name: getattr(self, f"weight_{name}") for name in LossWeights.__dataclass_fields__})


class TrainingState:
    """Counters saved with every checkpoint (in its `trainer_state.json`)."""

    def __init__(self):
        self.step = self.epoch = self.batch_in_epoch = 0
        self.best_pesq = -math.inf
        self.skipped_steps = self.failed_pesq = 0
        self.train_seconds = 0.0  # wall time spent in training steps, across resumes (compute per quality)
        # Streamed sources: rows each DataLoader worker of each process read this epoch, and the
        # [processes, workers] they were counted with (a resume needs the same to continue the epoch).
        self.stream_consumed: list[dict[str, int]] = []
        self.stream_layout: list[int] = []

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)


def training_argument_parser(command: str = "train", description: str | None = None):
    """The `HfArgumentParser` of [`TrainingArguments`] for `hybrid-mpsenet <command>`: its help lists every setting."""
    from transformers import HfArgumentParser

    return HfArgumentParser(TrainingArguments, prog=f"hybrid-mpsenet {command}", description=description)


def parse_training_arguments(
    argv: list[str], config_file: str | Path | None = None, command: str = "train"
) -> TrainingArguments:
    """[`TrainingArguments`] from an optional YAML file, overridden by `--name value` arguments in `argv`; messages
    name `hybrid-mpsenet <command>`."""
    import yaml

    parser = training_argument_parser(command)
    if config_file is not None:
        try:
            values = yaml.safe_load(Path(config_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"{config_file}: cannot read the training config ({error}).") from error
        if not isinstance(values, dict):
            raise ValueError(
                f"{config_file}: a training config maps settings to values (name: value), not a "
                f"{type(values).__name__}."
            )
        unknown = sorted(str(key) for key in set(values) - set(TrainingArguments.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{config_file}: unknown training settings {unknown}; see `hybrid-mpsenet {command} -h`.")
        parser.set_defaults(**values)
        for action in parser._actions:
            if action.dest in values:
                action.required = False
    (arguments,) = parser.parse_args_into_dataclasses(args=argv)
    return arguments


def build_datasets(
    args: TrainingArguments, sampling_rate: int, normalise: bool = True, rank: int = 0, world_size: int = 1
) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
    """(train, validation) torch datasets for pairs or for mixing mode. `normalise`: scale each training pair by
    the noisy signal's RMS, as MP-SENet does; causal models train without it, at the data's own (randomised)
    levels, since a stream cannot know a whole utterance's RMS. With `clean_streams` the training set is a
    [`StreamingMixingDataset`] reading process `rank`'s share of the shards."""
    segment = int(args.segment_seconds * sampling_rate)
    if args.train_data is not None:
        pairs = load_voicebank(args.train_data, "train")
        held_out = load_voicebank(args.eval_data or args.train_data, "test")
        for split, name in ((pairs, "training"), (held_out, "validation")):
            for column in ("clean", "noisy"):
                if getattr(split.features[column], "dtype", None) == "string":  # paths; Audio cells decode later
                    check_audio_files(split[column], f"{name} {column}", args.progress)
        train = PairedSpeechDataset(pairs, sampling_rate, segment, args.seed, normalise=normalise)
        return train, PairedSpeechDataset(held_out, sampling_rate)
    full, cache = args.check_audio == "full", Path(args.output_dir) / checkpointing.AUDIO_INDEX
    skip_unreadable = args.check_audio == "none"  # nothing checked up front: a file that fails when drawn is skipped
    headers: dict[str, tuple[int, int]] = {}

    def check(files: list[Path], role: str) -> None:
        if files and not skip_unreadable:
            headers.update(check_audio_files(files, role, args.progress, full, cache))

    if args.clean_dirs is not None:
        clean, clean_probabilities = list_weighted_audio(args.clean_dirs, args.clean_weights)
        check(clean, "clean speech")
    noise, noise_probabilities = list_weighted_audio(args.noise_dirs, args.noise_weights)
    check(noise, "noise")
    rirs = list_audio(args.rir_dirs) if args.rir_dirs else []
    check(rirs, "impulse responses")
    eval_seed = args.seed if args.eval_seed is None else args.eval_seed
    snr = (args.snr_low, args.snr_high)
    augmentations = {
        "coloured_noise_prob": args.coloured_noise_prob,
        "babble_prob": args.babble_prob,
        "speech_shaped_prob": args.speech_shaped_prob,
        "eq_prob": args.eq_prob,
        "reverb_prob": args.reverb_prob,
        "normalise": normalise,
        "headers": headers,
        "noise_probabilities": noise_probabilities,
        "rir_files": rirs,
        "skip_unreadable": skip_unreadable,
    }
    if args.clean_streams is not None:
        stream = _speech_stream(args)
        folder = Path(args.output_dir) / VALIDATION_SPEECH
        # Validation runs in the first process only, so only it writes the held-out speech.
        eval_files, held_out_keys = hold_out_stream(stream, args.stream_eval_items, folder, sampling_rate, rank == 0)
        _check_held_out(args, sorted(held_out_keys), rank == 0)
        mixer = NoiseMixer(noise, sampling_rate, snr, seed=args.seed, **augmentations)
        train = StreamingMixingDataset(
            stream, mixer, segment, args.seed, rank, world_size, args.shuffle_buffer, held_out_keys
        )
    else:
        order = np.random.default_rng(eval_seed).permutation(len(clean))
        held_out = max(1, int(round(args.eval_fraction * len(clean)))) if len(clean) > 1 else 0
        train_indices = sorted(order[held_out:])
        train_files = [clean[i] for i in train_indices]
        if clean_probabilities is not None:  # the held-out files' share goes to the others
            clean_probabilities = clean_probabilities[train_indices] if train_indices else None
        eval_files = [clean[i] for i in sorted(order[:held_out])] or train_files
        _check_held_out(args, [str(path) for path in eval_files], rank == 0)
        train = NoiseMixingDataset(
            train_files,
            noise,
            sampling_rate,
            segment,
            snr_range=snr,
            items_per_epoch=args.items_per_epoch,
            seed=args.seed,
            clean_probabilities=clean_probabilities,
            **augmentations,
        )
    evaluation = NoiseMixingDataset(
        eval_files,
        noise,
        sampling_rate,
        None,
        snr_range=snr,
        seed=eval_seed + 1,
        headers=headers,
        skip_unreadable=skip_unreadable,
    )
    return train, evaluation


def _check_held_out(args: TrainingArguments, held_out: list[str], write: bool) -> None:
    """Record the run's held-out speech (keys of a stream, or files) when it starts; on resume, refuse if the data
    now gives another held-out set (shards re-packed, files added or removed): validation would no longer be on
    the same speech, and the former validation speech would be trained on."""
    path = Path(args.output_dir) / checkpointing.HELD_OUT
    if args.resume and path.is_file():
        try:
            before = json.loads(read_small_text(path))
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: cannot read the run's held-out speech ({error}).") from None
        if before != held_out:
            changed = len(set(before) ^ set(held_out))
            raise ValueError(
                f"The training data changed since this run began: {changed} of its held-out utterances differ "
                f"({path}). Resuming would validate on other speech and train on speech it validated on; resume with "
                "the data the run began with, or start a new run in another --output_dir."
            )
    elif write:
        write_json_atomic(path, held_out)


# Where a run keeps the speech it holds out of `clean_streams` for validation.
VALIDATION_SPEECH = "validation_speech"


def _speech_stream(args: TrainingArguments) -> datasets.IterableDataset:
    """`clean_streams` as one stream: one source as it is; several concatenated (every utterance once per epoch),
    or with `clean_stream_weights` interleaved by those shares until every source has run out (smaller ones
    repeat)."""
    streams = [load_stream(source, args.stream_split) for source in args.clean_streams]
    if len(streams) == 1:
        return streams[0]
    if args.clean_stream_weights is None:
        return datasets.concatenate_datasets(streams)
    check_source_weights(args.clean_stream_weights, len(streams))
    weights = np.asarray(args.clean_stream_weights, dtype=np.float64)
    probabilities = (weights / weights.sum()).tolist()
    return datasets.interleave_datasets(
        streams, probabilities=probabilities, seed=args.seed, stopping_strategy="all_exhausted"
    )


def build_model(args: TrainingArguments, checkpoint: Path | None = None) -> HybridMPSENetForSpeechEnhancement:
    """The generator: the architecture of `checkpoint` when resuming (its weights are loaded later), else `--model`
    (grown by `config_overrides`; `{"causal": true}` warm-starts its causal form), else a new model of `--preset`
    with `config_overrides`."""
    if checkpoint is not None:
        config = checkpointing.read_generator_config(checkpoint)
        return ARCHITECTURES[config.model_type].load("enhancement")(config)
    try:
        overrides = json.loads(args.config_overrides or "{}")
    except json.JSONDecodeError as error:
        raise ValueError(f"config_overrides is not a JSON dict: {error}.") from error
    if not isinstance(overrides, dict):
        raise ValueError(f"config_overrides must be a JSON dict, got {args.config_overrides!r}.")
    if args.model is not None:
        model = HybridMPSENetForSpeechEnhancement.from_pretrained(args.model)
        # Settings that restate the model's own (a whole saved config, say) change nothing.
        changes = {key: value for key, value in overrides.items() if getattr(model.config, key, None) != value}
        if changes and not hasattr(model, "grow"):
            raise ValueError(f"A {model.config.model_type} model takes no config_overrides, got {sorted(changes)}.")
        if changes.pop("causal", False):  # a causal model warm-started from this one
            model = model.to_causal()
        return model.grow(**changes) if changes else model
    architecture = architecture_of_preset(args.preset) or ARCHITECTURES["hybrid_mpsenet"]
    return architecture.load("enhancement")(architecture.load("config").from_preset(args.preset, **overrides))


def build_optimizers(args: TrainingArguments, model: torch.nn.Module, discriminator: torch.nn.Module):
    """AdamW for the generator and the discriminator and their per-epoch ExponentialLR schedules."""
    betas = (args.adam_beta1, args.adam_beta2)
    optim_g = torch.optim.AdamW(model.parameters(), args.learning_rate, betas=betas)
    optim_d = torch.optim.AdamW(discriminator.parameters(), args.learning_rate, betas=betas)
    sched_g = torch.optim.lr_scheduler.ExponentialLR(optim_g, args.lr_decay)
    sched_d = torch.optim.lr_scheduler.ExponentialLR(optim_d, args.lr_decay)
    return optim_g, optim_d, sched_g, sched_d


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or `None`."""
    folders = checkpointing.list_checkpoints(Path(output_dir) / "checkpoints")
    return folders[-1] if folders else None


@dataclass
class _Run:
    """What a checkpoint saves and restores, gathered once by [`train`]."""

    accelerator: Accelerator
    generator: HybridMPSENetForSpeechEnhancement  # unwrapped
    discriminator: MetricDiscriminator  # unwrapped
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler]
    state: TrainingState
    loader_generator: torch.Generator
    stream_consumed: dict[int, int] | None = None  # this process's workers' rows read this epoch (streamed sources)

    def trainer_state(self, folder: Path) -> None:
        scaler = self.accelerator.scaler
        checkpointing.save_trainer_state(
            folder,
            self.state.state_dict(),
            {name: scheduler.state_dict() for name, scheduler in self.schedulers.items()},
            scaler.state_dict() if scaler is not None else None,
        )

    def save(self, root: Path, keep: int) -> Path:
        """Write `root/step-N` through a temporary folder; keep the newest `keep` checkpoints."""
        accelerator, step = self.accelerator, self.state.step
        final, tmp = root / checkpointing.checkpoint_name(step), root / checkpointing.temporary_name(step)
        if self.stream_consumed is not None:
            own = {str(worker): count for worker, count in self.stream_consumed.items()}
            self.state.stream_consumed = gather_object([own]) if accelerator.num_processes > 1 else [own]
        try:
            if accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
                checkpointing.save_weights(tmp, self.generator, self.discriminator, self.discriminator.dim)
                checkpointing.save_optimizers(tmp, self.optimizers)
                self.trainer_state(tmp)
            accelerator.wait_for_everyone()
            checkpointing.save_rng_state(tmp, accelerator.process_index, self.loader_generator)
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                apply_new_file_modes(tmp)  # safetensors writes private files; a checkpoint is an ordinary folder
                if final.exists():
                    shutil.rmtree(final)
                tmp.rename(final)
                for old in checkpointing.list_checkpoints(root)[:-keep]:
                    shutil.rmtree(old)
        except (OSError, RuntimeError) as error:
            shutil.rmtree(tmp, ignore_errors=True)
            previous = latest_checkpoint(root.parent)
            raise OSError(
                f"Writing the checkpoint of step {step} to {final} failed ({error}); the disk may be full. "
                f"The newest complete checkpoint is {previous or 'none'}; free space and resume with --resume."
            ) from error
        accelerator.wait_for_everyone()
        return final

    def load(self, folder: Path) -> None:
        checkpointing.load_weights(folder, self.generator, self.discriminator)
        checkpointing.load_optimizers(folder, self.optimizers)
        trainer = checkpointing.load_trainer_state(folder)
        try:
            self.state.load_state_dict(trainer["counters"])
            for name, scheduler in self.schedulers.items():
                scheduler.load_state_dict(trainer["schedulers"][name])
            if self.accelerator.scaler is not None and trainer.get("scaler"):
                self.accelerator.scaler.load_state_dict(trainer["scaler"])
        except (KeyError, TypeError) as error:
            raise checkpointing.CheckpointError(f"{folder}: damaged trainer state ({error!r}).") from error
        if trainer.get("rng_states", True):
            checkpointing.load_rng_state(folder, self.accelerator.process_index, self.loader_generator)
        else:
            logger.warning(
                "%s has no random states (converted from the original code); the run goes on from --seed.", folder
            )


@torch.no_grad()
def evaluate_model(
    model: HybridMPSENetForSpeechEnhancement,
    dataset,
    max_items: int | None = None,
    pool=None,
    seconds: float | None = None,
) -> dict[str, float]:
    """Mean PESQ (wide band) and STOI of `model` on the utterances of a validation dataset (their first `seconds`,
    or whole)."""
    model.eval()
    rate = model.config.sampling_rate
    length = None if not seconds else int(seconds * rate)
    references, enhanced = [], []
    for index in range(min(len(dataset), max_items or len(dataset))):
        item = dataset[index]
        references.append(item["clean"].numpy()[:length])
        enhanced.append(model.enhance(item["noisy"].numpy()[:length], rate))
    pesq = batch_pesq(references, enhanced, rate, pool)
    stoi = [stoi_score(r, e, rate) for r, e in zip(references, enhanced, strict=True)]
    model.train()
    return {
        "pesq": _finite_mean(list(pesq)),
        "stoi": _finite_mean(stoi),
        "pesq_failures": int(np.isnan(pesq).sum()),
    }


def _export(model: HybridMPSENetForSpeechEnhancement, path: Path, metrics: dict) -> None:
    check_replaceable_folder(path, overwrite=True, what="best model")  # never a folder a user put there
    with atomic_directory(path) as tmp:
        model.save_pretrained(tmp)
        (tmp / "eval_results.json").write_text(json.dumps(metrics, indent=2))


def train(args: TrainingArguments) -> Path:
    """Run (or resume) training; returns the folder of the best exported model (`output_dir/best`)."""
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        cpu=args.cpu,
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=args.log_with,
        project_dir=str(output_dir / "logs"),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    set_seed(args.seed)
    root = output_dir / "checkpoints"
    lock = None
    if accelerator.is_main_process:
        lock, warnings = checkpointing.claim_run_folder(output_dir, asdict(args), args.resume)
        for warning in warnings:
            logger.warning("%s: %s", output_dir, warning)
    try:
        with _library_bars_off():
            return _train(args, accelerator, output_dir, root)
    finally:
        if lock is not None:
            lock.release()


@contextlib.contextmanager
def _library_bars_off() -> Iterator[None]:
    """transformers' own bars (loading weights, writing shards at every export) off while training, so that they
    do not break into the training bar; restored afterwards."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


def _train(args: TrainingArguments, accelerator: Accelerator, output_dir: Path, root: Path) -> Path:
    """[`train`] in a claimed run folder."""
    if accelerator.is_main_process:
        for leftover in checkpointing.remove_incomplete(root):
            logger.warning("Removed %s, an incomplete checkpoint left by an interrupted run.", leftover)
    checkpoint = latest_checkpoint(output_dir) if args.resume else None
    model = build_model(args, checkpoint)
    teacher = _reference_model(args, model)
    rate = model.config.sampling_rate
    train_set, eval_set = build_datasets(
        args, rate, not model.config.causal, accelerator.process_index, accelerator.num_processes
    )
    streaming = isinstance(train_set, StreamingMixingDataset)
    if not streaming and len(train_set) < args.batch_size:
        raise ValueError(f"The training set has {len(train_set)} items, fewer than one batch of {args.batch_size}.")
    # A generator of its own, so that starting an epoch's iterator (and its workers' seeds) does not draw from the
    # global RNG (which would make a resumed run diverge from an uninterrupted one).
    loader_generator = torch.Generator().manual_seed(args.seed)
    shared = SharedBatches(args.batch_size, int(args.segment_seconds * rate))
    loader = torch.utils.data.DataLoader(
        train_set,
        args.batch_size,
        shuffle=not streaming,
        drop_last=True,
        collate_fn=shared,
        num_workers=args.num_workers,
        prefetch_factor=LOADER_PREFETCH if args.num_workers else None,
        generator=loader_generator,
    )
    discriminator = MetricDiscriminator(checkpointing.read_discriminator_dim(checkpoint) if checkpoint else 16)
    optim_g, optim_d, sched_g, sched_d = build_optimizers(args, model, discriminator)
    model, discriminator, optim_g, optim_d = accelerator.prepare(model, discriminator, optim_g, optim_d)
    if not streaming:  # each process already reads its own shards of a stream: Accelerate must not split them again
        # Batches go to the device after they are copied out of the workers' buffers (_on_device).
        loader = accelerator.prepare_data_loader(loader, device_placement=False)
    state = TrainingState()
    run = _Run(
        accelerator,
        accelerator.unwrap_model(model),
        accelerator.unwrap_model(discriminator),
        {"generator": optim_g, "discriminator": optim_d},
        {"generator": sched_g, "discriminator": sched_d},
        state,
        loader_generator,
        {} if streaming else None,
    )
    if checkpoint is not None:
        run.load(checkpoint)
        if accelerator.is_main_process:
            tqdm.write(f"resuming from step {state.step} ({checkpoint})")
            _truncate_history(output_dir / "history.jsonl", state.step)
    layout = [accelerator.num_processes, args.num_workers]
    if streaming and state.stream_consumed:
        if state.stream_layout != layout:
            raise ValueError(
                f"The checkpoint was written by {state.stream_layout[0]} process(es) with {state.stream_layout[1]} "
                f"DataLoader worker(s) each; resume a streamed run with the same (now {layout[0]} and {layout[1]}), "
                "so that it continues the epoch where it stopped."
            )
        run.stream_consumed = {int(k): v for k, v in state.stream_consumed[accelerator.process_index].items()}
    state.stream_layout = layout
    if args.log_with is not None:
        accelerator.init_trackers("hybrid-mpsenet", config={k: str(v) for k, v in asdict(args).items()})

    unwrapped = run.generator
    weights = args.loss_weights
    pool = make_pool(args.pesq_workers) if args.discriminator else None
    bar = tqdm(
        total=args.max_steps,
        initial=state.step,
        desc="training",
        disable=not (args.progress and accelerator.is_main_process),
    )
    running: dict[str, list[float]] = {}  # training losses since the last validation, for history.jsonl
    try:
        if args.eval_at_start and state.step == 0:
            _validate(accelerator, args, unwrapped, eval_set, pool, state, output_dir, {})
        while state.step < args.max_steps:
            train_set.set_epoch(state.epoch)
            if streaming:
                train_set.resume(run.stream_consumed)
                batches = _streamed_batches(accelerator, shared.iterate(loader), args.num_workers, state.batch_in_epoch)
            else:
                loader.set_epoch(state.epoch)
                epoch = accelerator.skip_first_batches(loader, state.batch_in_epoch) if state.batch_in_epoch else loader
                batches = map(functools.partial(_on_device, accelerator), shared.iterate(epoch))
            for batch in batches:
                if streaming:
                    worker, rows = int(batch.pop("worker")[0]), batch.pop("row")
                    run.stream_consumed[worker] = int(rows[-1])  # a worker's batch holds consecutive rows
                started = time.perf_counter()
                logs = train_step(
                    accelerator,
                    args,
                    unwrapped,
                    model,
                    discriminator,
                    optim_g,
                    optim_d,
                    batch,
                    weights,
                    pool,
                    state,
                    teacher=teacher,
                )
                state.train_seconds += time.perf_counter() - started
                state.batch_in_epoch += 1
                state.step += 1
                bar.update(1)
                if logs:
                    bar.set_postfix(loss=f"{logs['train/total']:.3f}")
                    accelerator.log(logs, step=state.step)
                    for name, value in logs.items():
                        running.setdefault(name, []).append(value)
                # The checkpoint comes first, so that a failing validation cannot lose it; the validation's
                # counters (best PESQ) are then written into it.
                saved = None
                if state.step % args.save_every == 0 or state.step == args.max_steps:
                    saved = run.save(root, args.keep_checkpoints)
                if state.step % args.eval_every == 0 or state.step == args.max_steps:
                    averages = {name: _finite_mean(values) for name, values in running.items()}
                    _validate(accelerator, args, unwrapped, eval_set, pool, state, output_dir, averages)
                    running.clear()
                    if saved is not None and accelerator.is_main_process:
                        run.trainer_state(saved)
                if state.step >= args.max_steps:
                    break
            else:
                if state.batch_in_epoch == 0:
                    raise ValueError(f"An epoch of the training data gave no batch of {args.batch_size} items.")
                state.epoch += 1
                state.batch_in_epoch = 0
                if streaming:
                    run.stream_consumed = {}
                sched_g.step()
                if args.discriminator:
                    sched_d.step()
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown()
        accelerator.end_training()
    return output_dir / "best"


def _reference_model(args: TrainingArguments, model: torch.nn.Module) -> torch.nn.Module | None:
    """The frozen model the run distils from (`distill_from`, default `--model` as it was before
    `config_overrides` grew it), or None. With `train_only_new`, only the parameters `--model` lacks (the grown
    layers) keep `requires_grad`. Read again on resume, so no checkpoint has to carry it."""

    def frozen(name: str) -> torch.nn.Module:
        return HybridMPSENetForSpeechEnhancement.from_pretrained(name).eval().requires_grad_(False)

    # --model is read only where it is needed: for train_only_new, or as the teacher without distill_from.
    starting = frozen(args.model) if args.train_only_new or (args.distill_weight and not args.distill_from) else None
    if args.train_only_new:
        kept = set(starting.state_dict())
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name not in kept)
        if all(name in kept for name, _ in model.named_parameters()):
            raise ValueError("train_only_new: config_overrides added no layer to --model, so nothing would train.")
    if not args.distill_weight:
        return None
    return frozen(args.distill_from) if args.distill_from else starting


def distillation_loss(magnitude: torch.Tensor, complex_spectrum: torch.Tensor, teacher) -> torch.Tensor:
    """Mean L1 distance of the compressed magnitude `(batch, freq, time)` to the `teacher` output's, plus that of
    the complex spectrum `(batch, freq, time, 2)`."""
    return torch.nn.functional.l1_loss(magnitude, teacher.magnitude) + torch.nn.functional.l1_loss(
        complex_spectrum, teacher.complex_spectrum
    )


def _on_device(accelerator: Accelerator, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value.to(accelerator.device) for name, value in batch.items()}


def _streamed_batches(accelerator: Accelerator, batches: Iterable[dict[str, torch.Tensor]], workers: int, done: int):
    """The batches of a streamed source on the training device, `done` batches into the epoch, in the workers'
    round-robin order ([`in_worker_order`]). With several processes an epoch ends for all of them when one runs
    out of its shards' items (uneven shards), so that none waits for the others' gradients."""
    iterator = in_worker_order(iter(batches), workers, done)
    while True:
        batch = next(iterator, None)
        if accelerator.num_processes > 1:
            present = torch.tensor([batch is not None], dtype=torch.int32, device=accelerator.device)
            if int(accelerator.gather(present).min()) == 0:
                return
        if batch is None:
            return
        yield _on_device(accelerator, batch)


def train_step(
    accelerator: Accelerator,
    args: TrainingArguments,
    unwrapped: HybridMPSENetForSpeechEnhancement,
    model: torch.nn.Module,
    discriminator: torch.nn.Module,
    optim_g: torch.optim.Optimizer,
    optim_d: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    weights: LossWeights,
    pool: Executor | None,
    state: TrainingState,
    teacher: torch.nn.Module | None = None,
) -> dict[str, float]:
    """One discriminator and one generator update, as in MP-SENet's `train.py` (the discriminator's only every
    `args.discriminator_every` steps).

    Both networks see the compressed magnitude of the clean target; the discriminator's fake input and the generator's
    metric loss use the magnitude of the re-STFT of the enhanced waveform (`mag_g_hat` in MP-SENet), not the
    decoder's magnitude.

    Args:
        unwrapped: the generator without its Accelerate/DDP wrapper (`model`), for the STFT helpers.
        batch: `clean` and `noisy` waveforms `(batch, samples)`, already normalised by the datasets.
        pool: process pool for PESQ, or `None` to compute it in-process.
        teacher: a frozen model whose outputs on the same input the generator is pulled toward, with weight
            `args.distill_weight` ([`distillation_loss`]).

    Returns:
        The values to log (`train/...`); empty when the update was skipped for a non-finite loss.
    """
    clean_audio, noisy_audio = batch["clean"], batch["noisy"]
    clean_mag, clean_pha, clean_com = unwrapped.spectrum(clean_audio)
    noisy_mag, noisy_pha, _ = unwrapped.spectrum(noisy_audio)
    with accelerator.accumulate(model, discriminator):
        with accelerator.autocast():
            output = model(noisy_mag, noisy_pha)
        # Back from the autocast dtype to the input's, for the losses and the inverse STFT.
        mag_g, pha_g, com_g = (t.to(noisy_mag.dtype) for t in (output.magnitude, output.phase, output.complex_spectrum))
        audio_g = unwrapped.waveform(mag_g, pha_g, length=clean_audio.shape[1])
        mag_g_hat, _, consistency = unwrapped.spectrum(audio_g)

        logs = {}
        if args.discriminator and state.step % args.discriminator_every == 0:
            pesq = batch_pesq(
                list(clean_audio.detach().cpu().numpy()),
                list(audio_g.detach().cpu().numpy()),
                unwrapped.config.sampling_rate,
                pool,
            )
            valid = torch.from_numpy(np.isfinite(pesq)).to(clean_mag.device)
            state.failed_pesq += int((~valid).sum())
            if args.pesq_failures == "drop_batch" and not bool(valid.all()):
                valid = torch.zeros_like(valid)
            target = torch.from_numpy((np.nan_to_num(pesq) - 1.0) / 3.5).to(clean_mag.device, clean_mag.dtype)
            score_real = discriminator(clean_mag, clean_mag)
            score_fake = discriminator(clean_mag, mag_g_hat.detach())
            loss_d = torch.nn.functional.mse_loss(score_real, torch.ones_like(score_real))
            if bool(valid.any()):
                loss_d = loss_d + torch.nn.functional.mse_loss(score_fake[valid], target[valid])
            optim_d.zero_grad()
            if torch.isfinite(loss_d):
                accelerator.backward(loss_d)
                if args.max_grad_norm and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(discriminator.parameters(), args.max_grad_norm)
                optim_d.step()
            logs["train/discriminator"] = loss_d.item()
            logs["train/pesq"] = _finite_mean(list(pesq))

        metric_score = discriminator(clean_mag, mag_g_hat) if args.discriminator else None
        losses = generator_losses(
            {"magnitude": clean_mag, "phase": clean_pha, "complex": clean_com, "audio": clean_audio},
            {"magnitude": mag_g, "phase": pha_g, "complex": com_g, "audio": audio_g},
            consistency,
            metric_score,
            weights,
        )
        if teacher is not None:
            with torch.no_grad():
                target = teacher(noisy_mag, noisy_pha)
            losses["distill"] = distillation_loss(mag_g, com_g, target)
            losses["total"] = losses["total"] + args.distill_weight * losses["distill"]
        optim_g.zero_grad()
        if not torch.isfinite(losses["total"]):
            state.skipped_steps += 1
            logger.warning("Step %d: non-finite generator loss; the update is skipped.", state.step + 1)
            return {}
        accelerator.backward(losses["total"])
        if not _finite_gradients(model):
            # A finite loss can still have NaN gradients (pow or atan2 at an exact zero); one such update would
            # turn the weights into NaN.
            optim_g.zero_grad()
            state.skipped_steps += 1
            logger.warning("Step %d: non-finite generator gradients; the update is skipped.", state.step + 1)
            return {}
        if args.max_grad_norm and accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optim_g.step()
    logs.update({f"train/{name}": value.item() for name, value in losses.items()})
    logs["train/lr"] = optim_g.param_groups[0]["lr"]
    return logs


def _finite_gradients(model: torch.nn.Module) -> bool:
    """Whether every gradient of `model` is finite (one fused check, not one per parameter)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return not grads or bool(torch.isfinite(torch.stack([g.sum() for g in grads])).all())


def _truncate_history(path: Path, step: int) -> None:
    """Drop the `history.jsonl` lines of steps after `step` (written after the checkpoint a run resumes from)."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if (line_step := _history_step(line)) is not None and line_step <= step]
    if len(kept) != len(lines):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)


def read_history(run: str | Path) -> list[dict]:
    """The validations of a run folder's `history.jsonl`, oldest first (a line cut by a crash is left out)."""
    path = Path(run) / "history.jsonl"
    lines = read_small_text(path).splitlines() if path.is_file() else []
    return [json.loads(line) for line in lines if line.strip() and _history_step(line) is not None]


def _history_step(line: str) -> int | None:
    """The step of a `history.jsonl` line, or `None` for a line cut by a crash (dropped on resume)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record.get("step", 0) if isinstance(record, dict) else None


def _finite_mean(values: list[float]) -> float:
    """Mean of the finite values, NaN when there are none (e.g. PESQ failed on every batch)."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def _validate(accelerator, args, unwrapped, eval_set, pool, state, output_dir, train_averages) -> None:
    """Evaluate, export the model if it is the best so far, and append the results to `history.jsonl`."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        metrics = evaluate_model(unwrapped, eval_set, args.eval_max_items, pool, args.eval_seconds)
        metrics.update(
            step=state.step,
            train_seconds=round(state.train_seconds, 1),
            # CPU threads training now, all processes together: what the steps since the last line cost in cores.
            threads=torch.get_num_threads() * accelerator.num_processes,
            failed_training_pesq=state.failed_pesq,
            skipped_steps=state.skipped_steps,
        )
        metrics.update(train_averages)
        accelerator.log(
            {f"eval/{k}": v for k, v in metrics.items() if k != "step" and not k.startswith("train/")}, step=state.step
        )
        logger.info("step %d: %s", state.step, metrics)
        # Without a PESQ value (all failed), the newest model is kept.
        score = metrics["pesq"] if math.isfinite(metrics["pesq"]) else -math.inf
        improved = score >= state.best_pesq
        if improved:
            state.best_pesq = score
            _export(unwrapped, output_dir / "best", metrics)
        tqdm.write(
            f"step {state.step}: validation PESQ {metrics['pesq']:.3f}, STOI {metrics['stoi']:.3f}, best PESQ "
            f"{state.best_pesq:.3f}" + (" (exported to best/)" if improved else "")
        )
        with open(output_dir / "history.jsonl", "a") as history:
            history.write(json.dumps(metrics) + "\n")
    accelerator.wait_for_everyone()
