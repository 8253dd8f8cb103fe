"""Loading that cannot silently produce garbage: checkpoints must fit their config exactly, configs must state their
architecture, weights must be finite, and a config's auto_map never makes our loading path run foreign code."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import tiny_config
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from hybrid_mpsenet import (
    HybridMPSENetConfig,
    HybridMPSENetEnhancer,
    HybridMPSENetForSpeechEnhancement,
    HybridMPSENetModel,
    HybridMPSENetNetwork,
)
from hybrid_mpsenet.cli import main


@pytest.fixture
def saved(tmp_path):
    """A saved tiny model folder."""
    folder = tmp_path / "model"
    HybridMPSENetForSpeechEnhancement(tiny_config(n_fft=128, hop_length=64, win_length=128)).save_pretrained(folder)
    return folder


def edit_weights(folder, edit) -> None:
    weights = load_file(folder / "model.safetensors")
    edit(weights)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def edit_config(folder, edit) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


def enhance_with(folder, tmp_path, speech, capsys) -> str:
    """Run `hybrid-mpsenet enhance --model folder`; it must fail before writing anything. Returns stderr."""
    sf.write(tmp_path / "in.wav", speech, 16000)
    assert main(["enhance", str(tmp_path / "in.wav"), "--model", str(folder), "-q"]) == 2
    assert not (tmp_path / "in_enhanced.wav").exists()
    return capsys.readouterr().err


def test_a_missing_tensor_is_an_error_naming_it(saved, tmp_path, speech, capsys):
    edit_weights(saved, lambda weights: weights.pop("phase_decoder.real_conv.weight"))
    for cls in (HybridMPSENetModel, HybridMPSENetForSpeechEnhancement, HybridMPSENetNetwork):
        with pytest.raises(ValueError, match="missing keys: phase_decoder.real_conv.weight.*truncated"):
            cls.from_pretrained(saved)
    assert "missing keys: phase_decoder.real_conv.weight" in enhance_with(saved, tmp_path, speech, capsys)


def test_weights_of_another_variant_are_an_error(tmp_path):
    HybridMPSENetModel(tiny_config(num_shared_blocks=2)).save_pretrained(tmp_path / "two")
    HybridMPSENetModel(tiny_config(num_shared_blocks=1)).save_pretrained(tmp_path / "one")
    (tmp_path / "one" / "model.safetensors").write_bytes((tmp_path / "two" / "model.safetensors").read_bytes())
    for cls in (HybridMPSENetModel, HybridMPSENetNetwork):
        with pytest.raises(ValueError, match="unexpected keys: shared_blocks.1.*another variant"):
            cls.from_pretrained(tmp_path / "one")


def test_a_mis_shaped_tensor_is_an_error(saved):
    edit_weights(saved, lambda weights: weights.update(window=torch.ones(64)))
    with pytest.raises((ValueError, RuntimeError), match="window"):
        HybridMPSENetModel.from_pretrained(saved)
    edit_weights(saved, lambda weights: weights.pop("window"))
    edit_weights(saved, lambda weights: weights.update({"mask_decoder.output_conv.bias": torch.zeros(3)}))
    mismatch = r"mismatched keys: mask_decoder.output_conv.bias \(\[3\] in the checkpoint, \[1\] here"
    for cls in (HybridMPSENetModel, HybridMPSENetNetwork):
        with pytest.raises(ValueError, match=mismatch):
            cls.from_pretrained(saved)


@pytest.mark.parametrize("key", ["num_shared_blocks", "n_fft", "fusion"])
def test_a_config_without_an_architecture_key_is_an_error(saved, tmp_path, speech, capsys, key):
    edit_config(saved, lambda config: config.pop(key))
    with pytest.raises(ValueError, match=f"The model config lacks {key};.*edited or truncated"):
        HybridMPSENetForSpeechEnhancement.from_pretrained(saved)
    assert f"lacks {key}" in enhance_with(saved, tmp_path, speech, capsys)


def test_non_finite_weights_are_rejected_with_the_tensor_name(saved, tmp_path, speech, capsys):
    def poison(weights):
        weights["encoder.input_conv.conv.weight"][0, 0, 0, 0] = float("nan")

    edit_weights(saved, poison)
    for cls in (HybridMPSENetForSpeechEnhancement, HybridMPSENetEnhancer):
        with pytest.raises(ValueError, match="NaN or Inf in encoder.input_conv.conv.weight"):
            cls.from_pretrained(saved)
    assert "NaN or Inf in encoder.input_conv.conv.weight" in enhance_with(saved, tmp_path, speech, capsys)


def test_output_loading_info_is_still_available(saved):
    model, info = HybridMPSENetModel.from_pretrained(saved, output_loading_info=True)
    assert isinstance(model, HybridMPSENetModel) and not info["missing_keys"] and not info["unexpected_keys"]


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"hop_length": 256, "win_length": 128, "n_fft": 128}, "hop_length \\(256\\) must be between"),
        ({"hop_length": 1, "win_length": 400, "n_fft": 400}, "hop_length \\(1\\) must be between win_length / 16"),
        ({"beta": float("inf")}, "beta must be positive and finite"),
        ({"dense_depth": 100}, "dense_depth must be at most 8"),
        ({"sampling_rate": 10**9}, "sampling_rate must be between 4000 and 768000 Hz"),
        ({"sampling_rate": 1}, "sampling_rate must be between"),
    ],
)
def test_configs_that_cannot_work_are_rejected(values, match):
    with pytest.raises(ValueError, match=match):
        HybridMPSENetConfig(**values)


def test_a_foreign_auto_map_never_runs_code_in_our_loading_path(saved, tmp_path, speech, capsys):
    marker = tmp_path / "foreign_code_ran"
    (saved / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import PreTrainedConfig, PreTrainedModel\n"
        "class EvilConfig(PreTrainedConfig):\n    model_type = 'hybrid_mpsenet'\n"
        "class EvilModel(PreTrainedModel):\n    config_class = EvilConfig\n"
    )
    edit_config(
        saved, lambda config: config.update(auto_map={"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"})
    )
    loaded = [HybridMPSENetForSpeechEnhancement.from_pretrained(saved), HybridMPSENetModel.from_pretrained(saved)]
    loaded.append(AutoModel.from_pretrained(saved))
    assert [type(model).__module__.split(".")[0] for model in loaded] == ["hybrid_mpsenet"] * 3
    sf.write(tmp_path / "in.wav", speech, 16000)
    assert main(["enhance", str(tmp_path / "in.wav"), "--model", str(saved), "-q"]) == 0
    assert np.isfinite(sf.read(tmp_path / "in_enhanced.wav")[0]).all()
    assert not marker.exists()


@pytest.mark.slow
def test_the_lean_model_computes_what_the_transformers_model_computes(tmp_path, speech):
    """Every block kind, both branches and the fusion: same parameters, same outputs, also from sharded weights."""
    model = HybridMPSENetForSpeechEnhancement(tiny_config()).eval()
    model.save_pretrained(tmp_path / "one")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    expected = model.enhance(speech, 16000)
    for folder in ("one", "sharded"):
        lean = HybridMPSENetEnhancer.from_pretrained(tmp_path / folder)
        assert not lean.training and lean.state_dict().keys() == model.state_dict().keys()
        np.testing.assert_array_equal(lean.enhance(speech, 16000), expected)


def test_the_lean_model_refuses_a_folder_without_weights(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(OSError, match="model.safetensors"):
        HybridMPSENetNetwork.from_pretrained(saved)
