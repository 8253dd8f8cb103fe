import http.server
import importlib
import json
import socket
import sys
import threading
from pathlib import Path

import pytest
from helpers import run_without_package
from huggingface_hub import ModelCard, constants
from safetensors.torch import load_file
from transformers import dynamic_module_utils

from hybrid_mpsenet.cli import main
from hybrid_mpsenet.inference import DEFAULT_MODEL_DIR
from hybrid_mpsenet.utils import weights_sha256

EVALUATION = {
    "num_utterances": 10,
    "noisy": {m: {"mean": 1.0, "std": 0.1, "failed": 0} for m in ("pesq", "csig", "cbak", "covl", "stoi", "ssnr")},
    "enhanced": {
        "pesq": {"mean": 2.19, "std": 0.75, "failed": 0},
        "csig": {"mean": 2.23, "std": 0.94, "failed": 0},
        "cbak": {"mean": 2.55, "std": 0.69, "failed": 0},
        "covl": {"mean": 2.14, "std": 0.88, "failed": 0},
        "stoi": {"mean": 0.86, "std": 0.08, "failed": 0},
        "ssnr": {"mean": 3.92, "std": 3.10, "failed": 0},
    },
}


def bundled_evaluation() -> dict:
    """EVALUATION as `evaluate` writes it for the bundled model: with that model's weight fingerprint."""
    return {**EVALUATION, "model_sha256": weights_sha256(load_file(DEFAULT_MODEL_DIR / "model.safetensors"))}


def test_push_dry_run_writes_the_exact_upload_with_a_parsable_card(tmp_path, capsys):
    (tmp_path / "eval.json").write_text(json.dumps(bundled_evaluation()))
    (tmp_path / "data.md").write_text("Nine minutes of read speech.")
    args = ["push", "--model", str(DEFAULT_MODEL_DIR), "--repo-id", "org/demo", "--dry-run", str(tmp_path / "up")]
    assert (
        main([*args, "--eval-results", str(tmp_path / "eval.json"), "--training-data", str(tmp_path / "data.md")]) == 0
    )
    assert "Wrote the upload for org/demo" in capsys.readouterr().out
    names = sorted(p.name for p in (tmp_path / "up").iterdir())
    assert {"README.md", "config.json", "model.safetensors", "preprocessor_config.json"} <= set(names)
    assert {"enhancement.py", "modeling_hybrid_mpsenet.py", "audio.py"} <= set(names)  # remote code
    assert (tmp_path / "up" / "model.onnx").read_bytes() == (DEFAULT_MODEL_DIR / "model.onnx").read_bytes()
    card = ModelCard.load(tmp_path / "up" / "README.md")
    assert (card.data.pipeline_tag, card.data.library_name) == ("audio-to-audio", "hybrid-mpsenet")
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {m: v["mean"] for m, v in EVALUATION["enhanced"].items()}
    assert 'from_pretrained("org/demo")' in card.text and "Nine minutes of read speech." in card.text
    assert "| PESQ | 1.00 ± 0.10 | 2.19 ± 0.75 |" in card.text


@pytest.mark.slow
def test_the_upload_loads_with_remote_code_without_the_package(tmp_path):
    assert (
        main(["push", "--model", str(DEFAULT_MODEL_DIR), "--repo-id", "org/demo", "--dry-run", str(tmp_path / "up")])
        == 0
    )
    code = f"""
        import numpy as np
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "up")!r}, trust_remote_code=True).eval()
        out = model.enhance(np.random.default_rng(0).standard_normal(8000).astype("float32") * 0.1, 8000)
        assert out.shape == (8000,) and type(model).__name__ == "HybridMPSENetForSpeechEnhancement"
        print("remote code OK")
        """
    result = run_without_package(code, tmp_path, hidden=())
    assert result.returncode == 0, result.stderr[-3000:]


def test_the_uploads_remote_code_needs_what_the_readme_lists(tmp_path, monkeypatch):
    main(["push", "--model", "default", "--repo-id", "org/demo", "--dry-run", str(tmp_path / "up")])
    files = sorted((tmp_path / "up").glob("*.py"))
    imported = set().union(*(dynamic_module_utils.get_imports(f) for f in files))
    third_party = {name for name in imported if name not in sys.stdlib_module_names}
    assert third_party == {"numpy", "safetensors", "soundfile", "soxr", "torch", "tqdm", "transformers"}  # README
    real_import = importlib.import_module

    def without_audio_io(name, *args):
        if name in ("soundfile", "soxr"):
            raise ModuleNotFoundError(f"No module named '{name}'")
        return real_import(name, *args)

    monkeypatch.setattr(dynamic_module_utils.importlib, "import_module", without_audio_io)
    with pytest.raises(ImportError, match="Run `pip install soundfile soxr`"):
        dynamic_module_utils.check_imports(tmp_path / "up" / "audio.py")


def test_push_refuses_an_evaluation_of_other_weights(tmp_path, capsys):
    (tmp_path / "other.json").write_text(json.dumps({**EVALUATION, "model_sha256": "0" * 64}))
    (tmp_path / "old.json").write_text(json.dumps(EVALUATION))
    for name in ("other.json", "old.json"):
        args = ["push", "--model", "default", "--repo-id", "org/x", "--eval-results", str(tmp_path / name)]
        assert main([*args, "--dry-run", str(tmp_path / "up")]) == 2
        assert f"{tmp_path / name} was not produced from the model in" in capsys.readouterr().err
    assert not (tmp_path / "up").exists()


@pytest.fixture
def refusing_hub():
    """A server on 127.0.0.1 that answers every request with 401, as the Hub does without a valid token."""

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": "Invalid credentials in Authorization header"}')

        do_POST = do_PUT = do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_push_failures_are_one_line(tmp_path, capsys, monkeypatch, refusing_hub):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    args = ["push", "--model", "default", "--repo-id", "org/x", "-q"]
    with socket.socket() as probe:  # a port nothing listens on: the network is down
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    for endpoint, message in [(closed, "Cannot reach the Hub at"), (refusing_hub, "run `hf auth login`")]:
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_push_rejects_a_file_that_is_not_an_evaluation(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{}")
    args = [
        "push",
        "--model",
        str(DEFAULT_MODEL_DIR),
        "--repo-id",
        "org/x",
        "--eval-results",
        str(tmp_path / "bad.json"),
    ]
    assert main([*args, "--dry-run", str(tmp_path / "up")]) == 2
    assert "not an evaluation result" in capsys.readouterr().err


def test_convert_and_push_dry_run_never_delete_a_users_folder(tmp_path, capsys, monkeypatch):
    fixtures = Path(__file__).parent / "fixtures" / "training_step"
    home = tmp_path / "home"
    home.mkdir()
    (home / "important.txt").write_text("precious")
    convert = ["convert", str(fixtures / "g_00000000"), "--config", str(fixtures / "config.json"), "--overwrite"]
    push = ["push", "--model", "default", "--repo-id", "org/x", "--overwrite", "--dry-run"]
    for command in ([*convert[:2], str(home), *convert[2:]], [*push, str(home)]):
        assert main(command) == 2
        assert "did not write (important.txt)" in capsys.readouterr().err
        assert [p.name for p in home.iterdir()] == ["important.txt"] and (
            home / "important.txt"
        ).read_text() == "precious"
    monkeypatch.chdir(home)
    assert main([*convert[:2], ".", *convert[2:]]) == 2  # the current folder is a folder like any other
    assert [p.name for p in home.iterdir()] == ["important.txt"]


def test_push_dry_run_overwrite_replaces_its_own_upload_folder(tmp_path):
    """Every file of an upload, the copied model code included, counts as the package's own."""
    push = ["push", "--model", "default", "--repo-id", "org/x", "--dry-run", str(tmp_path / "up")]
    assert main(push) == 0
    assert main([*push, "--overwrite"]) == 0
    assert (tmp_path / "up" / "inference.py").exists() and (tmp_path / "up" / "model.safetensors").exists()
