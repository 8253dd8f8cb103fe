"""Objective speech-quality metrics on numpy waveforms, in parallel, robust to failures.

PESQ (ITU-T P.862, via `pesq`) fails on some inputs (silence, too short); a failure gives NaN and is counted,
never raised, so that a training run or an evaluation goes on.

The composite measures CSIG, CBAK and COVL follow Hu & Loizou, "Evaluation of objective quality measures for
speech enhancement", IEEE TASLP 16(1), 2008, and Loizou's `composite.m` (Speech Enhancement: Theory and Practice):
30-ms Hann frames with 75 % overlap; the log-likelihood ratio (LPC order 16 at 16 kHz, 10 below) and the weighted
spectral slope (25 critical bands, Klatt's weights) averaged over their lowest 95 % of frames; segmental SNR
clipped to [-10, 35] dB; wide-band PESQ at 16 kHz.
"""

from __future__ import annotations

import logging
import signal
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path

import numpy as np
from scipy.linalg import solve_toeplitz

logger = logging.getLogger(__name__)

# `evaluate.load(EVALUATE_MODULE)` loads these metrics as an `evaluate` module from the installed package.
EVALUATE_MODULE = str(Path(__file__).parent / "evaluate_modules" / "speech_enhancement_metrics")


def pesq_score(reference: np.ndarray, degraded: np.ndarray, sampling_rate: int = 16000, mode: str = "wb") -> float:
    """PESQ of `degraded` against `reference` (both `(samples,)`), wide band (`wb`, 16 kHz) or narrow band (`nb`),
    NaN when PESQ cannot be computed."""
    from pesq import PesqError, pesq

    if not (np.any(reference) and np.any(degraded)):
        return float("nan")  # PESQ normalises by the peak: silence has none
    try:
        return float(pesq(sampling_rate, reference, degraded, mode))
    except (PesqError, ValueError) as error:
        logger.debug("PESQ failed: %s", error)
        return float("nan")


STOI_TOO_SHORT = 1e-5  # pystoi's answer when the speech is too short to score


def stoi_score(reference: np.ndarray, degraded: np.ndarray, sampling_rate: int = 16000, extended: bool = False):
    """(E)STOI of `degraded` against `reference` (both `(samples,)`), NaN when it cannot be computed."""
    from pystoi import stoi

    length = min(len(reference), len(degraded))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the "not enough frames" case, handled below
        try:
            value = float(stoi(reference[:length], degraded[:length], sampling_rate, extended=extended))
        except (ValueError, IndexError) as error:  # numpy's AxisError on clips of a few frames
            logger.warning("STOI failed (%d samples): %s", length, error)
            return float("nan")
    # pystoi returns exactly 1e-5 when fewer than 30 speech frames (~0.4 s) remain: not a score.
    return value if np.isfinite(value) and value != STOI_TOO_SHORT else float("nan")


def correlation_lag(signal: np.ndarray, reference: np.ndarray) -> int:
    """The signed lag in samples at which `signal` best matches `reference` (both `(samples,)`, any lengths): the
    peak of their absolute cross-correlation; positive when `signal` is late."""
    size = len(signal) + len(reference)  # no circular wrap-around
    correlation = np.fft.irfft(np.fft.rfft(signal, size) * np.conj(np.fft.rfft(reference, size)), size)
    lag = int(np.argmax(np.abs(correlation)))
    return lag - size if lag >= len(signal) else lag  # indices past the signal are negative lags


def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al., 2019); both `(samples,)`."""
    length = min(len(reference), len(estimate))
    reference = reference[:length].astype(np.float64) - np.mean(reference[:length])
    estimate = estimate[:length].astype(np.float64) - np.mean(estimate[:length])
    energy = np.dot(reference, reference)
    if energy == 0:
        return float("nan")
    target = np.dot(estimate, reference) / energy * reference
    residual = estimate - target
    return float(10 * np.log10(np.dot(target, target) / max(np.dot(residual, residual), 1e-20)))


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


def ignore_interrupts(*_) -> None:
    """Worker-process initialiser: Ctrl-C goes to the main process alone, which stops the workers itself, so the
    terminal shows one line instead of a traceback from every worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_pool(workers: int) -> ProcessPoolExecutor | None:
    """A process pool for metric computation, or `None` (in-process) for `workers <= 0`."""
    return ProcessPoolExecutor(max_workers=workers, initializer=ignore_interrupts) if workers > 0 else None


# Critical-band centre frequencies and bandwidths in Hz (Loizou, composite.m).
CRITICAL_BANDS = np.array(
    [
        (50.0, 70.0), (120.0, 70.0), (190.0, 70.0), (260.0, 70.0), (330.0, 70.0), (400.0, 70.0), (470.0, 70.0),
        (540.0, 77.3724), (617.372, 86.0056), (703.378, 95.3398), (798.717, 105.411), (904.128, 116.256),
        (1020.38, 127.914), (1148.30, 140.423), (1288.72, 153.823), (1442.54, 168.154), (1610.70, 183.457),
        (1794.16, 199.776), (1993.93, 217.153), (2211.08, 235.631), (2446.71, 255.255), (2701.97, 276.072),
        (2978.04, 298.126), (3276.17, 321.465), (3597.63, 346.136),
    ]
)  # fmt: skip


def _frames(signal: np.ndarray, sampling_rate: int) -> np.ndarray:
    """Hann-windowed 30-ms frames with 75 % overlap `(frames, window)`, as many as `composite.m` uses."""
    window = round(0.03 * sampling_rate)
    hop = int(np.floor(0.25 * 0.03 * sampling_rate))
    count = int(len(signal) / hop - window / hop)
    if count < 1:
        raise ValueError(f"Need more than {window + hop} samples for the composite measures, got {len(signal)}.")
    hann = 0.5 * (1 - np.cos(2 * np.pi * np.arange(1, window + 1) / (window + 1)))
    index = np.arange(count)[:, None] * hop + np.arange(window)[None, :]
    return signal[index] * hann


def segmental_snr(reference: np.ndarray, degraded: np.ndarray, sampling_rate: int = 16000) -> float:
    """Mean of per-frame SNRs in dB, each clipped to [-10, 35]."""
    clean, noisy = _frames(reference, sampling_rate), _frames(degraded, sampling_rate)
    eps = np.finfo(np.float64).eps
    ratio = np.sum(clean**2, axis=1) / (np.sum((clean - noisy) ** 2, axis=1) + eps)
    return float(np.mean(np.clip(10 * np.log10(ratio + eps), -10, 35)))


def _autocorrelation(frames: np.ndarray, order: int) -> np.ndarray:
    return np.stack([np.sum(frames[:, : frames.shape[1] - k] * frames[:, k:], axis=1) for k in range(order + 1)], 1)


def log_likelihood_ratio(reference: np.ndarray, degraded: np.ndarray, sampling_rate: int = 16000) -> np.ndarray:
    """Per-frame LLR `(frames,)` between the LPC models of the degraded and the reference frames."""
    order = 10 if sampling_rate < 10000 else 16
    r_clean = _autocorrelation(_frames(reference, sampling_rate), order)
    r_degraded = _autocorrelation(_frames(degraded, sampling_rate), order)
    values = []
    for rc, rd in zip(r_clean, r_degraded, strict=True):
        a_clean = np.concatenate([[1.0], -solve_toeplitz(rc[:-1], rc[1:])])
        a_degraded = np.concatenate([[1.0], -solve_toeplitz(rd[:-1], rd[1:])])
        toeplitz_clean = rc[np.abs(np.arange(order + 1)[:, None] - np.arange(order + 1)[None, :])]
        ratio = (a_degraded @ toeplitz_clean @ a_degraded) / (a_clean @ toeplitz_clean @ a_clean)
        values.append(np.log(ratio) if ratio > 0 else np.log(1000.0))
    return np.array(values)


def _band_energies_db(frames: np.ndarray, sampling_rate: int) -> np.ndarray:
    """Critical-band log energies `(frames, 25)`, floored at -100 dB."""
    n_fft = int(2 ** np.ceil(np.log2(2 * frames.shape[1])))
    half = n_fft // 2
    spectrum = np.abs(np.fft.fft(frames, n_fft, axis=1)[:, :half]) ** 2
    centre = np.floor(CRITICAL_BANDS[:, 0] / (sampling_rate / 2) * half)
    width = CRITICAL_BANDS[:, 1] / (sampling_rate / 2) * half
    norm = np.log(CRITICAL_BANDS[0, 1]) - np.log(CRITICAL_BANDS[:, 1])
    filters = np.exp(-11 * ((np.arange(half)[None, :] - centre[:, None]) / width[:, None]) ** 2 + norm[:, None])
    filters *= filters > np.exp(-30.0 / (2.0 * 2.303))  # cut below the filters' -30 dB points
    return 10 * np.log10(np.maximum(spectrum @ filters.T, 1e-10))


def _nearest_peaks(slope: np.ndarray, energy: np.ndarray) -> np.ndarray:
    """For each band, the energy near the spectral peak it slopes towards (Klatt's local-maximum weighting),
    indexed exactly as `composite.m` does."""
    bands = energy.shape[0]
    peaks = np.empty(bands - 1)
    for i in range(bands - 1):
        n = i
        if slope[i] > 0:
            while n < bands - 1 and slope[n] > 0:
                n += 1
            peaks[i] = energy[n - 1]
        else:
            while n >= 0 and slope[n] <= 0:
                n -= 1
            peaks[i] = energy[n + 1]
    return peaks


def weighted_spectral_slope(reference: np.ndarray, degraded: np.ndarray, sampling_rate: int = 16000) -> np.ndarray:
    """Per-frame WSS distance `(frames,)` (Klatt, 1982) with K_max = 20 and K_locmax = 1."""
    clean = _band_energies_db(_frames(reference, sampling_rate), sampling_rate)
    noisy = _band_energies_db(_frames(degraded, sampling_rate), sampling_rate)
    distances = []
    for ce, pe in zip(clean, noisy, strict=True):
        cs, ps = np.diff(ce), np.diff(pe)
        w_clean = 20 / (20 + ce.max() - ce[:-1]) * (1 / (1 + _nearest_peaks(cs, ce) - ce[:-1]))
        w_noisy = 20 / (20 + pe.max() - pe[:-1]) * (1 / (1 + _nearest_peaks(ps, pe) - pe[:-1]))
        weights = (w_clean + w_noisy) / 2
        distances.append(np.sum(weights * (cs - ps) ** 2) / np.sum(weights))
    return np.array(distances)


def _lowest_mean(values: np.ndarray, share: float = 0.95) -> float:
    ordered = np.sort(values)
    return float(np.mean(ordered[: int(round(len(ordered) * share))]))


def composite_scores(reference: np.ndarray, degraded: np.ndarray, sampling_rate: int = 16000) -> dict[str, float]:
    """CSIG, CBAK, COVL (each clipped to [1, 5]) with their ingredients PESQ, LLR, WSS and segmental SNR.

    Both signals are `(samples,)` at 16 kHz; the longer one is trimmed. PESQ failure gives NaN scores.
    """
    length = min(len(reference), len(degraded))
    eps = np.finfo(np.float64).eps
    reference = reference[:length].astype(np.float64) + eps
    degraded = degraded[:length].astype(np.float64) + eps
    wss = _lowest_mean(weighted_spectral_slope(reference, degraded, sampling_rate))
    llr = _lowest_mean(log_likelihood_ratio(reference, degraded, sampling_rate))
    ssnr = segmental_snr(reference, degraded, sampling_rate)
    pesq = pesq_score(reference, degraded, sampling_rate)
    return {
        "csig": float(np.clip(3.093 - 1.029 * llr + 0.603 * pesq - 0.009 * wss, 1, 5)),
        "cbak": float(np.clip(1.634 + 0.478 * pesq - 0.007 * wss + 0.063 * ssnr, 1, 5)),
        "covl": float(np.clip(1.594 + 0.805 * pesq - 0.512 * llr - 0.007 * wss, 1, 5)),
        "pesq": pesq,
        "llr": llr,
        "wss": wss,
        "ssnr": ssnr,
    }


def pair_scores(pair: tuple[np.ndarray, np.ndarray], sampling_rate: int = 16000) -> dict[str, float]:
    """Every metric for one `(reference, degraded)` pair of `(samples,)` waveforms; NaN where one fails.

    Keys: pesq (wide band, 16 kHz only), pesq_nb, stoi, estoi, csig, cbak, covl, ssnr, si_sdr.
    """
    reference, degraded = pair
    length = min(len(reference), len(degraded))
    reference, degraded = reference[:length], degraded[:length]
    nan = float("nan")
    if not (np.any(reference) and np.any(degraded)):
        logger.warning("A silent signal: its metrics are undefined and counted as failed.")
        return dict.fromkeys(("pesq", "pesq_nb", "stoi", "estoi", "csig", "cbak", "covl", "ssnr", "si_sdr"), nan)
    try:
        scores = composite_scores(reference, degraded, sampling_rate) if sampling_rate == 16000 else {}
    except ValueError as error:  # too short for the composite measures
        logger.warning("Composite measures failed: %s", error)
        scores = {}
    return {
        "pesq": scores.get("pesq", nan),
        "pesq_nb": pesq_score(reference, degraded, sampling_rate, "nb"),
        "stoi": stoi_score(reference, degraded, sampling_rate),
        "estoi": stoi_score(reference, degraded, sampling_rate, extended=True),
        "csig": scores.get("csig", nan),
        "cbak": scores.get("cbak", nan),
        "covl": scores.get("covl", nan),
        "ssnr": scores.get("ssnr", nan),
        "si_sdr": si_sdr(reference, degraded),
    }


# Non-intrusive scores: DNSMOS P.835 (speech, background, overall) and P.808, from Microsoft's models as the
# speechmos package ships and runs them.
DNSMOS_KEYS = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808")
DNSMOS_RATE = 16000


def dnsmos_scores(audio: np.ndarray, sampling_rate: int = DNSMOS_RATE) -> dict[str, float]:
    """DNSMOS SIG, BAK, OVRL (P.835) and P.808 MOS of `(samples,)` audio, needing no clean reference.

    `speechmos.dnsmos.run` with its exact preprocessing: 16 kHz (other rates are resampled here first with soxr),
    9.01-s windows hopped by 1 s and averaged (shorter audio is repeated to one window), and the polynomial
    calibration of the P.835 scores. Samples beyond full scale are clipped, as writing the file would. Silent or
    non-finite audio gives NaN (counted as failed).

    Raises:
        ImportError: the `metrics` extra is not installed (the message says how to install it).
    """
    try:
        from speechmos import dnsmos
    except ImportError as error:
        raise ImportError(f"DNSMOS needs the metrics extra ({error}): pip install 'hybrid-mpsenet[metrics]'.") from None
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1 or not audio.any() or not np.isfinite(audio).all():
        logger.warning("DNSMOS is undefined for silent, non-finite or multichannel audio; counted as failed.")
        return dict.fromkeys(DNSMOS_KEYS, float("nan"))
    if sampling_rate != DNSMOS_RATE:
        import soxr

        audio = soxr.resample(audio, sampling_rate, DNSMOS_RATE).astype(np.float32)
    scores = dnsmos.run(np.clip(audio, -1.0, 1.0), DNSMOS_RATE)
    return {
        "dnsmos_sig": float(scores["sig_mos"]),
        "dnsmos_bak": float(scores["bak_mos"]),
        "dnsmos_ovrl": float(scores["ovrl_mos"]),
        "dnsmos_p808": float(scores["p808_mos"]),
    }


def parallel_map(function: Callable, items: Sequence, sampling_rate: int, workers: int) -> list:
    """`[function(item, sampling_rate) for item in items]`, in a process pool of `workers` (0: in-process)."""
    rates = [sampling_rate] * len(items)
    if workers <= 0:
        return list(map(function, items, rates))
    with make_pool(workers) as pool:
        return list(pool.map(function, items, rates))


def summarise(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per metric: mean, std and the number of utterances where it could not be computed."""
    summary = {}
    for name in rows[0]:
        values = np.array([row[name] for row in rows], dtype=np.float64)
        valid = values[np.isfinite(values)]
        summary[name] = {
            "mean": float(valid.mean()) if valid.size else float("nan"),
            "std": float(valid.std()) if valid.size else float("nan"),
            "failed": int(values.size - valid.size),
        }
    return summary
