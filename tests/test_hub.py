import json

from helpers import run_without_package
from huggingface_hub import ModelCard

from hybrid_mpsenet.cli import main
from hybrid_mpsenet.enhancement import DEFAULT_MODEL_DIR

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


def test_push_dry_run_writes_the_exact_upload_with_a_parsable_card(tmp_path, capsys):
    (tmp_path / "eval.json").write_text(json.dumps(EVALUATION))
    (tmp_path / "data.md").write_text("Nine minutes of read speech.")
    args = ["push", "--model", str(DEFAULT_MODEL_DIR), "--repo-id", "org/demo", "--dry-run", str(tmp_path / "up")]
    assert (
        main([*args, "--eval-results", str(tmp_path / "eval.json"), "--training-data", str(tmp_path / "data.md")]) == 0
    )
    assert "Wrote the upload for org/demo" in capsys.readouterr().out
    names = sorted(p.name for p in (tmp_path / "up").iterdir())
    assert {"README.md", "config.json", "model.safetensors", "preprocessor_config.json"} <= set(names)
    assert {"enhancement.py", "modeling_hybrid_mpsenet.py", "audio.py"} <= set(names)  # remote code
    card = ModelCard.load(tmp_path / "up" / "README.md")
    assert (card.data.pipeline_tag, card.data.library_name) == ("audio-to-audio", "hybrid-mpsenet")
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {m: v["mean"] for m, v in EVALUATION["enhanced"].items()}
    assert 'from_pretrained("org/demo")' in card.text and "Nine minutes of read speech." in card.text
    assert "| PESQ | 1.00 ± 0.10 | 2.19 ± 0.75 |" in card.text


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
    result = run_without_package(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


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
