"""Evaluate a model (or the unprocessed input) on clean/noisy pairs with the speech-enhancement metric table:
PESQ, CSIG, CBAK, COVL, STOI and segmental SNR (plus narrow-band PESQ, ESTOI and SI-SDR in the JSON), mean and
standard deviation over the utterances."""

from __future__ import annotations

from pathlib import Path

import soundfile as sf
from tqdm.auto import tqdm

from .data import decode_audio, load_voicebank
from .enhancement import HybridMPSENetForSpeechEnhancement
from .metrics import pair_scores, parallel_map, summarise

METRICS = ("pesq", "csig", "cbak", "covl", "stoi", "ssnr")


def evaluate_dataset(
    data: str | Path,
    model: HybridMPSENetForSpeechEnhancement | None = None,
    noisy_baseline: bool = False,
    save_enhanced: str | Path | None = None,
    max_items: int | None = None,
    workers: int = 2,
    progress: bool = True,
) -> dict:
    """Enhance the test split of `data` (see [`load_voicebank`]) and score it.

    Returns `{"num_utterances", "enhanced": summary, "noisy": summary}` (each present when computed), where a
    summary maps every metric to its mean, std and failure count.
    """
    if model is None and not noisy_baseline:
        raise ValueError("Nothing to evaluate: give a model, or ask for the noisy baseline.")
    pairs = load_voicebank(data, "test")
    count = min(len(pairs), max_items or len(pairs))
    rate = model.config.sampling_rate if model is not None else 16000
    references, candidates = [], {"enhanced": [], "noisy": []}
    for index in tqdm(range(count), desc="enhancing", disable=not progress):
        row = pairs[index]
        clean, noisy = decode_audio(row["clean"], rate), decode_audio(row["noisy"], rate)
        length = min(len(clean), len(noisy))
        clean, noisy = clean[:length], noisy[:length]
        references.append(clean)
        if noisy_baseline:
            candidates["noisy"].append(noisy)
        if model is not None:
            enhanced = model.enhance(noisy, rate)
            candidates["enhanced"].append(enhanced)
            if save_enhanced is not None:
                Path(save_enhanced).mkdir(parents=True, exist_ok=True)
                sf.write(Path(save_enhanced) / f"{row['id']}.wav", enhanced, rate)
    result: dict = {"num_utterances": count}
    for name, processed in candidates.items():
        if processed:
            pairs = list(zip(references, processed, strict=True))
            result[name] = summarise(parallel_map(pair_scores, pairs, rate, workers))
    return result


def format_table(result: dict) -> str:
    """The metric table as Markdown: one row per metric, `mean ± std` per column (noisy, enhanced)."""
    columns = [name for name in ("noisy", "enhanced") if name in result]
    lines = [
        f"| metric | {' | '.join(columns)} |",
        "|---|" + "---|" * len(columns),
    ]
    for metric in METRICS:
        cells = [f"{result[c][metric]['mean']:.2f} ± {result[c][metric]['std']:.2f}" for c in columns]
        lines.append(f"| {metric.upper()} | {' | '.join(cells)} |")
    return "\n".join(lines)
