"""`hybrid-mpsenet` command line: enhance audio files and live streams, convert original checkpoints, describe
models."""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import soundfile as sf
from tqdm.auto import tqdm

from .audio import DEFAULT_CHUNK_SECONDS, DEFAULT_OVERLAP_SECONDS, FORMAT_ALIASES, AudioError

# torch and transformers are imported by the commands that need them, so `--help` and argument errors are instant.
if TYPE_CHECKING:
    import torch

    from .configuration_hybrid_mpsenet import FamilyConfig
    from .inference import HybridMPSENetEnhancer
    from .waveform import WaveformEnhancer

AUDIO_SUFFIXES = {f".{name.lower()}" for name in [*sf.available_formats(), *FORMAT_ALIASES]}


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then CPU; other names are checked for availability."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: unknown device; use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {name}: this package runs on auto, cpu, cuda, cuda:N or mps.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but no CUDA GPU is available.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps was requested but MPS is not available.")
    return device


def collect_jobs(inputs: list[str], output: str | None, suffix: str, patterns: bool = False) -> list[tuple[Path, Path]]:
    """(input, output) pairs for files, folders and glob patterns.

    An input that names an existing file or folder is taken literally (`Interview [2019].wav` is that file), unless
    `patterns` (`--glob`) says every input is a pattern; an input that names nothing and has wildcards is a glob.
    Folders are searched recursively and globs expanded; the tree below a folder, or below a glob's fixed prefix
    (`takes/` in `takes/**/*.wav`), is mirrored under `output`. Without `output`, each result goes beside its input
    as `<stem><suffix><ext>`. With one input file and an `output` that has an audio extension, `output` is the file.

    Rules that keep users' files safe: hidden files (our temporaries among them) and symlinked folders are not
    searched (so a symlink loop cannot make a search endless); an input given twice is enhanced once; a file found
    in a folder or by a glob and named like another input's output (`take_enhanced.wav` beside `take.wav`) is that
    output, not an input, while a file named explicitly is always an input; and a run in which an output would be
    one of its inputs, or two inputs would share an output, is refused before anything is written.

    Raises:
        ValueError: a folder without audio, or outputs that collide with inputs or with each other.
    """
    found: dict[Path, tuple[Path, Path, bool]] = {}  # resolved input -> (input, path relative to its tree, explicit)
    for pattern in inputs:
        literal = Path(pattern)
        if (patterns or not (literal.exists() or literal.is_symlink())) and glob.has_magic(pattern):
            prefix = _fixed_prefix(pattern)
            rest = Path(pattern).relative_to(prefix) if prefix != Path(".") else Path(pattern)
            matches = sorted(prefix.glob(str(rest)))
            matches = [
                p
                for p in matches
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(prefix).parts)
                and not _through_symlinked_folder(p, prefix)
            ]
            pairs = [(p, p.relative_to(prefix), False) for p in matches] or [(literal, Path(literal.name), True)]
        elif literal.is_dir():
            pairs = [(p, p.relative_to(literal), False) for p in _audio_files_below(literal)]
            if not pairs:
                raise ValueError(f"{pattern}: no audio files found (looked for {', '.join(sorted(AUDIO_SUFFIXES))}).")
        else:
            pairs = [(literal, Path(literal.name), True)]
        for path, relative, explicit in pairs:
            previous = found.get(path.resolve())
            found[path.resolve()] = (path, relative, explicit or bool(previous and previous[2]))
    # The names the inputs' outputs would have beside them (extension case aside): such files are outputs, not inputs.
    outputs = (
        {(path.parent, f"{path.stem}{suffix}{path.suffix.lower()}") for path, _, _ in found.values()} if suffix else ()
    )
    jobs = [
        (path, Path(output) / relative if output else path.with_name(f"{path.stem}{suffix}{path.suffix}"))
        for path, relative, explicit in found.values()
        if explicit or (path.parent, path.stem + path.suffix.lower()) not in outputs
    ]
    if output and len(jobs) == 1 and Path(output).suffix.lower() in AUDIO_SUFFIXES and not Path(output).is_dir():
        jobs = [(jobs[0][0], Path(output))]
    _check_collisions(jobs, {source.resolve() for source, _ in jobs})
    return jobs


def _fixed_prefix(pattern: str) -> Path:
    """The folders of a glob pattern before its first wildcard: `takes/**/*.wav` -> `takes`."""
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    return Path(*parts[:fixed]) if fixed else Path(".")


def _through_symlinked_folder(path: Path, root: Path) -> bool:
    """Whether `path` lies below a symlinked folder under `root` (globs follow them, into loops too)."""
    return any(parent.is_symlink() for parent in path.parents if parent != root and root in parent.parents)


def _audio_files_below(folder: Path) -> list[Path]:
    """Audio files below `folder`, without hidden files and folders and without following symlinked folders."""
    files = []
    for parent, folders, names in os.walk(folder):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        files += [Path(parent, name) for name in sorted(names) if not name.startswith(".")]
    return [f for f in files if f.suffix.lower() in AUDIO_SUFFIXES]


def _check_collisions(jobs: list[tuple[Path, Path]], inputs: set[Path]) -> None:
    seen: dict[Path, Path] = {}
    for source, target in jobs:
        resolved = target.resolve()
        if resolved in inputs and resolved != source.resolve():
            raise ValueError(
                f"The output for {source} would be {target}, which is also an input; choose -o or --suffix."
            )
        if resolved in seen:
            raise ValueError(
                f"{seen[resolved]} and {source} would both be written to {target}; enhance them separately."
            )
        seen[resolved] = source


def model_source(name: str | None) -> str | Path:
    """What to load for `--model NAME`: the bundled checkpoint for no name or `default`, else a folder or Hub id.

    Raises:
        FileNotFoundError: `name` is a path (absolute, relative with `.`/`~`, or with more than one `/`, which no
            Hub id has) and does not exist, instead of a Hub lookup that fails with a less useful message.
    """
    from .bundled import model_location

    source = model_location(name)
    if isinstance(source, Path):  # the bundled checkpoint
        return source
    if Path(name).expanduser().exists():
        return Path(name).expanduser()
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"{name}: no such folder (a Hub id has the form ORG/NAME).")
    return name


def _load_model(args: argparse.Namespace) -> HybridMPSENetEnhancer:
    """The `--model` (default: bundled) on `--device`, with `--threads` applied, ready for inference. It is the lean
    model class: enhancing does not import transformers' model classes."""
    import torch

    from .inference import HybridMPSENetEnhancer

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be a positive number of CPU threads, got {args.threads}.")
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    return HybridMPSENetEnhancer.from_pretrained(model_source(args.model)).to(device).eval()


def _load_enhancer(args: argparse.Namespace) -> WaveformEnhancer:
    """The `--model` on the `--backend`: PyTorch ([`_load_model`]) or ONNX Runtime ([`OnnxEnhancer`], CPU, from the
    folder's exported graph); `auto` takes ONNX when the folder has a graph and onnxruntime is installed."""
    from .onnx import OnnxEnhancer, has_graph

    source = model_source(args.model)
    backend = args.backend
    if backend == "auto":
        onnx_ready = importlib.util.find_spec("onnxruntime") is not None
        backend = "onnx" if onnx_ready and Path(source).is_dir() and has_graph(source) else "torch"
    if backend == "torch":
        if importlib.util.find_spec("torch") is None:
            raise ValueError("PyTorch is not installed here; use --backend onnx with a model folder that has a graph.")
        return _load_model(args)
    if args.device not in ("auto", "cpu"):
        raise ValueError(f"--backend onnx runs on the CPU; got --device {args.device}.")
    return OnnxEnhancer.from_pretrained(source, threads=args.threads)


def _add_inference_arguments(parser: argparse.ArgumentParser, backend: bool = False) -> None:
    parser.add_argument("--model", help="model folder, Hub id, or `default` (the bundled checkpoint; the default)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
    parser.add_argument("--threads", type=int, help="CPU threads")
    if backend:
        parser.add_argument(
            "--backend",
            choices=["torch", "onnx", "auto"],
            default="torch",
            help="torch (default), onnx (the folder's exported graph on onnxruntime, no PyTorch), or auto (onnx "
            "where the folder has a graph and onnxruntime is installed)",
        )


def _add_control_arguments(parser: argparse.ArgumentParser, pcs: bool = True) -> None:
    parser.add_argument(
        "--attenuation-limit-db",
        "--attenuation_limit_db",
        type=float,
        help="strength control: no time-frequency bin ends more than this many dB below the input (default: no limit)",
    )
    if pcs:  # a stream cannot rescale a segment it has not seen yet
        parser.add_argument("--pcs", action="store_true", help="perceptual contrast stretching post-filter (SEMamba)")


def _one_thread_for_streams(args: argparse.Namespace) -> None:
    """A stream's work per hop is tiny: intra-op threads only add synchronisation (and spin under any other load),
    which made streams 5-17x slower on a 2-core machine. Without `--threads`, a stream runs on one."""
    if args.threads is None:
        args.threads = 1


def _enhance(args: argparse.Namespace) -> int:
    jobs = collect_jobs(args.inputs, args.output, args.suffix, args.glob)
    if args.stream:
        _one_thread_for_streams(args)
    model = _load_enhancer(args)
    if args.stream:
        if not model.config.causal:
            raise ValueError("--stream needs a causal model (e.g. --model default-streaming); this one looks ahead.")
        # A causal model's chunks are the blocks its stream is fed: one hop each, as a live stream gets them.
        args.chunk_seconds = model.config.hop_length / model.config.sampling_rate
    failures = 0
    for source, target in tqdm(jobs, desc="files", unit="file", disable=len(jobs) < 2 or args.quiet):
        try:
            model.enhance_file(
                source,
                target,
                chunk_seconds=args.chunk_seconds,
                overlap_seconds=args.overlap_seconds,
                downmix=args.downmix,
                dtype=args.dtype,
                subtype=args.subtype,
                overwrite=args.overwrite,
                progress=not args.quiet,
                attenuation_limit_db=args.attenuation_limit_db,
                pcs=args.pcs,
            )
        except (AudioError, OSError, RuntimeError) as error:
            failures += 1
            tqdm.write(f"FAILED {source}: {error}", file=sys.stderr)
        else:
            tqdm.write(f"{source} -> {target}")
    if failures:
        print(f"{failures} of {len(jobs)} files failed.", file=sys.stderr)
    return 1 if failures else 0


# Raw PCM sample formats of `stream`: numpy dtype and the scale of full scale.
PCM_FORMATS = {"f32": ("<f4", 1.0), "s16": ("<i2", 32768.0)}
# Bytes read from stdin at most per call; a read returns what has arrived, so a live source is never waited on.
STREAM_READ_BYTES = 1 << 16


def _stream(args: argparse.Namespace) -> int:
    """stdin PCM -> enhanced stdout PCM, block by block, flushed after each (see `stream --help`)."""
    import numpy as np

    dtype, scale = PCM_FORMATS[args.format]
    frame_bytes = np.dtype(dtype).itemsize * args.channels
    for name, stream in (("input (stdin)", sys.stdin), ("output (stdout)", sys.stdout)):
        if stream is None:  # started with `<&-` or `>&-`: Python has no stream object for a closed descriptor
            raise ValueError(f"the {name} is closed; stream reads raw PCM from stdin and writes it to stdout.")
    _one_thread_for_streams(args)
    model = _load_enhancer(args)
    session = model.stream(
        args.rate, args.channels, attenuation_limit_db=args.attenuation_limit_db, frames_per_block=args.frames_per_block
    )
    logging.getLogger(__name__).info(
        "streaming at %d Hz, %d channel(s): latency %d samples (%.1f ms)",
        args.rate,
        args.channels,
        session.latency_samples,
        1000 * session.latency_seconds,
    )
    source, sink = sys.stdin.buffer, sys.stdout.buffer

    def write(samples: np.ndarray) -> None:
        block = np.atleast_2d(samples).T  # (samples, channels): interleaved
        if scale != 1.0:
            block = np.clip(np.round(block * scale), -scale, scale - 1)
        sink.write(block.astype(dtype).tobytes())
        sink.flush()

    leftover = b""
    try:
        try:
            while chunk := source.read1(STREAM_READ_BYTES):
                data = leftover + chunk
                whole = len(data) - len(data) % frame_bytes
                leftover = data[whole:]
                if whole:
                    samples = np.frombuffer(data[:whole], dtype=dtype).reshape(-1, args.channels).T / scale
                    write(session.process(samples.astype(np.float32)))
        except (KeyboardInterrupt, Terminated) as stop:
            # Ctrl-C and SIGTERM alike: the last `latency_samples` still in the model are written before stopping.
            write(session.flush())
            how, code = ("terminated", 143) if isinstance(stop, Terminated) else ("interrupted", 130)
            print(f"hybrid-mpsenet stream: {how}; the enhanced tail was written.", file=sys.stderr)
            return code
        write(session.flush())
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): nothing more can be written, which is not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("hybrid-mpsenet stream: the output was closed; stopped.", file=sys.stderr)
        return 0
    if leftover:
        raise ValueError(
            f"the input ended with {len(leftover)} byte(s) that are not a whole {args.channels}-channel {args.format} "
            f"sample frame ({frame_bytes} bytes); is --format or --channels wrong? Everything before them was written."
        )
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .convert import convert_original_checkpoint, convert_original_training_state

    checkpoint = Path(args.checkpoint)
    if checkpoint.name.startswith("do_"):
        generator = checkpoint.with_name("g_" + checkpoint.name[3:])
        if not generator.is_file():
            raise ValueError(f"{checkpoint} is a training state; its generator {generator} must be beside it.")
        run = convert_original_training_state(
            generator,
            checkpoint,
            args.output,
            args.config,
            variant=args.variant,
            batch_mixed=args.batch_mixed,
            overwrite=args.overwrite,
        )
        print(f"Converted {generator} and {checkpoint} to the run folder {run}; continue it with "
              f"`hybrid-mpsenet train --output_dir {run} --resume true ...`")  # fmt: skip
        return 0
    model = convert_original_checkpoint(
        checkpoint, args.config, variant=args.variant, output_dir=args.output, overwrite=args.overwrite
    )
    print(f"Converted {checkpoint} ({model.num_parameters():,} parameters) to {args.output}")
    return 0


def _describe(config: FamilyConfig) -> dict:
    from .registry import ARCHITECTURES

    model = ARCHITECTURES[config.model_type].load("model")(config)
    return {
        "model_type": config.model_type,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        **config.describe(),
        "sampling_rate": config.sampling_rate,
    }


def _export(args: argparse.Namespace) -> int:
    from .inference import HybridMPSENetEnhancer
    from .onnx_export import export_onnx

    model = HybridMPSENetEnhancer.from_pretrained(model_source(args.model))
    folder = export_onnx(model, args.output_dir, overwrite=args.overwrite)
    print(f"Exported {args.model or 'default'} to {folder}; run it with `hybrid-mpsenet enhance --backend onnx "
          f"--model {folder} ...` or hybrid_mpsenet.onnx.OnnxEnhancer.from_pretrained({str(folder)!r})")  # fmt: skip
    return 0


def _info(args: argparse.Namespace) -> int:
    from .registry import ARCHITECTURES, architecture_of, architecture_of_preset

    if args.model is None:
        info = {
            name: _describe(architecture.load("config").from_preset(name))
            for architecture in ARCHITECTURES.values()
            for name in architecture.load("presets")
        }
    elif (architecture := architecture_of_preset(args.model)) is not None:
        info = {args.model: _describe(architecture.load("config").from_preset(args.model))}
    else:
        source = model_source(args.model)
        architecture = architecture_of(source) or ARCHITECTURES["hybrid_mpsenet"]
        info = {args.model: _describe(architecture.load("config").from_pretrained(source))}
    print(json.dumps(info, indent=2))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_dataset, evaluate_recordings, format_table
    from .ownership import check_replaceable_file, json_is_ours, write_json
    from .utils import weights_sha256

    if args.output:
        # Refused before the evaluation, not after it: a reference file or someone's JSON is never replaced.
        check_replaceable_file(Path(args.output), args.overwrite, json_is_ours, "result")
    if args.no_reference:
        return _evaluate_recordings(args, evaluate_recordings, format_table, write_json)
    model = _load_model(args)
    result = evaluate_dataset(
        args.data,
        model,
        noisy_baseline=args.noisy_baseline,
        save_enhanced=args.save_enhanced,
        max_items=args.max_items,
        workers=args.workers,
        progress=not args.quiet,
        overwrite=args.overwrite,
        attenuation_limit_db=args.attenuation_limit_db,
        pcs=args.pcs,
        dnsmos=args.dnsmos,
    )
    result["model"] = args.model or "default"
    result["model_sha256"] = weights_sha256(model.state_dict())  # `push` checks it against what it uploads
    result["data"] = args.data
    print(format_table(result))
    for pair in result["skipped"]:
        print(f"SKIPPED {pair['id']}: {pair['reason']}", file=sys.stderr)
    if args.output:
        print(f"wrote {write_json(args.output, result, overwrite=args.overwrite)}")
    # The exit code says whether every pair was scored; the scores of the others are printed and saved anyway.
    return 1 if result["skipped"] else 0


def _evaluate_recordings(args: argparse.Namespace, evaluate_recordings, format_table, write_json) -> int:
    """`evaluate --no-reference`: DNSMOS of every recording under `--data` and of its enhanced version."""
    if args.save_enhanced or args.noisy_baseline:
        raise ValueError("--no-reference scores the input and the enhanced audio itself; drop --save-enhanced and "
                         "--noisy-baseline.")  # fmt: skip
    model = _load_model(args)
    result = evaluate_recordings(
        args.data,
        model,
        workers=args.workers,
        progress=not args.quiet,
        attenuation_limit_db=args.attenuation_limit_db,
        pcs=args.pcs,
    )
    result["model"], result["data"] = args.model or "default", args.data
    print(format_table(result))
    for entry in result["skipped"]:
        print(f"SKIPPED {entry['file']}: {entry['reason']}", file=sys.stderr)
    if args.output:
        print(f"wrote {write_json(args.output, result, overwrite=args.overwrite)}")
    return 1 if result["skipped"] else 0


def _push(args: argparse.Namespace) -> int:
    import tempfile

    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from .hub import build_model_card, load_evaluation, prepare_upload, push_to_hub

    try:
        validate_repo_id(args.repo_id)
        if args.repo_id.count("/") != 1:
            raise HFValidationError("it must have the form ORG/NAME")
    except HFValidationError as error:
        raise ValueError(f"--repo-id {args.repo_id!r} is not a Hub repository id: {error}") from None
    model = model_source(args.model)
    card = build_model_card(
        model,
        args.repo_id,
        load_evaluation(args.eval_results, model),
        dataset_name=args.dataset_name,
        training_data=Path(args.training_data).read_text() if args.training_data else "Not stated.",
        limitations=Path(args.limitations).read_text() if args.limitations else "Not evaluated beyond the data above.",
    )
    if args.dry_run:
        folder = prepare_upload(model, args.dry_run, card, overwrite=args.overwrite)
        print(f"Wrote the upload for {args.repo_id} to {folder}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        url = push_to_hub(prepare_upload(model, Path(tmp) / "upload", card), args.repo_id, args.private)
    print(f"Pushed {args.model} to {url}")
    return 0


TRAIN_HELP = "Every setting below can be given as --name value or in the --config YAML file."
FINETUNE_HELP = (
    "--model, --clean and --noise are required and set model, clean_dirs and noise_dirs; eval_at_start is on, so "
    "the starting model is validated at step 0 and best/ is never worse than it. Every setting below can be given "
    "as --name value or in the --config YAML file."
)


def _train(args: argparse.Namespace) -> int:
    from .training import parse_training_arguments, train, training_argument_parser

    if args.help:
        return _print_help(training_argument_parser("train", TRAIN_HELP))
    best = train(parse_training_arguments([*args.overrides, *_quiet(args)], args.config))
    print(f"Best model: {best}")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from .training import parse_training_arguments, train, training_argument_parser

    if args.help:
        return _print_help(training_argument_parser("finetune", FINETUNE_HELP))
    missing = [flag for flag in ("model", "clean", "noise") if getattr(args, flag) is None]
    if missing:
        raise ValueError(f"the following arguments are required: {', '.join('--' + m for m in missing)}")
    argv = ["--model", args.model, "--clean_dirs", *args.clean, "--noise_dirs", *args.noise, "--eval_at_start", "true"]
    best = train(parse_training_arguments([*argv, *args.overrides, *_quiet(args)], args.config, command="finetune"))
    print(f"Best model: {best}")
    return 0


def _shard(args: argparse.Namespace) -> int:
    from .data import write_speech_shards

    written = write_speech_shards(args.inputs, args.output, args.shards, args.seed, progress=not args.quiet)
    print(f"Wrote {len(written)} shards to {args.output}; train on them with --clean_streams {args.output}")
    return 0


def _quiet(args: argparse.Namespace) -> list[str]:
    """`-q` for train and finetune: `--progress false`, unless --progress is given explicitly."""
    return ["--progress", "false"] if args.quiet and "--progress" not in args.overrides else []


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.Namespace], int]]] = {
    "enhance": ("denoise audio files, folders or glob patterns", _enhance),
    "stream": ("enhance raw PCM from stdin to stdout in real time with a causal model", _stream),
    "evaluate": (
        "score a model on clean/noisy test pairs (PESQ, CSIG, CBAK, COVL, STOI, SSNR, DNSMOS) or on recordings "
        "without references (DNSMOS)",
        _evaluate,
    ),
    "train": ("train a model (YAML config + --name value overrides); works under `accelerate launch`", _train),
    "finetune": ("fine-tune a model on clean speech mixed with new noise", _finetune),
    "shard": ("pack speech files into WebDataset tar shards for training with --clean_streams", _shard),
    "push": ("publish a model folder to the Hugging Face Hub with a model card and its metric results", _push),
    "convert": ("convert an original MP-SENet / hybrid generator checkpoint to a save_pretrained folder", _convert),
    "info": ("print the architecture and parameter count of the presets or of a model", _info),
    "export": ("export a model to ONNX: a model folder that runs on onnxruntime without PyTorch", _export),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybrid-mpsenet", description="Hybrid MP-SENet speech enhancement.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    # The same flags after the command; SUPPRESS keeps a flag given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log details")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    for name, (help_text, _) in COMMANDS.items():
        # train and finetune print the help of every training setting themselves (see _train, _finetune).
        own_help = name in ("train", "finetune")
        command = sub.add_parser(name, help=help_text, description=help_text, parents=[common], add_help=not own_help)
        if own_help:
            command.add_argument("-h", "--help", action="store_true", help="list every training setting")

    enhance = sub.choices["enhance"]
    enhance.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files, folders (recursive) or globs")
    _add_inference_arguments(enhance, backend=True)
    enhance.add_argument("-o", "--output", help="output folder (tree mirrored), or file for a single input")
    enhance.add_argument("--suffix", default="_enhanced", help="name suffix when writing beside the inputs")
    enhance.add_argument(
        "--chunk-seconds",
        type=float,
        help=f"chunk length (s; default: the model's, {DEFAULT_CHUNK_SECONDS:g} s or more)",
    )
    enhance.add_argument("--overlap-seconds", type=float, default=DEFAULT_OVERLAP_SECONDS, help="crossfade (s)")
    enhance.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="autocast")
    enhance.add_argument("--downmix", action="store_true", help="average multi-channel input to mono")
    _add_control_arguments(enhance)
    enhance.add_argument("--subtype", help="output sample format, e.g. PCM_16, PCM_24, FLOAT (default: the input's)")
    enhance.add_argument(
        "--overwrite", action="store_true", help="replace outputs this package wrote before (never inputs or others)"
    )
    enhance.add_argument(
        "--glob", action="store_true", help="treat every INPUT as a glob pattern, even one naming an existing file"
    )
    enhance.add_argument(
        "--stream", action="store_true", help="causal models: feed the file to a live stream hop by hop (same output)"
    )

    stream = sub.choices["stream"]
    _add_inference_arguments(stream, backend=True)
    stream.add_argument("--rate", type=int, required=True, help="sampling rate of the PCM stream (Hz)")
    stream.add_argument("--channels", type=int, default=1, help="interleaved channels of the stream (default 1)")
    stream.add_argument(
        "--format", choices=sorted(PCM_FORMATS), default="f32", help="f32 (float32 LE, default) or s16 (int16 LE)"
    )
    _add_control_arguments(stream, pcs=False)
    stream.add_argument(
        "--frames-per-block",
        type=int,
        default=1,
        help="STFT frames enhanced together: each adds a hop of latency and cuts the CPU cost per hop (default 1)",
    )

    evaluate = sub.choices["evaluate"]
    evaluate.add_argument(
        "--data",
        required=True,
        help="VoiceBank+DEMAND folder (test split), saved dataset or id; with --no-reference, any folder of recordings",
    )
    evaluate.add_argument(
        "--dnsmos", action="store_true", help="also score DNSMOS SIG/BAK/OVRL/P.808 (needs the metrics extra)"
    )
    evaluate.add_argument(
        "--no-reference",
        action="store_true",
        help="--data is a folder of recordings without clean references: score each file and its enhanced version "
        "with DNSMOS only (per-file rows in --output)",
    )
    _add_inference_arguments(evaluate)
    evaluate.add_argument("--noisy-baseline", action="store_true", help="also score the unprocessed input")
    _add_control_arguments(evaluate)
    evaluate.add_argument("--save-enhanced", help="write the enhanced files to this folder")
    evaluate.add_argument("--max-items", type=int, help="evaluate at most this many pairs")
    evaluate.add_argument("--workers", type=int, default=2, help="processes computing the metrics (0: in-process)")
    evaluate.add_argument("--output", help="write the results as JSON here")
    evaluate.add_argument(
        "--overwrite", action="store_true", help="replace results and enhanced files this package wrote before"
    )

    train = sub.choices["train"]
    train.add_argument("--config", help="YAML file of training settings; any --name value after it overrides one")

    finetune = sub.choices["finetune"]
    finetune.add_argument("--model", help="model folder, Hub id or `default` to start from (required)")
    finetune.add_argument("--clean", nargs="+", help="folders of clean speech (required)")
    finetune.add_argument("--noise", nargs="+", help="folders of the new noise (required)")
    finetune.add_argument("--config", help="YAML file of further settings; --output_dir DIR etc. also accepted")

    shard = sub.choices["shard"]
    shard.add_argument("inputs", nargs="+", metavar="INPUT", help="speech folders (recursive), files or file lists")
    shard.add_argument("-o", "--output", required=True, help="folder for the shards (speech-NNNNN.tar)")
    shard.add_argument("--shards", type=int, default=64, help="number of shards (at least the workers in all)")
    shard.add_argument("--seed", type=int, default=0, help="seed of the order that spreads files over the shards")

    push = sub.choices["push"]
    push.add_argument("--model", required=True, help="model folder to publish (or `default`)")
    push.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--eval-results", help="JSON from `hybrid-mpsenet evaluate --output` for the card")
    push.add_argument("--dataset-name", default="VoiceBank+DEMAND", help="the evaluation data's name in the card")
    push.add_argument("--training-data", help="Markdown file describing the training data")
    push.add_argument("--limitations", help="Markdown file describing the limitations")
    push.add_argument("--dry-run", metavar="DIR", help="write the exact upload to DIR instead of pushing")
    push.add_argument(
        "--overwrite", action="store_true", help="with --dry-run: replace an upload folder written before"
    )

    convert = sub.choices["convert"]
    convert.add_argument(
        "checkpoint", help="original generator checkpoint g_XXXXXXXX, or training state do_XXXXXXXX (g_ beside it)"
    )
    convert.add_argument("output", help="model folder to write (for do_: a run folder for `train --resume`)")
    convert.add_argument("--overwrite", action="store_true", help="replace a model or run folder written before")
    convert.add_argument(
        "--batch-mixed", action="store_true", help="do_ only: keep the original's mixing of batch items (exact)"
    )
    convert.add_argument("--config", help="the original repository's config.json (STFT settings, channels)")
    convert.add_argument(
        "--variant", default="auto", help="architecture: auto (default) or a preset, see `hybrid-mpsenet info`"
    )

    export = sub.choices["export"]
    export.add_argument("format", choices=["onnx"], help="the export format (onnx)")
    export.add_argument("--model", help="model folder, Hub id, or `default` (the bundled checkpoint; the default)")
    export.add_argument("--output_dir", "--output-dir", required=True, help="the model folder to write")
    export.add_argument("--overwrite", action="store_true", help="replace a folder this package wrote before")

    info = sub.choices["info"]
    info.add_argument(
        "model", nargs="?", help="a preset name, `default`, a model folder or a Hub id (default: all presets)"
    )
    return parser


class Terminated(BaseException):
    """SIGTERM (timeout, docker stop, systemd) as an exception, so that `finally` blocks remove temporary files as
    they do on Ctrl-C; a BaseException, so no `except Exception` on the way swallows it."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 are printed escaped, not fatal
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    # train and finetune pass unknown --name value pairs on to TrainingArguments.
    args, overrides = parser.parse_known_args(argv)
    if overrides and args.command not in ("train", "finetune"):
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    args.overrides = overrides
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if args.command is None:
        parser.error(f"choose a command: {', '.join(COMMANDS)}")
    if args.quiet:  # also the loading and download bars of transformers and huggingface_hub
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
        if importlib.util.find_spec("transformers") is not None:  # absent from a PyTorch-free deployment
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()
    in_main_thread = threading.current_thread() is threading.main_thread()  # where signal handlers can be set
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    resume = " (continue with --resume true)" if args.command in ("train", "finetune") else ""
    try:
        return COMMANDS[args.command][1](args)
    except (ValueError, OSError) as error:  # user errors: bad arguments, files, configs
        print(f"hybrid-mpsenet {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hybrid-mpsenet {args.command}: interrupted; unfinished files were removed{resume}.", file=sys.stderr)
        return 130
    except Terminated:
        print(f"hybrid-mpsenet {args.command}: terminated; unfinished files were removed{resume}.", file=sys.stderr)
        return 143
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
