"""Evaluate a model (or the unprocessed input) on clean/noisy pairs with the speech-enhancement metric table:
PESQ, CSIG, CBAK, COVL, STOI and segmental SNR (plus narrow-band PESQ, ESTOI and SI-SDR in the JSON), and
optionally DNSMOS, mean and standard deviation over the utterances; or score recordings that have no clean
reference with DNSMOS alone ([`evaluate_recordings`])."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .audio import atomic_audio_writer, check_output_audio
from .data import decode_audio, list_audio, load_voicebank
from .metrics import DNSMOS_KEYS, correlation_lag, dnsmos_scores, pair_scores, parallel_map, summarise
from .ownership import OwnershipError, inside
from .waveform import WaveformEnhancer, enhancement_controls

METRICS = ("pesq", "csig", "cbak", "covl", "stoi", "ssnr")
# A clean/noisy pair is one recording twice: lengths may differ by a few resampling samples, and the noisy version
# may not be shifted by more than a couple of samples.
MAX_LENGTH_DIFFERENCE = 0.01
MAX_LAG = 0.001

logger = logging.getLogger(__name__)


def evaluate_dataset(
    data: str | Path,
    model: WaveformEnhancer | None = None,
    noisy_baseline: bool = False,
    save_enhanced: str | Path | None = None,
    max_items: int | None = None,
    workers: int = 2,
    progress: bool = True,
    overwrite: bool = False,
    attenuation_limit_db: float | None = None,
    pcs: bool = False,
    dnsmos: bool = False,
) -> dict:
    """Enhance the test split of `data` (see [`load_voicebank`]) and score it (with `dnsmos`, also with DNSMOS,
    computed in the same worker pool).

    With `save_enhanced`, each enhanced pair is written to `save_enhanced/<id>.wav`. Every such path is checked
    before anything is enhanced: it must stay inside the folder, must not be one of the evaluated files, and may
    replace only an output this package wrote before, with `overwrite` (see [`ownership`]). `attenuation_limit_db`
    and `pcs` are passed to the model's `enhance`.

    Returns `{"num_utterances", "enhanced": summary, "noisy": summary}` (each present when computed), where a
    summary maps every metric to its mean, std and failure count.

    Raises:
        ValueError: nothing to evaluate, or an id that would write outside `save_enhanced`.
        FileExistsError: an output that would replace an input or a file this package did not write.
    """
    if model is None and not noisy_baseline:
        raise ValueError("Nothing to evaluate: give a model, or ask for the noisy baseline.")
    pairs = load_voicebank(data, "test")
    count = min(len(pairs), max_items or len(pairs))
    targets = _enhanced_paths(pairs, count, save_enhanced, overwrite) if save_enhanced is not None and model else {}
    controls = enhancement_controls(attenuation_limit_db, pcs)
    rate = model.config.sampling_rate if model is not None else 16000
    references, candidates = [], {"enhanced": [], "noisy": []}
    skipped: list[dict[str, str]] = []
    for index in tqdm(range(count), desc="enhancing", disable=not progress):
        row = pairs[index]
        try:
            clean, noisy = decode_audio(row["clean"], rate), decode_audio(row["noisy"], rate)
            check_pair(clean, noisy, rate)
            enhanced = model.enhance(noisy, rate, **controls) if model is not None else None
        except ValueError as error:  # AudioError included: unreadable, non-finite, mismatched
            skipped.append({"id": row["id"], "reason": str(error)})
            logger.warning("Skipped the pair %s: %s", row["id"], error)
            continue
        references.append(clean)
        if noisy_baseline:
            candidates["noisy"].append(noisy)
        if enhanced is not None:
            candidates["enhanced"].append(enhanced)
            if targets:
                with atomic_audio_writer(targets[index], rate, 1, "FLOAT", overwrite) as sink:
                    sink.write(enhanced)
    if not references:
        raise ValueError(f"No pair of {data} could be evaluated: {skipped[0]['reason'] if skipped else 'none found'}")
    result: dict = {"num_utterances": len(references), "skipped": skipped}
    for name, processed in candidates.items():
        if processed:
            pairs = list(zip(references, processed, strict=True))
            rows = parallel_map(pair_scores, pairs, rate, workers)
            if dnsmos:
                scores = parallel_map(dnsmos_scores, processed, rate, workers)
                rows = [{**row, **mos} for row, mos in zip(rows, scores, strict=True)]
            result[name] = summarise(rows)
    return result


def evaluate_recordings(
    folder: str | Path,
    model: WaveformEnhancer | None = None,
    workers: int = 2,
    progress: bool = True,
    attenuation_limit_db: float | None = None,
    pcs: bool = False,
) -> dict:
    """Score every audio file under `folder` (any layout) with DNSMOS, which needs no clean reference: the
    recording as it is (`input`) and, with a `model`, enhanced (`enhanced`). Files are read at their own rate
    (DNSMOS resamples to 16 kHz) and downmixed to mono; an unreadable, empty or non-finite file is skipped with its
    reason.

    Returns:
        `{"num_files", "files": [{"file", "input": {dnsmos_*}, "enhanced": {...}}], "input": summary,
        "enhanced": summary, "skipped": [{"file", "reason"}]}`; a summary maps each DNSMOS score to its mean, std
        and failure count.
    """
    files = list_audio([folder])
    controls = enhancement_controls(attenuation_limit_db, pcs)
    rate = model.config.sampling_rate if model is not None else 16000
    recordings, kept, skipped = {"input": [], "enhanced": []}, [], []
    for path in tqdm(files, desc="enhancing" if model is not None else "reading", disable=not progress):
        try:
            audio = decode_audio(path, rate)
            if not np.isfinite(audio).all():
                raise ValueError("it has NaN or Inf samples.")
            enhanced = model.enhance(audio, rate, **controls) if model is not None else None
        except ValueError as error:  # AudioError included: unreadable, empty
            skipped.append({"file": str(path), "reason": str(error)})
            logger.warning("Skipped %s: %s", path, error)
            continue
        kept.append(str(path))
        recordings["input"].append(audio)
        if enhanced is not None:
            recordings["enhanced"].append(enhanced)
    if not kept:
        reason = skipped[0]["reason"] if skipped else "none found"
        raise ValueError(f"No recording under {folder} could be scored: {reason}")
    result: dict = {"num_files": len(kept), "files": [{"file": name} for name in kept], "skipped": skipped}
    for name, audios in recordings.items():
        if audios:
            rows = parallel_map(dnsmos_scores, audios, rate, workers)
            for entry, row in zip(result["files"], rows, strict=True):
                entry[name] = row
            result[name] = summarise(rows)
    return result


def input_paths(pairs, count: int) -> set[Path]:
    """The resolved files behind the first `count` rows' clean and noisy cells (path strings or Audio dicts)."""
    paths = set()
    for index in range(count):
        for column in ("clean", "noisy"):
            cell = pairs[index][column]
            name = cell.get("path") if isinstance(cell, dict) else cell
            if isinstance(name, str) and name:
                paths.add(Path(name).resolve())
    return paths


def _enhanced_paths(pairs, count: int, folder: str | Path, overwrite: bool) -> dict[int, Path]:
    """`folder/<id>.wav` for each of the first `count` rows, checked before anything is written."""
    inputs = input_paths(pairs, count)
    targets, seen = {}, {}
    for index in range(count):
        row_id = str(pairs[index]["id"])
        path = inside(folder, f"{row_id}.wav")
        resolved = path.resolve()
        if resolved in inputs:
            raise OwnershipError(f"--save-enhanced would write {path} over an evaluated input; choose another folder.")
        if resolved in seen:
            raise ValueError(f"The ids {seen[resolved]!r} and {row_id!r} would both be saved as {path}.")
        seen[resolved] = row_id
        check_output_audio(path, overwrite)
        targets[index] = path
    return targets


def check_pair(clean: np.ndarray, noisy: np.ndarray, sampling_rate: int) -> None:
    """Refuse a pair whose scores would be meaningless: non-finite samples, different lengths (more than
    `MAX_LENGTH_DIFFERENCE` seconds), or a noisy recording shifted against the clean one (cross-correlation peak
    more than `MAX_LAG` seconds from zero lag). Both are `(samples,)` at `sampling_rate`.

    Raises:
        ValueError: saying which of these and by how much.
    """
    for name, audio in (("clean", clean), ("noisy", noisy)):
        if not np.isfinite(audio).all():
            raise ValueError(f"the {name} file has NaN or Inf samples.")
    difference = abs(len(clean) - len(noisy)) / sampling_rate
    if difference > MAX_LENGTH_DIFFERENCE:
        raise ValueError(
            f"clean and noisy differ in length by {difference:.3f} s ({len(clean)} vs {len(noisy)} samples at "
            f"{sampling_rate} Hz); a pair must be two versions of one recording."
        )
    length = min(len(clean), len(noisy))
    lag = correlation_lag(noisy[:length], clean[:length])
    if abs(lag) > MAX_LAG * sampling_rate:
        raise ValueError(
            f"the noisy file is shifted by {1000 * lag / sampling_rate:+.1f} ms against the clean one "
            "(cross-correlation); align the pair first."
        )


def format_table(result: dict) -> str:
    """The metric table as Markdown: one row per metric, `mean ± std` per column (noisy or input, enhanced)."""
    columns = [name for name in ("noisy", "input", "enhanced") if name in result]
    lines = [
        f"| metric | {' | '.join(columns)} |",
        "|---|" + "---|" * len(columns),
    ]
    metrics = [name for name in (*METRICS, *DNSMOS_KEYS) if name in result[columns[0]]]
    for metric in metrics:
        cells = [_mean_std(result[c][metric]) for c in columns]
        lines.append(f"| {metric.upper()} | {' | '.join(cells)} |")
    return "\n".join(lines)


def _mean_std(summary: dict) -> str:
    """`mean ± std`, or `n/a` for a metric that could not be computed on any utterance."""
    mean, std = summary.get("mean"), summary.get("std")
    if not isinstance(mean, (int, float)) or not np.isfinite(mean):
        return "n/a"
    return f"{mean:.2f} ± {std:.2f}"
