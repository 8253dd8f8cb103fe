import numpy as np
import pytest
import soundfile as sf
from helpers import DATA

from hybrid_mpsenet.metrics import (
    EVALUATE_MODULE,
    batch_pesq,
    composite_scores,
    make_pool,
    pesq_score,
    si_sdr,
    stoi_score,
)


@pytest.fixture(scope="module")
def pair():
    clean, _ = sf.read(DATA / "p232_001_clean.wav")
    noisy, _ = sf.read(DATA / "p232_001_noisy.wav")
    return clean, noisy


def test_composite_of_a_signal_with_itself_is_perfect(pair):
    clean, _ = pair
    scores = composite_scores(clean, clean)
    assert (scores["csig"], scores["cbak"], scores["covl"]) == (5.0, 5.0, 5.0)
    assert (scores["llr"], scores["wss"], scores["ssnr"]) == (0.0, 0.0, 35.0)  # 35 dB is the clipping ceiling
    assert scores["pesq"] == pytest.approx(4.644, abs=1e-3)  # P.862.2's maximum


def test_composite_matches_an_independent_implementation(pair):
    # Reference values: schmiph2/pysepm (qualityMeasures.py at commit 3143ccc, Python port of Loizou's
    # composite.m) run on this VoiceBank+DEMAND pair with pesq 0.0.4 -- they agree to 1e-11.
    scores = composite_scores(*pair)
    expected = {
        "csig": 4.273998148783947,
        "cbak": 3.2615924800080744,
        "covl": 3.579501279040221,
        "pesq": 2.9273931980133057,
        "llr": 0.28905103625515544,
        "wss": 31.865159256835753,
        "ssnr": 7.164359462786751,
    }
    for name, value in expected.items():
        assert scores[name] == pytest.approx(value, rel=1e-7), name


def test_failures_are_nan_not_exceptions(pair):
    clean, noisy = pair
    assert np.isnan(pesq_score(np.zeros(16000), np.zeros(16000)))
    with make_pool(2) as pool:
        scores = batch_pesq([clean, np.zeros(16000)], [noisy, np.zeros(16000)], 16000, pool)
    assert scores[0] == pytest.approx(2.9273931980133057) and np.isnan(scores[1])
    assert 0.5 < stoi_score(clean, noisy) < 1.0
    with pytest.raises(ValueError, match="Need more than"):
        composite_scores(clean[:300], noisy[:300])


def test_si_sdr_of_scaled_and_noisy_copies(pair):
    clean, _ = pair
    assert si_sdr(clean, 0.5 * clean) > 100  # scale-invariant: a scaled copy is perfect
    noise = np.random.default_rng(0).standard_normal(len(clean))
    noise *= np.sqrt(np.sum(clean**2) / np.sum(noise**2)) / 10 ** (10 / 20)  # 10 dB below the speech
    assert si_sdr(clean, clean + noise) == pytest.approx(10.0, abs=0.1)


def test_evaluate_module_loads_from_the_package_and_counts_failures(pair):
    import evaluate

    clean, noisy = pair
    metric = evaluate.load(EVALUATE_MODULE)
    result = metric.compute(
        predictions=[noisy, np.zeros(16000)], references=[clean, np.zeros(16000)], sampling_rate=16000, num_workers=2
    )
    assert result["num_pairs"] == 2
    assert result["csig"] == pytest.approx(4.273998148783947, rel=1e-6)  # the silent pair is left out
    assert result["failed_pesq"] == 1 and result["failed_csig"] == 1
    assert 1.0 < result["pesq_nb"] < 4.6 and 0.5 < result["estoi"] < 1.0 and np.isfinite(result["si_sdr"])


@pytest.mark.slow
def test_dnsmos_is_speechmos_own_score_at_any_rate_and_length():
    """DNSMOS through `dnsmos_scores` is `speechmos.dnsmos.run` on the same 16-kHz audio (within 0.01), other rates
    are resampled first, long audio is scored in its 9.01-s windows, and it ranks clean above noisy speech."""
    import soxr
    from speechmos import dnsmos

    from hybrid_mpsenet.metrics import dnsmos_scores

    noisy, _ = sf.read(DATA / "p232_001_noisy.wav", dtype="float32")
    clean, _ = sf.read(DATA / "p232_001_clean.wav", dtype="float32")
    ours, theirs = dnsmos_scores(noisy, 16000), dnsmos.run(noisy, 16000)
    for key, name in (("dnsmos_sig", "sig_mos"), ("dnsmos_bak", "bak_mos"), ("dnsmos_ovrl", "ovrl_mos")):
        assert abs(ours[key] - theirs[name]) <= 0.01
    assert abs(ours["dnsmos_p808"] - theirs["p808_mos"]) <= 0.01
    resampled = dnsmos_scores(soxr.resample(noisy, 16000, 48000), 48000)
    assert all(abs(resampled[key] - ours[key]) < 0.05 for key in ours)
    long = np.tile(noisy, 5)  # over 9.01 s: several windows, averaged
    assert abs(dnsmos_scores(long, 16000)["dnsmos_ovrl"] - dnsmos.run(long, 16000)["ovrl_mos"]) <= 0.01
    assert dnsmos_scores(clean)["dnsmos_p808"] > ours["dnsmos_p808"] + 0.2
    assert np.isnan(dnsmos_scores(np.zeros(16000, np.float32))["dnsmos_ovrl"])


@pytest.mark.slow
def test_evaluate_scores_recordings_without_references_and_pairs_with_dnsmos(tmp_path, capsys):
    import json
    import shutil

    from hybrid_mpsenet.cli import main
    from hybrid_mpsenet.metrics import DNSMOS_KEYS

    recordings = tmp_path / "meetings" / "day1"
    recordings.mkdir(parents=True)
    shutil.copy(DATA / "p232_001_noisy.wav", recordings / "a.wav")
    sf.write(recordings / "b.flac", sf.read(DATA / "running_tap_8s.wav", dtype="float32")[0][:48000], 16000)
    (recordings / "broken.wav").write_bytes(b"RIFF not audio")
    output = tmp_path / "scores.json"
    args = ["evaluate", "--no-reference", "--data", str(tmp_path / "meetings"), "--output", str(output)]
    assert main([*args, "--workers", "0", "-q"]) == 1  # one file skipped, the others scored
    out, err = capsys.readouterr()
    assert "| DNSMOS_OVRL |" in out and "broken.wav" in err
    result = json.loads(output.read_text())
    assert result["num_files"] == 2 and [entry["file"].endswith("broken.wav") for entry in result["skipped"]] == [True]
    for entry in result["files"]:
        assert set(entry["input"]) == set(entry["enhanced"]) == set(DNSMOS_KEYS)
    # Enhancing removes background noise: BAK rises on average.
    assert result["enhanced"]["dnsmos_bak"]["mean"] > result["input"]["dnsmos_bak"]["mean"]

    pairs = tmp_path / "pairs"
    for kind in ("clean", "noisy"):
        (pairs / f"{kind}_testset_wav").mkdir(parents=True)
        shutil.copy(DATA / f"p232_001_{kind}.wav", pairs / f"{kind}_testset_wav" / "p232_001.wav")
    assert main(["evaluate", "--data", str(pairs), "--dnsmos", "--noisy-baseline", "--workers", "2", "-q"]) == 0
    table = capsys.readouterr().out
    assert "| PESQ |" in table and "| DNSMOS_P808 |" in table
