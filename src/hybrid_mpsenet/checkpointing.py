"""Training checkpoints that load without running any code from the files.

A checkpoint is a folder (`checkpoints/step-NNNNNNNN/` of a run) holding:

- `generator/`: `config.json` and `model.safetensors` of the generator;
- `discriminator.safetensors`: the metric discriminator (its width in the metadata);
- `optimizer_generator.pt`, `optimizer_discriminator.pt`: optimiser state dicts, tensors and numbers only, read
  with `torch.load(weights_only=True)`;
- `trainer_state.json`: the loop's counters, both learning-rate schedules and the mixed-precision scaler;
- `rng_state_R.safetensors`, one per process R: the torch (CPU and CUDA), DataLoader, NumPy and Python random
  states, so that a resumed run continues bit for bit.

It is written into a hidden temporary folder beside its final name and renamed when complete, so a folder named
`step-*` is always whole; a temporary folder left by a crash is removed by the next run.
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_file, save_model

from .configuration_hybrid_mpsenet import HybridMPSENetConfig
from .ownership import WRITTEN_BY, OwnershipError, RunLock, check_replaceable_folder, read_small_text
from .utils import write_json_atomic

GENERATOR = "generator"
DISCRIMINATOR = "discriminator.safetensors"
OPTIMIZERS = {"generator": "optimizer_generator.pt", "discriminator": "optimizer_discriminator.pt"}
TRAINER_STATE = "trainer_state.json"


class CheckpointError(ValueError):
    """A training checkpoint that is missing a file, damaged, or does not fit the run; the message names the file."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def temporary_name(step: int) -> str:
    return f".step-{step:08d}.tmp"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders under `root` (a run's `checkpoints/`), oldest first."""
    return sorted(p for p in Path(root).glob("step-*") if p.is_dir())


def remove_incomplete(root: str | Path) -> list[Path]:
    """Delete the temporary folders that an interrupted checkpoint write left under `root`; returns them."""
    leftovers = sorted(Path(root).glob(".step-*.tmp"))
    for folder in leftovers:
        shutil.rmtree(folder, ignore_errors=True)
    return leftovers


def save_weights(folder: Path, generator: torch.nn.Module, discriminator: torch.nn.Module, dim: int) -> None:
    """The generator (`generator/` with its config) and the discriminator, as safetensors."""
    (folder / GENERATOR).mkdir(parents=True, exist_ok=True)
    generator.config.to_json_file(folder / GENERATOR / "config.json")
    # save_model/load_model handle the tensors that hybrid-small's shared Mamba modules share.
    save_model(generator, str(folder / GENERATOR / "model.safetensors"))
    save_model(discriminator, str(folder / DISCRIMINATOR), metadata={"dim": str(dim)})


def save_optimizers(folder: Path, optimizers: dict[str, torch.optim.Optimizer | dict]) -> None:
    for name, optimizer in optimizers.items():
        state = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
        torch.save(state, folder / OPTIMIZERS[name])


def save_trainer_state(
    folder: Path, counters: dict, schedulers: dict[str, dict], scaler: dict | None, rng_states: bool = True
) -> None:
    """`trainer_state.json`: written atomically, also to update the counters after a validation. `rng_states=False`
    marks a checkpoint without random states (converted from the original code, which saves none)."""
    state = {"counters": counters, "schedulers": schedulers, "scaler": scaler, "rng_states": rng_states}
    write_json_atomic(folder / TRAINER_STATE, state)


def save_rng_state(folder: Path, rank: int, loader_generator: torch.Generator) -> None:
    """This process's random states: torch (CPU, each CUDA device), the DataLoader's generator, NumPy, Python."""
    tensors = {"torch": torch.get_rng_state(), "loader": loader_generator.get_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda_{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
    kind, keys, position, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(keys.astype(np.int64))
    metadata = {
        "numpy": json.dumps([kind, int(position), int(has_gauss), float(cached)]),
        "python": json.dumps(random.getstate()),
    }
    save_file(tensors, str(folder / f"rng_state_{rank}.safetensors"), metadata=metadata)


def _read(path: Path, what: str):
    if not path.is_file():
        raise CheckpointError(f"{path}: missing from the checkpoint ({what}); resume from another checkpoint.")
    try:
        if path.suffix == ".json":
            return json.loads(read_small_text(path))
        if path.suffix == ".pt":
            return torch.load(path, map_location="cpu", weights_only=True)
        with safe_open(str(path), "pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata() or {}
    except (OSError, ValueError, RuntimeError, SafetensorError, pickle.UnpicklingError, EOFError) as error:
        raise CheckpointError(f"{path}: cannot read the {what} ({error}).") from error


def read_generator_config(folder: str | Path) -> HybridMPSENetConfig:
    """The generator's config in a checkpoint folder, as the config class of its member of the family."""
    from .registry import architecture_of

    path = Path(folder) / GENERATOR / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing from the checkpoint (generator config).")
    architecture = architecture_of(path.parent)
    config_class = architecture.load("config") if architecture is not None else HybridMPSENetConfig
    return config_class.from_json_file(path)


def read_discriminator_dim(folder: str | Path) -> int:
    _, metadata = _read(Path(folder) / DISCRIMINATOR, "discriminator")
    return int(metadata.get("dim", 16))


def load_weights(folder: Path, generator: torch.nn.Module, discriminator: torch.nn.Module) -> None:
    for module, path, what in (
        (generator, folder / GENERATOR / "model.safetensors", "generator weights"),
        (discriminator, folder / DISCRIMINATOR, "discriminator weights"),
    ):
        _read(path, what)  # a clear error for a missing or damaged file
        try:
            missing, unexpected = load_model(module, str(path), strict=False)
        except RuntimeError as error:
            raise CheckpointError(f"{path}: the {what} do not fit this run's model ({error}).") from error
        if missing or unexpected:
            raise CheckpointError(
                f"{path}: the {what} do not fit this run's model: missing {sorted(missing)[:10]}, unexpected "
                f"{sorted(unexpected)[:10]}."
            )


def load_optimizers(folder: Path, optimizers: dict[str, torch.optim.Optimizer]) -> None:
    for name, optimizer in optimizers.items():
        path = folder / OPTIMIZERS[name]
        try:
            optimizer.load_state_dict(_read(path, f"{name} optimiser state"))
        except (ValueError, KeyError) as error:
            if isinstance(error, CheckpointError):
                raise
            raise CheckpointError(f"{path}: the {name} optimiser state does not fit this run ({error}).") from error


def load_trainer_state(folder: Path) -> dict:
    state = _read(folder / TRAINER_STATE, "trainer state")
    if not isinstance(state, dict) or not {"counters", "schedulers"} <= set(state):
        raise CheckpointError(f"{folder / TRAINER_STATE}: not a trainer state (expected counters and schedulers).")
    return state


def load_rng_state(folder: Path, rank: int, loader_generator: torch.Generator) -> None:
    """Restore what [`save_rng_state`] saved; any missing or damaged part is an error (resume would not be exact)."""
    path = folder / f"rng_state_{rank}.safetensors"
    tensors, metadata = _read(path, f"random state of process {rank}")
    try:
        torch.set_rng_state(tensors["torch"])
        loader_generator.set_state(tensors["loader"])
        if torch.cuda.is_available():
            cuda = [tensors[f"cuda_{i}"] for i in range(torch.cuda.device_count()) if f"cuda_{i}" in tensors]
            if cuda:
                torch.cuda.set_rng_state_all(cuda)
        kind, position, has_gauss, cached = json.loads(metadata["numpy"])
        np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), position, has_gauss, cached))
        version, internal, gauss = json.loads(metadata["python"])
        random.setstate((version, tuple(internal), gauss))
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: damaged random state ({error!r}); resume would not be exact.") from error


# A run folder: its identity (written when the run starts, kept by resumes) and the entries training writes.
RUN_IDENTITY = "run.json"
# The headers of the mixing-mode files, remembered so that a resumed run reads none again.
AUDIO_INDEX = "audio_index.json"
# The utterance keys or files a run holds out for validation, recorded when it starts (training._check_held_out).
HELD_OUT = "held_out.json"
RUN_ENTRIES = {"checkpoints", "best", "logs", "history.jsonl", AUDIO_INDEX, HELD_OUT, RUN_IDENTITY, RunLock.NAME}
# Settings that decide the model: a resumed run continues its checkpoint's model, so a change is refused.
MODEL_SETTINGS = ("model", "preset", "config_overrides")
# Settings a checkpoint restores (optimiser and schedule states): a change has no effect, which is said.
RESTORED_SETTINGS = ("learning_rate", "adam_beta1", "adam_beta2", "lr_decay")


def write_run_identity(folder: str | Path, arguments: dict | None, identity: dict | None = None) -> None:
    """`run.json`: who wrote the run folder, its id and start time (kept from `identity` on resume) and the
    settings of its newest start (`None` for a run converted from the original code)."""
    identity = dict(identity or {"run_id": uuid.uuid4().hex, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    identity.update(written_by=WRITTEN_BY, arguments=arguments)
    write_json_atomic(Path(folder) / RUN_IDENTITY, identity)


def read_run_identity(folder: str | Path) -> dict | None:
    """The `run.json` of a run folder, or `None` if it has none (or one this package did not write)."""
    try:
        identity = json.loads(read_small_text(Path(folder) / RUN_IDENTITY))
    except (OSError, ValueError):
        return None
    if not isinstance(identity, dict) or identity.get("written_by") != WRITTEN_BY:
        return None
    if not isinstance(identity.get("arguments"), (dict, type(None))):
        raise ValueError(f"{Path(folder) / RUN_IDENTITY}: its arguments are not an object; the file is damaged.")
    return identity


def claim_run_folder(folder: str | Path, arguments: dict, resume: bool) -> tuple[RunLock, list[str]]:
    """Claim `folder` for a training run before anything is written, or refuse with the choice spelled out.

    A new run needs an absent or empty folder; `resume` needs a run folder of this package (its `run.json`, or a
    folder holding only what training writes, from before run identities) whose model settings are unchanged.
    `best/` must hold only the model this package exported. The folder is locked (`run.lock`) against a second
    training.

    Returns:
        The held lock (release it when the run ends) and warnings to show: settings the checkpoint overrides, a
        stale lock taken over.

    Raises:
        OwnershipError: naming the folder, what is in the way and what to do.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OwnershipError(f"{folder} exists and is not a folder; choose another --output_dir.")
    entries = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    identity = read_run_identity(folder)
    warnings = []
    # A run that stopped before writing anything (a bad file at start-up, say) left only its identity: start anew.
    if identity is not None and set(entries) <= {RUN_IDENTITY, RunLock.NAME, "logs", AUDIO_INDEX, HELD_OUT}:
        entries, identity = [], None
    if entries and not resume:
        if identity is not None or (folder / "checkpoints").is_dir():
            raise OwnershipError(
                f"{folder} holds a training run already. Continue it with --resume true, or start a new run in a new "
                "--output_dir."
            )
        raise OwnershipError(
            f"{folder} is not empty ({', '.join(entries[:5])}); a new run needs a new or empty --output_dir."
        )
    if entries and identity is None:
        foreign = [name for name in entries if name not in RUN_ENTRIES]
        if foreign or not (folder / "checkpoints").is_dir():
            raise OwnershipError(
                f"{folder} is not a run folder of this package (it holds {', '.join((foreign or entries)[:5])}); "
                "choose the run's own folder or a new one."
            )
    if identity is not None and identity.get("arguments") and list_checkpoints(folder / "checkpoints"):
        before = identity["arguments"]
        changed = [name for name in MODEL_SETTINGS if before.get(name) != arguments.get(name)]
        if changed:
            listed = ", ".join(f"{name} {before.get(name)!r} -> {arguments.get(name)!r}" for name in changed)
            raise OwnershipError(
                f"{folder}: --resume continues the run's own model, but {listed} changed since it started. Restore "
                "those settings, or start a new run (a new --output_dir, --model pointing at this run's best/)."
            )
        for name in RESTORED_SETTINGS:
            if before.get(name) != arguments.get(name):
                warnings.append(
                    f"{name} {arguments.get(name)!r} differs from the run's {before.get(name)!r}; the checkpoint's "
                    "optimiser and schedule continue unchanged."
                )
    check_replaceable_folder(folder / "best", overwrite=True, what="best model")
    lock = RunLock(folder).acquire()
    if lock.taken_over is not None:
        warnings.append(
            f"took over {lock.path}, left by a training that no longer runs (pid {lock.taken_over.get('pid')})."
        )
    try:
        write_run_identity(folder, arguments, identity)
    except OSError:
        lock.release()
        raise
    return lock, warnings
