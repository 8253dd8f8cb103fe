"""Parity with checkpoints and outputs produced by the original MP-SENet and hybrid implementations."""

import pytest
import torch
from helpers import SHARED

from hybrid_mpsenet import (
    PRESETS,
    HybridMPSENetConfig,
    HybridMPSENetFeatureExtractor,
    HybridMPSENetModel,
    convert_original_checkpoint,
)
from hybrid_mpsenet.cli import main as cli_main

FIXTURES = SHARED / "fixtures" / "parity"
VARIANTS = {"mpsenet": "mpsenet", "hybrid_large": "hybrid-large", "hybrid_small": "hybrid-small"}
TOL = 1e-4
# The phase is atan2 of two decoder outputs; where both are close to 0 the angle is ill-conditioned and float32
# rounding differences of ~1e-7 become ~1e-3 rad. Phase and complex spectra are compared where that radius is not
# negligible (> 98.5 % of the bins; the median radius is ~0.5).
MIN_PHASE_RADIUS = 0.05

pytestmark = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"parity fixtures not found at {FIXTURES}")


def load_fixture(name):
    from safetensors.torch import load_file

    return load_file(FIXTURES / name / "io.safetensors")


def run_converted(name, tmp_path):
    folder = tmp_path / name
    convert_original_checkpoint(FIXTURES / name / "g_00000000", FIXTURES / name / "config.json", output_dir=folder)
    model = HybridMPSENetModel.from_pretrained(folder).eval()
    extractor = HybridMPSENetFeatureExtractor.from_pretrained(folder)
    io = load_fixture(name)
    features = extractor(io["noisy_wav"].numpy(), sampling_rate=16000)
    # The network is fed the original's features, so that its comparison does not include FFT rounding.
    features.update(magnitude=io["noisy_amp"], phase=io["noisy_pha"])
    radius = {}
    hooks = [
        model.phase_decoder.real_conv.register_forward_hook(lambda m, i, o: radius.__setitem__("real", o)),
        model.phase_decoder.imag_conv.register_forward_hook(lambda m, i, o: radius.__setitem__("imag", o)),
    ]
    with torch.no_grad():
        out = model(**features)
    for hook in hooks:
        hook.remove()
    audio = extractor.post_process(out.magnitude, out.phase, features["norm_factor"], features["num_samples"])[0]
    well_conditioned = torch.hypot(radius["real"], radius["imag"]).squeeze(1).transpose(1, 2) > MIN_PHASE_RADIUS
    return io, features, out, torch.from_numpy(audio)[None], well_conditioned


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=pytest.mark.slow) if name == "hybrid_large" else name for name in VARIANTS]
)
def test_converted_checkpoint_reproduces_original_outputs(name, tmp_path):
    io, features, out, audio, ok = run_converted(name, tmp_path)
    assert ok.float().mean() > 0.98
    assert abs(float(features["norm_factor"][0]) - float(io["norm_factor"])) <= 1e-6 * float(io["norm_factor"])
    torch.testing.assert_close(out.magnitude, io["amp_g"], rtol=0, atol=TOL)
    phase_error = torch.remainder(out.phase - io["pha_g"] + torch.pi, 2 * torch.pi) - torch.pi
    assert phase_error[ok].abs().max() <= TOL
    assert phase_error.abs().max() < 0.05  # even ill-conditioned bins stay close
    complex_error = (out.complex_spectrum - io["com_g"]).abs().amax(-1)
    assert complex_error[ok].max() <= TOL
    torch.testing.assert_close(audio, io["audio_g"], rtol=0, atol=TOL)


def test_features_match_original_stft():
    """Float32 FFTs differ by ~1e-7 of the frame energy between CPUs and libraries.

    The linear magnitude is compared absolutely, the compressed magnitude and the phase only where the bin is well
    above that rounding floor (89 % of the bins)."""
    io = load_fixture("mpsenet")
    extractor = HybridMPSENetFeatureExtractor()
    features = extractor(io["noisy_wav"].numpy(), sampling_rate=16000)
    linear, reference = features["magnitude"] ** (1 / 0.3), io["noisy_amp"] ** (1 / 0.3)
    torch.testing.assert_close(linear, reference, rtol=0, atol=TOL)
    audible = reference > 0.01
    assert audible.float().mean() > 0.85
    torch.testing.assert_close(features["magnitude"][audible], io["noisy_amp"][audible], rtol=0, atol=TOL)
    phase_error = torch.remainder(features["phase"] - io["noisy_pha"] + torch.pi, 2 * torch.pi) - torch.pi
    # An absolute error e of the spectrum moves the angle of a bin of linear magnitude m by about e / m.
    assert (phase_error.abs() * reference)[audible].max() <= TOL


@pytest.mark.parametrize("name", list(VARIANTS))
def test_preset_parameter_counts_equal_original(name):
    state = torch.load(FIXTURES / name / "g_00000000", weights_only=True)["generator"]
    model = HybridMPSENetModel(HybridMPSENetConfig.from_preset(VARIANTS[name]))
    assert model.num_parameters() == sum(t.numel() for t in state.values())
    assert len(model.state_dict()) == len(state)


def test_variant_detected_from_keys(tmp_path):
    for name, variant in VARIANTS.items():
        model = convert_original_checkpoint(FIXTURES / name / "g_00000000")
        assert model.num_parameters() == HybridMPSENetModel(HybridMPSENetConfig.from_preset(variant)).num_parameters()
        assert model.config.ts_transformer_axes == "freq_time"
        assert model.config.fusion == ("none" if variant == "mpsenet" else "pointwise")


def test_wrong_variant_names_missing_and_unexpected_keys():
    with pytest.raises(ValueError, match=r"does not fit variant 'hybrid-small'.*Missing keys.*unexpected keys") as err:
        convert_original_checkpoint(FIXTURES / "hybrid_large" / "g_00000000", variant="hybrid-small")
    assert "mamba_t" in str(err.value)


def test_damaged_checkpoint_is_reported(tmp_path):
    damaged = tmp_path / "g_damaged"
    damaged.write_bytes((FIXTURES / "mpsenet" / "g_00000000").read_bytes()[:100000])
    with pytest.raises(ValueError, match="Could not read checkpoint"):
        convert_original_checkpoint(damaged)
    state = torch.load(FIXTURES / "mpsenet" / "g_00000000", weights_only=True)["generator"]
    del state["mask_decoder.lsigmoid.slope"]
    partial = tmp_path / "g_partial"
    torch.save({"generator": state}, partial)
    with pytest.raises(ValueError, match="mask_decoder.mask_activation.slope"):
        convert_original_checkpoint(partial)


def test_cli_convert_and_info(tmp_path, capsys):
    out = tmp_path / "converted"
    assert (
        cli_main(
            [
                "convert",
                str(FIXTURES / "mpsenet" / "g_00000000"),
                str(out),
                "--config",
                str(FIXTURES / "mpsenet" / "config.json"),
            ]
        )
        == 0
    )
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in out.iterdir()}
    capsys.readouterr()
    assert cli_main(["info", str(out)]) == 0
    assert '"parameters": 2263372' in capsys.readouterr().out
    assert cli_main(["convert", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    assert "Could not read checkpoint" in capsys.readouterr().err
    assert set(PRESETS) == {"mpsenet", "hybrid-large", "hybrid-small", "mpsenet-causal", "hybrid-causal"}


def test_convert_never_replaces_a_folder_it_did_not_write(tmp_path, capsys):
    """A folder with the user's files is refused and left as it was; one written by convert needs --overwrite."""
    checkpoint, config = str(FIXTURES / "mpsenet" / "g_00000000"), str(FIXTURES / "mpsenet" / "config.json")
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    assert cli_main(["convert", checkpoint, str(home), "--config", config, "--overwrite"]) == 2
    assert "did not write (thesis.tex)" in capsys.readouterr().err
    assert [p.name for p in home.iterdir()] == ["thesis.tex"]
    assert (home / "thesis.tex").read_text() == "years of work"
    out = tmp_path / "converted"
    assert cli_main(["convert", checkpoint, str(out), "--config", config]) == 0
    assert cli_main(["convert", checkpoint, str(out), "--config", config]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main(["convert", checkpoint, str(out), "--config", config, "--overwrite"]) == 0
    assert (out / "model.safetensors").is_file()
