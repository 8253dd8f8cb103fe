import numpy as np
import pytest
import torch
from helpers import run_without_package, tiny_config
from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

from hybrid_mpsenet import HybridMPSENetConfig, HybridMPSENetFeatureExtractor, HybridMPSENetModel
from hybrid_mpsenet.network import TSTransformerBlock

CONFIGS = {
    "hybrid-criss-cross": {},
    "mpsenet-like": {"num_magnitude_blocks": 0, "num_phase_blocks": 0, "fusion": "none", "num_shared_blocks": 2},
    "mamba-shared-pointwise": {"shared_block_type": "mamba", "mamba_share_time_freq": True, "fusion": "pointwise"},
    "original-axes": {"ts_transformer_axes": "freq_time", "self_attention_kv": "raw"},
}


def make(name):
    model = HybridMPSENetModel(tiny_config(**CONFIGS[name])).eval()
    return model, HybridMPSENetFeatureExtractor.from_model_config(model.config)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_batch_of_different_lengths_equals_single_runs(name, speech):
    model, extractor = make(name)
    items = [speech[:4000], speech[5000:7500]]
    batch = extractor(items, sampling_rate=16000)
    with torch.no_grad():
        out = model(**batch)
        for i, item in enumerate(items):
            single = extractor(item, sampling_rate=16000)
            alone = model(**single)
            frames = single["magnitude"].shape[-1]
            torch.testing.assert_close(out.magnitude[i : i + 1, :, :frames], alone.magnitude, rtol=1e-4, atol=1e-5)
            # float32 sums split differently by batch and thread count move a phase by up to about 2e-4 here
            torch.testing.assert_close(out.phase[i : i + 1, :, :frames], alone.phase, rtol=1e-4, atol=5e-4)
    waves = extractor.post_process(out.magnitude, out.phase, batch["norm_factor"], batch["num_samples"])
    assert [w.shape[0] for w in waves] == [4000, 2500]


def test_items_of_a_batch_do_not_mix(speech):
    model, extractor = make("hybrid-criss-cross")
    a, b = speech[:3000], speech[3000:6000]
    with torch.no_grad():
        pair = model(**extractor([a, b], sampling_rate=16000)).magnitude
        other = model(**extractor([a, speech[6000:9000]], sampling_rate=16000)).magnitude
    torch.testing.assert_close(pair[0], other[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axes, changed_axis", [("time_freq", "freq"), ("freq_time", "time")])
def test_time_transformer_runs_along_the_configured_axis(axes, changed_axis):
    block = TSTransformerBlock(tiny_config(ts_transformer_axes=axes)).eval()
    captured = []
    block.time_transformer.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    x = torch.randn(1, 8, 10, 7)  # (batch, channels, time, freq)
    y = x.clone()
    y[0, :, 4, 2] += torch.randn(8)  # perturb frame 4, bin 2 (not a constant: LayerNorm would remove it)
    with torch.no_grad():
        block(x)
        block(y)
    diff = (captured[0] - captured[1]).abs().amax(dim=(1, 2))  # per sequence
    # "time_freq": sequences are frequency bins (one per bin): only bin 2's sequence changes.
    # "freq_time" (original checkpoints): sequences are frames: only frame 4's sequence changes.
    assert torch.nonzero(diff > 1e-6).flatten().tolist() == ([2] if changed_axis == "freq" else [4])


def test_criss_cross_attention_reads_the_context_along_time_and_frequency():
    attention = HybridMPSENetModel(tiny_config()).fusion.phase_to_magnitude.attention
    query, context = torch.randn(1, 10, 7, 8), torch.randn(1, 10, 7, 8)  # (batch, time, freq, channels)
    moved = context.clone()
    moved[0, 4, 2] += torch.randn(8)
    with torch.no_grad():
        changed = (attention.criss_cross(query, context) - attention.criss_cross(query, moved)).abs().amax(-1)[0] > 0
    expected = torch.zeros(10, 7, dtype=torch.bool)
    expected[:, 2] = True  # every frame of bin 2 attends along time to (4, 2)
    expected[4, :] = True  # every bin of frame 4 attends along frequency to (4, 2)
    assert torch.equal(changed, expected)


def test_fusion_mixes_both_branches():
    model = HybridMPSENetModel(tiny_config()).eval()
    mag, pha = torch.randn(1, 8, 10, 7), torch.randn(1, 8, 10, 7)
    with torch.no_grad():
        fused_mag, fused_pha = model.fusion(mag, pha)
        other_mag, other_pha = model.fusion(mag, pha + torch.randn_like(pha))
    assert (fused_mag - other_mag).abs().max() > 1e-3  # the magnitude branch reads the phase branch
    assert fused_pha.shape == pha.shape


def test_save_and_load_direct_and_auto(tmp_path, speech):
    model, extractor = make("hybrid-criss-cross")
    model.save_pretrained(tmp_path)
    extractor.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    features = extractor(speech[:3000], sampling_rate=16000)
    with torch.no_grad():
        expected = model(**features).complex_spectrum
        for loaded in (HybridMPSENetModel.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
            assert isinstance(loaded, HybridMPSENetModel)
            torch.testing.assert_close(loaded.window, torch.hann_window(model.config.win_length))
            torch.testing.assert_close(loaded.eval()(**features).complex_spectrum, expected, rtol=0, atol=0)
    auto_extractor = AutoFeatureExtractor.from_pretrained(tmp_path)
    assert isinstance(auto_extractor, HybridMPSENetFeatureExtractor)
    assert auto_extractor.to_dict() == extractor.to_dict()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), HybridMPSENetConfig)


@pytest.mark.slow
def test_trust_remote_code_loads_without_the_package(tmp_path, speech):
    model, extractor = make("hybrid-criss-cross")
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    extractor.save_pretrained(folder)
    assert (folder / "modeling_hybrid_mpsenet.py").exists() and (folder / "mamba.py").exists()
    features = extractor(speech[:3000], sampling_rate=16000)
    with torch.no_grad():
        expected = model(**features).magnitude.numpy()
    np.save(tmp_path / "expected.npy", expected)
    np.save(tmp_path / "wave.npy", speech[:3000])
    code = f"""
        import numpy as np, torch
        from transformers import AutoFeatureExtractor, AutoModel
        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        extractor = AutoFeatureExtractor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        features = extractor(np.load({str(tmp_path / "wave.npy")!r}), sampling_rate=16000)
        with torch.no_grad():
            out = model(**features).magnitude.numpy()
        np.testing.assert_allclose(out, np.load({str(tmp_path / "expected.npy")!r}), rtol=0, atol=0)
        print("remote code OK")
        """
    result = run_without_package(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote code OK" in result.stdout


def test_gradient_checkpointing_gives_the_same_gradients(speech):
    model = HybridMPSENetModel(tiny_config()).train()
    features = HybridMPSENetFeatureExtractor.from_model_config(model.config)(speech[:2000], sampling_rate=16000)

    def grads():
        model.zero_grad()
        model(features["magnitude"], features["phase"]).complex_spectrum.square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.activation_checkpointing_enable()
    assert model.shared_blocks[0].gradient_checkpointing
    recomputed = []
    for block in model.modules():
        if getattr(block, "gradient_checkpointing", False):
            original = block._gradient_checkpointing_func
            block._gradient_checkpointing_func = lambda *a, f=original, **kw: recomputed.append(1) or f(*a, **kw)
    checkpointed = grads()
    assert len(recomputed) == 3  # the shared, magnitude and phase blocks of the tiny config each ran checkpointed
    assert plain.keys() == checkpointed.keys() and len(plain) == len(list(model.parameters()))
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_init_follows_mamba_and_pytorch_conventions():
    config = tiny_config()
    model = HybridMPSENetModel(config)
    mamba = model.magnitude_blocks[0].mamba_t
    torch.testing.assert_close(mamba.A_log, torch.log(torch.arange(1, 5.0)).repeat(mamba.d_inner, 1))
    torch.testing.assert_close(mamba.D, torch.ones(mamba.d_inner))
    dt = torch.nn.functional.softplus(mamba.dt_proj.bias)
    assert (dt >= config.mamba_dt_init_floor * 0.999).all() and (dt <= config.mamba_dt_max * 1.001).all()
    assert mamba.dt_proj.weight.abs().max() <= mamba.dt_rank**-0.5
    assert torch.equal(model.mask_decoder.mask_activation.slope, torch.ones(config.num_freq_bins, 1))
    prelu = model.encoder.input_conv.activation.weight
    assert torch.equal(prelu, torch.full_like(prelu, 0.25))
    attention = model.shared_blocks[0].time_transformer.attention
    assert torch.equal(attention.in_proj_bias, torch.zeros_like(attention.in_proj_bias))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fusion": "concat"}, "fusion must be one of"),
        ({"shared_block_type": "lstm"}, "shared_block_type must be one of"),
        ({"n_fft": 402}, "multiple of 4"),
        ({"dense_channel": 10, "num_attention_heads": 4}, "divisible"),
        ({"num_phase_blocks": 0}, "needs both a magnitude and a phase branch"),
        ({"compress_factor": 0}, "compress_factor"),
        ({"num_shared_blocks": -1}, "non-negative"),
        ({"ts_transformer_axes": "time"}, "ts_transformer_axes"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**kwargs)
    with pytest.raises(ValueError, match="Unknown preset"):
        HybridMPSENetConfig.from_preset("huge")


def test_forward_rejects_wrong_shapes():
    model = HybridMPSENetModel(tiny_config())
    with pytest.raises(ValueError, match="frequency bins"):
        model(torch.zeros(1, 20, 5), torch.zeros(1, 20, 5))
    with pytest.raises(ValueError, match=r"\(batch, freq, time\)"):
        model(torch.zeros(33, 5), torch.zeros(33, 5))


PLAIN = {"num_magnitude_blocks": 0, "num_phase_blocks": 0, "fusion": "none", "branch_projection": False}


@pytest.mark.parametrize(
    "changes",
    [
        {"num_magnitude_blocks": 1, "magnitude_block_type": "mamba", "mamba_axes": "time"},
        {"num_magnitude_blocks": 1, "num_phase_blocks": 1, "fusion": "cross_attention", "branch_projection": True},
        {"num_shared_blocks": 2, "num_phase_blocks": 2, "phase_block_type": "mamba", "dropout": 0.1},
    ],
)
def test_grow_adds_blocks_that_start_as_identities_and_learn(changes, speech):
    model = HybridMPSENetModel(tiny_config(**PLAIN)).eval()
    extractor = HybridMPSENetFeatureExtractor.from_model_config(model.config)
    grown = model.grow(**changes).eval()
    assert all(getattr(grown.config, key) == value for key, value in changes.items())
    assert grown.num_parameters() > model.num_parameters()
    features = extractor(speech[:4000], sampling_rate=16000)
    with torch.no_grad():
        before, after = model(**features), grown(**features)
    torch.testing.assert_close(after.complex_spectrum, before.complex_spectrum, rtol=1e-5, atol=1e-6)
    old = set(model.state_dict())
    grown.train()
    grown(**features).magnitude.sum().backward()
    added = {name: p for name, p in grown.named_parameters() if name not in old}
    assert added and any(p.grad is not None and p.grad.abs().sum() > 0 for p in added.values())
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(grown.state_dict()[name], tensor)


@pytest.mark.parametrize(
    "base, changes, message",
    [
        (PLAIN, {"dense_channel": 16, "num_attention_heads": 2}, "reshaped: encoder"),
        (PLAIN, {"num_shared_blocks": 0}, "dropped: shared_blocks.0"),
        (PLAIN, {"ts_transformer_axes": "freq_time"}, "changes what the existing weights compute"),
        (PLAIN, {"num_shared_block": 2}, "Unknown config settings"),
        ({}, {"mamba_axes": "time"}, "dropped: magnitude_blocks.0.mamba_f"),
        ({**PLAIN, "num_magnitude_blocks": 1, "mamba_axes": "time"}, {"mamba_axes": "time_freq"}, "inside existing"),
        (PLAIN, {"ffn_hidden_size": 16}, "reshaped: shared_blocks.0"),
    ],
)
def test_grow_refuses_changes_to_existing_layers(base, changes, message):
    model = HybridMPSENetModel(tiny_config(**base))
    with pytest.raises(ValueError, match=message):
        model.grow(**changes)


def test_time_only_mamba_block_has_no_frequency_pass():
    config = tiny_config(mamba_axes="time")
    model = HybridMPSENetModel(config)
    names = list(model.state_dict())
    assert any(".mamba_t." in name for name in names) and not any(".mamba_f." in name for name in names)
    block = model.magnitude_blocks[0].eval()
    x = torch.randn(1, 8, 6, 5)
    y = x.clone()
    y[0, :, 3, 1] += torch.randn(8)  # only frame 3 of bin 1: a time-only pass leaves the other bins alone
    with torch.no_grad():
        changed = (block(x) - block(y)).abs().amax(dim=(0, 1))
    assert changed[:3].max() == 0 and changed[3:, 1].min() > 0
    assert changed[:, [0, 2, 3, 4]].max() == 0


def test_dense_blocks_without_gradients_compute_what_they_compute_with_them(speech):
    model, extractor = make("hybrid-criss-cross")
    block = model.encoder.dense_block
    x = torch.randn(2, 8, 30, 17)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, 20:] = False
    for frame_mask in (None, mask):
        with torch.no_grad():
            buffered = block(x, frame_mask)  # every layer writes into one padded buffer
        concatenated = block(x, frame_mask).detach()  # with autograd: concatenation and padding
        torch.testing.assert_close(buffered, concatenated, rtol=1e-5, atol=1e-6)
    features = extractor([speech[:4000], speech[5000:7500]], sampling_rate=16000)
    with torch.no_grad():
        buffered = model(**features).complex_spectrum
    torch.testing.assert_close(buffered, model(**features).complex_spectrum.detach(), rtol=1e-4, atol=1e-4)
