"""The enhancement controls: the attenuation limit (strength) and perceptual contrast stretching (PCS)."""

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import DATA

from hybrid_mpsenet.cli import main
from hybrid_mpsenet.inference import DEFAULT_MODEL_DIR, HybridMPSENetEnhancer
from hybrid_mpsenet.spectral import PCS_BANDS, attenuation_floor, pcs_exponents, perceptual_contrast_stretching


@pytest.fixture(scope="module")
def model():
    return HybridMPSENetEnhancer.from_pretrained()  # the bundled model: it really suppresses noise


@pytest.fixture(scope="module")
def noise():
    audio, rate = sf.read(DATA / "running_tap_8s.wav", dtype="float32")
    return audio[: 3 * rate], rate


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def test_the_floor_holds_in_every_bin_and_keeps_the_rest():
    generator = torch.Generator().manual_seed(0)
    noisy = torch.rand(2, 9, 7, generator=generator) + 0.1
    noisy_phase = torch.rand(2, 9, 7, generator=generator)
    enhanced = noisy * torch.rand(2, 9, 7, generator=generator)
    phase = torch.rand(2, 9, 7, generator=generator)
    limited, limited_phase = attenuation_floor(enhanced, phase, noisy, noisy_phase, 6.0, 0.3)
    ratio_db = 20 / 0.3 * torch.log10(limited / noisy)  # in uncompressed magnitudes
    assert ratio_db.min() >= -6.0 - 1e-4
    kept = enhanced >= noisy * 10 ** (-6 * 0.3 / 20)
    assert kept.any() and (~kept).any()
    assert torch.equal(limited[kept], enhanced[kept]) and torch.equal(limited_phase[kept], phase[kept])
    assert torch.equal(limited_phase[~kept], noisy_phase[~kept])


def test_the_limit_bounds_how_much_noise_is_removed(model, noise):
    audio, rate = noise
    removed = rms(model.enhance(audio, rate))
    assert removed < 0.3 * rms(audio)  # the model takes most of the tap noise away
    for limit in (3.0, 6.0, 12.0):
        kept = rms(model.enhance(audio, rate, attenuation_limit_db=limit))
        assert kept >= 0.95 * 10 ** (-limit / 20) * rms(audio), limit
    levels = [rms(model.enhance(audio, rate, attenuation_limit_db=limit)) for limit in (0.0, 6.0, 12.0, 24.0)]
    assert levels == sorted(levels, reverse=True)


def test_a_limit_no_bin_reaches_changes_nothing(model):
    speech, rate = sf.read(DATA / "LJ001-0002.wav", dtype="float32")
    np.testing.assert_allclose(model.enhance(speech, rate, attenuation_limit_db=300.0), model.enhance(speech, rate))


def test_pcs_exponents_are_semambas_table_and_follow_frequency():
    table = pcs_exponents(400, 16000)
    assert table.shape == (201,)
    for start, stop, exponent in PCS_BANDS:
        np.testing.assert_allclose(table[start:stop], exponent, rtol=1e-6)
    # At 48 kHz with a 1200-point STFT the bins are 40 Hz apart as well: the same exponents up to 8 kHz.
    np.testing.assert_array_equal(pcs_exponents(1200, 48000)[:201], table)
    table = torch.from_numpy(table)
    magnitude = torch.full((1, 201, 1), 3.0) ** 0.3
    stretched = perceptual_contrast_stretching(magnitude, table, 0.3) ** (1 / 0.3)
    assert torch.allclose(stretched[0, 50, 0], torch.tensor(4.0**1.4 - 1))
    assert torch.allclose(stretched[0, 0, 0], torch.tensor(3.0))


def test_pcs_changes_the_contrast_not_the_level(model):
    speech, rate = sf.read(DATA / "p232_001_noisy.wav", dtype="float32")
    plain, stretched = model.enhance(speech, rate), model.enhance(speech, rate, pcs=True)
    assert abs(rms(stretched) / rms(plain) - 1) < 0.1
    assert np.abs(stretched - plain).max() > 0.01
    louder = model.enhance(speech * 4, rate, pcs=True) / 4  # SEMamba's stretch works at the input's level
    assert abs(rms(louder) / rms(stretched) - 1) < 0.1


def test_controls_from_the_cli_and_the_pipeline(tmp_path, model, capsys):
    from transformers import pipeline

    speech, rate = sf.read(DATA / "p232_001_noisy.wav", dtype="float32")
    sf.write(tmp_path / "x.wav", speech, rate, subtype="FLOAT")
    args = ["enhance", str(tmp_path / "x.wav"), "-q", "--attenuation-limit-db", "6", "--pcs"]
    assert main(args) == 0
    written, _ = sf.read(tmp_path / "x_enhanced.wav", dtype="float32")
    np.testing.assert_allclose(written, model.enhance(speech, rate, attenuation_limit_db=6, pcs=True), atol=1e-5)
    assert main(["enhance", str(tmp_path / "x.wav"), "-o", str(tmp_path / "y.wav"), "--attenuation-limit-db", "-3"])
    assert "attenuation_limit_db must be a finite number of dB >= 0" in capsys.readouterr().err
    enhancer = pipeline("speech-enhancement", model=str(DEFAULT_MODEL_DIR), device="cpu")
    out = enhancer(speech, sampling_rate=rate, attenuation_limit_db=6)["audio"]
    np.testing.assert_allclose(out, model.enhance(speech, rate, attenuation_limit_db=6), atol=1e-5)
