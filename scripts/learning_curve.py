"""Learning curve of one training run: validation PESQ against steps and training hours, with a fitted projection.

Reads the run's history.jsonl (written by `hybrid-mpsenet train`) and prints the validation PESQ averaged over windows
of `--window` steps, with the training hours at each window's end and the core-hours (training hours times the CPU
threads that trained them, as each line records; a line from before threads were recorded counts one).
Fits PESQ = a + b ln(steps) by least squares over the validations from `--from_step` on, steps counted from the model's
first training step (`--offset_steps`: the steps its starting checkpoint had had), and the straight line PESQ = c + d
steps; projects the logarithmic fit, with the standard error of its mean, to `--project` steps and says how many more
training hours that is at the run's own seconds per step. The error is the fit's alone: that the curve stays logarithmic
is the projection's assumption. Writes JSON and, with `--plot` (needs matplotlib), a figure.

    python scripts/learning_curve.py campaign/default-v3 --offset_steps 4500 --project 34500 100000 \\
        --output outputs/learning_curve.json --plot docs/images/learning_curve.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from hybrid_mpsenet.training import read_history
from hybrid_mpsenet.utils import write_json_atomic


def fit(steps: np.ndarray, pesq: np.ndarray) -> dict:
    """Least-squares fits of PESQ against ln(steps) and against steps `(n,)`: coefficients, the residuals' standard
    deviation, and what the standard error of a projection needs (n, the mean and spread of ln(steps))."""
    if len(steps) < 3:
        raise ValueError(f"A fit needs at least 3 validations, the run has {len(steps)} in range.")
    if np.any(steps <= 0):
        raise ValueError("Steps must be positive for the logarithmic fit (give --offset_steps or --from_step).")
    x = np.log(steps)
    slope, intercept = np.polyfit(x, pesq, 1)
    residuals = pesq - (intercept + slope * x)
    linear_slope, linear_intercept = np.polyfit(steps, pesq, 1)
    return {
        "log": {"a": float(intercept), "b": float(slope)},
        "linear": {"c": float(linear_intercept), "d_per_10k_steps": float(linear_slope * 10_000)},
        "residual_std": float(np.sqrt(residuals @ residuals / (len(x) - 2))),
        "n": len(x),
        "mean_log_steps": float(x.mean()),
        "sxx": float(((x - x.mean()) ** 2).sum()),
    }


def project(fitted: dict, steps: float) -> dict:
    """The logarithmic fit at `steps`, with the standard error of the fitted mean there."""
    x = np.log(steps)
    mean = fitted["log"]["a"] + fitted["log"]["b"] * x
    error = fitted["residual_std"] * np.sqrt(1 / fitted["n"] + (x - fitted["mean_log_steps"]) ** 2 / fitted["sxx"])
    return {"steps": int(steps), "pesq": float(mean), "standard_error": float(error)}


def core_hours(history: list[dict]) -> list[float]:
    """Cumulative CPU core-hours at each validation: the training seconds since the previous line times the threads
    this line records (1 when it records none)."""
    total, previous, hours = 0.0, 0.0, []
    for entry in history:
        total += (entry["train_seconds"] - previous) * entry.get("threads", 1) / 3600
        previous = entry["train_seconds"]
        hours.append(total)
    return hours


def windows(history: list[dict], offset: int, size: int) -> list[dict]:
    """Validations grouped by windows of `size` run steps (step 0, the starting checkpoint, on its own)."""
    groups: dict[int, list[dict]] = {}
    for entry, cores in zip(history, core_hours(history), strict=True):
        entry = {**entry, "core_hours": cores}
        groups.setdefault(0 if entry["step"] == 0 else (entry["step"] - 1) // size + 1, []).append(entry)
    rows = []
    for _, entries in sorted(groups.items()):
        pesq = [entry["pesq"] for entry in entries]
        rows.append(
            {
                "steps": [offset + entries[0]["step"], offset + entries[-1]["step"]],
                "hours": entries[-1]["train_seconds"] / 3600,
                "core_hours": entries[-1]["core_hours"],
                "validations": len(entries),
                "mean_pesq": float(np.mean(pesq)),
                "max_pesq": float(np.max(pesq)),
                "mean_stoi": float(np.mean([entry.get("stoi", np.nan) for entry in entries])),
            }
        )
    return rows


def plot(history: list[dict], offset: int, fitted: dict, projections: list[dict], path: Path) -> None:
    """Validation PESQ against total steps (log axis) with the fit drawn out to the furthest projection."""
    from matplotlib.figure import Figure

    from hybrid_mpsenet.plotting import save_figure

    steps = np.array([offset + entry["step"] for entry in history], dtype=float)
    pesq = np.array([entry["pesq"] for entry in history])
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    axes.plot(steps[steps > 0], pesq[steps > 0], "o", markersize=3, label="validation PESQ")
    end = max([p["steps"] for p in projections] + [steps.max()])
    line = np.geomspace(max(steps[steps > 0].min(), 1), end, 200)
    axes.plot(line, fitted["log"]["a"] + fitted["log"]["b"] * np.log(line), "-", label="a + b ln(steps)")
    for number, p in enumerate(projections):
        label = None if number else "projection ± standard error of the fit"
        axes.errorbar(p["steps"], p["pesq"], yerr=p["standard_error"], fmt="s", color="C3", capsize=3, label=label)
    axes.set_xscale("log")
    axes.set_xlabel("training steps")
    axes.set_ylabel("validation PESQ")
    axes.legend()
    figure.tight_layout()
    save_figure(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder with history.jsonl")
    parser.add_argument("--offset_steps", type=int, default=0, help="steps the starting checkpoint had had")
    parser.add_argument("--from_step", type=int, default=0, help="fit the validations from this run step on")
    parser.add_argument("--window", type=int, default=4000, help="run steps per row of the table")
    parser.add_argument("--project", type=float, nargs="*", default=[], help="total steps to project to")
    parser.add_argument("--output", default="outputs/learning_curve.json")
    parser.add_argument("--plot", type=Path, help="write the curve as a PNG here")
    args = parser.parse_args()

    history = read_history(args.run)
    if not history:
        raise SystemExit(f"{args.run}: history.jsonl has no validation yet.")
    rows = windows(history, args.offset_steps, args.window)
    print(f"{args.run}: {len(history)} validations; steps counted from the model's first ({args.offset_steps} before)")
    print("| steps | training hours | core-hours | validations | mean PESQ | best PESQ | mean STOI |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        low, high = row["steps"]
        span = f"{low:,}" if low == high else f"{low:,}–{high:,}"
        print(
            f"| {span} | {row['hours']:.1f} | {row['core_hours']:.1f} | "
            f"{row['validations']} | {row['mean_pesq']:.3f} | {row['max_pesq']:.3f} | {row['mean_stoi']:.3f} |"
        )
    used = [entry for entry in history if entry["step"] >= args.from_step]
    fitted = fit(np.array([args.offset_steps + e["step"] for e in used], float), np.array([e["pesq"] for e in used]))
    last = history[-1]
    seconds_per_step = last["train_seconds"] / last["step"] if last["step"] else float("nan")
    print(
        f"fit over {fitted['n']} validations: PESQ = {fitted['log']['a']:.3f} + {fitted['log']['b']:.4f} ln(steps) "
        f"(residual std {fitted['residual_std']:.3f}); straight line {fitted['linear']['d_per_10k_steps']:+.3f} "
        f"per 10,000 steps; {seconds_per_step:.2f} s per step"
    )
    projections = []
    for target in args.project:
        projection = project(fitted, target)
        remaining = max(0.0, target - args.offset_steps - last["step"])
        projection["more_hours"] = remaining * seconds_per_step / 3600
        projections.append(projection)
        print(
            f"at {projection['steps']:,} steps: PESQ {projection['pesq']:.3f} ± {projection['standard_error']:.3f} "
            f"({projection['more_hours']:.0f} more training hours at this run's pace)"
        )
    result = {
        "run": str(args.run),
        "offset_steps": args.offset_steps,
        "from_step": args.from_step,
        "seconds_per_step": seconds_per_step,
        "windows": rows,
        "fit": fitted,
        "projections": projections,
    }
    print(f"wrote {write_json_atomic(args.output, result)}")
    if args.plot is not None:
        plot(history, args.offset_steps, fitted, projections, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
