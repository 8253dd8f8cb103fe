from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import SHARED

from hybrid_mpsenet import HybridMPSENetForSpeechEnhancement
from hybrid_mpsenet.cli import main
from hybrid_mpsenet.metrics import composite_scores

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "audio"
VOICEBANK = SHARED / "data" / "voicebank_dev"
# Measured with the bundled checkpoint (the campaign's step 18,500; MODEL_CARD.md), thresholds with a margin: the
# example goes from PESQ 1.83 / CSIG 3.41 to 2.30 / 3.72; over the 10 VoiceBank pairs (the example among them) PESQ
# 1.93 -> 2.36, CSIG 3.14 -> 3.61, COVL 2.50 -> 2.97.
MIN_EXAMPLE_GAIN = {"pesq": 0.35, "csig": 0.2}
MIN_VOICEBANK_GAIN = {"pesq": 0.35, "csig": 0.35, "covl": 0.35}
# The bundled causal model (default-streaming, step 1,750; MODEL_CARD.md) on the example: PESQ 1.83 -> 2.61, CBAK
# 2.36 -> 3.06, COVL 2.60 -> 3.26.
MIN_STREAMING_EXAMPLE_GAIN = {"pesq": 0.6, "cbak": 0.6, "covl": 0.4}


def test_bundled_model_loads_offline_and_improves_the_example(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = HybridMPSENetForSpeechEnhancement.from_pretrained().eval()
    noisy, rate = sf.read(EXAMPLES / "p257_418_noisy.wav", dtype="float32")
    clean, _ = sf.read(EXAMPLES / "p257_418_clean.wav", dtype="float32")
    before, after = composite_scores(clean, noisy, rate), composite_scores(clean, model.enhance(noisy, rate), rate)
    for metric, gain in MIN_EXAMPLE_GAIN.items():
        assert after[metric] - before[metric] > gain, (metric, before[metric], after[metric])


@pytest.mark.skipif(not VOICEBANK.is_dir(), reason="needs ../shared/data/voicebank_dev")
@pytest.mark.slow
def test_bundled_model_improves_the_voicebank_pairs_on_average():
    model = HybridMPSENetForSpeechEnhancement.from_pretrained().eval()
    before, after = [], []
    for noisy_path in sorted((VOICEBANK / "noisy").glob("*.wav")):
        noisy, rate = sf.read(noisy_path, dtype="float32")
        clean, _ = sf.read(VOICEBANK / "clean" / noisy_path.name, dtype="float32")
        before.append(composite_scores(clean, noisy, rate))
        after.append(composite_scores(clean, model.enhance(noisy, rate), rate))
    assert len(after) == 10
    for metric, gain in MIN_VOICEBANK_GAIN.items():
        mean_before, mean_after = (float(np.mean([row[metric] for row in rows])) for rows in (before, after))
        assert mean_after - mean_before > gain, (metric, mean_before, mean_after)


def test_cli_uses_the_bundled_model_by_default(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["enhance", str(EXAMPLES / "p257_418_noisy.wav"), "-o", str(tmp_path / "out.wav"), "-q"]) == 0
    assert f"-> {tmp_path / 'out.wav'}" in capsys.readouterr().out
    assert sf.info(tmp_path / "out.wav").frames == sf.info(EXAMPLES / "p257_418_noisy.wav").frames


@pytest.mark.slow
def test_bundled_streaming_model_is_causal_streams_exactly_and_improves_the_example(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = HybridMPSENetForSpeechEnhancement.from_pretrained("default-streaming").eval()
    assert model.config.causal
    noisy, rate = sf.read(EXAMPLES / "p257_418_noisy.wav", dtype="float32")
    clean, _ = sf.read(EXAMPLES / "p257_418_clean.wav", dtype="float32")
    offline = model.enhance(noisy, rate)
    stream = model.stream(sampling_rate=rate)
    hop = model.config.hop_length
    streamed = np.concatenate(
        [*(stream.process(noisy[i : i + hop]) for i in range(0, len(noisy), hop)), stream.flush()]
    )
    assert np.abs(streamed - offline).max() < 1e-5 * np.abs(offline).max()
    before, after = composite_scores(clean, noisy, rate), composite_scores(clean, offline, rate)
    for metric, gain in MIN_STREAMING_EXAMPLE_GAIN.items():
        assert after[metric] - before[metric] > gain, (metric, before[metric], after[metric])
