"""Objective speech-quality metrics on numpy waveforms, in parallel, robust to failures.

PESQ (ITU-T P.862, via `pesq`) fails on some inputs (silence, too short); a failure gives NaN and is counted,
never raised, so that a training run or an evaluation goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor

import numpy as np

logger = logging.getLogger(__name__)


def pesq_score(reference: np.ndarray, degraded: np.ndarray, sampling_rate: int = 16000, mode: str = "wb") -> float:
    """PESQ of `degraded` against `reference` (both `(samples,)`), NaN when PESQ cannot be computed."""
    from pesq import PesqError, pesq

    try:
        return float(pesq(sampling_rate, reference, degraded, mode))
    except (PesqError, ValueError) as error:
        logger.debug("PESQ failed: %s", error)
        return float("nan")


def stoi_score(reference: np.ndarray, degraded: np.ndarray, sampling_rate: int = 16000, extended: bool = False):
    """(E)STOI of `degraded` against `reference` (both `(samples,)`), NaN when it cannot be computed."""
    from pystoi import stoi

    length = min(len(reference), len(degraded))
    value = float(stoi(reference[:length], degraded[:length], sampling_rate, extended=extended))
    return value if np.isfinite(value) else float("nan")


def batch_pesq(
    references: Sequence[np.ndarray],
    degraded: Sequence[np.ndarray],
    sampling_rate: int = 16000,
    executor: Executor | None = None,
) -> np.ndarray:
    """Wide-band PESQ per pair `(batch,)`, NaN where it failed; computed in `executor` when given."""
    rates = [sampling_rate] * len(references)
    if executor is None:
        return np.array(list(map(pesq_score, references, degraded, rates)), dtype=np.float64)
    return np.array(list(executor.map(pesq_score, references, degraded, rates)), dtype=np.float64)


def make_pool(workers: int) -> ProcessPoolExecutor | None:
    """A process pool for metric computation, or `None` (in-process) for `workers <= 0`."""
    return ProcessPoolExecutor(max_workers=workers) if workers > 0 else None
