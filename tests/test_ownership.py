"""Every command that writes touches only what it owns: each test tries to make one touch something else."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import DATA, tiny_config, training_arguments

from hybrid_mpsenet import HybridMPSENetModel
from hybrid_mpsenet.audio import atomic_audio_writer, write_problem
from hybrid_mpsenet.cli import collect_jobs, main
from hybrid_mpsenet.inference import DEFAULT_MODEL_DIR
from hybrid_mpsenet.ownership import (
    MANIFEST,
    OwnershipError,
    RunLock,
    check_replaceable_folder,
    inside,
    publish_file,
    write_json,
)


@pytest.fixture
def model_dir(tmp_path):
    HybridMPSENetModel(tiny_config(n_fft=128, hop_length=64, win_length=128)).save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def pairs(tmp_path):
    """A two-pair clean/noisy folder of real VoiceBank speech."""
    clean, rate = sf.read(DATA / "p232_001_clean.wav", dtype="float32")
    noisy, _ = sf.read(DATA / "p232_001_noisy.wav", dtype="float32")
    for kind, audio in (("clean", clean), ("noisy", noisy)):
        (tmp_path / "ev" / kind).mkdir(parents=True)
        for name in ("a", "b"):
            sf.write(tmp_path / "ev" / kind / f"{name}.wav", audio[: 2 * rate], rate)
    return tmp_path / "ev"


# --- evaluate ------------------------------------------------------------------------------------------------------


def test_evaluate_never_writes_over_its_inputs_or_others_files(tmp_path, pairs, model_dir, capsys):
    before = snapshot(pairs)
    args = ["evaluate", "--data", str(pairs), "--model", str(model_dir), "-q", "--workers", "0"]
    assert main([*args, "--save-enhanced", str(pairs / "noisy")]) == 2
    assert "over an evaluated input" in capsys.readouterr().err
    assert main([*args, "--output", str(pairs / "clean" / "a.wav")]) == 2
    assert "was not written by hybrid-mpsenet" in capsys.readouterr().err
    (tmp_path / "mine.json").write_text('{"my": "notes"}')
    assert main([*args, "--output", str(tmp_path / "mine.json"), "--overwrite"]) == 2
    assert snapshot(pairs) == before and (tmp_path / "mine.json").read_text() == '{"my": "notes"}'

    out = ["--save-enhanced", str(tmp_path / "enhanced"), "--output", str(tmp_path / "r.json")]
    assert main([*args, *out]) == 0
    assert sorted(p.name for p in (tmp_path / "enhanced").iterdir()) == ["a.wav", "b.wav"]
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["written_by"] == "hybrid-mpsenet" and result["num_utterances"] == 2
    capsys.readouterr()
    assert main([*args, *out]) == 2  # a second run does not replace the first one's files without --overwrite
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main([*args, *out, "--overwrite"]) == 0
    (tmp_path / "enhanced" / "b.wav").unlink()
    sf.write(tmp_path / "enhanced" / "b.wav", np.zeros(100, np.float32), 16000)  # the user's own file now
    assert main([*args, *out, "--overwrite"]) == 2
    assert sf.info(tmp_path / "enhanced" / "b.wav").frames == 100
    assert snapshot(pairs) == before


def test_ids_from_data_stay_inside_the_output_folder(tmp_path):
    assert inside(tmp_path, "spk1/utt") == tmp_path / "spk1" / "utt"
    for name in ("../../x", "/etc/passwd", "a/../../b", "", "~/x"):
        with pytest.raises(ValueError, match="not a plain name"):
            inside(tmp_path, name)


def test_json_results_have_no_nan_and_are_created_exclusively(tmp_path):
    path = write_json(tmp_path / "r.json", {"pesq": float("nan"), "rows": [1.0, float("inf")]})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["rows"] == [1.0, None]
    with pytest.raises(OwnershipError, match="already exists"):
        write_json(path, {"x": 1})
    write_json(path, {"x": 1}, overwrite=True)
    assert json.loads(path.read_text())["x"] == 1


# --- push and convert folders --------------------------------------------------------------------------------------


@pytest.mark.parametrize("intruder", [".git/HEAD", ".env", "README.md", "config.json", "utils.py", "checkpoints/x"])
def test_an_upload_folder_with_anything_foreign_is_never_replaced(tmp_path, intruder, capsys):
    folder = tmp_path / "upload"
    push = ["push", "--model", "default", "--repo-id", "org/x", "--dry-run", str(folder)]
    assert main(push) == 0
    assert (folder / MANIFEST).is_file()
    assert main([*push, "--overwrite"]) == 0  # our own, unchanged upload folder may be replaced
    (folder / intruder).parent.mkdir(parents=True, exist_ok=True)
    (folder / intruder).write_text("the user's")
    before = snapshot(folder)
    capsys.readouterr()
    assert main([*push, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "did not write" in err and intruder.split("/")[0] in err and "even with --overwrite" in err
    assert snapshot(folder) == before


def test_a_user_folder_named_like_a_model_folder_is_refused_with_the_right_message(tmp_path, capsys):
    folder = tmp_path / "repo"
    (folder / ".git").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "README.md").write_text("my project")
    push = ["push", "--model", "default", "--repo-id", "org/x", "--dry-run", str(folder)]
    for extra in ([], ["--overwrite"]):
        assert main([*push, *extra]) == 2
        err = capsys.readouterr().err
        assert "did not write" in err and "already holds" not in err
    assert sorted(p.name for p in folder.iterdir()) == [".git", "README.md", "config.json"]


def test_a_changed_file_in_our_folder_is_not_ours_any_more(tmp_path):
    folder = tmp_path / "m"
    HybridMPSENetModel(tiny_config()).save_pretrained(folder)
    from hybrid_mpsenet.ownership import write_manifest

    write_manifest(folder, "model")
    check_replaceable_folder(folder, overwrite=True)
    (folder / "config.json").write_text((folder / "config.json").read_text() + " ")
    with pytest.raises(OwnershipError, match=r"config.json \(changed\)"):
        check_replaceable_folder(folder, overwrite=True)
    with pytest.raises(OwnershipError, match="not a folder"):
        check_replaceable_folder(folder / "config.json", overwrite=True)


def test_push_refuses_invalid_repo_ids(capsys):
    for repo_id in ("no-org", "a/b/c", "org/bad name", "org/x..y"):
        assert main(["push", "--model", "default", "--repo-id", repo_id, "--dry-run", "unused"]) == 2
        assert "is not a Hub repository id" in capsys.readouterr().err
    assert not Path("unused").exists()


def test_a_card_never_publishes_nan():
    from hybrid_mpsenet.hub import build_model_card

    metrics = {m: {"mean": 2.0, "std": 0.1} for m in ("pesq", "csig", "cbak", "covl", "stoi", "ssnr")}
    metrics["stoi"] = {"mean": None, "std": None}
    card = build_model_card(DEFAULT_MODEL_DIR, "org/x", {"enhanced": metrics, "num_utterances": 1})
    yaml_part = str(card).split("---")[1]
    assert ".nan" not in yaml_part and "nan" not in yaml_part.lower().split("name")[0]
    assert "stoi" not in yaml_part and "pesq" in yaml_part


# --- training run folders ------------------------------------------------------------------------------------------


def test_a_run_folder_is_claimed_and_never_mixed(tmp_path, capsys):
    from hybrid_mpsenet.training import train

    run = tmp_path / "run"
    args = lambda **kw: training_arguments(  # noqa: E731
        tmp_path, clean_dirs=[str(DATA)], noise_dirs=[str(DATA)], items_per_epoch=2, **kw
    )
    train(args(max_steps=1, eval_every=1, save_every=1))
    identity = json.loads((run / "run.json").read_text())
    assert not (run / "run.lock").exists()  # released at the end
    history = (run / "history.jsonl").read_text()
    with pytest.raises(OwnershipError, match="holds a training run already.*--resume true"):
        train(args(max_steps=1, eval_every=1, save_every=1))  # a new run into an old one
    assert (run / "history.jsonl").read_text() == history
    with pytest.raises(OwnershipError, match="preset 'hybrid-small' -> 'mpsenet' changed"):
        train(args(max_steps=2, resume=True, preset="mpsenet"))
    # A run from another host holds the folder; one of a process that ended on this host is taken over.
    (run / "run.lock").write_text(json.dumps({"pid": 1, "host": "another-host"}))
    with pytest.raises(OwnershipError, match="in use by another training.*another-host"):
        train(args(max_steps=2, resume=True))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / "run.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    # A line cut by a crash in history.jsonl does not block the resume.
    with open(run / "history.jsonl", "a") as handle:
        handle.write('{"step": 1, "pesq": 1.')
    train(args(max_steps=2, eval_every=1, save_every=1, resume=True, learning_rate=1e-3))
    assert json.loads((run / "run.json").read_text())["run_id"] == identity["run_id"]
    steps = [json.loads(line)["step"] for line in (run / "history.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_user_files_in_best_or_an_unknown_folder_are_never_deleted(tmp_path):
    from hybrid_mpsenet.training import train

    common = dict(clean_dirs=[str(DATA)], noise_dirs=[str(DATA)], items_per_epoch=2, max_steps=1, eval_every=1)
    (tmp_path / "run" / "best").mkdir(parents=True)
    (tmp_path / "run" / "best" / "thesis.tex").write_text("years of work")
    with pytest.raises(OwnershipError):
        train(training_arguments(tmp_path, **common))
    (tmp_path / "run" / "checkpoints").mkdir()  # as a run of an older version would look
    with pytest.raises(OwnershipError, match="best has no manifest"):
        train(training_arguments(tmp_path, resume=True, **common))
    (tmp_path / "run" / "checkpoints").rmdir()
    with pytest.raises(OwnershipError, match="not a run folder of this package"):
        train(training_arguments(tmp_path, resume=True, **common))
    assert (tmp_path / "run" / "best" / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best"]


def test_resuming_with_a_changed_learning_rate_says_it_has_no_effect(tmp_path, caplog):
    import logging

    from hybrid_mpsenet.training import train

    common = dict(clean_dirs=[str(DATA)], noise_dirs=[str(DATA)], items_per_epoch=2, eval_every=5, save_every=1)
    train(training_arguments(tmp_path, max_steps=1, **common))
    with caplog.at_level(logging.WARNING):
        train(training_arguments(tmp_path, max_steps=2, resume=True, learning_rate=0.01, **common))
    assert "learning_rate 0.01 differs from the run's 0.0005" in caplog.text


def test_two_locks_on_one_folder(tmp_path):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(OwnershipError, match=f"pid {os.getpid()}"):
        RunLock(tmp_path).acquire()
    first.release()
    RunLock(tmp_path).acquire().release()


# --- enhance -------------------------------------------------------------------------------------------------------


def test_explicit_inputs_are_never_replaced_nor_skipped(tmp_path, speech, model_dir, capsys):
    sf.write(tmp_path / "x.wav", speech, 16000)
    sf.write(tmp_path / "x_enhanced.wav", speech[:8000], 16000)
    before = snapshot(tmp_path)
    args = ["enhance", str(tmp_path / "x.wav"), str(tmp_path / "x_enhanced.wav"), "--model", str(model_dir), "-q"]
    assert main([*args, "--overwrite"]) == 2
    assert "also an input" in capsys.readouterr().err
    assert snapshot(tmp_path) == before
    assert main([*args, "-o", str(tmp_path / "out")]) == 0  # both explicitly named files are enhanced
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.wav", "x_enhanced.wav"]


def test_literal_names_with_brackets_are_taken_literally(tmp_path, speech, model_dir):
    sf.write(tmp_path / "Interview [2019].wav", speech, 16000)
    sf.write(tmp_path / "Interview 2.wav", speech[:4000], 16000)
    (tmp_path / "take[1]").mkdir()
    sf.write(tmp_path / "take[1]" / "a.wav", speech, 16000)
    jobs = collect_jobs([str(tmp_path / "Interview [2019].wav"), str(tmp_path / "take[1]")], None, "_enhanced")
    assert [source.name for source, _ in jobs] == ["Interview [2019].wav", "a.wav"]
    as_glob = collect_jobs([str(tmp_path / "Interview [2019].wav")], None, "_enhanced", patterns=True)
    assert [source.name for source, _ in as_glob] == ["Interview 2.wav"]
    assert main(["enhance", str(tmp_path / "Interview [2019].wav"), "--model", str(model_dir), "-q"]) == 0
    assert (tmp_path / "Interview [2019]_enhanced.wav").is_file()


def test_globs_do_not_follow_symlink_loops(tmp_path, speech):
    (tmp_path / "a" / "b").mkdir(parents=True)
    sf.write(tmp_path / "a" / "b" / "x.wav", speech, 16000)
    for depth in range(6):
        (tmp_path / "a" / "b" / f"loop{depth}").symlink_to(tmp_path / "a")
    started = time.perf_counter()
    jobs = collect_jobs([str(tmp_path / "a" / "**" / "*.wav")], str(tmp_path / "out"), "_enhanced")
    assert time.perf_counter() - started < 5
    assert [str(target.relative_to(tmp_path / "out")) for _, target in jobs] == ["b/x.wav"]


def test_overwrite_replaces_only_outputs_this_package_wrote(tmp_path, speech, model_dir, capsys):
    sf.write(tmp_path / "x.wav", speech, 16000)
    sf.write(tmp_path / "x_enhanced.wav", speech[:100], 16000)  # the user's file, named like an output
    sf.write(tmp_path / "y.wav", speech, 16000)
    args = ["--model", str(model_dir), "-q", "--overwrite"]
    assert main(["enhance", str(tmp_path / "x.wav"), *args]) == 1
    assert "was not written by hybrid-mpsenet" in capsys.readouterr().err
    assert sf.info(tmp_path / "x_enhanced.wav").frames == 100
    assert main(["enhance", str(tmp_path / "y.wav"), *args]) == 0
    assert sf.info(tmp_path / "y_enhanced.wav").frames == len(speech)
    assert main(["enhance", str(tmp_path / "y.wav"), *args]) == 0  # its own output again


def test_two_writers_of_one_output_cannot_both_win(tmp_path):
    target = tmp_path / "out.wav"
    with pytest.raises(OwnershipError, match="exists"):
        with atomic_audio_writer(target, 16000, 1) as sink:
            sink.write(np.zeros(160, np.float32))
            sf.write(target, np.ones(10, np.float32) * 0.5, 16000)  # the other process finishes first
    assert sf.info(target).frames == 10
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]  # no temporary left behind
    tmp = tmp_path / "t"
    tmp.write_text("x")
    with pytest.raises(OwnershipError):
        publish_file(tmp, target, overwrite=True, is_ours=lambda path: False, what="output")
    # The name appears between the existence check and the move: the hard link fails instead of replacing it.
    (tmp_path / "late.wav").write_text("the other process's")
    real_exists = Path.exists
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "exists", lambda self: False if self.name == "late.wav" else real_exists(self))
        with pytest.raises(OwnershipError, match="created by another process"):
            publish_file(tmp, tmp_path / "late.wav", overwrite=False, is_ours=lambda path: True, what="output")
    assert (tmp_path / "late.wav").read_text() == "the other process's"


def test_a_file_name_that_is_not_utf8_does_not_stop_the_batch(tmp_path, speech, model_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    sf.write(folder / "plain.wav", speech, 16000)
    sf.write(folder / "other.wav", speech, 16000)
    os.rename(folder / "other.wav", os.fsencode(folder) + b"/caf\xe9.wav")
    result = subprocess.run(
        [sys.executable, "-m", "hybrid_mpsenet.cli", "enhance", str(folder), "-o", str(tmp_path / "out")]
        + ["--model", str(model_dir), "-q"],
        capture_output=True,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert sorted(os.listdir(os.fsencode(tmp_path / "out"))) == [b"caf\xe9.wav", b"plain.wav"]


def test_long_names_fit_with_their_temporaries(tmp_path, speech, model_dir):
    name = "n" * 240 + ".wav"
    sf.write(tmp_path / name, speech, 16000)
    assert main(["enhance", str(tmp_path / name), "-o", str(tmp_path / "out"), "--model", str(model_dir), "-q"]) == 0
    assert (tmp_path / "out" / name).is_file()


# --- formats and encoders ------------------------------------------------------------------------------------------


def test_encoders_that_crash_natively_are_refused_by_bounds(tmp_path, speech, model_dir, capsys):
    assert "8000-192000 Hz" in write_problem("OGG", "VORBIS", 256_000, 1)
    assert "8000, 12000" in write_problem("OGG", "OPUS", 44_100, 1)
    sf.write(tmp_path / "hi.wav", np.zeros(4000, np.float32) + 0.1, 384_000)
    code = subprocess.run(
        [sys.executable, "-m", "hybrid_mpsenet.cli", "enhance", str(tmp_path / "hi.wav"), "-o"]
        + [str(tmp_path / "hi.ogg"), "--model", str(model_dir), "-q"],
        capture_output=True,
        text=True,
    )
    assert code.returncode == 1 and "VORBIS encoder takes only" in code.stderr


def test_huge_floats_to_mp3_are_clipped_not_fatal(tmp_path, speech, model_dir, caplog):
    sf.write(tmp_path / "loud.wav", speech * 1e6, 16000, subtype="FLOAT")
    assert (
        main(["enhance", str(tmp_path / "loud.wav"), "-o", str(tmp_path / "loud.mp3"), "--model", str(model_dir)]) == 0
    )
    assert "exceeded full scale and were clipped" in caplog.text
    assert sf.info(tmp_path / "loud.mp3").format == "MP3"


def test_opus_is_opus_and_raw_is_written(tmp_path, speech, model_dir):
    sf.write(tmp_path / "x.wav", speech, 16000)
    assert main(["enhance", str(tmp_path / "x.wav"), "-o", str(tmp_path / "x.opus"), "--model", str(model_dir)]) == 0
    assert sf.info(tmp_path / "x.opus").subtype == "OPUS"
    assert main(["enhance", str(tmp_path / "x.wav"), "-o", str(tmp_path / "x.raw"), "--model", str(model_dir)]) == 0
    raw = np.fromfile(tmp_path / "x.raw", np.int16)  # the input's PCM_16, headerless
    assert len(raw) == len(speech)


def test_a_loud_float_file_is_not_called_clipped(model_dir, speech, caplog):
    import logging

    from hybrid_mpsenet.inference import HybridMPSENetEnhancer

    model = HybridMPSENetEnhancer.from_pretrained(model_dir)
    with caplog.at_level(logging.WARNING):
        model.enhance(speech * 4, 16000)
    assert "clipped" not in caplog.text
    with caplog.at_level(logging.WARNING):
        model.enhance(np.clip(speech * 4, -1, 1), 16000)
    assert "clipped" in caplog.text


def test_many_channels_are_enhanced_in_groups_with_the_same_result(model_dir, speech):
    from hybrid_mpsenet.inference import CHANNEL_GROUP, HybridMPSENetEnhancer

    model = HybridMPSENetEnhancer.from_pretrained(model_dir)
    rng = np.random.default_rng(0)
    channels = np.stack([np.roll(speech, int(shift)) for shift in rng.integers(0, 8000, CHANNEL_GROUP + 3)])
    together = model.enhance(channels[:, :8000], 16000)
    alone = np.stack([model.enhance(channel[:8000], 16000) for channel in channels])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_saved_files_have_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        assert main(["push", "--model", "default", "--repo-id", "org/x", "--dry-run", str(tmp_path / "up")]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "up" / "model.safetensors").stat().st_mode & 0o777 == 0o644
    from hybrid_mpsenet.training import train

    old = os.umask(0o022)
    try:
        train(
            training_arguments(tmp_path, clean_dirs=[str(DATA)], noise_dirs=[str(DATA)], items_per_epoch=2, max_steps=1)
        )
    finally:
        os.umask(old)
    written = [p for p in (tmp_path / "run").rglob("*.safetensors")]
    assert len(written) >= 3 and {p.stat().st_mode & 0o777 for p in written} == {0o644}


# --- bad input ends with one line ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--segment_seconds", "inf"], "segment_seconds must be a finite number"),
        (["--snr_low", "nan"], "snr_low must be a finite number"),
        (["--snr_low", "30", "--snr_high", "10"], "must not exceed snr_high"),
    ],
)
def test_bad_training_numbers_are_one_line(tmp_path, extra, message, capsys):
    args = ["train", "--output_dir", str(tmp_path / "run"), "--clean_dirs", str(DATA), "--noise_dirs", str(DATA)]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_yaml_list_is_not_a_training_config(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("- a\n- b\n")
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "maps settings to values" in capsys.readouterr().err


def test_bad_threads_and_devices_are_one_line(tmp_path, speech, capsys):
    sf.write(tmp_path / "x.wav", speech, 16000)
    for extra, message in ((["--threads", "-3"], "--threads must be a positive"), (["--device", "tpu"], "tpu")):
        assert main(["enhance", str(tmp_path / "x.wav"), *extra]) == 2
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.wav"]


def test_header_rates_are_checked_in_training_and_evaluation(tmp_path, capsys):
    from hybrid_mpsenet.data import decode_audio

    sf.write(tmp_path / "one_hz.wav", np.zeros(4000, np.int16), 1)
    with pytest.raises(ValueError, match="outside the supported 4000-768000 Hz"):
        decode_audio(str(tmp_path / "one_hz.wav"), 16000)
    args = ["train", "--output_dir", str(tmp_path / "run"), "--clean_dirs", str(tmp_path), "--noise_dirs", str(DATA)]
    assert main(args) == 2
    assert "outside the supported" in capsys.readouterr().err


def test_a_fifo_among_the_training_files_does_not_hang(tmp_path, capsys):
    folder = tmp_path / "speech"
    folder.mkdir()
    (folder / "a.wav").write_bytes((DATA / "LJ001-0002.wav").read_bytes())
    os.mkfifo(folder / "pipe.wav")
    from hybrid_mpsenet.data import list_audio

    assert list_audio(folder) == [folder / "a.wav"]
    with pytest.raises(ValueError, match="not a folder, a regular audio file"):
        list_audio(folder / "pipe.wav")


def test_bounds_are_checked_before_anything_is_allocated():
    from hybrid_mpsenet import HybridMPSENetConfig

    for key, value in (("num_shared_blocks", 10000), ("dense_channel", 100000), ("n_fft", 2**16)):
        started = time.perf_counter()
        with pytest.raises(ValueError, match=f"{key} must be at most"):
            HybridMPSENetConfig.from_preset("mpsenet", **{key: value})
        assert time.perf_counter() - started < 1


def test_a_tampered_optimiser_file_is_a_checkpoint_error(tmp_path, capsys):
    from hybrid_mpsenet.training import train

    common = dict(clean_dirs=[str(DATA)], noise_dirs=[str(DATA)], items_per_epoch=2, eval_every=5, save_every=1)
    train(training_arguments(tmp_path, max_steps=1, **common))
    optimizer = next((tmp_path / "run" / "checkpoints").glob("step-*")) / "optimizer_generator.pt"
    optimizer.write_bytes(b"\x80\x04not a pickle at all" * 10)
    from hybrid_mpsenet.checkpointing import CheckpointError

    with pytest.raises(CheckpointError, match="optimizer_generator.pt: cannot read"):
        train(training_arguments(tmp_path, max_steps=2, resume=True, **common))


def test_pool_workers_leave_ctrl_c_to_the_main_process():
    from hybrid_mpsenet.metrics import make_pool

    with make_pool(1) as pool:
        assert pool.submit(signal.getsignal, signal.SIGINT).result() == signal.SIG_IGN


@pytest.mark.parametrize(
    "damage, message",
    [
        ("empty", "not a readable safetensors file"),
        ("truncated", "not a readable safetensors file"),
        ("int", r"non-float tensors: .* \(I32\)"),
        ("float64", "NaN or Inf"),
        ("config_null", "a model config is a JSON object"),
        ("config_42", "a model config is a JSON object"),
        ("config_type", "compress_factor must be a number"),
        ("index", "not a safetensors shard index"),
    ],
)
def test_both_loaders_refuse_damage_with_one_message(tmp_path, model_dir, damage, message):
    import torch
    from safetensors.torch import load_file, save_file

    from hybrid_mpsenet import HybridMPSENetForSpeechEnhancement
    from hybrid_mpsenet.inference import HybridMPSENetEnhancer

    weights, config = model_dir / "model.safetensors", model_dir / "config.json"
    tensors = load_file(weights)
    first = sorted(tensors)[0]
    if damage == "empty":
        weights.write_bytes(b"")
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:200])
    elif damage in ("int", "float64"):
        tensors[first] = tensors[first].to(torch.int32) if damage == "int" else tensors[first].double() * 1e300
        save_file(tensors, weights)
    elif damage.startswith("config_"):
        values = {**json.loads(config.read_text()), "compress_factor": "0.3"}
        config.write_text({"config_null": "null", "config_42": "42", "config_type": json.dumps(values)}[damage])
    else:
        weights.rename(model_dir / "model-00001-of-00001.safetensors")
        (model_dir / "model.safetensors.index.json").write_text('{"weight_map": [1, 2]}')
    for loader in (HybridMPSENetEnhancer, HybridMPSENetForSpeechEnhancement):
        with pytest.raises(ValueError, match=message):
            loader.from_pretrained(model_dir)


def test_a_failed_write_names_the_output_and_the_free_space(tmp_path, speech, model_dir, monkeypatch):
    from hybrid_mpsenet.inference import HybridMPSENetEnhancer

    sf.write(tmp_path / "x.wav", speech, 16000)

    real_write = sf.SoundFile.write

    def full(self, data):  # the format probe writes to memory; the output file hits a full disk
        if isinstance(self.name, bytes):
            raise sf.LibsndfileError(1, "System error.")
        return real_write(self, data)

    monkeypatch.setattr(sf.SoundFile, "write", full)
    model = HybridMPSENetEnhancer.from_pretrained(model_dir)
    with pytest.raises(ValueError, match=r"out.wav: writing failed .* MiB are free on that disk, so it may be full"):
        model.enhance_file(tmp_path / "x.wav", tmp_path / "out.wav", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "x.wav"]


@pytest.mark.slow
def test_ctrl_c_in_training_with_workers_ends_in_one_line(tmp_path):
    """Ctrl-C reaches the whole process group (trainer, DataLoader workers, PESQ pool): only the trainer speaks."""
    config = json.dumps({"dense_channel": 8, "num_shared_blocks": 1, "ffn_hidden_size": 8, "num_attention_heads": 2})
    command = [sys.executable, "-m", "hybrid_mpsenet.cli", "-q", "train", "--output_dir", str(tmp_path / "run")]
    command += ["--preset", "mpsenet", "--config_overrides", config, "--clean_dirs", str(DATA), "--noise_dirs"]
    command += [str(DATA), "--num_workers", "2", "--pesq_workers", "2", "--log_with", "none", "--max_steps", "1000"]
    command += ["--batch_size", "2", "--segment_seconds", "0.5", "--items_per_epoch", "8", "--save_every", "2"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (tmp_path / "run" / "checkpoints").is_dir():  # steps are running, workers are up
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.strip().splitlines()[-1].startswith("hybrid-mpsenet train: interrupted")
    assert not (tmp_path / "run" / "run.lock").exists()


@pytest.mark.parametrize("kernel", ["renameat2", "fallback"])
def test_publishing_a_folder_never_replaces_what_someone_made_meanwhile(tmp_path, monkeypatch, kernel):
    """The one publish primitive: a new folder is created exclusively (of two writers exactly one wins), and a
    folder being replaced is checked again when it is swapped out; a foreign file added mid-write is never lost."""
    import errno

    import hybrid_mpsenet.ownership as ownership
    from hybrid_mpsenet.ownership import OwnershipError
    from hybrid_mpsenet.utils import atomic_directory

    if kernel == "fallback":  # a kernel or file system without renameat2's flags

        def unsupported(*args):
            raise OSError(errno.ENOSYS, "renameat2 is not available")

        monkeypatch.setattr(ownership, "_renameat2", unsupported)
    target = tmp_path / "out"
    first, second = atomic_directory(target), atomic_directory(target)
    (first.__enter__() / "model.txt").write_text("first")
    (second.__enter__() / "model.txt").write_text("second")
    first.__exit__(None, None, None)
    with pytest.raises(OwnershipError, match="was created by someone else"):
        second.__exit__(None, None, None)
    assert (target / "model.txt").read_text() == "first"

    # Someone makes the folder of a new output while it is written: their notes stay, nothing is published.
    notes = tmp_path / "notes"
    with pytest.raises(OwnershipError, match="was created by someone else"), atomic_directory(notes) as tmp:
        (tmp / "model.txt").write_text("new")
        notes.mkdir()
        (notes / "notes.txt").write_text("mine")
    assert [p.name for p in notes.iterdir()] == ["notes.txt"]

    # Replacing our own folder works; a file added to it during the rewrite stops the replacement.
    with atomic_directory(target) as tmp:
        (tmp / "model.txt").write_text("third")
    assert (target / "model.txt").read_text() == "third"
    with pytest.raises(OwnershipError, match="changed while this model was written"), atomic_directory(target) as tmp:
        (tmp / "model.txt").write_text("fourth")
        (target / "notes.txt").write_text("mine")
    assert (target / "notes.txt").read_text() == "mine" and (target / "model.txt").read_text() == "third"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "out"]  # no temporaries left
