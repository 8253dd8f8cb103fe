"""ONNX export and the onnxruntime enhancer: graph parity with PyTorch for every block kind, the runtime without
PyTorch, the bundled graph, the CLI backend and damaged model folders."""

import itertools
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from helpers import DATA, tiny_config

from hybrid_mpsenet.bundled import BUNDLED_MODELS
from hybrid_mpsenet.cli import main
from hybrid_mpsenet.inference import HybridMPSENetEnhancer
from hybrid_mpsenet.modeling_hybrid_mpsenet import HybridMPSENetModel
from hybrid_mpsenet.onnx import (
    GRAPH_FILE,
    METADATA_CONFIG,
    METADATA_STATES,
    STEP_GRAPH_FILE,
    OnnxEnhancer,
    OnnxModelError,
)
from hybrid_mpsenet.onnx_export import export_onnx

pytestmark = pytest.mark.filterwarnings("ignore")

# The graphs: the network's own arithmetic, so PyTorch's output on the same spectra to float32 rounding.
GRAPH_TOLERANCE = 1e-4
# End to end the runtime's numpy STFT rounds differently from torch.stft, and the network amplifies the difference
# (the bundled model's float32 and float64 PyTorch outputs differ by 3% of the peak, the two backends by 0.5-1.2%); an
# untrained network amplifies it without bound, so end-to-end comparisons use the trained bundled models.
END_TO_END_TOLERANCE = 2e-2


def speech(seconds: float | None = None) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(DATA / "p232_001_noisy.wav", dtype="float32")
    if seconds is not None:
        audio = np.resize(audio, int(seconds * rate))
    return audio, rate


def export(model: torch.nn.Module, folder) -> OnnxEnhancer:
    export_onnx(model.eval(), folder)
    return OnnxEnhancer.from_pretrained(folder, threads=1)


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory):
    """A grown model: two Transformer shared blocks, a Mamba magnitude branch and a Transformer phase branch with
    branch projections, cross-attention fusion; every weight then perturbed, so no grown layer is an identity."""
    torch.manual_seed(0)
    base = HybridMPSENetModel(tiny_config(num_magnitude_blocks=0, num_phase_blocks=0, fusion="none"))
    grown = base.grow(
        num_shared_blocks=2,
        num_magnitude_blocks=1,
        num_phase_blocks=1,
        fusion="cross_attention",
        branch_projection=True,
    )
    model = HybridMPSENetEnhancer(grown.config)
    model.load_state_dict(grown.state_dict())
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval(), export(model, tmp_path_factory.mktemp("onnx") / "hybrid")


@pytest.fixture(scope="module")
def causal(tmp_path_factory):
    """The causal form: windowed attention, forward GRUs, Mamba states, moving norms; a step graph."""
    torch.manual_seed(1)
    model = HybridMPSENetEnhancer(tiny_config(causal=True, fusion="pointwise"))
    return model.eval(), export(model, tmp_path_factory.mktemp("onnx") / "causal")


def spectra_of(model, audio: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    waveform = torch.from_numpy(np.atleast_2d(audio) / np.sqrt(np.mean(np.square(audio))))
    magnitude, phase, _ = model.spectrum(waveform.float())
    return magnitude, phase


def assert_graph_matches(model, enhancer, magnitude, phase, length):
    """The graph and the PyTorch network on the same spectra give the same waveform within GRAPH_TOLERANCE of the
    peak (the phase is compared through the waveform, where a phase of a near-zero bin does not matter)."""
    with torch.inference_mode():
        expected = model(magnitude, phase)
        reference = model.waveform(expected.magnitude, expected.phase, length=length)
    outputs = enhancer.session.run(None, {"magnitude": magnitude.numpy(), "phase": phase.numpy()})
    got = model.waveform(torch.from_numpy(outputs[0]), torch.from_numpy(outputs[1]), length=length)
    peak = reference.abs().max().item()
    assert (got - reference).abs().max().item() <= GRAPH_TOLERANCE * peak


@pytest.mark.slow
def test_the_graph_is_the_network_on_real_speech(hybrid):
    model, enhancer = hybrid
    audio, _ = speech()
    magnitude, phase = spectra_of(model, audio)
    assert_graph_matches(model, enhancer, magnitude, phase, len(audio))


@pytest.mark.slow
def test_the_graph_takes_one_frame_and_batches(hybrid):
    model, enhancer = hybrid
    audio, _ = speech(0.5)
    magnitude, phase = spectra_of(model, np.stack([audio, audio[::-1], 0.1 * audio]))
    assert_graph_matches(model, enhancer, magnitude, phase, len(audio))
    magnitude, phase = (spectrum[:1, :, 100:101].contiguous() for spectrum in spectra_of(model, audio))  # one frame
    with torch.inference_mode():
        expected = model(magnitude, phase)
    got = enhancer.session.run(None, {"magnitude": magnitude.numpy(), "phase": phase.numpy()})
    expected_bins = expected.magnitude.numpy() * np.exp(1j * expected.phase.numpy())
    got_bins = got[0] * np.exp(1j * got[1])
    assert np.abs(got_bins - expected_bins).max() <= GRAPH_TOLERANCE * np.abs(expected_bins).max()


@pytest.mark.slow
def test_the_folder_loads_with_either_backend_and_the_graph_passes_the_checker(hybrid, tmp_path):
    model, enhancer = hybrid
    folder = enhancer.folder
    onnx.checker.check_model(str(folder / GRAPH_FILE), full_check=True)
    reloaded = HybridMPSENetEnhancer.from_pretrained(folder)
    for name, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    assert json.loads((folder / "preprocessor_config.json").read_text())["sampling_rate"] == 16000


@pytest.fixture(scope="module")
def bundled():
    return HybridMPSENetEnhancer.from_pretrained(), OnnxEnhancer.from_pretrained(threads=1)


def test_the_enhancer_matches_pytorch_end_to_end_at_any_rate_and_with_controls(bundled):
    model, enhancer = bundled
    audio, rate = speech()
    stereo = np.stack([audio, audio[::-1]])
    for kwargs in ({}, {"attenuation_limit_db": 6.0, "pcs": True}):
        expected = model.enhance(stereo, rate, **kwargs)
        got = enhancer.enhance(stereo, rate, **kwargs)
        assert got.shape == stereo.shape and got.dtype == np.float32
        assert np.abs(got - expected).max() <= END_TO_END_TOLERANCE * np.abs(expected).max()
    resampled = enhancer.enhance(np.resize(audio, 44100), 44100)
    assert resampled.shape == (44100,)
    # Chunked long audio: the same crossfade as PyTorch.
    long, _ = speech(7.0)
    expected = model.enhance(long, rate, chunk_seconds=2.0, overlap_seconds=0.5)
    got = enhancer.enhance(long, rate, chunk_seconds=2.0, overlap_seconds=0.5)
    assert np.abs(got - expected).max() <= END_TO_END_TOLERANCE * np.abs(expected).max()
    with pytest.raises(ValueError, match="runs in float32"):
        enhancer.enhance(audio, rate, dtype="bfloat16")


def test_the_step_graph_streams_like_the_pytorch_stream():
    model = HybridMPSENetEnhancer.from_pretrained("default-streaming")
    enhancer = OnnxEnhancer.from_pretrained("default-streaming", threads=1)
    audio, rate = speech(1.0)
    stereo = np.stack([audio, 0.5 * audio[::-1]])
    expected_stream, got_stream = model.stream(rate, channels=2), enhancer.stream(rate, channels=2)
    assert got_stream.latency_samples == expected_stream.latency_samples
    expected, got = [], []
    for start in range(0, stereo.shape[1], 700):
        expected.append(expected_stream.process(stereo[:, start : start + 700]))
        got.append(got_stream.process(stereo[:, start : start + 700]))
        assert got[-1].shape == expected[-1].shape
    expected.append(expected_stream.flush())
    got.append(got_stream.flush())
    expected, got = np.concatenate(expected, axis=1), np.concatenate(got, axis=1)
    peak = np.abs(expected).max()
    assert np.abs(got - expected).max() <= END_TO_END_TOLERANCE * peak
    # Offline enhancement of a causal model runs the same stream.
    np.testing.assert_allclose(enhancer.enhance(stereo, rate), got, atol=1e-6 * peak)
    # Blocks of two frames go through the graph together: one hop more latency, the same output.
    blocks = enhancer.stream(rate, channels=2, frames_per_block=2)
    assert blocks.latency_samples == got_stream.latency_samples + enhancer.config.hop_length
    pieces = [blocks.process(stereo[:, start : start + 333]) for start in range(0, stereo.shape[1], 333)]
    np.testing.assert_allclose(np.concatenate([*pieces, blocks.flush()], axis=1), got, atol=1e-6 * peak)


def assert_steps_match(model, enhancer, audio: np.ndarray, waveform_tolerance: float) -> None:
    """On identical spectra of three channels, the step graph run on 1, 2, 5, 1, 2, 5, ... frames per call (its
    states carried) gives the network's whole-spectrum pass: the magnitudes within GRAPH_TOLERANCE, the waveform
    within `waveform_tolerance` of its peak."""
    magnitude, phase = spectra_of(model, np.stack([audio, audio[::-1], 0.3 * audio]))
    with torch.inference_mode():
        expected = model(magnitude, phase)
    frames = enhancer._frame_enhancer(None, None)
    pieces, start = [], 0
    for size in itertools.cycle((1, 2, 5)):
        if start >= magnitude.shape[-1]:
            break
        pieces.append(
            frames._network(magnitude[..., start : start + size].numpy(), phase[..., start : start + size].numpy())
        )
        start += size
    got_magnitude, got_phase = (np.concatenate(parts, axis=-1) for parts in zip(*pieces, strict=True))
    np.testing.assert_allclose(got_magnitude, expected.magnitude.numpy(), atol=GRAPH_TOLERANCE)
    waveform = model.waveform(torch.from_numpy(got_magnitude), torch.from_numpy(got_phase), length=len(audio))
    reference = model.waveform(expected.magnitude, expected.phase, length=len(audio))
    assert (waveform - reference).abs().max().item() <= waveform_tolerance * reference.abs().max().item()


@pytest.mark.slow
def test_the_step_graph_carries_every_state(causal):
    """Mamba conv and SSM states, attention windows, GRU states, moving norms and convolution histories. The
    untrained network amplifies float32 rounding (onnxruntime's reductions differ from PyTorch's) ten times more
    than the trained one, hence its waveform tolerance."""
    model, enhancer = causal
    assert_steps_match(model, enhancer, speech(0.5)[0], waveform_tolerance=10 * GRAPH_TOLERANCE)


@pytest.mark.slow
def test_a_step_graph_of_one_frame_per_call_still_streams(causal, tmp_path):
    """Step graphs exported with a fixed frame axis of 1 (as before steps took several frames) run frame by frame."""
    model, enhancer = causal
    assert not enhancer._frame_enhancer(None, None).single_frame
    copy = damaged_copy(enhancer.folder, tmp_path)
    proto = onnx.load(str(copy / STEP_GRAPH_FILE))
    for node in proto.graph.input[:2]:
        frames = node.type.tensor_type.shape.dim[2]
        frames.Clear()
        frames.dim_value = 1
    onnx.save(proto, str(copy / STEP_GRAPH_FILE))
    single = OnnxEnhancer.from_pretrained(copy, threads=1)
    assert single._frame_enhancer(None, None).single_frame
    assert_steps_match(model, single, speech(0.5)[0], waveform_tolerance=10 * GRAPH_TOLERANCE)


def test_the_bundled_default_ships_its_graph_equal_to_its_weights(bundled):
    model, enhancer = bundled
    audio, rate = speech()
    magnitude, phase = spectra_of(model, audio)
    assert_graph_matches(model, enhancer, magnitude, phase, len(audio))


@pytest.mark.slow
def test_the_bundled_default_enhances_30_s_alike_on_both_backends(bundled):
    model, enhancer = bundled
    rate = speech()[1]
    # 30 s: enhanced in 2-s chunks by both backends (one 30-s attention would need 37 GB in onnxruntime).
    long, _ = speech(30.0)
    expected = model.enhance(long, rate)
    assert np.abs(enhancer.enhance(long, rate) - expected).max() <= END_TO_END_TOLERANCE * np.abs(expected).max()


def test_the_bundled_streaming_model_ships_its_step_graph_equal_to_its_weights():
    """Frame by frame on the same spectra, the step graph is the causal network's pass."""
    model = HybridMPSENetEnhancer.from_pretrained("default-streaming")
    enhancer = OnnxEnhancer.from_pretrained("default-streaming", threads=1)
    assert enhancer.config.causal and enhancer.graph_path.name == STEP_GRAPH_FILE
    assert_steps_match(model, enhancer, speech(1.0)[0], waveform_tolerance=GRAPH_TOLERANCE)


@pytest.mark.slow
def test_the_runtime_never_imports_torch_or_transformers(hybrid, causal, tmp_path):
    audio, rate = speech()
    sf.write(tmp_path / "noisy.wav", audio, rate)
    code = f"""
    import sys
    for name in ("torch", "transformers"):
        sys.modules[name] = None  # as if not installed
    import numpy as np
    from hybrid_mpsenet.onnx import OnnxEnhancer
    from hybrid_mpsenet.cli import main

    model = OnnxEnhancer.from_pretrained({str(hybrid[1].folder)!r})
    model.enhance_file({str(tmp_path / "noisy.wav")!r}, {str(tmp_path / "clean.wav")!r}, progress=False)
    stream = OnnxEnhancer.from_pretrained({str(causal[1].folder)!r}).stream(16000)
    out = np.concatenate([stream.process(np.zeros(1000, np.float32)), stream.flush()])
    assert out.shape == (1000,)
    code = main(["enhance", {str(tmp_path / "noisy.wav")!r}, "-o", {str(tmp_path / "cli.wav")!r}, "-q",
                 "--backend", "onnx", "--model", {str(hybrid[1].folder)!r}])
    assert code == 0
    assert main(["enhance", {str(tmp_path / "noisy.wav")!r}, "-o", {str(tmp_path / "x.wav")!r}, "-q"]) == 2
    loaded = [name for name, module in sys.modules.items() if module and name.startswith(("torch", "transformers"))]
    print("loaded:", sorted(loaded))
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "PyTorch is not installed here; use --backend onnx" in result.stderr
    assert "loaded: []" in result.stdout
    assert sf.info(tmp_path / "clean.wav").frames == len(audio)
    np.testing.assert_array_equal(sf.read(tmp_path / "cli.wav")[0], sf.read(tmp_path / "clean.wav")[0])


@pytest.mark.slow
def test_the_cli_exports_and_enhances_with_either_backend(hybrid, tmp_path, capsys):
    model, enhancer = hybrid
    audio, rate = speech()
    sf.write(tmp_path / "noisy.wav", audio, rate, subtype="FLOAT")
    for backend in ("onnx", "auto", "torch"):
        args = ["enhance", str(tmp_path / "noisy.wav"), "-o", str(tmp_path / f"{backend}.wav"), "-q"]
        assert main([*args, "--backend", backend, "--model", str(enhancer.folder)]) == 0
    onnx_out, auto_out, torch_out = (sf.read(tmp_path / f"{b}.wav")[0] for b in ("onnx", "auto", "torch"))
    np.testing.assert_array_equal(auto_out, onnx_out)  # auto takes the graph when the folder has one
    np.testing.assert_allclose(onnx_out, enhancer.enhance(audio, rate), atol=1e-6)
    np.testing.assert_allclose(torch_out, model.enhance(audio, rate), atol=1e-6)
    assert main(["export", "onnx", "--output_dir", str(enhancer.folder)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def damaged_copy(folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    return copy


def test_damaged_folders_are_clear_errors_naming_the_file(tmp_path):
    folder = BUNDLED_MODELS["default"]
    graph = (folder / GRAPH_FILE).read_bytes()

    copy = damaged_copy(folder, tmp_path / "truncated")
    (copy / GRAPH_FILE).write_bytes(graph[: len(graph) // 2])
    with pytest.raises(OnnxModelError, match=f"{GRAPH_FILE}: cannot load the graph: it is not a complete ONNX"):
        OnnxEnhancer(copy)

    copy = damaged_copy(folder, tmp_path / "config")
    config = json.loads((copy / "config.json").read_text())
    config["dense_channel"] += 8
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(OnnxModelError, match="another model than config.json describes .dense_channel="):
        OnnxEnhancer(copy)

    copy = damaged_copy(folder, tmp_path / "opset")
    proto = onnx.load(str(copy / GRAPH_FILE))
    for entry in proto.opset_import:
        if entry.domain == "":
            entry.version = 99
    onnx.save(proto, str(copy / GRAPH_FILE))
    with pytest.raises(OnnxModelError, match="its opset is not one this onnxruntime"):
        OnnxEnhancer(copy)

    copy = damaged_copy(folder, tmp_path / "missing")
    (copy / GRAPH_FILE).unlink()
    with pytest.raises(OnnxModelError, match=f"{GRAPH_FILE}: no such file; export the model first"):
        OnnxEnhancer(copy)


def test_special_files_and_damaged_metadata_are_one_line_errors(tmp_path, capsys):
    """config.json as a link to /dev/zero or as a FIFO is refused before reading (it would fill the memory or hang);
    graph metadata that is not the JSON it should be names the file and the key."""
    copy = damaged_copy(BUNDLED_MODELS["default-streaming"], tmp_path / "zero")
    (copy / "config.json").unlink()
    (copy / "config.json").symlink_to("/dev/zero")
    with pytest.raises(OnnxModelError, match="config.json: not a readable JSON config .*not a regular file"):
        OnnxEnhancer(copy)
    copy = damaged_copy(BUNDLED_MODELS["default-streaming"], tmp_path / "fifo")
    (copy / "config.json").unlink()
    os.mkfifo(copy / "config.json")
    speech = Path(__file__).parents[1] / "examples" / "audio" / "p257_418_noisy.wav"
    args = ["enhance", str(speech), "-o", str(tmp_path / "out.wav"), "--model", str(copy), "--backend", "onnx", "-q"]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "not a regular file" in error and len(error.strip().splitlines()) == 1

    for key, value in ((METADATA_STATES, "{}"), (METADATA_STATES, '[{"shape": [1, "x"]}]'), (METADATA_CONFIG, "[1]")):
        copy = damaged_copy(BUNDLED_MODELS["default-streaming"], tmp_path / f"meta{len(value)}")
        proto = onnx.load(str(copy / STEP_GRAPH_FILE))
        for entry in proto.metadata_props:
            if entry.key == key:
                entry.value = value
        onnx.save(proto, str(copy / STEP_GRAPH_FILE))
        with pytest.raises(OnnxModelError, match=f"its {key} metadata is missing or damaged"):
            OnnxEnhancer(copy)


def test_a_step_graph_without_its_state_inputs_is_refused(tmp_path):
    copy = damaged_copy(BUNDLED_MODELS["default-streaming"], tmp_path)
    proto = onnx.load(str(copy / STEP_GRAPH_FILE))
    # Rename the last state input: the graph still loads, but the runtime could not feed that state.
    last = proto.graph.input[-1]
    old, last.name = last.name, "renamed"
    for node in proto.graph.node:
        node.input[:] = ["renamed" if name == old else name for name in node.input]
    onnx.save(proto, str(copy / STEP_GRAPH_FILE))
    with pytest.raises(OnnxModelError, match=f"{STEP_GRAPH_FILE}: the graph lacks the inputs/outputs state"):
        OnnxEnhancer(copy)


def docs_block(after: str) -> str:
    """The first fenced bash block of the deployment page after the line containing `after`."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "deployment.md").read_text()
    start = text.index("```bash\n", text.index(after)) + len("```bash\n")
    return text[start : text.index("```", start)]


@pytest.mark.slow
def test_the_docs_pytorch_free_deployment_recipe_runs(tmp_path):
    """The documented recipe, verbatim, in a minimal checkout of this repository and a fresh virtual environment
    (packages from the registry): it installs no PyTorch and enhances the example with the bundled graph."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    checkout = tmp_path / "checkout"
    for name in ("pyproject.toml", "README.md", "src", "examples/audio"):
        source = root / name
        if source.is_dir():
            shutil.copytree(source, checkout / name, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
        else:
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, checkout / name)
    recipe = docs_block("**A deployment without PyTorch**")
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    command = f"set -euo pipefail\nPATH={Path(sys.executable).parent}:$PATH\n{recipe}\npip list --format freeze"
    result = subprocess.run(["bash", "-c", command], cwd=checkout, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    installed = {line.split("==")[0].lower() for line in result.stdout.splitlines()}
    assert "onnxruntime" in installed and "hybrid-mpsenet" in installed
    assert not installed & {"torch", "transformers"}
    enhanced, rate = sf.read(tmp_path / "enhanced.wav")
    assert rate == 16000 and len(enhanced) == sf.info(checkout / "examples/audio/p257_418_noisy.wav").frames


def test_the_stream_command_runs_the_step_graph():
    audio, rate = speech(1.0)
    command = [sys.executable, "-m", "hybrid_mpsenet.cli", "stream", "--model", "default-streaming", "--rate", "16000"]
    done = subprocess.run([*command, "--backend", "onnx"], input=audio.tobytes(), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = OnnxEnhancer.from_pretrained("default-streaming").enhance(audio, rate)
    np.testing.assert_allclose(np.frombuffer(done.stdout, np.float32), expected, atol=1e-6)
