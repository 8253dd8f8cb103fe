"""MUSE in the family: exact conversion of original checkpoints, the deformable convolution, any length, loading by
every class, and the bundled `muse-vb`.

The fixtures (`tests/fixtures/muse`, made by `scripts/make_muse_fixtures.py` with the original code) hold a perturbed
original generator and the original's inputs and outputs on real mixtures of 308 and 124 frames, in float32 and
float64. Float32 rounding alone moves the original's own magnitude by up to 7e-5 on these weights (float32 against
float64), so float64 is where the function is checked to be the same; float32 is checked at that rounding level.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from helpers import run_without_package
from safetensors.torch import load_file
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

from hybrid_mpsenet import (
    HybridMPSENetFeatureExtractor,
    HybridMPSENetForSpeechEnhancement,
    MuseConfig,
    MuseEnhancer,
    MuseForSpeechEnhancement,
    MuseModel,
    convert_original_checkpoint,
)
from hybrid_mpsenet.bundled import BUNDLED_MODELS
from hybrid_mpsenet.inference import HybridMPSENetEnhancer
from hybrid_mpsenet.network_muse import deform_conv2d

FIXTURES = Path(__file__).parent / "fixtures" / "muse"
EXAMPLES = Path(__file__).parents[1] / "examples" / "audio"
FRAMES = (308, 124)


@pytest.fixture(scope="module")
def converted():
    return convert_original_checkpoint(FIXTURES / "g_00000000", FIXTURES / "config.json").eval()


@pytest.fixture(scope="module")
def io():
    return load_file(FIXTURES / "io.safetensors")


def _phase_error(ours: torch.Tensor, theirs: torch.Tensor, magnitude: torch.Tensor) -> float:
    """Largest wrapped phase difference where the bin has energy (the phase of silence is ill-conditioned)."""
    difference = (ours.double() - theirs.double()).abs()
    difference = torch.minimum(difference, 2 * torch.pi - difference)
    return difference[magnitude > 1e-3 * magnitude.max()].max().item()


@pytest.mark.parametrize("frames", [pytest.param(FRAMES[0], marks=pytest.mark.slow), FRAMES[1]])
def test_converted_muse_computes_the_original_function_in_float64(converted, io, frames):
    model = converted.double()
    try:
        with torch.no_grad():
            out = model(io[f"noisy_amp_{frames}"].double(), io[f"noisy_pha_{frames}"].double())
    finally:
        converted.float()
    expected = io[f"amp_g64_{frames}"]
    assert (out.magnitude - expected).abs().max().item() <= 1e-9
    assert _phase_error(out.phase, io[f"pha_g64_{frames}"], expected) <= 1e-9


@pytest.mark.parametrize("frames", FRAMES)
def test_converted_muse_matches_the_original_in_float32_from_waveform_to_waveform(converted, io, frames):
    wav = io[f"noisy_wav_{frames}"]
    with torch.no_grad():
        norm_factor = torch.sqrt(len(wav) / torch.sum(wav**2))
        magnitude, phase, _ = converted.spectrum((wav * norm_factor)[None])
        torch.testing.assert_close(magnitude, io[f"noisy_amp_{frames}"], rtol=0, atol=1e-5)
        torch.testing.assert_close(phase, io[f"noisy_pha_{frames}"], rtol=0, atol=1e-5)
        out = converted(magnitude, phase)
        audio = converted.waveform(out.magnitude, out.phase, len(wav)) / norm_factor
    # Two float32 implementations of the same function differ by their rounding: a few times the original's own.
    assert (out.magnitude - io[f"amp_g_{frames}"]).abs().max().item() <= 5e-4
    assert _phase_error(out.phase, io[f"pha_g_{frames}"], io[f"amp_g_{frames}"]) <= 5e-3
    torch.testing.assert_close(out.complex_spectrum, io[f"com_g_{frames}"], rtol=0, atol=1e-3)
    torch.testing.assert_close(audio, io[f"audio_g_{frames}"], rtol=0, atol=1e-5)


def test_feature_extractor_gives_the_original_features(io):
    extractor = HybridMPSENetFeatureExtractor.from_model_config(MuseConfig())
    features = extractor(io["noisy_wav_124"].numpy(), sampling_rate=16000)
    torch.testing.assert_close(features["magnitude"], io["noisy_amp_124"], rtol=0, atol=1e-5)
    torch.testing.assert_close(features["phase"], io["noisy_pha_124"], rtol=0, atol=1e-5)


def test_deform_conv2d_with_zero_offsets_is_a_convolution():
    x = torch.randn(2, 6, 9, 11)
    weight = torch.randn(4, 3, 3, 3)
    bias = torch.randn(4)
    offset = torch.zeros(2, 2 * 9, 5, 6)
    out = deform_conv2d(x, offset, weight, bias, stride=(2, 2), padding=(1, 1))
    torch.testing.assert_close(out, F.conv2d(x, weight, bias, stride=2, padding=1, groups=2), rtol=1e-5, atol=1e-5)


def test_deform_conv2d_samples_bilinearly_with_zeros_outside():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    weight = torch.ones(1, 1, 1, 1)
    offset = torch.zeros(1, 2, 3, 4)
    offset[:, 0] = 0.5  # half a row down: the mean of each pixel and the one below it, zero below the last row
    offset[:, 1, 0, 0] = -1.5  # the first cell reads 1.5 columns left of the image: only zeros
    out = deform_conv2d(x, offset, weight)
    expected = torch.cat((0.5 * (x[..., :-1, :] + x[..., 1:, :]), 0.5 * x[..., -1:, :]), 2)
    expected[0, 0, 0, 0] = 0.0
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("groups,offset_groups,masked", [(4, 1, False), (1, 2, True), (2, 2, False)])
def test_deform_conv2d_equals_torchvision(groups, offset_groups, masked):
    ops = pytest.importorskip("torchvision.ops", reason="torchvision is not installed")
    x = torch.randn(2, 4, 7, 9)
    weight = torch.randn(4, 4 // groups, 3, 3)
    offset = torch.randn(2, offset_groups * 18, 7, 9) * 2
    mask = torch.rand(2, offset_groups * 9, 7, 9) if masked else None
    expected = ops.deform_conv2d(x, offset, weight, torch.randn(4) * 0, padding=(1, 1), mask=mask)
    torch.testing.assert_close(deform_conv2d(x, offset, weight, padding=(1, 1), mask=mask), expected)


@pytest.mark.parametrize("frames", [1, 2, 7, 101])
def test_any_number_of_frames_is_enhanced_to_the_same_number(frames):
    model = MuseModel(MuseConfig(num_blocks=1)).eval()
    magnitude = torch.rand(1, 256, frames)
    with torch.no_grad():
        out = model(magnitude, torch.rand(1, 256, frames) * 6 - 3)
    assert out.magnitude.shape == out.phase.shape == (1, 256, frames)
    assert torch.isfinite(out.complex_spectrum).all()


def test_bad_inputs_and_configs_are_named():
    model = MuseModel(MuseConfig(num_blocks=1)).eval()
    with pytest.raises(ValueError, match="256 frequency bins"):
        model(torch.rand(1, 201, 8), torch.rand(1, 201, 8))
    with pytest.raises(ValueError, match="no stream cache"):
        model(torch.rand(1, 256, 8), torch.rand(1, 256, 8), cache={})
    with pytest.raises(ValueError, match="attention_heads"):
        MuseConfig(attention_heads=[3, 2, 8])
    with pytest.raises(ValueError, match="multiple of 8"):
        MuseConfig(n_fft=400, win_length=400)


def test_the_bundled_muse_vb_loads_into_every_class_with_the_same_output():
    folder = BUNDLED_MODELS["muse-vb"]
    noisy, rate = sf.read(EXAMPLES / "p257_418_noisy.wav", dtype="float32")
    noisy = noisy[:30700]  # one training segment: enhance() runs it whole, like the feature extractor's path
    lean = HybridMPSENetEnhancer.from_pretrained("muse-vb")
    assert isinstance(lean, MuseEnhancer)
    complete = HybridMPSENetForSpeechEnhancement.from_pretrained("muse-vb")
    assert isinstance(complete, MuseForSpeechEnhancement)
    auto = AutoModel.from_pretrained(folder)
    assert isinstance(auto, MuseModel) and isinstance(AutoConfig.from_pretrained(folder), MuseConfig)
    extractor = AutoFeatureExtractor.from_pretrained(folder)
    assert extractor.n_fft == 510 and extractor.stft_epsilons is False
    features = extractor(noisy, sampling_rate=rate)
    with torch.no_grad():
        out = auto(**features)
    from_auto = extractor.post_process(out.magnitude, out.phase, features["norm_factor"], features["num_samples"])[0]
    lean_output = lean.enhance(noisy, sampling_rate=rate)
    np.testing.assert_allclose(lean_output, complete.enhance(noisy, sampling_rate=rate), atol=1e-6)
    np.testing.assert_allclose(lean_output, from_auto, atol=1e-5)
    assert (folder / "LICENSE").read_text().startswith("MIT License")


def test_muse_vb_removes_noise_from_a_real_voicebank_recording():
    from hybrid_mpsenet.metrics import si_sdr

    noisy, rate = sf.read(EXAMPLES / "p257_418_noisy.wav", dtype="float32")
    clean, _ = sf.read(EXAMPLES / "p257_418_clean.wav", dtype="float32")
    enhanced = MuseEnhancer.from_pretrained("muse-vb").enhance(noisy, sampling_rate=rate)
    assert si_sdr(clean, enhanced) > si_sdr(clean, noisy) + 5.0


@pytest.mark.slow
def test_convert_command_recognises_a_muse_generator(tmp_path, capsys):
    from hybrid_mpsenet.cli import main

    for extra in ([], ["--variant", "muse"]):
        out = tmp_path / f"model{len(extra)}"
        command = ["convert", str(FIXTURES / "g_00000000"), str(out), "--config", str(FIXTURES / "config.json")]
        assert main([*command, *extra]) == 0
        assert "511,408 parameters" in capsys.readouterr().out
        assert json.loads((out / "config.json").read_text())["model_type"] == "muse"
        assert isinstance(HybridMPSENetEnhancer.from_pretrained(out), MuseEnhancer)


def test_a_muse_checkpoint_refused_as_another_variant_names_the_keys():
    with pytest.raises(ValueError, match="does not fit variant 'mpsenet'"):
        convert_original_checkpoint(FIXTURES / "g_00000000", variant="mpsenet")


@pytest.mark.slow
def test_a_saved_muse_folder_loads_as_remote_code_without_the_package(converted, tmp_path):
    folder = tmp_path / "model"
    MuseModel.from_pretrained(BUNDLED_MODELS["muse-vb"]).save_pretrained(folder)
    code = f"""
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        with torch.no_grad():
            out = model(torch.rand(1, 256, 10), torch.rand(1, 256, 10))
        print(type(model).__name__, tuple(out.magnitude.shape))
    """
    result = run_without_package(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "(1, 256, 10)" in result.stdout


@pytest.mark.slow
def test_muse_vb_runs_on_onnx_runtime_with_the_pytorch_output():
    pytest.importorskip("onnxruntime")
    from hybrid_mpsenet.onnx import OnnxEnhancer

    noisy, rate = sf.read(EXAMPLES / "p257_418_noisy.wav", dtype="float32")
    onnx_output = OnnxEnhancer.from_pretrained("muse-vb").enhance(noisy, sampling_rate=rate)
    torch_output = MuseEnhancer.from_pretrained("muse-vb").enhance(noisy, sampling_rate=rate)
    # numpy's float64 STFT and PyTorch's float32 one differ in near-silent bins, where |X| ** 0.3 magnifies rounding
    # (MUSE has no epsilon there); the outputs agree to 64 dB.
    np.testing.assert_allclose(onnx_output, torch_output, atol=1e-3)
    difference = np.sum((onnx_output - torch_output) ** 2)
    assert 10 * np.log10(np.sum(torch_output**2) / difference) > 50


def test_a_hub_card_for_a_muse_model_describes_its_u_net():
    from hybrid_mpsenet.hub import build_model_card

    card = str(build_model_card(BUNDLED_MODELS["muse-vb"], "someone/muse"))
    assert "muse: u-net 7 stages x 4 x MET transformer" in card and "511,408 parameters" in card


def test_hybrid_muse_grown_from_muse_vb_enhances_real_audio_exactly_as_muse_vb():
    """Growing adds a Mamba branch beside the MET blocks of the preset's stages, each fused by cross-attention that
    starts at zero: on a real recording the grown model's output is muse-vb's (float32 rounding alone moves MUSE's
    output by up to 3e-7 between two copies of one model)."""
    noisy, rate = sf.read(EXAMPLES / "p257_418_noisy.wav", dtype="float32")
    muse = MuseForSpeechEnhancement.from_pretrained("muse-vb").eval()
    stages = MuseConfig.from_preset("hybrid-muse").mamba_stages
    grown = muse.grow(mamba_stages=stages).eval()
    assert sorted(name for name, module in grown.unet.named_children() if getattr(module, "mamba_branch", None)) == (
        sorted(stages)
    )
    added = sum(p.numel() for p in grown.parameters()) - sum(p.numel() for p in muse.parameters())
    assert added > 50_000  # three Mamba blocks and their fusions
    with torch.no_grad():
        expected, output = (model.enhance(noisy, sampling_rate=rate) for model in (muse, grown))
    assert np.abs(output - expected).max() <= 1e-6
    with pytest.raises(ValueError, match="mamba_stages must list stages"):
        muse.grow(mamba_stages=["middle"])


def test_hybrid_muse_says_where_its_mamba_blocks_and_fusion_are(capsys):
    from hybrid_mpsenet.cli import main

    described = MuseConfig.from_preset("hybrid-muse").describe()
    assert described["fusion"] == "cross_attention"
    assert described["blocks"]["mamba"] == (
        "1 x mamba (time, then frequency) beside the MET blocks of level2, bottom, decoder2"
    )
    assert MuseConfig().describe()["fusion"] == "none" and "mamba" not in MuseConfig().describe()["blocks"]
    assert main(["info", "hybrid-muse"]) == 0
    assert "beside the MET blocks of level2, bottom, decoder2" in capsys.readouterr().out


def test_a_grown_muse_trains_only_its_new_branches_toward_the_model_it_grew_from(tmp_path):
    """`train_only_new` freezes every weight the starting model had; `distill_weight` adds the distance to that
    model's outputs to the objective, logged as `train/distill`."""
    from helpers import DATA, training_arguments
    from safetensors.torch import load_file as load_tensors

    from hybrid_mpsenet.training import latest_checkpoint, train

    tiny = MuseConfig(n_fft=126, win_length=126, hop_length=64, dense_channel=8, dense_depth=2, num_blocks=1,
                      attention_heads=[1, 2, 4], segment_samples=0)  # fmt: skip
    MuseForSpeechEnhancement(tiny).save_pretrained(tmp_path / "base")
    speech = [str(DATA / name) for name in ("LJ001-0002.wav", "arctic_a0001.wav", "p232_001_clean.wav")]
    args = training_arguments(
        tmp_path,
        model=str(tmp_path / "base"),
        config_overrides='{"mamba_stages": ["bottom"]}',
        train_only_new=True,
        distill_weight=1.0,
        clean_dirs=speech,
        noise_dirs=[str(DATA / "running_tap_8s.wav")],
        items_per_epoch=4,
        max_steps=2,
        discriminator=False,
    )
    train(args)
    before = MuseForSpeechEnhancement.from_pretrained(tmp_path / "base").state_dict()
    after = load_tensors(next((latest_checkpoint(tmp_path / "run") / "generator").glob("*.safetensors")))
    assert all(torch.equal(after[name], tensor) for name, tensor in before.items())
    new = [name for name in after if name not in before]
    assert new and all(name.startswith("unet.bottom.mamba_branch.") for name in new)
    # The first step starts at the teacher's output (distance 0); after it, the branches have moved.
    history = json.loads((tmp_path / "run" / "history.jsonl").read_text().splitlines()[-1])
    assert history["train/distill"] > 0
    with pytest.raises(ValueError, match="need --model"):
        training_arguments(tmp_path, train_only_new=True, clean_dirs=speech, noise_dirs=speech)


def test_digital_silence_gives_finite_gradients_through_muses_exact_stft():
    """MUSE takes `|X| ** 0.3` and `angle(X)` without epsilons; at an exact zero (a silent stretch of enhanced audio
    re-analysed by the training losses) their gradients are zero, not NaN, and every value is unchanged."""
    model = MuseModel(MuseConfig(num_blocks=1))
    audio = torch.cat((torch.zeros(1, 2000), torch.randn(1, 2000) * 0.1), 1).requires_grad_()
    magnitude, phase, _ = model.spectrum(audio)
    (magnitude.sum() + phase.sum()).backward()
    assert torch.isfinite(audio.grad).all() and audio.grad[:, 2500:].abs().sum() > 0
    assert (magnitude[:, :, :5] == 0).all() and (phase[:, :, :5] == 0).all()
    spectrum = torch.stft(audio.detach(), 510, 100, 510, torch.hann_window(510), return_complex=True)
    torch.testing.assert_close(magnitude.detach(), spectrum.abs() ** 0.3)
