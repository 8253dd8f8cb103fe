from pathlib import Path

import soundfile as sf

from hybrid_mpsenet import HybridMPSENetForSpeechEnhancement
from hybrid_mpsenet.cli import main
from hybrid_mpsenet.metrics import pesq_score

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "audio"
# Measured with the bundled checkpoint: PESQ 1.83 (noisy) -> 2.80 (enhanced); see MODEL_CARD.md.
MIN_PESQ_GAIN = 0.5


def test_bundled_model_loads_offline_and_improves_the_example(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = HybridMPSENetForSpeechEnhancement.from_pretrained().eval()
    noisy, rate = sf.read(EXAMPLES / "p257_418_noisy.wav", dtype="float32")
    clean, _ = sf.read(EXAMPLES / "p257_418_clean.wav", dtype="float32")
    enhanced = model.enhance(noisy, rate)
    assert pesq_score(clean, enhanced) - pesq_score(clean, noisy) > MIN_PESQ_GAIN


def test_cli_uses_the_bundled_model_by_default(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["enhance", str(EXAMPLES / "p257_418_noisy.wav"), "-o", str(tmp_path / "out.wav"), "-q"]) == 0
    assert f"-> {tmp_path / 'out.wav'}" in capsys.readouterr().out
    assert sf.info(tmp_path / "out.wav").frames == sf.info(EXAMPLES / "p257_418_noisy.wav").frames
