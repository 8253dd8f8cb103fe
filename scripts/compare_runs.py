"""Quality per compute of training runs: validation PESQ against training wall time, from each run's history.jsonl.

For every run folder (written by `hybrid-mpsenet train`), prints its parameter count, the best validation PESQ it
had reached within a common training-time budget (default: the earliest time by which every run has been
validated; the best, because that is the model the run exports to `best/`), and its best and last validation.
Writes JSON.

    python scripts/compare_runs.py outputs/compare/* --output outputs/compare.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hybrid_mpsenet import HybridMPSENetConfig, HybridMPSENetForSpeechEnhancement
from hybrid_mpsenet.training import read_history
from hybrid_mpsenet.utils import write_json_atomic


def load_run(folder: Path) -> dict:
    history = read_history(folder)
    if not history:
        raise ValueError(f"{folder}: history.jsonl has no validation yet.")
    config = HybridMPSENetConfig.from_pretrained(folder / "best")
    parameters = sum(p.numel() for p in HybridMPSENetForSpeechEnhancement(config).parameters())
    return {"run": folder.name, "parameters": parameters, "blocks": config.block_groups, "history": history}


def pesq_within(history: list[dict], budget: float) -> dict | None:
    """The best validation whose training time is within `budget` seconds (the earliest of equals)."""
    reached = [entry for entry in history if entry["train_seconds"] <= budget]
    return max(reached, key=lambda entry: entry["pesq"]) if reached else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders")
    parser.add_argument("--budget", type=float, help="training seconds to compare at")
    parser.add_argument("--output", default="outputs/compare_runs.json")
    args = parser.parse_args()

    runs = [load_run(folder) for folder in args.runs]
    budget = args.budget or max(run["history"][0]["train_seconds"] for run in runs)
    print(f"best validation PESQ within {budget:.0f} s of training, and over each whole run")
    print("| run | parameters | s/step | best within budget | at step | best | at step | last | steps | s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run in runs:
        last, within = run["history"][-1], pesq_within(run["history"], budget)
        best = pesq_within(run["history"], last["train_seconds"])
        run["within_budget"], run["best"] = within, best
        seconds_per_step = last["train_seconds"] / last["step"]
        print(
            f"| {run['run']} | {run['parameters']:,} | {seconds_per_step:.2f} | "
            + (f"{within['pesq']:.3f} | {within['step']}" if within else "– | –")
            + f" | {best['pesq']:.3f} | {best['step']} | {last['pesq']:.3f} | {last['step']} | "
            + f"{last['train_seconds']:.0f} |"
        )
    result = {"budget_s": budget, "runs": runs}
    print(f"wrote {write_json_atomic(args.output, result)}")


if __name__ == "__main__":
    main()
