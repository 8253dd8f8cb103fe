"""How the training data pipeline scales with the corpus: time to the first batch, items per second with 0 and 2
DataLoader workers, and peak memory of the trainer and of its workers, for generated corpora that grow in files
(many short ones) and in hours (few long ones, as the DNS Challenge's). Corpora are written once by
`make_synthetic_corpus.py` under `--corpora`; the corpora of short files are also read as 64 WebDataset shards
(`clean_streams`, packed once by `write_speech_shards`). Each measurement runs in a fresh process. Prints a table,
writes JSON.

    python scripts/benchmark_data.py --files 1000 10000 50000 --hours 1 10 70 --output outputs/benchmark_data.json

The first batch includes listing the files and the start-up check (`--check_audio header`, the default, on a new
run folder; `none`, which only lists the files; `full` decodes every file, as training did before, and is measured
on the smallest corpora only). `--files` and `--hours` choose the corpora (`--hours` with no value: none of long
files). Workers hand batches to the trainer as `train` does (`SharedBatches`); `--plain_handover` also measures
PyTorch's default handover (fresh shared memory for every batch). `--ceiling` also runs two processes without
workers at once (their items per second added): what this machine gives two loaders that hand nothing over, the
most two workers can draw.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from operator import itemgetter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from make_synthetic_corpus import write_corpus  # noqa: E402

from hybrid_mpsenet.data import write_speech_shards  # noqa: E402
from hybrid_mpsenet.utils import benchmark_environment, peak_rss_gib, write_json_atomic  # noqa: E402


def in_fresh_processes(*arguments, count: int = 1) -> list[dict]:
    """[`measure`] in `count` new Python processes started together: plain ones, so that DataLoader workers fork as
    they do in training (a multiprocessing-spawned process would spawn them too)."""
    command = [sys.executable, __file__, "--measure", json.dumps(arguments)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(count)]
    outputs = [process.communicate()[0] for process in processes]
    for process in processes:
        if process.returncode:
            raise subprocess.CalledProcessError(process.returncode, command)
    return [json.loads(output.splitlines()[-1]) for output in outputs]


def in_fresh_process(*arguments) -> dict:
    """[`measure`] in one new Python process."""
    return in_fresh_processes(*arguments)[0]


def measure(
    corpus: str, workers: int, items: int, check_audio: str, source: str = "files", plain: bool = False
) -> dict:
    """Build the mixing datasets and the loader as `train` does (clean speech from `source`: the files, or their
    shards; batches handed over through `SharedBatches`, or with `plain` as PyTorch does by default), then draw
    `items` items in batches of 4."""
    import torch

    from hybrid_mpsenet.data import LOADER_PREFETCH, SharedBatches, StreamingMixingDataset, collate_pairs
    from hybrid_mpsenet.training import TrainingArguments, build_datasets

    torch.set_num_threads(1)
    speech = {"clean_dirs": [str(Path(corpus) / "clean")]}
    if source == "shards":
        speech = {"clean_streams": [str(Path(corpus) / "shards")], "stream_eval_items": 16}
    with tempfile.TemporaryDirectory() as run:
        args = TrainingArguments(
            output_dir=run,
            **speech,
            noise_dirs=[str(Path(corpus) / "noise")],
            items_per_epoch=items,
            segment_seconds=2.0,
            coloured_noise_prob=0.15,
            babble_prob=0.15,
            eq_prob=0.3,
            check_audio=check_audio,
            progress=False,
        )
        started = time.perf_counter()
        train, _ = build_datasets(args, 16000)
        shuffle = not isinstance(train, StreamingMixingDataset)
        shared = SharedBatches(4, int(args.segment_seconds * 16000))
        collate = collate_pairs if plain else shared
        loader = torch.utils.data.DataLoader(
            train,
            4,
            shuffle=shuffle,
            drop_last=True,
            collate_fn=collate,
            num_workers=workers,
            prefetch_factor=LOADER_PREFETCH if workers else None,
        )
        batches = iter(loader) if plain else shared.iterate(loader)
        next(batches)
        first = time.perf_counter() - started
        started, drawn = time.perf_counter(), 0
        for batch in batches:
            drawn += len(batch["clean"])
            if drawn >= items:
                break
        rate = drawn / (time.perf_counter() - started)
        del batches  # the workers end here, so their peak is counted below
    return {
        "seconds_to_first_batch": first,
        "items_per_second": rate,
        "trainer_peak_rss_mib": peak_rss_gib() * 1024,
        # Forked workers: this counts the pages they share with the trainer too.
        "worker_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 if workers else None,
    }


def _together(pair: list[dict]) -> dict:
    """Two measurements run at once as one: their items per second added (their drawing overlaps: both start
    together and take about as long), the slower start and the larger peak."""
    return {
        "seconds_to_first_batch": max(r["seconds_to_first_batch"] for r in pair),
        "items_per_second": sum(r["items_per_second"] for r in pair),
        "trainer_peak_rss_mib": max(r["trainer_peak_rss_mib"] for r in pair),
        "worker_peak_rss_mib": None,
    }


def medians(results: list[dict]) -> dict:
    """The median of each measure over repeated measurements (`None` stays `None`: no workers, no worker peak)."""
    return {key: None if results[0][key] is None else statistics.median(r[key] for r in results) for key in results[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speech", default=str(ROOT.parent / "shared/data/clean/librispeech"))
    parser.add_argument("--noise", default=str(ROOT.parent / "shared/data/noise"))
    parser.add_argument("--corpora", default="outputs/corpora", help="where the generated corpora are kept")
    parser.add_argument("--files", type=int, nargs="*", default=[1000, 10000, 50000], help="corpora of 3-s files")
    parser.add_argument("--hours", type=float, nargs="*", default=[1, 10, 70], help="corpora of 5-min files")
    parser.add_argument("--items", type=int, default=400, help="items drawn per measurement")
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 2], help="DataLoader workers to compare")
    parser.add_argument("--plain_handover", action="store_true", help="also measure PyTorch's default handover")
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="also run two processes without workers at once: what the machine gives two loaders with no handover",
    )
    parser.add_argument("--repeats", type=int, default=1, help="measurements per setting (the table: medians)")
    parser.add_argument("--output", default="outputs/benchmark_data.json")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one measurement, JSON arguments
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*json.loads(args.measure))))
        return

    corpora = [(f"{n} files x 3 s", f"files-{n}", n, 3.0, 20, 60.0) for n in args.files]
    corpora += [(f"{h:g} h in 5-min files", f"hours-{h:g}", max(1, round(h * 12)), 300.0, 20, 1800.0)
                for h in args.hours]  # fmt: skip
    rows = []
    for name, folder, files, seconds, noise_files, noise_seconds in corpora:
        corpus = Path(args.corpora) / folder
        if not (corpus / "clean").is_dir():
            write_corpus(args.speech, args.noise, corpus, files, seconds, noise_files, noise_seconds)
            print(f"wrote {corpus}", flush=True)
        settings = [("files", "header"), ("files", "none")]
        if corpus == Path(args.corpora) / corpora[0][1]:
            settings.append(("files", "full"))
        if seconds < 60:  # a stream crops each utterance once an epoch: for corpora of short utterances
            if not (corpus / "shards").is_dir():
                write_speech_shards(corpus / "clean", corpus / "shards", 64)
            settings.append(("shards", "header"))
        handovers = [False, True] if args.plain_handover else [False]
        for source, check_audio in settings:
            measured: dict[tuple[int, bool, int], list[dict]] = {}  # by (workers, plain handover, processes)
            # Repeats go round every setting in turn, so that the machine's changes of pace touch them alike.
            for _ in range(args.repeats):
                for workers in args.workers:
                    for plain in handovers if workers else [False]:
                        result = in_fresh_process(str(corpus), workers, args.items, check_audio, source, plain)
                        measured.setdefault((workers, plain, 1), []).append(result)
                        print(result, flush=True)
                if args.ceiling:
                    pair = in_fresh_processes(str(corpus), 0, args.items, check_audio, source, False, count=2)
                    measured.setdefault((0, False, 2), []).append(_together(pair))
                    print(pair, flush=True)
            for (workers, plain, processes), results in measured.items():
                setting = {"corpus": name, "source": source, "check_audio": check_audio, "workers": workers}
                setting.update(handover="plain" if plain else "shared", processes=processes)
                rows.append({**setting, **medians(results), "repeats": results})

    print("\n| corpus | speech read as | start-up check | processes | workers | handover | s to first batch | "
          "items/s (range) | ÷ 1 process, 0 workers | trainer peak MiB | worker peak MiB |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    setting_of = itemgetter("corpus", "source", "check_audio")
    # The base of the ratios: each setting's one process without workers.
    bases = {setting_of(r): r["items_per_second"] for r in rows if (r["processes"], r["workers"]) == (1, 0)}
    for r in rows:
        worker = f"{r['worker_peak_rss_mib']:.0f}" if r["worker_peak_rss_mib"] else ""
        handover = r["handover"] if r["workers"] else ""
        rates = [result["items_per_second"] for result in r["repeats"]]
        ratio = f"{r['items_per_second'] / bases[setting_of(r)]:.2f}x" if setting_of(r) in bases else ""
        print(
            f"| {r['corpus']} | {r['source']} | {r['check_audio']} | {r['processes']} | {r['workers']} | "
            f"{handover} | {r['seconds_to_first_batch']:.2f} | {r['items_per_second']:.0f} "
            f"({min(rates):.0f}–{max(rates):.0f}) | {ratio} | {r['trainer_peak_rss_mib']:.0f} | {worker} |"
        )
    print(f"wrote {write_json_atomic(args.output, {**benchmark_environment(), 'items': args.items, 'rows': rows})}")


if __name__ == "__main__":
    main()
