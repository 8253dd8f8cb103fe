"""The training step equals the original MP-SENet `train.py` step.

Fixtures from scripts/make_training_step_fixtures.py: every loss term, the first step's gradients, both networks'
parameters and the spectral-norm vectors after 1 and 3 steps. The steps run in float64 (as the fixtures were made), so
that a deviation cannot hide under float32 rounding, which is chaotic at the gradient level for this objective.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from hybrid_mpsenet import checkpointing
from hybrid_mpsenet.cli import main as cli_main
from hybrid_mpsenet.convert import (
    convert_original_discriminator,
    convert_original_training_state,
    load_original_state_dict,
    rename_original_key,
)
from hybrid_mpsenet.data import PairedSpeechDataset
from hybrid_mpsenet.enhancement import HybridMPSENetForSpeechEnhancement
from hybrid_mpsenet.losses import MetricDiscriminator
from hybrid_mpsenet.training import TrainingArguments, TrainingState, build_optimizers, train_step

FIXTURES = Path(__file__).parent / "fixtures" / "training_step"
ROOT = Path(__file__).resolve().parents[1]
# Worst measured: 5e-8 (losses, relative) and 4e-9 (parameters after three steps): the float32 rounding of the
# stored fixtures. The tolerance is the one the parity requirement sets.
RTOL, ATOL = 1e-5, 1e-5


@pytest.fixture(autouse=True)
def float64():
    """Models, windows and labels made in float64 during a test, as in the fixture script."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def io():
    return load_file(FIXTURES / "io.safetensors")


def arguments(tmp_path, **overrides):
    return TrainingArguments(
        output_dir=str(tmp_path), clean_dirs=["-"], noise_dirs=["-"], pesq_workers=0, log_with="none", **overrides
    )


def load_converted(tmp_path, steps: int, **overrides):
    """Our generator, discriminator and optimisers from the original g_/do_ files after `steps` steps."""
    run = convert_original_training_state(
        FIXTURES / f"g_{steps:08d}",
        FIXTURES / f"do_{steps:08d}",
        tmp_path / f"run{steps}",
        FIXTURES / "config.json",
        batch_mixed=True,
    )
    (folder,) = checkpointing.list_checkpoints(run / "checkpoints")
    generator = HybridMPSENetForSpeechEnhancement(checkpointing.read_generator_config(folder)).double()
    discriminator = MetricDiscriminator(checkpointing.read_discriminator_dim(folder)).double()
    args = arguments(tmp_path, **overrides)
    optim_g, optim_d, _, _ = build_optimizers(args, generator, discriminator)
    checkpointing.load_weights(folder, generator, discriminator)
    checkpointing.load_optimizers(folder, {"generator": optim_g, "discriminator": optim_d})
    return args, generator.train(), discriminator.train(), optim_g, optim_d, folder


def the_batch() -> dict[str, torch.Tensor]:
    fixture = io()
    return {"clean": fixture["batch_clean"].double(), "noisy": fixture["batch_noisy"].double()}


def run_steps(args, generator, discriminator, optim_g, optim_d, first: int, count: int) -> list[dict]:
    accelerator = Accelerator(cpu=True)
    model, disc, optim_g, optim_d = accelerator.prepare(generator, discriminator, optim_g, optim_d)
    batch = the_batch()
    logs = []
    for step in range(first, first + count):
        torch.manual_seed(1000 + step)  # the fixture script's seed before each step (dropout)
        state = TrainingState()
        logs.append(train_step(accelerator, args, generator, model, disc, optim_g, optim_d, batch, args.loss_weights,
                               None, state))  # fmt: skip
    return logs


def assert_generator_equals(generator, steps: int):
    original = load_original_state_dict(FIXTURES / f"g_{steps:08d}")
    ours = generator.state_dict()
    for key, value in original.items():
        torch.testing.assert_close(ours[rename_original_key(key)].float(), value, rtol=RTOL, atol=ATOL, msg=key)


def assert_discriminator_equals(discriminator, original_state: dict):
    expected = convert_original_discriminator(original_state).state_dict()
    for key, value in discriminator.state_dict().items():
        torch.testing.assert_close(value.float(), expected[key].float(), rtol=RTOL, atol=ATOL, msg=key)


def assert_losses(logs: dict, step: int, rel: float = RTOL):
    fixture = io()
    names = ["magnitude", "instantaneous_phase", "group_delay", "instantaneous_frequency", "phase", "complex"]
    names += ["consistency", "time", "metric", "total", "discriminator"]
    for name in names:
        expected = float(fixture[f"step_{step}/{name}"])
        assert logs[f"train/{name}"] == pytest.approx(expected, rel=rel, abs=ATOL), name
    assert logs["train/pesq"] == pytest.approx(float((fixture[f"step_{step}/pesq_target"] * 3.5 + 1).mean()), abs=1e-4)


def test_one_and_three_steps_equal_the_original(tmp_path):
    args, generator, discriminator, optim_g, optim_d, _ = load_converted(tmp_path, 0)
    (logs,) = run_steps(args, generator, discriminator, optim_g, optim_d, 0, 1)
    assert_losses(logs, 1)
    assert_generator_equals(generator, 1)
    after_one = torch.load(FIXTURES / "do_00000001", weights_only=True)
    assert_discriminator_equals(discriminator, after_one["discriminator"])
    for step, logs in enumerate(run_steps(args, generator, discriminator, optim_g, optim_d, 1, 2), start=2):
        assert_losses(logs, step)
    assert_generator_equals(generator, 3)
    after_three = {k.split("/discriminator.")[1]: v for k, v in io().items() if k.startswith("step_3/discriminator.")}
    assert_discriminator_equals(discriminator, after_three)


@pytest.mark.parametrize("start", [0, 1, 2])
def test_each_step_from_the_originals_state_equals_the_originals_next_state(tmp_path, start):
    """One step from the original's own state after `start` steps (weights, AdamW moments, spectral-norm vectors)
    gives the original's losses of the next step and its parameters after it: no free-running drift to hide in."""
    args, generator, discriminator, optim_g, optim_d, _ = load_converted(tmp_path, start)
    (logs,) = run_steps(args, generator, discriminator, optim_g, optim_d, start, 1)
    assert_losses(logs, start + 1)
    assert_generator_equals(generator, start + 1)
    after = torch.load(FIXTURES / f"do_{start + 1:08d}", weights_only=True)
    assert_discriminator_equals(discriminator, after["discriminator"])


def test_a_fresh_run_uses_the_originals_optimiser_schedule_and_loss_weights(tmp_path):
    """Not restored from a converted state: a new run's AdamW settings equal those the original `train.py` created
    (its `do_00000000`: lr, betas, eps, weight decay, amsgrad), its schedule decays by the original's `lr_decay` per
    epoch, and its loss weights give the original's recorded total from the recorded terms at every step."""
    args = TrainingArguments(output_dir=str(tmp_path), clean_dirs=["-"], noise_dirs=["-"])
    config = json.loads((FIXTURES / "config.json").read_text())
    assert (args.learning_rate, args.adam_beta1, args.adam_beta2, args.lr_decay) == (
        config["learning_rate"], config["adam_b1"], config["adam_b2"], config["lr_decay"]
    )  # fmt: skip
    generator = HybridMPSENetForSpeechEnhancement(checkpointing.read_generator_config(
        convert_original_training_state(FIXTURES / "g_00000000", FIXTURES / "do_00000000", tmp_path / "run",
                                        FIXTURES / "config.json") / "checkpoints" / "step-00000001"))  # fmt: skip
    discriminator = MetricDiscriminator(4)
    optim_g, optim_d, sched_g, sched_d = build_optimizers(args, generator, discriminator)
    original = torch.load(FIXTURES / "do_00000000", weights_only=True)
    for ours, theirs in ((optim_g, original["optim_g"]), (optim_d, original["optim_d"])):
        (group,) = ours.param_groups
        (expected,) = theirs["param_groups"]
        for key in ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"):
            assert group[key] == pytest.approx(expected[key]), key
    for scheduler in (sched_g, sched_d):
        scheduler.step()
        assert scheduler.get_last_lr() == [pytest.approx(config["learning_rate"] * config["lr_decay"])]
    weights, fixture = args.loss_weights, io()
    for step in (1, 2, 3):
        term = {name: float(fixture[f"step_{step}/{name}"]) for name in ("magnitude", "phase", "complex",
                                                                         "consistency", "time", "metric")}  # fmt: skip
        total = sum(getattr(weights, name) * value for name, value in term.items())
        assert total == pytest.approx(float(fixture[f"step_{step}/total"]), rel=1e-6)


def test_first_step_gradients_equal_the_original(tmp_path):
    """Gradients of both networks after the first backward passes (worst measured: 4e-8 of the tensor's largest)."""
    args, generator, discriminator, optim_g, optim_d, _ = load_converted(tmp_path, 0)
    gradients = {}
    for name, optimizer in (("generator", optim_g), ("discriminator", optim_d)):
        step = optimizer.step

        def capture(*a, _name=name, _optimizer=optimizer, _step=step, **k):
            for group in _optimizer.param_groups:
                gradients.setdefault(_name, []).extend(p.grad.clone() for p in group["params"])
            return _step(*a, **k)

        optimizer.step = capture
    run_steps(args, generator, discriminator, optim_g, optim_d, 0, 1)
    fixture = io()
    names = [k for k, _ in discriminator.named_parameters()]
    ours = {f"discriminator.{k}": g for k, g in zip(names, gradients["discriminator"], strict=True)}
    original_keys = [k for k in load_original_state_dict(FIXTURES / "g_00000000") if "running" not in k]
    by_our_name = dict(zip([k for k, _ in generator.named_parameters()], gradients["generator"], strict=True))
    ours.update({f"generator.{k}": by_our_name[rename_original_key(k)] for k in original_keys if
                 rename_original_key(k) in by_our_name})  # fmt: skip
    assert len(ours) == sum(k.startswith("step_1/grad.") for k in fixture)
    for key, value in ours.items():
        expected = fixture[f"step_1/grad.{key}"]
        scale = float(expected.abs().max())
        # Relative to the tensor's largest gradient; conv biases before an InstanceNorm have none (~1e-16).
        torch.testing.assert_close(value.float(), expected, rtol=0, atol=RTOL * max(scale, 1e-3), msg=key)


def test_converted_training_state_continues_the_original_run(tmp_path):
    """do_00000001 (AdamW moments, spectral-norm vectors, step count) converted and run for two steps gives the
    original's parameters after three."""
    args, generator, discriminator, optim_g, optim_d, folder = load_converted(tmp_path, 1)
    state = json.loads((folder / checkpointing.TRAINER_STATE).read_text())
    assert folder.name == "step-00000002" and state["counters"]["step"] == 2 and state["rng_states"] is False
    assert optim_g.state_dict()["state"][0]["step"] == 1
    run_steps(args, generator, discriminator, optim_g, optim_d, 1, 2)
    assert_generator_equals(generator, 3)


def test_training_step_parity_needs_each_fix(tmp_path):
    """Each deviation the parity test found changes the step: the discriminator fed the decoder's magnitude, or a
    discriminator of beta 2, does not reproduce the original losses."""
    args, generator, discriminator, optim_g, optim_d, _ = load_converted(tmp_path, 0)
    discriminator.layers[-1].beta = 2.0
    (logs,) = run_steps(args, generator, discriminator, optim_g, optim_d, 0, 1)
    assert logs["train/discriminator"] != pytest.approx(float(io()["step_1/discriminator"]), rel=1e-3)


def test_pesq_failure_drops_the_batch_by_default(tmp_path):
    """One item with no speech (PESQ fails): MP-SENet skips the discriminator's fake term for the whole batch;
    `pesq_failures="mask_items"` keeps the valid item's term."""
    batch = the_batch()
    batch["clean"][1] = 0.0
    results = {}
    for mode in ("drop_batch", "mask_items"):
        args, generator, discriminator, optim_g, optim_d, _ = load_converted(tmp_path / mode, 0, pesq_failures=mode)
        accelerator = Accelerator(cpu=True)
        torch.manual_seed(1000)
        state = TrainingState()
        logs = train_step(accelerator, args, generator, generator, discriminator, optim_g, optim_d, batch,
                          args.loss_weights, None, state)  # fmt: skip
        assert state.failed_pesq == 1
        results[mode] = logs["train/discriminator"]
    _, _, discriminator, *_ = load_converted(tmp_path / "real", 0)
    torch.manual_seed(1000)
    clean_mag = HybridMPSENetForSpeechEnhancement.spectrum(generator, batch["clean"])[0]
    real = torch.nn.functional.mse_loss(discriminator(clean_mag, clean_mag), torch.ones(2)).item()
    assert results["drop_batch"] == pytest.approx(real, rel=1e-5)
    assert results["mask_items"] > results["drop_batch"]


def test_dataset_normalises_the_whole_utterance_before_cropping():
    """As MP-SENet's Dataset: scale by the whole noisy utterance's RMS, then crop (or zero-pad a short one)."""
    import datasets

    fixture = io()
    config = json.loads((FIXTURES / "config.json").read_text())
    segment = config["segment_size"]
    rows = []
    for clean_path, noisy_path, span in [
        (ROOT / "examples/audio/p257_418_clean.wav", ROOT / "examples/audio/p257_418_noisy.wav", None),
        (ROOT / "tests/data/p232_001_clean.wav", ROOT / "tests/data/p232_001_noisy.wav", (0.55, 1.0)),
    ]:
        clean, rate = sf.read(clean_path, dtype="float32")
        noisy, _ = sf.read(noisy_path, dtype="float32")
        length = min(len(clean), len(noisy))
        start, end = (0, length) if span is None else (int(span[0] * rate), int(span[1] * rate))
        rows.append({"clean": {"array": clean[start:end], "sampling_rate": rate},
                     "noisy": {"array": noisy[start:end], "sampling_rate": rate}})  # fmt: skip
    pairs = datasets.Dataset.from_list(rows)
    dataset = PairedSpeechDataset(pairs, 16000, segment, seed=0, normalise=True)
    short = dataset[1]
    np.testing.assert_allclose(short["noisy"].numpy(), fixture["batch_noisy"][1].numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(short["clean"].numpy(), fixture["batch_clean"][1].numpy(), rtol=1e-6, atol=1e-6)
    # The long utterance: the crop start is random (a different generator from the original's), the scale is not.
    full = PairedSpeechDataset(pairs, 16000, None, normalise=True)[0]["noisy"].numpy()
    expected = fixture["batch_noisy"][0].numpy()
    start = int(np.argmin([np.abs(full[s : s + segment] - expected).max() for s in range(len(full) - segment + 1)]))
    np.testing.assert_allclose(full[start : start + segment], expected, rtol=1e-6, atol=1e-6)
    crop = dataset[0]["noisy"].numpy()
    assert any(np.allclose(full[s : s + segment], crop) for s in range(len(full) - segment + 1))


def test_convert_cli_writes_a_resumable_run_and_refuses_damaged_states(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["convert", str(FIXTURES / "do_00000001"), str(run), "--config", str(FIXTURES / "config.json")]
    assert cli_main(argv) == 0
    assert "train --output_dir" in capsys.readouterr().out
    assert [p.name for p in checkpointing.list_checkpoints(run / "checkpoints")] == ["step-00000002"]
    assert cli_main(argv) == 2  # an existing run folder needs --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main([*argv, "--overwrite"]) == 0

    # A do_ file of another architecture, and a damaged one: an error naming the keys; nothing is written.
    state = torch.load(FIXTURES / "do_00000001", weights_only=True)
    state["discriminator"]["layers.3.weight_orig"] = torch.zeros(3, 3, 4, 4)
    del state["discriminator"]["layers.18.slope"]
    damaged = tmp_path / "bad" / "do_00000001"
    damaged.parent.mkdir()
    torch.save(state, damaged)
    (tmp_path / "bad" / "g_00000001").write_bytes((FIXTURES / "g_00000001").read_bytes())
    with pytest.raises(ValueError, match=r"Missing keys.*slope.*shape mismatches.*layers\.3"):
        convert_original_training_state(
            damaged.with_name("g_00000001"), damaged, tmp_path / "out", FIXTURES / "config.json"
        )
    assert not (tmp_path / "out").exists()
    truncated = tmp_path / "bad" / "do_00000002"
    truncated.write_bytes((FIXTURES / "do_00000001").read_bytes()[:5000])
    (tmp_path / "bad" / "g_00000002").write_bytes((FIXTURES / "g_00000001").read_bytes())
    assert cli_main(["convert", str(truncated), str(tmp_path / "out"), "--config", str(FIXTURES / "config.json")]) == 2
    assert "Could not read checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_discriminator_every_k_steps_skips_its_update_and_pesq_in_between(tmp_path):
    args, generator, discriminator, optim_g, optim_d, _ = load_converted(tmp_path, 0, discriminator_every=2)
    accelerator = Accelerator(cpu=True)
    batch, state = the_batch(), TrainingState()
    updated = []
    for step in range(3):
        state.step = step
        before = [p.detach().clone() for p in discriminator.parameters()]
        logs = train_step(accelerator, args, generator, generator, discriminator, optim_g, optim_d, batch,
                          args.loss_weights, None, state)  # fmt: skip
        changed = any(not torch.equal(a, b) for a, b in zip(before, discriminator.parameters(), strict=True))
        updated.append((changed, "train/pesq" in logs, "train/metric" in logs))
    assert updated == [(True, True, True), (False, False, True), (True, True, True)]
