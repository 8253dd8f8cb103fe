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

from .ownership import apply_new_file_modes, new_file_mode, publish_folder, temporary_name, write_manifest

if TYPE_CHECKING:
    import torch


@contextlib.contextmanager
def atomic_directory(path: str | Path, kind: str = "model") -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it gets a manifest of what was written (see
    [`ownership`]; `kind` names the folder in messages) and replaces `path` in one rename; on error it is removed.

    A reader never sees a half-written folder: either the previous content or the complete new one. Callers check
    with [`check_replaceable_folder`] that an existing `path` may be replaced; [`publish_folder`] checks again
    when it replaces it, and a `path` that was absent when writing began is created exclusively, so a folder made
    meanwhile by someone else (or by a second writer) is never replaced.
    """
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.exists() or path.is_symlink()
    tmp = Path(tempfile.mkdtemp(prefix=temporary_name(path, "tmp"), dir=path.parent))
    try:
        yield tmp
        apply_new_file_modes(tmp)  # mkdtemp and safetensors make private files; the result is an ordinary folder
        tmp.chmod(new_file_mode(directory=True))
        write_manifest(tmp, kind)
        publish_folder(tmp, path, replace=existed, what=kind)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json_atomic(path: str | Path, data, indent: int | None = 2) -> Path:
    """Write `data` as JSON to `path` through a temporary file of its own (so that concurrent writers cannot mix
    their bytes) and a rename; the result has the permissions of an ordinary new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=temporary_name(path, "tmp"), dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=indent)
        Path(name).chmod(new_file_mode())
        os.replace(name, path)
    finally:
        Path(name).unlink(missing_ok=True)
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
    """This process's peak resident memory in GiB: Linux's `VmHWM` where there is one, which, unlike `ru_maxrss`,
    does not carry over the RSS of the parent that forked the process before it started this program."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
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
