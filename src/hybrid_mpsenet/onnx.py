"""The ONNX Runtime backend: [`OnnxEnhancer`] runs a folder written by [`export_onnx`] (or `hybrid-mpsenet export
onnx`) with onnxruntime, numpy, soundfile and soxr only. Importing this module or running it never imports PyTorch
or transformers, so a deployment needs neither (see docs/deployment.md).

`enhance`, `enhance_file` (chunked long audio, any rate, any channel count, the controls) and, for causal models,
`stream` are those of the PyTorch model classes ([`WaveformEnhancer`]); only the network's pass differs: the numpy
STFT, the graph, the numpy inverse STFT.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bundled import model_location
from .ownership import read_small_text
from .spectral import apply_controls, enhance_frames, hann_window, istft, pcs_exponents, stft
from .waveform import WaveformEnhancer

logger = logging.getLogger(__name__)

# The opset of the exported graphs and the names the runtime looks for (see [`onnx_export`]).
OPSET = 23
GRAPH_FILE = "model.onnx"
STEP_GRAPH_FILE = "model_step.onnx"
METADATA_KIND = "hybrid_mpsenet.kind"
METADATA_CONFIG = "hybrid_mpsenet.config"
METADATA_OPSET = "hybrid_mpsenet.opset"
METADATA_STATES = "hybrid_mpsenet.states"
# Config entries that describe the checkpoint's provenance or the PyTorch runtime, not the graph's arithmetic.
RUNTIME_CONFIG_KEYS = (
    "_name_or_path",
    "architectures",
    "auto_map",
    "dtype",
    "torch_dtype",
    "transformers_version",
    "use_mamba_kernels",
    "mamba_scan_chunk_size",
    "gradient_checkpointing",
    "return_dict",
)
# Float32 is the graph's only precision; these names of it are accepted where the PyTorch backend takes a dtype.
FLOAT32_NAMES = (None, "float32", "fp32")


class OnnxModelError(ValueError):
    """An ONNX model folder that cannot be run; the message names the file and says why."""


def graph_config(config: dict) -> dict:
    """The entries of a model's config (as a dict) that an exported graph depends on: everything but provenance and
    PyTorch runtime options. The graph's metadata holds them; the runtime compares them with `config.json`."""
    return {key: value for key, value in config.items() if key not in RUNTIME_CONFIG_KEYS}


@dataclass(frozen=True)
class OnnxModelConfig:
    """What the runtime reads from a model folder's `config.json`: the STFT and whether the model is causal."""

    sampling_rate: int
    n_fft: int
    hop_length: int
    win_length: int
    compress_factor: float
    causal: bool = False
    stft_epsilons: bool = True
    segment_samples: int = 0

    @property
    def num_freq_bins(self) -> int:
        return self.n_fft // 2 + 1

    @classmethod
    def from_file(cls, path: Path) -> tuple[OnnxModelConfig, dict]:
        """The settings and the whole config dict of `config.json` at `path`; a damaged file is an
        [`OnnxModelError`] naming it."""
        try:
            values = json.loads(read_small_text(path))
        except FileNotFoundError:
            raise OnnxModelError(f"{path}: no such file; an ONNX model folder holds config.json.") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise OnnxModelError(f"{path}: not a readable JSON config ({error}).") from error
        if not isinstance(values, dict):
            raise OnnxModelError(f"{path}: expected a JSON object, got {type(values).__name__}.")
        settings = {}
        for name in ("sampling_rate", "n_fft", "hop_length", "win_length"):
            value = values.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OnnxModelError(f"{path}: {name} must be a positive integer, got {value!r}.")
            settings[name] = value
        compress = values.get("compress_factor")
        if isinstance(compress, bool) or not isinstance(compress, (int, float)) or not 0 < compress <= 1:
            raise OnnxModelError(f"{path}: compress_factor must be a number in (0, 1], got {compress!r}.")
        if settings["win_length"] > settings["n_fft"]:
            raise OnnxModelError(f"{path}: win_length {settings['win_length']} exceeds n_fft {settings['n_fft']}.")
        epsilons = values.get("stft_epsilons", True)
        if not isinstance(epsilons, bool):
            raise OnnxModelError(f"{path}: stft_epsilons must be true or false, got {epsilons!r}.")
        segment = values.get("segment_samples", 0)
        if isinstance(segment, bool) or not isinstance(segment, int) or not 0 <= segment <= 10**7:
            raise OnnxModelError(f"{path}: segment_samples must be a number of samples, got {segment!r}.")
        causal = bool(values.get("causal", False))
        settings.update(compress_factor=float(compress), causal=causal, stft_epsilons=epsilons, segment_samples=segment)
        return cls(**settings), values


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(
            "The ONNX backend needs onnxruntime: pip install 'hybrid-mpsenet[onnx]' (or onnxruntime alone in a "
            "PyTorch-free deployment; see docs/deployment.md)."
        ) from None
    return onnxruntime


def open_session(path: Path, threads: int | None = None):
    """An onnxruntime CPU session of the graph at `path`, on `threads` intra-op threads (onnxruntime's choice when
    `None`); a missing, truncated or unloadable graph is an [`OnnxModelError`] naming the file."""
    ort = _import_onnxruntime()
    if not path.is_file():
        raise OnnxModelError(
            f"{path}: no such file; export the model first (hybrid-mpsenet export onnx --model M --output_dir DIR)."
        )
    options = ort.SessionOptions()
    options.log_severity_level = 3  # onnxruntime's warnings about unused initialisers are not the user's concern
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}.")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for each kind of damage
        message = str(error)
        if "opset" in message.lower():
            reason = f"its opset is not one this onnxruntime {ort.__version__} runs (the exporter writes {OPSET})"
        else:
            reason = "it is not a complete ONNX graph (truncated or damaged?)"
        raise OnnxModelError(f"{path}: cannot load the graph: {reason}. onnxruntime said: {message}") from error


def _metadata_json(path: Path, metadata: dict, key: str, kind: type):
    """The JSON value of graph metadata `key`, which must be a `kind` (dict or list; a list of state entries is
    checked entry by entry); damage is an [`OnnxModelError`] naming the file and the key, never a traceback."""
    try:
        value = json.loads(metadata[key])
    except (KeyError, TypeError, ValueError):
        value = None
    valid = isinstance(value, kind)
    if valid and key == METADATA_STATES:
        valid = all(
            isinstance(entry, dict)
            and isinstance(entry.get("shape"), list)
            and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 1 << 20 for n in entry["shape"])
            and (entry.get("batch_axis") is None or entry.get("batch_axis") in range(len(entry["shape"])))
            and entry.get("dtype") in ("float32", "float64", "int64")
            for entry in value
        )
    if not valid:
        raise OnnxModelError(
            f"{path}: its {key} metadata is missing or damaged (expected a JSON {kind.__name__}); re-export the model "
            "with hybrid-mpsenet export onnx."
        )
    return value


def check_graph(path: Path, session, config: dict, kind: str) -> dict:
    """Check that the graph at `path` is this package's export of the model `config` describes, of `kind`
    ("offline" or "step"), with every input and output it needs; returns its metadata."""
    metadata = session.get_modelmeta().custom_metadata_map
    if METADATA_CONFIG not in metadata:
        raise OnnxModelError(
            f"{path}: not a graph exported by hybrid-mpsenet (no {METADATA_CONFIG} metadata); re-export the model "
            "with hybrid-mpsenet export onnx."
        )
    if metadata.get(METADATA_OPSET) != str(OPSET):
        raise OnnxModelError(
            f"{path}: exported for opset {metadata.get(METADATA_OPSET)}, this runtime reads opset {OPSET} graphs; "
            "re-export it with this version of hybrid-mpsenet."
        )
    exported = _metadata_json(path, metadata, METADATA_CONFIG, dict)
    expected = graph_config(config)
    differences = [
        f"{key}={exported[key]!r} in the graph, {expected[key]!r} in config.json"
        for key in sorted(set(exported) & set(expected))  # an entry one side omits takes its default on both
        if exported[key] != expected[key]
    ]
    if differences:
        raise OnnxModelError(
            f"{path}: the graph was exported from another model than config.json describes ("
            + "; ".join(differences[:4])
            + "); re-export the folder."
        )
    if metadata.get(METADATA_KIND) != kind:
        raise OnnxModelError(f"{path}: a {metadata.get(METADATA_KIND)} graph where a {kind} graph was expected.")
    names = {node.name for node in session.get_inputs()}
    outputs = {node.name for node in session.get_outputs()}
    needed = {"magnitude", "phase"}
    needed_out = {"enhanced_magnitude", "enhanced_phase"}
    if kind == "step":
        count = len(_metadata_json(path, metadata, METADATA_STATES, list))
        needed |= {f"state.{i}" for i in range(count)}
        needed_out |= {f"next_state.{i}" for i in range(count)}
    missing = sorted(needed - names) + sorted(needed_out - outputs)
    if missing:
        raise OnnxModelError(f"{path}: the graph lacks the inputs/outputs {', '.join(missing[:6])}; re-export it.")
    return metadata


def state_shapes(entries: list[dict], channels: int) -> list[tuple[list[int], str]]:
    """The shape and dtype name of each carried state of a step graph (its metadata `entries`) for a stream of
    `channels` channels: a state's batch axis holds `channels` times its one-channel size."""
    shapes = []
    for entry in entries:
        shape = list(entry["shape"])
        if entry["batch_axis"] is not None:
            shape[entry["batch_axis"]] *= channels
        shapes.append((shape, entry["dtype"]))
    return shapes


class OnnxFrameEnhancer:
    """The ONNX step of a stream ([`FrameEnhancer`]): the step graph run on the frames each call brings, up to
    `FRAMES_PER_RUN` at a time (one for graphs exported with a fixed single frame), its states carried from one run
    to the next (zeros at the start, sized for the stream's channels on the first call)."""

    # Frames per run of the graph: enough to spread the per-run cost thin, few enough that a long block (offline
    # enhancement feeds 2-s chunks) does not grow onnxruntime's memory arena.
    FRAMES_PER_RUN = 16

    def __init__(self, enhancer: OnnxEnhancer, attenuation_limit_db: float | None):
        self.session, self.entries = enhancer.session, enhancer.states
        self.config, self.attenuation_limit_db = enhancer.config, attenuation_limit_db
        self.window = enhancer.window
        self.states: list[np.ndarray] | None = None
        shapes = {node.name: node.shape for node in self.session.get_inputs()}
        self.single_frame = shapes["magnitude"][-1] == 1  # a graph exported before steps took several frames

    def _network(self, magnitude: np.ndarray, phase: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.states is None:
            self.states = [np.zeros(shape, dtype) for shape, dtype in state_shapes(self.entries, magnitude.shape[0])]
        magnitudes, phases = [], []
        step = 1 if self.single_frame else self.FRAMES_PER_RUN
        for frame in range(0, magnitude.shape[-1], step):
            feeds = {"magnitude": magnitude[:, :, frame : frame + step], "phase": phase[:, :, frame : frame + step]}
            feeds.update((f"state.{i}", state) for i, state in enumerate(self.states))
            enhanced, enhanced_phase, *self.states = self.session.run(None, feeds)
            magnitudes.append(enhanced)
            phases.append(enhanced_phase)
        return np.concatenate(magnitudes, axis=-1), np.concatenate(phases, axis=-1)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        out = enhance_frames(frames, self.window, self._network, self.config.compress_factor, self.attenuation_limit_db)
        return out.astype(np.float32)


class OnnxEnhancer(WaveformEnhancer):
    """Speech enhancement with onnxruntime: the PyTorch model classes' `enhance`, `enhance_file` and (causal models)
    `stream`, from a folder that [`export_onnx`] wrote, without PyTorch.

    Example:
        ```python
        from hybrid_mpsenet.onnx import OnnxEnhancer

        model = OnnxEnhancer.from_pretrained()  # the bundled default's graph; or a folder / Hub id
        clean = model.enhance(noisy, sampling_rate=48000)
        ```
    """

    def __init__(self, folder: str | Path, threads: int | None = None):
        """Load the graph of the model folder `folder` on onnxruntime's CPU provider, `threads` intra-op threads."""
        folder = Path(folder)
        self.folder = folder
        self.config, raw_config = OnnxModelConfig.from_file(folder / "config.json")
        kind, name = ("step", STEP_GRAPH_FILE) if self.config.causal else ("offline", GRAPH_FILE)
        self.graph_path = folder / name
        self.session = open_session(self.graph_path, threads)
        metadata = check_graph(self.graph_path, self.session, raw_config, kind)
        self.states = _metadata_json(self.graph_path, metadata, METADATA_STATES, list) if kind == "step" else []
        self.window = hann_window(self.config.win_length, self.config.n_fft)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path | None = None,
        *,
        threads: int | None = None,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
    ) -> OnnxEnhancer:
        """Load a model folder or Hub repository with an exported graph; no name or `"default"` is the bundled
        default, `"default-streaming"` its causal sibling. From the Hub only the JSON configs and the graphs are
        downloaded."""
        location = model_location(pretrained_model_name_or_path)
        if not Path(location).is_dir():
            from huggingface_hub import snapshot_download

            location = snapshot_download(
                str(location),
                revision=revision,
                cache_dir=cache_dir,
                token=token,
                local_files_only=local_files_only,
                allow_patterns=["*.json", "*.onnx"],
            )
        return cls(location, threads=threads)

    def _check_dtype(self, dtype: object) -> None:
        if dtype not in FLOAT32_NAMES:
            raise ValueError(f"The ONNX backend runs in float32; dtype must be None or 'float32', got {dtype!r}.")
        return None

    def _enhance_waveform(
        self, waveform: np.ndarray, dtype: None, attenuation_limit_db: float | None, pcs: bool, level: np.ndarray
    ) -> np.ndarray:
        config = self.config
        magnitude, phase = stft(
            waveform,
            config.n_fft,
            config.hop_length,
            self.window,
            config.compress_factor,
            causal=False,
            epsilons=config.stft_epsilons,
        )
        enhanced, enhanced_phase = self.session.run(None, {"magnitude": magnitude, "phase": phase})
        enhanced, enhanced_phase = apply_controls(
            enhanced,
            enhanced_phase,
            magnitude,
            phase,
            config.compress_factor,
            attenuation_limit_db,
            pcs_exponents(config.n_fft, config.sampling_rate) if pcs else None,
            level,
        )
        return istft(
            enhanced,
            enhanced_phase,
            config.n_fft,
            config.hop_length,
            self.window,
            config.compress_factor,
            waveform.shape[-1],
        )

    def _frame_enhancer(self, attenuation_limit_db: float | None, dtype: None) -> OnnxFrameEnhancer:
        return OnnxFrameEnhancer(self, attenuation_limit_db)


def has_graph(folder: str | Path) -> bool:
    """Whether the model folder `folder` holds an exported graph (of either kind)."""
    folder = Path(folder)
    return (folder / GRAPH_FILE).is_file() or (folder / STEP_GRAPH_FILE).is_file()
