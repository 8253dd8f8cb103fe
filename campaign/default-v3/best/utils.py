"""Small helpers shared by the converter, training, publishing code and the benchmarks."""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import resource
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# What this package writes into a model folder (save_pretrained, the model code, a card, evaluation results) or a
# run folder; a folder holding anything else is not replaced.
OWN_FILES = {
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "eval_results.json",
    "README.md",
    # the model code `save_pretrained` copies beside the weights: the model class's module and its relative imports
    "configuration_hybrid_mpsenet.py",
    "modeling_hybrid_mpsenet.py",
    "network.py",
    "enhancement.py",
    "inference.py",
    "audio.py",
    "utils.py",
    "feature_extraction_hybrid_mpsenet.py",
    "mamba.py",
    "spectral.py",
    "limits.py",
    "checkpoints",
}


def check_output_folder(path: str | Path, overwrite: bool = False) -> None:
    """Refuse to write a model or run folder at `path` unless it is absent, empty, or (with `overwrite`) a folder
    holding only what this package writes; never lose a user's files.

    Raises:
        FileExistsError: `path` is a file, a folder with other files, or one of ours without `overwrite`.
    """
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder; choose another output folder.")
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        return
    foreign = [name for name in entries if name not in OWN_FILES and not name.startswith(".")]
    if foreign:
        raise FileExistsError(
            f"{path} is not empty and holds files this package did not write ({', '.join(foreign[:5])}); refusing to "
            "replace it. Choose a new or empty output folder."
        )
    if not overwrite:
        raise FileExistsError(f"{path} already holds a model or run folder; pass --overwrite to replace it.")


def new_file_mode(directory: bool = False) -> int:
    """The permission bits `open()` / `mkdir()` would give a new file (0o666) or folder (0o777) under the umask.

    Temporary files and folders are created private (0o600 / 0o700); results renamed from them get these bits.
    """
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` in one rename, on error it is removed.

    A reader never sees a half-written folder: either the previous content or the complete new one. Callers check
    with [`check_output_folder`] that an existing `path` may be replaced.
    """
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    tmp.chmod(new_file_mode(directory=True))  # mkdtemp makes it private; the result is an ordinary folder
    try:
        yield tmp
        if path.exists():
            backup = path.with_name(f".{path.name}.old-{tmp.name[-8:]}")
            path.rename(backup)
            tmp.rename(path)
            shutil.rmtree(backup)
        else:
            tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json_atomic(path: str | Path, data) -> Path:
    """Write `data` as indented JSON to `path` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
    return path


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A fingerprint of a model's weights (names, dtypes, shapes, values), the same in memory and in the
    `model.safetensors` it was saved to or loaded from; ties an evaluation to the model it measured."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def peak_rss_gib() -> float:
    """This process's peak resident memory in GiB (`ru_maxrss` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def benchmark_environment() -> dict:
    """What a benchmark's numbers depend on: torch version, CPU, GPU (or None)."""
    import platform

    import torch

    return {
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


@contextlib.contextmanager
def measured(device: str) -> Iterator[dict]:
    """Time the enclosed block and record peak memory (benchmarks); the yielded dict is filled on exit.

    On CUDA the block is bracketed by synchronisations and the peak is counted from its start. Keys: `seconds`,
    `peak_rss_gib` (this process's peak so far) and, on CUDA, `peak_cuda_gib`.
    """
    import time

    cuda = device == "cuda"
    if cuda:  # imported only here, so that a CPU reading of a process without PyTorch does not include it
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    result: dict = {}
    start = time.perf_counter()
    yield result
    if cuda:
        torch.cuda.synchronize()
    result["seconds"] = time.perf_counter() - start
    result["peak_rss_gib"] = peak_rss_gib()
    if cuda:
        result["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2**30


def run_in_fresh_process(target: Callable[..., dict], *args) -> dict:
    """`target(*args)` in a spawned process, so peak-memory readings belong to that call alone (benchmarks).

    Exceptions raised by `target` are raised here."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(target, *args).result()
