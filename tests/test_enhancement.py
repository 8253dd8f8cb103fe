import logging
import os
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from helpers import fast_config, tiny_config
from transformers import pipeline

from hybrid_mpsenet import HybridMPSENetFeatureExtractor, HybridMPSENetForSpeechEnhancement
from hybrid_mpsenet.audio import AudioError, from_float, to_float


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference**2) / np.sum((reference - estimate) ** 2)))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HybridMPSENetForSpeechEnhancement(tiny_config(n_fft=128, hop_length=64, win_length=128)).eval()


@pytest.fixture
def identity(model, monkeypatch):
    """The model with the network replaced by the identity: isolates resampling, chunking and crossfades."""
    monkeypatch.setattr(model, "enhance_segment", lambda segment, dtype=None, **controls: segment.copy())
    return model


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampling_round_trip_is_transparent(identity, speech, rate):
    # Band-limited to 8 kHz by construction, so the trip through 16 kHz must not change it.
    audio = soxr.resample(speech, 16000, rate, quality="VHQ") if rate != 16000 else speech
    if rate == 8000:
        audio = soxr.resample(audio, 8000, 8000)
    out = identity.enhance(audio, rate, chunk_seconds=0.6, overlap_seconds=0.2)
    assert out.shape == audio.shape and out.dtype == np.float32
    assert snr_db(audio[200:-200], out[200:-200]) > 40


def test_stereo_in_stereo_out_each_channel_enhanced_alone(model, speech):
    stereo = np.stack([speech, 0.3 * speech[::-1].copy()])
    out = model.enhance(stereo, 16000)
    assert out.shape == stereo.shape
    for channel in range(2):
        np.testing.assert_allclose(out[channel], model.enhance(stereo[channel], 16000), atol=1e-5)
    assert model.enhance(stereo, 16000, downmix=True).shape == speech.shape


def test_int_and_tensor_inputs_keep_their_type(model, speech):
    pcm = from_float(speech, np.int16)
    out = model.enhance(pcm, 16000)
    assert out.dtype == np.int16 and out.shape == pcm.shape
    tensor_out = model.enhance(torch.from_numpy(speech), 16000)
    assert isinstance(tensor_out, torch.Tensor)
    np.testing.assert_allclose(to_float(out), tensor_out.numpy(), atol=2 / 32768)


def test_whole_signal_matches_the_feature_extractor_path(model, speech):
    extractor = HybridMPSENetFeatureExtractor.from_model_config(model.config)
    features = extractor(speech, sampling_rate=16000)
    with torch.no_grad():
        output = model(**features)
    expected = extractor.post_process(output.magnitude, output.phase, features["norm_factor"], features["num_samples"])
    np.testing.assert_allclose(model.enhance(speech, 16000), expected[0], atol=1e-5)


def test_chunked_output_matches_whole_and_has_no_seams(model, speech):
    audio = np.concatenate([speech, speech[::-1], speech])  # 5.7 s
    whole = model.enhance(audio, 16000, chunk_seconds=60)
    chunked = model.enhance(audio, 16000, chunk_seconds=1.6, overlap_seconds=0.4)
    # Chunks see 1.6 s of context instead of 5.7 s, and this random model is very context-sensitive (measured
    # 16.9 dB); a 10-sample misalignment of the same model gives -3 dB, so 12 dB separates right from wrong.
    assert snr_db(whole, chunked) > 12


def test_chunk_seams_cause_no_level_jumps(model):
    # On stationary noise the whole output has a steady level; the chunked one must keep it in every 10 ms window,
    # the crossfades included (measured: at most 0.47 dB apart).
    noise = (0.1 * np.random.default_rng(0).standard_normal(16000 * 5)).astype(np.float32)
    whole = model.enhance(noise, 16000, chunk_seconds=60)
    chunked = model.enhance(noise, 16000, chunk_seconds=1.6, overlap_seconds=0.4)

    def levels(x):
        return 10 * np.log10(np.mean(x.reshape(-1, 160) ** 2, axis=1))

    assert np.abs(levels(chunked) - levels(whole)).max() < 1.0


def test_identity_chunking_reproduces_the_input_exactly(identity, speech):
    audio = np.concatenate([speech, speech])
    for chunk_seconds, overlap_seconds in [(1.0, 0.25), (0.5, 0.25), (3.0, 1.0), (60, 1.0)]:
        out = identity.enhance(audio, 16000, chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds)
        np.testing.assert_allclose(out, audio, atol=1e-6)


def test_short_silent_and_clipped_inputs(model, speech, caplog):
    short = speech[1000:1020]  # 20 samples, less than one STFT frame
    out = model.enhance(short, 16000)
    assert out.shape == short.shape and np.isfinite(out).all()
    with caplog.at_level(logging.WARNING):
        silent = model.enhance(np.zeros(8000, np.float32), 16000)
    assert np.isfinite(silent).all() and np.abs(silent).max() < 1e-3
    assert "silent" in caplog.text
    with caplog.at_level(logging.WARNING):
        model.enhance(np.clip(speech * 20, -1, 1), 16000)
    assert "clipped" in caplog.text


@pytest.mark.parametrize(
    ("audio", "match"),
    [
        (np.zeros(0, np.float32), "non-empty"),
        (np.zeros((48000, 2), np.float32), "must be \\(channels, samples\\)"),
        (np.array([0.1, np.nan] * 400, np.float32), "NaN or Inf"),
        (np.zeros((2, 2, 100), np.float32), "non-empty"),
    ],
)
def test_bad_waveforms_are_rejected(model, audio, match):
    with pytest.raises(AudioError, match=match):
        model.enhance(audio, 16000)


def test_bad_chunking_arguments(model, speech):
    with pytest.raises(ValueError, match="overlap_seconds"):
        model.enhance(speech, 16000, chunk_seconds=1.0, overlap_seconds=0.8)


def test_enhance_file_keeps_rate_channels_and_subtype(model, speech, tmp_path):
    stereo = soxr.resample(np.stack([speech, speech * 0.5]).T, 16000, 44100)
    sf.write(tmp_path / "in.wav", stereo, 44100, subtype="PCM_24")
    out = model.enhance_file(tmp_path / "in.wav", tmp_path / "out.wav", progress=False)
    info = sf.info(out)
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (44100, 2, len(stereo), "PCM_24")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.wav", "out.wav"]  # no temporary file left
    written = sf.read(out, dtype="float32")[0].T
    stored = sf.read(tmp_path / "in.wav", dtype="float32")[0].T
    np.testing.assert_allclose(written, model.enhance(stored, 44100), atol=2**-22)
    flac = model.enhance_file(tmp_path / "in.wav", tmp_path / "out.flac", downmix=True, progress=False)
    assert sf.info(flac).channels == 1 and sf.info(flac).format == "FLAC"
    told = model.enhance_file(tmp_path / "in.wav", tmp_path / "f.wav", subtype="FLOAT", progress=False)
    assert sf.info(told).subtype == "FLOAT"
    with pytest.raises(AudioError, match="cannot store subtype 'FLOAT'"):
        model.enhance_file(tmp_path / "in.wav", tmp_path / "f.flac", subtype="FLOAT", progress=False)


def test_enhance_file_errors_name_the_file_and_lose_nothing(model, speech, tmp_path):
    sf.write(tmp_path / "ok.wav", speech, 16000)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00not audio at all" * 10)
    (tmp_path / "empty.wav").write_bytes(b"")
    sf.write(tmp_path / "zero.wav", np.zeros(0, np.float32), 16000)
    sf.write(tmp_path / "nan.wav", np.array([0.1, np.nan] * 800, np.float32), 16000, subtype="FLOAT")
    (tmp_path / "blocker").write_text("a file where a folder is expected")
    cases = [
        ("corrupt.wav", "out1.wav", "corrupt.wav: not a readable audio file"),
        ("empty.wav", "out2.wav", "empty.wav: not a readable audio file"),
        ("zero.wav", "out3.wav", "contains no samples"),
        ("nan.wav", "out4.wav", "NaN or Inf"),
        ("missing.wav", "out5.wav", "no such file"),
        ("ok.wav", "ok.wav", "refusing to overwrite the input"),
        ("ok.wav", "blocker/out.wav", "cannot write the output here"),
        ("ok.wav", "out.xyz", "unknown audio format"),
        ("ok.wav", ".", "is a folder; give an output file name, e.g. .*ok.wav"),
    ]
    for source, target, match in cases:
        with pytest.raises(AudioError, match=match):
            model.enhance_file(tmp_path / source, tmp_path / target, progress=False)
    model.enhance_file(tmp_path / "ok.wav", tmp_path / "out.wav", progress=False)
    with pytest.raises(FileExistsError, match="already exists"):
        model.enhance_file(tmp_path / "ok.wav", tmp_path / "out.wav", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["ok.wav", "corrupt.wav", "empty.wav", "zero.wav", "nan.wav", "blocker", "out.wav"]
    )
    original = from_float(speech, np.int16) / 32768
    np.testing.assert_array_equal(sf.read(tmp_path / "ok.wav", dtype="float32")[0], original)


def test_pipeline_on_path_array_and_list(model, speech, tmp_path):
    model.save_pretrained(tmp_path / "model")
    extractor = HybridMPSENetFeatureExtractor.from_pretrained(tmp_path / "model")  # saved along with the model
    assert (extractor.n_fft, extractor.hop_length) == (model.config.n_fft, model.config.hop_length)
    sf.write(tmp_path / "in.wav", speech, 16000)
    enhancer = pipeline("speech-enhancement", model=str(tmp_path / "model"), device="cpu")
    expected = model.enhance(speech, 16000)
    from_path = enhancer(str(tmp_path / "in.wav"))
    assert from_path["sampling_rate"] == 16000
    np.testing.assert_allclose(from_path["audio"], expected, atol=1e-4)
    np.testing.assert_allclose(enhancer(speech, sampling_rate=16000)["audio"], expected, atol=1e-5)
    many = enhancer([{"array": speech, "sampling_rate": 16000}, {"array": speech[:8000], "sampling_rate": 8000}])
    assert [item["audio"].shape for item in many] == [speech.shape, (8000,)]
    assert many[1]["sampling_rate"] == 8000
    batched = enhancer([speech, speech[:4000], speech], sampling_rate=16000, batch_size=2)
    for item, one in zip(batched, [speech, speech[:4000], speech], strict=True):
        np.testing.assert_array_equal(item["audio"], enhancer(one, sampling_rate=16000)["audio"])
    with pytest.raises(ValueError, match="needs its rate: pass sampling_rate"):
        enhancer(speech)


def test_pipeline_without_a_model_uses_the_bundled_one(speech):
    enhancer = pipeline("speech-enhancement", device="cpu")
    expected = HybridMPSENetForSpeechEnhancement.from_pretrained("default").enhance(speech, 16000)
    np.testing.assert_allclose(enhancer(speech, sampling_rate=16000)["audio"], expected, atol=1e-6)


@pytest.mark.slow
def test_memory_does_not_grow_with_duration(tmp_path):
    """Peak RSS for 10 minutes of audio stays within a bound of the peak for 30 seconds (subprocesses)."""
    HybridMPSENetForSpeechEnhancement(fast_config()).save_pretrained(tmp_path / "model")
    rng = np.random.default_rng(0)
    script = textwrap.dedent(
        """
        import resource, sys, torch
        from hybrid_mpsenet import HybridMPSENetForSpeechEnhancement
        torch.set_num_threads(2)
        model = HybridMPSENetForSpeechEnhancement.from_pretrained(sys.argv[1]).eval()
        model.enhance_file(sys.argv[2], sys.argv[3], progress=False)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        """
    )
    peaks = {}
    for minutes in (0.5, 10):
        path = tmp_path / f"{minutes}.wav"
        with sf.SoundFile(path, "w", 16000, 1, subtype="PCM_16") as handle:
            for _ in range(int(minutes * 6)):
                handle.write(0.05 * rng.standard_normal(160000).astype(np.float32))
        result = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "model"), str(path), str(tmp_path / f"out{minutes}.wav")],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks[minutes] = int(result.stdout.split()[-1]) / 1024  # MiB
        assert sf.info(tmp_path / f"out{minutes}.wav").frames == int(minutes * 60 * 16000)
    # Loading the whole 10-minute file alone would take 37 MiB as float32, its spectra several hundred more.
    print(f"peak RSS (MiB): {peaks}")
    assert peaks[10] - peaks[0.5] < 30, peaks


def test_every_readable_format_converts_to_every_writable_one(identity, tmp_path):
    """Each input subtype the output format cannot hold (MP3 data into WAV, DPCM into FLAC) falls back to the
    output's default; unseekable formats (XI) are read twice from fresh handles. A format that cannot store the
    input's rate (WVE holds only 8 kHz) is an error naming the output, never a file at the wrong speed."""
    audio = (0.1 * np.sin(np.arange(8000) / 5)).astype(np.float32)
    formats = [name for name in sf.available_formats() if name != "RAW"]  # RAW has no header to read back
    for name in formats:
        sf.write(tmp_path / f"in.{name.lower()}", audio, 16000, format=name)
    with pytest.raises(AudioError, match="out.sd2: Sound Designer II files cannot be written safely"):
        identity.enhance_file(tmp_path / "in.wav", tmp_path / "out.sd2", progress=False)
    refused = set()
    for source in formats:
        rate = sf.info(tmp_path / f"in.{source.lower()}").samplerate  # XI stores 44.1 kHz whatever it is given
        for target in [name for name in formats if name != "SD2"]:
            out = tmp_path / source / f"out.{target.lower()}"
            try:
                identity.enhance_file(tmp_path / f"in.{source.lower()}", out, progress=False)
            except AudioError as error:
                assert str(error).startswith(f"{out}: cannot write {target} audio") and "stores" in str(error)
                refused.add((rate, target))
                continue
            info = sf.info(out)
            assert (info.format, info.samplerate, info.channels) == (target, rate, 1), source
            # libsndfile's VOC reader counts one frame more in A-law files than were written
            assert info.frames == 8000 or (target, info.subtype, info.frames) == ("VOC", "ALAW", 8001), source
        assert not [p.name for p in (tmp_path / source).iterdir() if p.name.startswith(".")]
    assert {(16000, "WVE"), (16000, "XI"), (44100, "WVE")} <= refused  # WVE: 8 kHz only; XI: 44.1 kHz only


def test_write_errors_name_the_users_path_not_the_temporary_file(identity, tmp_path):
    sf.write(tmp_path / "hi.wav", np.zeros(4000, np.float32) + 0.1, 96000)
    sf.write(tmp_path / "three.wav", np.zeros((4000, 3), np.float32) + 0.1, 16000)
    for name, reason in [("hi", "MPEG-1/2/2.5 only supports sample rates"), ("three", "16000 Hz, 3 channel")]:
        with pytest.raises(AudioError, match=reason) as error:
            identity.enhance_file(tmp_path / f"{name}.wav", tmp_path / f"{name}.mp3", progress=False)
        assert str(error.value).startswith(str(tmp_path / f"{name}.mp3")) and "/." not in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hi.wav", "three.wav"]


def test_outputs_get_the_usual_mode_under_the_umask(identity, speech, tmp_path):
    sf.write(tmp_path / "in.wav", speech, 16000)
    for umask, mode in [(0o022, 0o644), (0o002, 0o664)]:
        previous = os.umask(umask)
        try:
            out = identity.enhance_file(tmp_path / "in.wav", tmp_path / f"{umask:o}.wav", progress=False)
        finally:
            os.umask(previous)
        assert stat.S_IMODE(out.stat().st_mode) == mode


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sampling_rate": None}, "must be a number of Hz.*None"),
        ({"sampling_rate": "16000"}, "must be a number of Hz.*'16000'"),
        ({"sampling_rate": float("nan")}, "whole number of Hz.*nan"),
        ({"sampling_rate": 16000.5}, "whole number of Hz"),
        ({"sampling_rate": 1}, "1 Hz is outside the supported 4000-768000 Hz"),
        ({"sampling_rate": 10**9}, "outside the supported"),
        ({"sampling_rate": 16000, "chunk_seconds": float("nan")}, "chunk_seconds must be a finite number.*nan"),
        ({"sampling_rate": 16000, "overlap_seconds": float("inf")}, "overlap_seconds must be a finite.*inf"),
        ({"sampling_rate": 16000, "dtype": "int8"}, "dtype must be.*'int8'"),
        ({"sampling_rate": 16000, "dtype": torch.int64}, "dtype must be"),
    ],
)
def test_bad_arguments_say_what_was_received(model, speech, kwargs, match):
    with pytest.raises(ValueError, match=match):
        model.enhance(speech, **kwargs)


def test_dtype_names_are_accepted(model, speech):
    expected = model.enhance(speech, 16000, dtype=torch.bfloat16)
    np.testing.assert_array_equal(model.enhance(speech, 16000, dtype="bfloat16"), expected)
    np.testing.assert_array_equal(model.enhance(speech, 16000, dtype="float32"), model.enhance(speech, 16000))


def test_a_truncated_file_is_enhanced_with_a_warning(identity, speech, tmp_path, caplog):
    sf.write(tmp_path / "whole.wav", speech, 16000)
    data = (tmp_path / "whole.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING):
        out = identity.enhance_file(tmp_path / "cut.wav", tmp_path / "out.wav", progress=False)
    assert "cut.wav looks truncated" in caplog.text
    assert sf.info(out).frames == sf.info(tmp_path / "cut.wav").frames > 0
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        identity.enhance_file(tmp_path / "whole.wav", tmp_path / "out2.wav", progress=False)
    assert "truncated" not in caplog.text


def test_a_header_claiming_an_absurd_rate_is_rejected(model, tmp_path):
    sf.write(tmp_path / "one_hz.wav", np.zeros(4000, np.int16), 1)
    with pytest.raises(AudioError, match="one_hz.wav: the sampling rate of 1 Hz is outside"):
        model.enhance_file(tmp_path / "one_hz.wav", tmp_path / "out.wav", progress=False)
    assert not (tmp_path / "out.wav").exists()


def test_non_finite_output_is_never_returned_or_written(speech, tmp_path):
    broken = HybridMPSENetForSpeechEnhancement(tiny_config(n_fft=128, hop_length=64, win_length=128)).eval()
    with torch.no_grad():
        next(broken.parameters()).fill_(float("nan"))
    with pytest.raises(AudioError, match="The waveform: the model produced non-finite samples"):
        broken.enhance(speech, 16000)
    sf.write(tmp_path / "in.wav", speech, 16000)
    with pytest.raises(AudioError, match="in.wav: the model produced non-finite samples"):
        broken.enhance_file(tmp_path / "in.wav", tmp_path / "out.wav", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.wav"]
