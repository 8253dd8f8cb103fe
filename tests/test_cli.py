import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import DATA, tiny_config
from safetensors.torch import load_file

from hybrid_mpsenet import HybridMPSENetConfig, HybridMPSENetForSpeechEnhancement, HybridMPSENetModel
from hybrid_mpsenet.cli import collect_jobs, main
from hybrid_mpsenet.utils import weights_sha256


@pytest.fixture
def model_dir(tmp_path):
    HybridMPSENetModel(tiny_config(n_fft=128, hop_length=64, win_length=128)).save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_enhance_a_folder_mirrors_the_tree_and_reports_the_corrupt_file(tmp_path, model_dir, speech, capsys):
    source = tmp_path / "in"
    (source / "a" / "b").mkdir(parents=True)
    sf.write(source / "one.wav", speech, 16000)
    sf.write(source / "a" / "two.flac", np.stack([speech, speech]).T, 44100)
    sf.write(source / "a" / "b" / "three.wav", speech[:5000], 8000, subtype="PCM_U8")
    (source / "a" / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    (source / "notes.txt").write_text("not audio")
    code = main(["enhance", str(source), "-o", str(tmp_path / "out"), "--model", str(model_dir), "-q"])
    assert code == 1
    err = capsys.readouterr().err
    assert f"FAILED {source / 'a' / 'broken.wav'}: " in err and "1 of 4 files failed" in err
    outputs = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert outputs == ["a/b/three.wav", "a/two.flac", "one.wav"]
    flac = sf.info(tmp_path / "out/a/two.flac")
    assert (flac.channels, flac.samplerate) == (2, 44100)
    assert sf.info(tmp_path / "out/a/b/three.wav").subtype == "PCM_U8"


def test_enhance_beside_inputs_globs_and_overwrite(tmp_path, model_dir, speech, capsys):
    for name in ("x.wav", "y.wav"):
        sf.write(tmp_path / name, speech, 16000)
    args = ["--model", str(model_dir), "-q"]
    assert main(["enhance", str(tmp_path / "*.wav"), *args]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.wav")) == ["x.wav", "x_enhanced.wav", "y.wav", "y_enhanced.wav"]
    assert main(["enhance", str(tmp_path / "x.wav"), *args]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["enhance", str(tmp_path / "x.wav"), "--overwrite", *args]) == 0
    assert main(["enhance", str(tmp_path / "x.wav"), "-o", str(tmp_path / "single.ogg"), *args]) == 0
    assert sf.info(tmp_path / "single.ogg").format == "OGG"
    assert main(["enhance", str(tmp_path / "x.wav"), "-o", str(tmp_path / "x.wav"), "--overwrite", *args]) == 1
    assert "refusing to overwrite the input" in capsys.readouterr().err
    assert main(["enhance", str(tmp_path / "nothing*.wav"), *args]) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_enhance_on_a_missing_device_is_a_clear_error(tmp_path, model_dir, speech, capsys):
    sf.write(tmp_path / "x.wav", speech, 16000)
    assert main(["enhance", str(tmp_path / "x.wav"), "--model", str(model_dir), "--device", "cuda"]) == 2
    assert "no CUDA GPU is available" in capsys.readouterr().err


def test_info_lists_every_preset_with_its_parameter_count(capsys):
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {name: v["parameters"] for name, v in info.items()} == {
        "mpsenet": 2263372,
        "hybrid-large": 5948492,
        "hybrid-small": 2037836,
        # The causal mpsenet loses the GRUs' backward directions along time and half of their output layers.
        "mpsenet-causal": 1932620,
        "hybrid-causal": 427916,
        # MUSE's released size; its per-stage path fusion (a softmax over one path) holds no weights here.
        "muse": 511408,
        # Three Mamba blocks (time and frequency) and their criss-cross fusions beside MUSE's inner stages.
        "hybrid-muse": 608752,
    }
    assert info["hybrid-large"]["blocks"] == {
        "shared": "6 x transformer",
        "magnitude": "6 x mamba",
        "phase": "6 x transformer",
    }


def test_info_on_a_saved_folder_and_a_missing_one(tmp_path, capsys):
    HybridMPSENetModel(tiny_config()).save_pretrained(tmp_path / "tiny")
    assert main(["info", str(tmp_path / "tiny")]) == 0
    assert json.loads(capsys.readouterr().out)[str(tmp_path / "tiny")]["fusion"] == "cross_attention"
    assert main(["info", str(tmp_path / "absent")]) == 2
    assert f"hybrid-mpsenet info: error: {tmp_path / 'absent'}: no such folder" in capsys.readouterr().err


def test_the_bundled_model_is_called_default_and_flags_go_after_the_command(tmp_path, speech, capsys):
    bundled = HybridMPSENetForSpeechEnhancement.from_pretrained()
    named = HybridMPSENetForSpeechEnhancement.from_pretrained("default").state_dict()
    assert all(torch.equal(named[key], value) for key, value in bundled.state_dict().items())
    assert main(["info", "default"]) == 0
    assert json.loads(capsys.readouterr().out)["default"]["parameters"] == bundled.num_parameters()
    sf.write(tmp_path / "in.wav", speech, 16000)
    assert main(["enhance", str(tmp_path / "in.wav"), "--model", "default", "-q", "-v"]) == 0
    captured = capsys.readouterr()
    assert (tmp_path / "in_enhanced.wav").is_file() and "Loading weights" not in captured.err


def test_console_script_requires_a_command():
    result = subprocess.run([sys.executable, "-m", "hybrid_mpsenet.cli"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "choose a command: enhance, stream, evaluate, train, finetune, shard, push, convert, info" in result.stderr


def test_unknown_command_lists_the_allowed_ones(capsys):
    with pytest.raises(SystemExit):
        main(["denoise"])
    assert "convert" in capsys.readouterr().err


def test_evaluate_prints_the_metric_table_and_writes_json(tmp_path, model_dir, capsys):
    for kind in ("clean", "noisy"):
        folder = tmp_path / "vb" / f"{kind}_testset_wav"
        folder.mkdir(parents=True)
        (folder / "p232_001.wav").write_bytes((DATA / f"p232_001_{kind}.wav").read_bytes())
    args = ["evaluate", "--data", str(tmp_path / "vb"), "--model", str(model_dir), "--noisy-baseline", "-q"]
    args += ["--workers", "0", "--save-enhanced", str(tmp_path / "enh"), "--output", str(tmp_path / "r.json")]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "| metric | noisy | enhanced |" in table and "| CSIG | 4.27 ± 0.00 |" in table  # the verified noisy CSIG
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["num_utterances"] == 1
    assert set(result["enhanced"]) >= {"pesq", "csig", "cbak", "covl", "stoi", "ssnr", "si_sdr"}
    assert (tmp_path / "enh" / "p232_001.wav").is_file()
    assert result["model_sha256"] == weights_sha256(load_file(model_dir / "model.safetensors"))
    assert main(["evaluate", "--data", str(tmp_path / "nothing"), "--model", str(model_dir)]) == 2


def test_evaluate_a_plain_clean_and_noisy_folder_pairs_files_by_name(tmp_path, model_dir, capsys):
    for kind in ("clean", "noisy"):
        (tmp_path / "plain" / kind).mkdir(parents=True)
        for name in ("first", "second"):
            (tmp_path / "plain" / kind / f"{name}.wav").write_bytes((DATA / f"p232_001_{kind}.wav").read_bytes())
    (tmp_path / "plain" / "noisy" / "unpaired.wav").write_bytes((DATA / "p232_001_noisy.wav").read_bytes())
    args = ["evaluate", "--data", str(tmp_path / "plain"), "--model", str(model_dir), "-q", "--workers", "0"]
    assert main([*args, "--output", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["num_utterances"] == 2


def touch_audio(*paths):
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, np.zeros(800, np.float32), 16000)


def test_outputs_never_replace_inputs_and_own_files_are_not_inputs(tmp_path):
    touch_audio(tmp_path / "f" / "take.wav", tmp_path / "f" / "take_enhanced.wav", tmp_path / "f" / "solo_enhanced.wav")
    (tmp_path / "f" / ".take_enhanced.partial-ab12cd34.wav").write_bytes(b"a temporary file of an interrupted run")
    jobs = collect_jobs([str(tmp_path / "f")], None, "_enhanced")
    assert [(a.name, b.name) for a, b in jobs] == [
        ("solo_enhanced.wav", "solo_enhanced_enhanced.wav"),  # no solo.wav: a user's file, so an input
        ("take.wav", "take_enhanced.wav"),  # take_enhanced.wav is take.wav's output, not an input
    ]
    touch_audio(tmp_path / "in" / "a.wav", tmp_path / "in" / "sub" / "a.wav")
    with pytest.raises(ValueError, match="would be .*sub/a.wav, which is also an input"):
        collect_jobs(
            [str(tmp_path / "in" / "a.wav"), str(tmp_path / "in" / "sub" / "a.wav")], str(tmp_path / "in" / "sub"), ""
        )


def test_globs_mirror_the_tree_below_their_fixed_prefix_and_collisions_are_refused(tmp_path, model_dir, capsys):
    touch_audio(tmp_path / "dup" / "a" / "x.wav", tmp_path / "dup" / "b" / "x.wav")
    (tmp_path / "dup" / "loop").symlink_to(tmp_path / "dup")  # a symlink loop: 2 files, not 80
    pattern, out = str(tmp_path / "dup" / "**" / "*.wav"), str(tmp_path / "out")
    once = str(tmp_path / "dup" / "a" / "x.wav")
    assert (
        len(collect_jobs([pattern, pattern, once, str(tmp_path / "dup" / "a" / ".." / "a" / "x.wav")], out, "_e")) == 2
    )
    assert len(collect_jobs([str(tmp_path / "dup")], out, "_e")) == 2
    assert main(["enhance", pattern, "-o", out, "--model", str(model_dir), "-q"]) == 0
    written = sorted(str(p.relative_to(out)) for p in Path(out).rglob("*.wav"))
    assert written == ["a/x.wav", "b/x.wav"]
    both = [str(tmp_path / "dup" / "a" / "x.wav"), str(tmp_path / "dup" / "b" / "x.wav")]
    assert main(["enhance", *both, "-o", str(tmp_path / "flat"), "--model", str(model_dir), "-q"]) == 2
    assert "would both be written to" in capsys.readouterr().err and not (tmp_path / "flat").exists()


def start_slow_enhance(source: Path, tmp_path: Path, **popen) -> subprocess.Popen:
    """`hybrid-mpsenet enhance` of 30 s of noise with a random hybrid-small (slower than real time on a CPU),
    returned once its partial output file exists."""
    HybridMPSENetModel(HybridMPSENetConfig.from_preset("hybrid-small")).save_pretrained(tmp_path / "slow")
    sf.write(source, np.random.default_rng(0).standard_normal(16000 * 30).astype(np.float32) * 0.1, 16000)
    command = [sys.executable, "-m", "hybrid_mpsenet.cli", "-q", "enhance", str(source)]
    process = subprocess.Popen([*command, "--model", str(tmp_path / "slow")], **popen)
    deadline = time.monotonic() + 120
    while not list(source.parent.glob(f".{source.stem}_enhanced.partial-*.wav")):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before writing"
        time.sleep(0.05)
    return process


@pytest.mark.parametrize(
    ("sig", "code", "word"), [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")]
)
def test_termination_removes_the_partial_output_and_says_so_in_one_line(tmp_path, sig, code, word):
    process = start_slow_enhance(tmp_path / "long.wav", tmp_path, stderr=subprocess.PIPE, text=True)
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code
    assert err.strip() == f"hybrid-mpsenet enhance: {word}; unfinished files were removed."
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.wav", "slow"]


@pytest.mark.slow
def test_after_kill_9_no_truncated_output_exists_and_the_leftover_is_ignored(tmp_path, model_dir):
    folder = tmp_path / "takes"
    folder.mkdir()
    process = start_slow_enhance(folder / "long.wav", tmp_path, stderr=subprocess.DEVNULL)
    process.kill()
    process.wait()
    assert not (folder / "long_enhanced.wav").exists()  # never a truncated file under the final name
    assert main(["enhance", str(folder), "--model", str(model_dir), "-q"]) == 0  # the leftover is not an input
    assert sf.info(folder / "long_enhanced.wav").frames == 16000 * 30
    assert len(list(folder.glob(".long_enhanced.partial-*.wav"))) == 1  # hidden, clearly named, left alone


def test_evaluate_skips_and_reports_pairs_that_cannot_be_scored_fairly(tmp_path, model_dir, capsys):
    clean, rate = sf.read(DATA / "p232_001_clean.wav", dtype="float32")
    noisy, _ = sf.read(DATA / "p232_001_noisy.wav", dtype="float32")
    pairs = {
        "good": (clean, noisy),
        "shifted": (clean, np.concatenate([np.zeros(rate // 2, np.float32), noisy[: -rate // 2]])),
        "shorter": (clean, noisy[:-rate]),
        "nan": (clean, np.where(np.arange(len(noisy)) == 500, np.nan, noisy).astype(np.float32)),
        "tiny": (clean[8000:8100], noisy[8000:8100]),
    }
    for kind in ("clean", "noisy"):
        (tmp_path / "d" / kind).mkdir(parents=True)
    for name, (c, n) in pairs.items():
        sf.write(tmp_path / "d" / "clean" / f"{name}.wav", c, rate, subtype="FLOAT")
        sf.write(tmp_path / "d" / "noisy" / f"{name}.wav", n, rate, subtype="FLOAT")
    (tmp_path / "d" / "clean" / "corrupt.wav").write_bytes(b"RIFF not audio")
    (tmp_path / "d" / "noisy" / "corrupt.wav").write_bytes((DATA / "p232_001_noisy.wav").read_bytes())
    args = ["evaluate", "--data", str(tmp_path / "d"), "--model", str(model_dir), "-q", "--workers", "0"]
    assert main([*args, "--output", str(tmp_path / "r.json")]) == 1  # not every pair could be scored
    result = json.loads((tmp_path / "r.json").read_text())
    reasons = {pair["id"]: pair["reason"] for pair in result["skipped"]}
    assert sorted(reasons) == ["corrupt", "nan", "shifted", "shorter"]
    assert "shifted by +500.0 ms" in reasons["shifted"] and "differ in length by 1.000 s" in reasons["shorter"]
    assert "NaN or Inf" in reasons["nan"] and "not readable" in reasons["corrupt"]
    assert result["num_utterances"] == 2  # good and tiny; tiny's STOI cannot be computed: a failure, not a 0
    assert result["enhanced"]["stoi"]["failed"] == 1 and result["enhanced"]["stoi"]["mean"] > 0.5
    assert "SKIPPED shifted:" in capsys.readouterr().err


@pytest.mark.slow
def test_a_folder_of_200_files_with_5_corrupt_writes_195_and_reports_5(tmp_path, model_dir, capsys):
    source = tmp_path / "many"
    source.mkdir()
    rng = np.random.default_rng(0)
    corrupt = {f"take_{i:03d}.wav" for i in (3, 50, 99, 150, 199)}
    for i in range(200):
        name = f"take_{i:03d}.wav"
        if name in corrupt:
            (source / name).write_bytes(b"RIFF\x00\x00\x00\x00WAVEbroken")
        else:
            sf.write(source / name, (0.1 * rng.standard_normal(800)).astype(np.float32), 16000)
    assert main(["enhance", str(source), "-o", str(tmp_path / "out"), "--model", str(model_dir), "-q"]) == 1
    err = capsys.readouterr().err
    assert {line.split(": ")[0].removeprefix("FAILED ") for line in err.splitlines() if line.startswith("FAILED")} == {
        str(source / name) for name in corrupt
    }
    assert "5 of 200 files failed." in err
    assert len(list((tmp_path / "out").glob("*.wav"))) == 195


def test_importing_the_package_and_the_cli_loads_neither_torch_nor_transformers():
    code = "import sys, hybrid_mpsenet, hybrid_mpsenet.cli; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"  # so `--help` is instant (scripts/benchmark_startup.py times it)
    help_text = subprocess.run([sys.executable, "-m", "hybrid_mpsenet.cli", "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "finetune" in help_text.stdout


def test_enhancing_does_not_import_transformers_model_classes(tmp_path):
    """`enhance` runs on the lean model: PreTrainedModel's import (about 130 MiB of memory) is never paid."""
    code = (
        "import sys; from hybrid_mpsenet.cli import main; "
        f"code = main(['enhance', {str(DATA / 'p232_001_noisy.wav')!r}, '-o', {str(tmp_path)!r}, '-q']); "
        "print(code, 'transformers.modeling_utils' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout.split()[-2:] == ["0", "False"], result.stderr[-2000:]
    assert (tmp_path / "p232_001_noisy.wav").exists()


def test_streams_run_on_one_thread_unless_told_otherwise(tmp_path, speech):
    sf.write(tmp_path / "in.wav", speech[:3200], 16000)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert main(["enhance", str(tmp_path / "in.wav"), "-o", str(tmp_path / "a.wav"), "--model",
                     "default-streaming", "--stream", "-q"]) == 0  # fmt: skip
        assert torch.get_num_threads() == 1
        assert main(["enhance", str(tmp_path / "in.wav"), "-o", str(tmp_path / "b.wav"), "--model",
                     "default-streaming", "--stream", "--threads", "2", "-q"]) == 0  # fmt: skip
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
