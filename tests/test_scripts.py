"""The helper scripts users run for data and model selection (benchmarks are not tested: they only time code)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import DATA, tiny_config

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def run_script(name, *args) -> str:
    """Run a script from scripts/ and return what it printed."""
    command = [sys.executable, str(SCRIPTS / name), *map(str, args)]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


@pytest.mark.slow
def test_compare_runs_reads_pesq_within_the_common_training_time(tmp_path):
    for run, history in {
        "fast": [(100, 200.0, 1.5), (200, 400.0, 1.6), (250, 480.0, 1.58), (300, 600.0, 1.7)],
        "slow": [(100, 500.0, 1.55), (200, 1000.0, 1.65)],
    }.items():
        (tmp_path / run).mkdir()
        tiny_config().save_pretrained(tmp_path / run / "best")
        lines = [json.dumps({"step": s, "train_seconds": t, "pesq": p}) for s, t, p in history]
        (tmp_path / run / "history.jsonl").write_text("\n".join(lines) + "\n")
    run_script("compare_runs.py", tmp_path / "fast", tmp_path / "slow", "--output", tmp_path / "out.json")
    result = json.loads((tmp_path / "out.json").read_text())
    # By default: the earliest time at which every run has a validation (500 s, the slow run's first).
    assert result["budget_s"] == 500.0
    within = {run["run"]: run["within_budget"]["pesq"] for run in result["runs"]}
    assert within == {"fast": 1.6, "slow": 1.55}  # the best within the budget, not the last (1.58)
    assert {run["run"]: run["best"]["step"] for run in result["runs"]} == {"fast": 300, "slow": 200}
    assert all(run["parameters"] > 0 for run in result["runs"])


@pytest.mark.slow
def test_learning_curve_fits_the_log_law_and_projects_with_the_run_pace(tmp_path):
    steps = np.arange(0, 10_001, 500)
    wiggle = np.where(np.arange(len(steps)) % 2, 0.01, -0.01)
    pesq = 1.5 + 0.07 * np.log(steps + 4500) + wiggle
    # The first half's lines predate the `threads` field (one thread); the second half trained on two.
    lines = [
        json.dumps({"step": int(s), "train_seconds": 2.0 * s, "pesq": float(p), "stoi": 0.9, **threads})
        for s, p in zip(steps, pesq, strict=True)
        for threads in [{"threads": 2} if s > 5000 else {}]
    ]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "history.jsonl").write_text("\n".join(lines) + '\n{"step": 10')  # a line cut by a crash
    printed = run_script(
        "learning_curve.py", tmp_path / "run", "--offset_steps", 4500, "--window", 5000, "--project", 34500,
        "--output", tmp_path / "out.json", "--plot", tmp_path / "curve.png",
    )  # fmt: skip
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["fit"]["n"] == 21 and abs(result["fit"]["log"]["b"] - 0.07) < 2e-3
    assert abs(result["fit"]["residual_std"] - 0.0103) < 1e-3
    projection = result["projections"][0]
    assert abs(projection["pesq"] - (1.5 + 0.07 * np.log(34500))) < 0.01 and 0 < projection["standard_error"] < 0.02
    assert projection["more_hours"] == pytest.approx((34500 - 4500 - 10_000) * 2.0 / 3600)
    assert [row["steps"] for row in result["windows"]] == [[4500, 4500], [5000, 9500], [10000, 14500]]
    assert result["windows"][2]["hours"] == pytest.approx(10_000 * 2.0 / 3600)
    # A window of one validation prints its step alone; the others print their first and last steps.
    assert "\n| 4,500 | 0.0 | 0.0 | 1 |" in printed and "\n| 5,000–9,500 | 2.8 | 2.8 | 10 |" in printed
    assert result["windows"][1]["core_hours"] == pytest.approx(5000 * 2.0 / 3600)
    assert result["windows"][2]["core_hours"] == pytest.approx((5000 * 2.0 + 5000 * 2.0 * 2) / 3600)
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_heldout_mixtures_in_rooms_are_reproducible_and_reverberant(tmp_path):
    def make(name, *extra):
        run_script(
            "make_heldout_mixtures.py", "--clean", DATA, "--noise", "coloured", "--output", tmp_path / name, *extra
        )
        folder = tmp_path / name
        return {
            kind: [sf.read(p)[0] for p in sorted((folder / kind).glob("*.wav"))]
            for kind in ("clean_testset_wav", "noisy_testset_wav")
        }

    dry, wet, again = make("dry"), make("wet", "--reverb"), make("again", "--reverb")
    assert len(wet["noisy_testset_wav"]) == 2
    for a, b in zip(wet["noisy_testset_wav"], again["noisy_testset_wav"], strict=True):
        np.testing.assert_array_equal(a, b)
    for reverberant, plain in zip(wet["clean_testset_wav"], dry["clean_testset_wav"], strict=True):
        assert len(reverberant) == len(plain) and not np.allclose(reverberant, plain, atol=1e-3)


@pytest.mark.slow
def test_a_synthetic_corpus_is_reproducible_and_trains(tmp_path):
    args = ["--speech", DATA, "--noise", DATA, "--files", 6, "--seconds", 1.5, "--noise-files", 2]
    run_script("make_synthetic_corpus.py", *args, "--noise-minutes", 0.05, "--output", tmp_path / "a")
    run_script("make_synthetic_corpus.py", *args, "--noise-minutes", 0.05, "--output", tmp_path / "b")
    written = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.wav"))
    assert len(written) == 8 and sf.info(tmp_path / "a" / written[0]).samplerate == 16000
    for name in written:
        np.testing.assert_array_equal(sf.read(tmp_path / "a" / name)[0], sf.read(tmp_path / "b" / name)[0])
    assert {round(sf.info(tmp_path / "a" / name).duration, 2) for name in written} == {1.5, 3.0}
