"""Causal models and streaming: every layer's carried state, the stream equal to the offline pass for any chunking,
the fixed latency, the streaming resampler, and the `stream` command."""

import shlex
import signal
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import DATA, tiny_config

from hybrid_mpsenet import HybridMPSENetConfig, HybridMPSENetFeatureExtractor, HybridMPSENetForSpeechEnhancement
from hybrid_mpsenet.audio import AudioError
from hybrid_mpsenet.cli import main
from hybrid_mpsenet.inference import HybridMPSENetEnhancer
from hybrid_mpsenet.mamba import Mamba, selective_scan, selective_scan_reference
from hybrid_mpsenet.network import MovingInstanceNorm
from hybrid_mpsenet.streaming import StreamingResampler

# Every kind of causal layer: TS-Transformer (windowed attention, forward GRU), Mamba along time and frequency or
# time only, one Mamba shared by both passes, branches with a pointwise fusion.
CAUSAL_VARIANTS = {
    "transformer": {},
    "mamba": {"shared_block_type": "mamba"},
    "mamba-time-only": {"shared_block_type": "mamba", "mamba_axes": "time"},
    "mamba-shared": {"shared_block_type": "mamba", "mamba_share_time_freq": True},
    "branches": {"num_magnitude_blocks": 1, "num_phase_blocks": 1, "fusion": "pointwise"},
}


@pytest.fixture(autouse=True)
def _one_thread():
    """The equalities compare a piece-by-piece computation with a whole one: on several threads PyTorch splits their
    float32 reductions differently (random weights then amplify ~1e-6 to ~1e-5), so they are measured on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def causal_config(**overrides) -> HybridMPSENetConfig:
    values = {"causal": True, "fusion": "none", "num_magnitude_blocks": 0, "num_phase_blocks": 0}
    values.update(causal_attention_window=5, mamba_scan_chunk_size=3)
    return tiny_config(**{**values, **overrides})


def causal_enhancer(seed: int = 0, **overrides) -> HybridMPSENetEnhancer:
    """A random causal model whose norms' affine maps are not the identity (so that every statistic matters)."""
    torch.manual_seed(seed)
    model = HybridMPSENetEnhancer(causal_config(**overrides)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, MovingInstanceNorm):
                module.weight.add_(0.2 * torch.randn_like(module.weight))
                module.bias.add_(0.2 * torch.randn_like(module.bias))
    return model


def random_pieces(total: int, rng: np.random.Generator, largest: int) -> list[slice]:
    """Consecutive slices covering `total`, of random sizes in 1..largest, several of size 1."""
    bounds, position = [0], 0
    while position < total:
        position = min(total, position + int(rng.choice([1, rng.integers(1, largest + 1)])))
        bounds.append(position)
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def stream_through(model, audio: np.ndarray, rate: int, pieces: list[slice], **kwargs) -> np.ndarray:
    """Feed `audio` (`(samples,)` or `(channels, samples)`) piece by piece; checks the fixed delay after each call."""
    channels = 1 if audio.ndim == 1 else audio.shape[0]
    stream = model.stream(sampling_rate=rate, channels=channels, **kwargs)
    outputs, received = [], 0
    for piece in pieces:
        block = audio[..., piece]
        outputs.append(stream.process(block))
        received += block.shape[-1]
        assert sum(out.shape[-1] for out in outputs) == max(0, received - stream.latency_samples)
    outputs.append(stream.flush())
    return np.concatenate(outputs, axis=-1)


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_config_refuses_what_looks_ahead_and_keeps_old_configs_non_causal():
    with pytest.raises(ValueError, match=r"causal=True cannot have fusion='cross_attention'"):
        tiny_config(causal=True)
    with pytest.raises(ValueError, match=r"ts_transformer_axes='batch_mixed'"):
        causal_config(ts_transformer_axes="batch_mixed")
    with pytest.raises(ValueError, match="hop_length == win_length"):
        causal_config(hop_length=64)
    with pytest.raises(ValueError, match="causal must be true or false"):
        causal_config(causal="yes")
    with pytest.raises(ValueError, match="causal_norm_seconds must be positive"):
        causal_config(causal_norm_seconds=0)
    config = tiny_config().to_dict()
    for key in ("causal", "causal_attention_window", "causal_norm_seconds"):
        config.pop(key)
    assert HybridMPSENetConfig.from_dict(config).causal is False
    for name in ("mpsenet-causal", "hybrid-causal"):
        assert HybridMPSENetConfig.from_preset(name).causal
    assert not any(HybridMPSENetConfig.from_preset(n).causal for n in ("mpsenet", "hybrid-large", "hybrid-small"))


def test_mamba_step_and_stateful_pieces_equal_the_scan():
    torch.manual_seed(0)
    mamba = Mamba(8, d_state=4, chunk_size=3).eval()
    x = torch.randn(2, 23, 8)
    with torch.no_grad():
        whole = mamba(x)
        state, steps = mamba.allocate_state(2), []
        for t in range(x.shape[1]):
            out, state = mamba.step(x[:, t], state)
            steps.append(out)
        torch.testing.assert_close(torch.stack(steps, 1), whole, atol=1e-6, rtol=1e-5)
        state, pieces = mamba.allocate_state(2), []
        for piece in (slice(0, 1), slice(1, 8), slice(8, 9), slice(9, 23)):
            out, state = mamba.forward_with_state(x[:, piece], state)
            pieces.append(out)
        torch.testing.assert_close(torch.cat(pieces, 1), whole, atol=1e-6, rtol=1e-5)


def test_selective_scan_carries_its_state_like_the_reference():
    torch.manual_seed(0)
    u, delta, z = torch.randn(2, 6, 20), torch.randn(2, 6, 20), torch.randn(2, 6, 20)
    A, B, C, D = -torch.rand(6, 4), torch.randn(2, 4, 20), torch.randn(2, 4, 20), torch.randn(6)
    initial = torch.randn(2, 6, 4)
    args = (u, delta, A, B, C, D, z)
    expected, expected_state = selective_scan_reference(
        *args, delta_softplus=True, initial_state=initial, return_last_state=True
    )
    with torch.no_grad():
        y, state = selective_scan(
            *args, delta_softplus=True, chunk_size=7, initial_state=initial, return_last_state=True
        )
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, expected_state, atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="for inference"):
        selective_scan(u.requires_grad_(), delta, A, B, C, initial_state=initial)


def test_moving_instance_norm_is_the_exponential_average_recurrence():
    torch.manual_seed(0)
    norm = MovingInstanceNorm(3, decay=0.9)
    x = torch.randn(2, 3, 300, 7) * 2 + 1  # longer than one matrix piece
    with torch.no_grad():
        out = norm(x)
    x64, mean, square, weight = x.double(), 0.0, 0.0, 0.0
    for t in range(x.shape[2]):
        frame = x64[:, :, t]
        mean, square, weight = 0.9 * mean + frame.mean(-1), 0.9 * square + frame.square().mean(-1), 0.9 * weight + 1
        mu, var = mean / weight, square / weight - (mean / weight) ** 2
        expected = (frame - mu[..., None]) / torch.sqrt(var[..., None] + 1e-5)
        torch.testing.assert_close(out[:, :, t].double(), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", sorted(CAUSAL_VARIANTS))
def test_pieces_with_one_cache_give_the_whole_spectrum_output(variant, speech):
    model = causal_enhancer(**CAUSAL_VARIANTS[variant])
    magnitude, phase, _ = model.spectrum(torch.from_numpy(speech[:6000])[None].repeat(2, 1))
    frames = magnitude.shape[-1]
    with torch.no_grad():
        whole = model(magnitude, phase)
        cache, pieces = {}, []
        for piece in random_pieces(frames, np.random.default_rng(1), 40):
            pieces.append(model(magnitude[..., piece], phase[..., piece], cache=cache))
    # Within 1e-5 of the peak: the phase decoder's atan2 is ill-conditioned where both of its maps are near zero.
    for name, axis in (("magnitude", -1), ("complex_spectrum", -2)):
        expected = getattr(whole, name)
        joined = torch.cat([getattr(p, name) for p in pieces], axis)
        torch.testing.assert_close(joined, expected, atol=1e-5 * expected.abs().max().item(), rtol=0)


def test_a_non_causal_model_takes_no_cache_and_cannot_stream():
    model = HybridMPSENetEnhancer(tiny_config()).eval()
    magnitude = torch.rand(1, model.config.num_freq_bins, 4)
    with pytest.raises(ValueError, match="Only causal models"):
        model(magnitude, magnitude, cache={})
    with pytest.raises(ValueError, match="cannot stream"):
        model.stream(sampling_rate=16000)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stream_equals_the_offline_pass_for_random_chunkings(seed, speech):
    """The specification: any chunking (1-sample calls included) gives the whole signal's spectrum -> network ->
    inverse STFT, the path training takes, and `enhance()`."""
    model = causal_enhancer(seed, **CAUSAL_VARIANTS[sorted(CAUSAL_VARIANTS)[seed % len(CAUSAL_VARIANTS)]])
    audio = speech[:8000]
    magnitude, phase, _ = model.spectrum(torch.from_numpy(audio)[None])
    with torch.no_grad():
        output = model(magnitude, phase)
    offline = model.waveform(output.magnitude, output.phase, len(audio))[0].numpy()
    streamed = stream_through(model, audio, 16000, random_pieces(len(audio), np.random.default_rng(seed), 700))
    assert streamed.shape == audio.shape
    assert relative_error(streamed, offline) < 1e-5
    assert relative_error(model.enhance(audio, 16000), offline) < 1e-5


@pytest.mark.parametrize("rate", [16000, 48000])
def test_stereo_stream_at_any_rate_equals_enhance(rate, speech):
    model = causal_enhancer(3, shared_block_type="mamba")
    rng = np.random.default_rng(rate)
    audio = np.stack([speech[: rate // 4], 0.3 * speech[rate // 4 : rate // 2]]).astype(np.float32)
    offline = model.enhance(audio, rate)
    streamed = stream_through(model, audio, rate, random_pieces(audio.shape[1], rng, 900))
    assert streamed.shape == audio.shape
    assert relative_error(streamed, offline) < 1e-5
    # Channels are independent: the second alone is the second of the pair.
    assert relative_error(model.enhance(audio[1], rate), offline[1]) < 1e-5


def test_stream_latency_and_its_bounds(speech):
    model = causal_enhancer()
    stream = model.stream(sampling_rate=16000)
    assert stream.latency_samples == model.config.n_fft - 1
    assert stream.latency_seconds == pytest.approx((model.config.n_fft - 1) / 16000)
    assert stream.process(speech[:10]).shape == (0,)
    tail = stream.flush()
    assert tail.shape == (10,)  # a stream shorter than the latency comes out whole at the flush
    with pytest.raises(RuntimeError, match="already flushed"):
        stream.flush()
    with pytest.raises(RuntimeError, match="was flushed"):
        stream.process(speech[:10])
    resampled = model.stream(sampling_rate=44100)
    # Both conversions add their look-ahead to the model's n_fft - 1 samples.
    assert resampled.latency_seconds > (model.config.n_fft - 1) / 16000
    assert resampled.latency_seconds < (model.config.n_fft - 1) / 16000 + 0.006


def test_frames_per_block_adds_hops_of_latency_and_keeps_the_output(speech):
    model = causal_enhancer(shared_block_type="mamba")
    audio = speech[:6000]
    expected = model.enhance(audio, 16000)
    pieces = random_pieces(len(audio), np.random.default_rng(4), 300)
    streamed = stream_through(model, audio, 16000, pieces, frames_per_block=3)
    assert relative_error(streamed, expected) < 1e-5
    stream = model.stream(sampling_rate=16000, frames_per_block=3)
    assert stream.latency_samples == model.config.n_fft - 1 + 2 * model.config.hop_length
    with pytest.raises(ValueError, match="frames_per_block must be a positive integer"):
        model.stream(sampling_rate=16000, frames_per_block=0)


def test_stream_rejects_bad_blocks_clearly(speech):
    model = causal_enhancer()
    stream = model.stream(sampling_rate=16000, channels=2)
    with pytest.raises(AudioError, match=r"2 channel\(s\): pass \(2, samples\)"):
        stream.process(speech[:100])
    with pytest.raises(AudioError, match="NaN or Inf"):
        stream.process(np.full((2, 5), np.nan, np.float32))
    with pytest.raises(AudioError, match="must be float"):
        stream.process(np.zeros((2, 5), np.int16))
    with pytest.raises(ValueError, match="channels must be a positive integer"):
        model.stream(sampling_rate=16000, channels=0)


def test_carried_state_does_not_grow_with_the_stream(speech):
    """What lets offline enhancement of a causal model run a file of any length in one pass: the cache is bounded."""
    model = causal_enhancer(**CAUSAL_VARIANTS["branches"], n_fft=128, hop_length=64, win_length=128)
    stream = model.stream(sampling_rate=16000)

    def state_bytes() -> int:
        cache = stream.enhance_frames.cache
        tensors = [t for value in cache.values() for t in (value if isinstance(value, tuple) else (value,))]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    stream.process(np.tile(speech, 2))
    early = state_bytes()
    stream.process(np.tile(speech, 4))
    assert state_bytes() == early > 0
    assert stream.pending.shape[1] < stream.latency_samples


def test_attenuation_limit_streams_and_pcs_is_refused(speech):
    model = causal_enhancer()
    audio = speech[:5000]
    limited = model.enhance(audio, 16000, attenuation_limit_db=6.0)
    assert relative_error(limited, model.enhance(audio, 16000)) > 1e-3  # the limit changes the output
    pieces = random_pieces(len(audio), np.random.default_rng(0), 500)
    assert relative_error(stream_through(model, audio, 16000, pieces, attenuation_limit_db=6.0), limited) < 1e-5
    with pytest.raises(ValueError, match="pcs rescales"):
        model.enhance(audio, 16000, pcs=True)


def test_causal_models_keep_the_level_and_the_feature_extractor_agrees(speech):
    """No utterance RMS: a causal model's features are the signal's own; the full-pass pipeline (feature extractor,
    forward, post_process) gives the stream's output."""
    model = causal_enhancer()
    extractor = HybridMPSENetFeatureExtractor.from_model_config(model.config)
    assert extractor.causal
    features = extractor(speech[:4000], sampling_rate=16000)
    assert float(features["norm_factor"][0]) == 1.0
    with torch.no_grad():
        output = model(features["magnitude"], features["phase"])
    levels, lengths = features["norm_factor"], features["num_samples"]
    (waveform,) = extractor.post_process(output.magnitude, output.phase, levels, lengths)
    assert relative_error(waveform, model.enhance(speech[:4000], 16000)) < 1e-5


def test_to_causal_warm_starts_from_the_offline_weights():
    offline = HybridMPSENetForSpeechEnhancement(tiny_config(fusion="pointwise")).eval()
    causal = offline.to_causal()
    assert causal.config.causal
    old, new = offline.state_dict(), causal.state_dict()
    gru = "shared_blocks.0.time_transformer.ffn"
    assert f"{gru}.gru.weight_ih_l0_reverse" in old and f"{gru}.gru.weight_ih_l0_reverse" not in new
    torch.testing.assert_close(new[f"{gru}.gru.weight_ih_l0"], old[f"{gru}.gru.weight_ih_l0"])
    torch.testing.assert_close(new[f"{gru}.linear.weight"], old[f"{gru}.linear.weight"][:, :8])
    shared = [name for name in new if new[name].shape == old[name].shape]
    time_ffn_outputs = [name for name in new if name.endswith("time_transformer.ffn.linear.weight")]
    assert len(time_ffn_outputs) == 2  # the shared and the phase branch's TS-Transformer
    assert len(shared) == len(new) - len(time_ffn_outputs)
    assert all(torch.equal(new[name], old[name]) for name in shared)
    with pytest.raises(ValueError, match="no causal form.*cross_attention"):
        HybridMPSENetForSpeechEnhancement(tiny_config()).to_causal()


def test_streaming_resampler_is_chunking_invariant_and_accurate():
    rng = np.random.default_rng(0)
    for in_rate, out_rate in ((48000, 16000), (16000, 44100), (22050, 16000)):
        noise = rng.standard_normal((2, 3000)).astype(np.float32)
        whole = StreamingResampler(in_rate, out_rate, 2)(noise, last=True)
        resampler, pieces = StreamingResampler(in_rate, out_rate, 2), []
        for piece in random_pieces(3000, rng, 400):
            pieces.append(resampler(noise[:, piece]))
        pieces.append(resampler(np.zeros((2, 0), np.float32), last=True))
        assert np.array_equal(np.concatenate(pieces, axis=1), whole)
        assert whole.shape[1] == -(-3000 * out_rate // in_rate)
        tone = np.sin(2 * np.pi * 1000 * np.arange(in_rate // 2) / in_rate).astype(np.float32)[None]
        converted = StreamingResampler(in_rate, out_rate, 1)(tone, last=True)[0]
        expected = np.sin(2 * np.pi * 1000 * np.arange(len(converted)) / out_rate)
        assert np.abs(converted - expected)[200:-200].max() < 1e-4


@pytest.fixture
def causal_folder(tmp_path):
    folder = tmp_path / "causal"
    model = HybridMPSENetForSpeechEnhancement(causal_config(n_fft=128, hop_length=32, win_length=128)).eval()
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("pcm", ["f32", pytest.param("s16", marks=pytest.mark.slow)])
def test_stream_command_pipes_pcm_and_equals_enhance(causal_folder, pcm, speech):
    audio = speech[:6000]
    dtype, scale = {"f32": ("<f4", 1.0), "s16": ("<i2", 32768.0)}[pcm]
    if scale != 1.0:
        audio = np.round(audio * scale).astype(np.int16) / np.float32(scale)
    raw = (audio * scale).astype(dtype).tobytes()
    command = [sys.executable, "-m", "hybrid_mpsenet.cli", "stream", "--model", str(causal_folder), "--rate", "16000"]
    done = subprocess.run([*command, "--format", pcm], input=raw, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    streamed = np.frombuffer(done.stdout, dtype=dtype) / scale
    expected = HybridMPSENetEnhancer.from_pretrained(causal_folder).enhance(audio.astype(np.float32), 16000)
    assert streamed.shape == audio.shape
    assert np.abs(streamed - expected).max() <= (1e-5 * np.abs(expected).max() if scale == 1.0 else 1.01 / scale)
    odd = subprocess.run([*command, "--format", pcm], input=raw + b"\x01", capture_output=True, timeout=120)
    assert odd.returncode == 2
    assert "not a whole 1-channel" in odd.stderr.decode()
    assert len(odd.stdout) == len(raw)  # everything before the stray byte was enhanced and written


@pytest.mark.slow
def test_enhance_stream_flag_gives_the_offline_file(causal_folder, tmp_path):
    noisy = DATA.parent.parent / "examples" / "audio" / "p257_418_noisy.wav"
    offline, streamed = tmp_path / "offline.wav", tmp_path / "streamed.wav"
    common = ["--model", str(causal_folder), "--subtype", "FLOAT", "-q"]
    assert main(["enhance", str(noisy), "-o", str(offline), *common]) == 0
    assert main(["enhance", str(noisy), "-o", str(streamed), "--stream", *common]) == 0
    a, _ = sf.read(offline, dtype="float32")
    b, _ = sf.read(streamed, dtype="float32")
    assert relative_error(b, a) < 1e-5
    assert main(["enhance", str(noisy), "-o", str(tmp_path / "x.wav"), "--stream", "-q"]) == 2  # default: offline


@pytest.mark.parametrize(
    ("sig", "code", "word"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_stream_command_ends_cleanly_on_a_signal_and_on_closed_pipes(causal_folder, speech, sig, code, word):
    command = [sys.executable, "-m", "hybrid_mpsenet.cli", "stream", "--model", str(causal_folder), "--rate", "16000"]
    raw = np.tile(speech, 2).astype("<f4").tobytes()
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdin.write(raw[:16000])  # less than a pipe buffer each way, so neither side blocks on the other
    process.stdin.flush()
    # Everything but the model's latency comes out; then the command waits for more input.
    latency = 4 * HybridMPSENetEnhancer.from_pretrained(causal_folder).stream(16000, 1).latency_samples
    first = process.stdout.read(16000 - latency)
    process.send_signal(sig)
    rest, error = process.communicate(timeout=120)
    assert process.returncode == code
    assert f"{word}; the enhanced tail was written" in error.decode()
    assert len(first) == 16000 - latency and len(rest) == latency  # the tail still in the model was flushed
    for redirect, name in (("<&-", "input (stdin) is closed"), (">&-", "output (stdout) is closed")):
        closed = subprocess.run(["bash", "-c", f"{shlex.join(command)} {redirect}"], capture_output=True, timeout=120)
        assert closed.returncode == 2 and name in closed.stderr.decode()
        assert "Traceback" not in closed.stderr.decode()
    script = f"{shlex.join(command)} | head -c 16 > /dev/null; exit ${{PIPESTATUS[0]}}"
    closed = subprocess.run(["bash", "-c", script], input=raw, capture_output=True, timeout=120)
    assert closed.returncode == 0
    assert "the output was closed; stopped" in closed.stderr.decode()
    assert "Traceback" not in closed.stderr.decode()
