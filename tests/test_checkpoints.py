"""Training checkpoints survive what goes wrong around them: a failing validation, a full disk, damaged random
states, and settings that would keep none."""

import errno
import json

import pytest
from helpers import DATA, training_arguments

import hybrid_mpsenet.training as training
from hybrid_mpsenet.training import TrainingArguments, latest_checkpoint, train

MIXING = dict(clean_dirs=[str(DATA)], noise_dirs=[str(DATA)], items_per_epoch=4, max_steps=2, save_every=2)


def arguments(tmp_path, **overrides) -> TrainingArguments:
    """Two steps of mixing-mode training, checkpointed and validated at step 2 (unless overridden)."""
    return training_arguments(tmp_path, **{**MIXING, "eval_every": 2, **overrides})


def test_a_failing_validation_does_not_lose_the_checkpoint_of_its_step(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("validation crashed")

    monkeypatch.setattr(training, "evaluate_model", broken)
    with pytest.raises(RuntimeError, match="validation crashed"):
        train(arguments(tmp_path))
    assert latest_checkpoint(tmp_path / "run").name == "step-00000002"
    monkeypatch.undo()
    train(arguments(tmp_path, max_steps=4, resume=True))
    assert latest_checkpoint(tmp_path / "run").name == "step-00000004"


def test_a_full_disk_says_what_happened_and_where_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    train(arguments(tmp_path))
    real = training.checkpointing.save_optimizers

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(training.checkpointing, "save_optimizers", disk_full)
    with pytest.raises(
        OSError, match="step 4 .* failed .*No space left.*newest complete checkpoint is .*step-00000002"
    ):
        train(arguments(tmp_path, max_steps=4, resume=True))
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-00000002"]  # no leftover
    monkeypatch.setattr(training.checkpointing, "save_optimizers", real)
    train(arguments(tmp_path, max_steps=4, resume=True))
    assert latest_checkpoint(tmp_path / "run").name == "step-00000004"


def test_a_damaged_random_state_is_an_error_not_a_silently_inexact_resume(tmp_path):
    train(arguments(tmp_path))
    (latest_checkpoint(tmp_path / "run") / "rng_state_0.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="rng_state_0.safetensors"):
        train(arguments(tmp_path, max_steps=4, resume=True))


@pytest.mark.parametrize("name", ["keep_checkpoints", "save_every", "eval_every", "max_steps"])
def test_settings_that_would_keep_or_do_nothing_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match=f"{name} must be positive, got 0"):
        arguments(tmp_path, **{name: 0})


def test_resume_keeps_the_step_0_validation_and_drops_later_and_cut_lines(tmp_path):
    from hybrid_mpsenet.training import _truncate_history

    history = tmp_path / "history.jsonl"
    lines = [json.dumps({"step": step, "pesq": 2.0}) for step in (0, 100, 200)]
    history.write_text("\n".join(lines) + '\n{"step": 300, "pe')
    _truncate_history(history, 100)
    assert [json.loads(line)["step"] for line in history.read_text().splitlines()] == [0, 100]
