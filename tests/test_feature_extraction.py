import numpy as np
import pytest
import torch

from hybrid_mpsenet import HybridMPSENetFeatureExtractor


@pytest.fixture
def extractor():
    return HybridMPSENetFeatureExtractor()


def test_round_trip_reconstructs_waveform(extractor, speech):
    for item in (speech, speech[:12345] * 0.01):
        features = extractor(item, sampling_rate=16000)
        assert features["magnitude"].shape == (1, 201, item.shape[0] // 100 + 1)
        (restored,) = extractor.post_process(
            features["magnitude"], features["phase"], features["norm_factor"], features["num_samples"]
        )
        assert restored.shape == item.shape
        np.testing.assert_allclose(restored, item, rtol=0, atol=1e-5)


def test_batch_of_different_lengths_is_padded_and_restored(extractor, speech):
    items = [speech[:8000], speech[:3001], speech[100:5000]]
    features = extractor(items, sampling_rate=16000)
    assert features["frame_mask"].sum(1).tolist() == [81, 31, 50]
    restored = extractor.post_process(
        features["magnitude"], features["phase"], features["norm_factor"], features["num_samples"]
    )
    for item, wave in zip(items, restored, strict=True):
        np.testing.assert_allclose(wave, item, rtol=0, atol=1e-5)


def test_unit_rms_normalisation(extractor, speech):
    features = extractor(speech * 0.1, sampling_rate=16000)
    expected = np.sqrt(len(speech) / np.sum((speech.astype(np.float64) * 0.1) ** 2))
    assert float(features["norm_factor"][0]) == pytest.approx(expected, rel=1e-5)


def test_silence_is_not_divided_by_zero(extractor):
    features = extractor(np.zeros(4000, dtype=np.float32), sampling_rate=16000)
    assert float(features["norm_factor"][0]) == 1.0
    assert torch.isfinite(features["magnitude"]).all() and torch.isfinite(features["phase"]).all()


@pytest.mark.parametrize(
    "audio, kwargs, message",
    [
        (np.zeros(4000, np.float32), {"sampling_rate": 44100}, "works at 16000 Hz but the audio is at 44100 Hz"),
        (np.zeros((2, 3, 4000), np.float32), {"sampling_rate": 16000}, "Expected a waveform"),
        (np.zeros(150, np.float32), {"sampling_rate": 16000}, "at least 201"),
        (np.array([0.1, np.nan] * 2000, np.float32), {"sampling_rate": 16000}, "NaN or Inf"),
        (np.zeros(4000, np.int16), {"sampling_rate": 16000}, "expected float samples"),
        ([np.zeros((4000, 2), np.float32)], {"sampling_rate": 16000}, "mono waveform"),
    ],
)
def test_bad_input_is_rejected_with_a_reason(extractor, audio, kwargs, message):
    with pytest.raises(ValueError, match=message):
        extractor(audio, **kwargs)
