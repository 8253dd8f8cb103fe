"""Export a model of the family to ONNX, as a model folder that [`OnnxEnhancer`] runs without PyTorch.

The graph is the network on spectra, from the compressed magnitude and phase `(batch, freq, frames)` to the enhanced
ones; the STFT, its inverse, resampling and chunking stay outside it, in numpy, exactly as in the PyTorch path.

- A model that looks ahead gets `model.onnx`, with a dynamic batch and number of frames.
- A causal model gets `model_step.onnx`: the next frames of a stream, `(batch, freq, frames)` with any number of frames
  from 1, with every layer's carried state as an explicit input and output (`state.N` in, `next_state.N` out; zeros
  start a stream). Frames given together cost less than one by one and give the same output. The graph's metadata lists
  each state's shape for one channel, the axis that grows with the batch, its dtype and the layer that carries it.

Mamba's selective scan goes into the graph as an ONNX `Scan` over time (`torch.scan`), not as the CUDA kernel, so the
graph is exact on every runtime. The export uses `torch.onnx.export`'s dynamo exporter directly: optimum-onnx's
`main_export` builds its dummy inputs from a transformers task (text, vision, ASR, ...), and a network on spectra
with carried states is none of them.

The folder also holds the model's `config.json`, `preprocessor_config.json` and safetensors weights, so it loads with
either backend and pushes to the Hub as it is.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from .onnx import (
    GRAPH_FILE,
    METADATA_CONFIG,
    METADATA_KIND,
    METADATA_OPSET,
    METADATA_STATES,
    OPSET,
    STEP_GRAPH_FILE,
    graph_config,
    state_shapes,
)
from .ownership import check_replaceable_folder
from .registry import ARCHITECTURES
from .utils import atomic_directory

logger = logging.getLogger(__name__)


class _SpectrumGraph(nn.Module):
    """The network on a whole spectrum: `(magnitude, phase)` -> enhanced `(magnitude, phase)`, all
    `(batch, freq, frames)`."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, magnitude: torch.Tensor, phase: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.network(magnitude, phase, return_dict=True)
        return output.magnitude, output.phase


class StateLayout:
    """The carried states of a causal network in a fixed order, so that a stream's cache (a dict keyed by layer)
    becomes a list of tensors and back: discovered by running one frame with an empty cache for batches 1 and 2.

    `entries` holds, per state: `name` (the layer and the index within its tuple), `shape` for one channel,
    `batch_axis` (the axis whose size is `shape[batch_axis] * channels`, or `None` for a state shared by the batch)
    and `dtype` (a numpy dtype name).
    """

    def __init__(self, network: nn.Module):
        names = {module: name for name, module in network.named_modules()}
        caches = []
        for batch in (1, 2):
            cache: dict = {}
            freq = network.config.num_freq_bins
            with torch.inference_mode():
                network(torch.ones(batch, freq, 1), torch.zeros(batch, freq, 1), cache=cache)
            caches.append(cache)
        self.keys = list(caches[0])
        self.entries = []
        for key in self.keys:
            one, two = (self._tensors(cache[key]) for cache in caches)
            for index, (a, b) in enumerate(zip(one, two, strict=True)):
                axes = [axis for axis, (m, n) in enumerate(zip(a.shape, b.shape, strict=True)) if m != n]
                self.entries.append(
                    {
                        "name": f"{names[key] or 'network'}.{index}",
                        "shape": list(a.shape),
                        "batch_axis": axes[0] if axes else None,
                        "dtype": str(a.dtype).removeprefix("torch."),
                    }
                )
        self.counts = [len(self._tensors(caches[0][key])) for key in self.keys]
        self.tuple_keys = {key for key in self.keys if isinstance(caches[0][key], tuple)}

    @staticmethod
    def _tensors(value) -> tuple[torch.Tensor, ...]:
        return value if isinstance(value, tuple) else (value,)

    def zeros(self, batch: int) -> list[torch.Tensor]:
        """The states of a fresh stream of `batch` channels (zeros, as an empty cache starts)."""
        return [torch.zeros(shape, dtype=getattr(torch, dtype)) for shape, dtype in state_shapes(self.entries, batch)]

    def to_cache(self, states: tuple[torch.Tensor, ...]) -> dict:
        """The cache dict holding `states` (in `entries` order)."""
        cache, position = {}, 0
        for key, count in zip(self.keys, self.counts, strict=True):
            part = tuple(states[position : position + count])
            position += count
            cache[key] = part if key in self.tuple_keys else part[0]
        return cache

    def from_cache(self, cache: dict) -> list[torch.Tensor]:
        """The states of a cache dict, in `entries` order."""
        return [tensor for key in self.keys for tensor in self._tensors(cache[key])]


class _StepGraph(nn.Module):
    """The next frames of a stream: `(magnitude, phase, *states)` -> `(magnitude, phase, *next_states)`, spectra
    `(batch, freq, frames)`, states as [`StateLayout`] orders them."""

    def __init__(self, network: nn.Module, layout: StateLayout):
        super().__init__()
        self.network, self.layout = network, layout

    def forward(self, magnitude: torch.Tensor, phase: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cache = self.layout.to_cache(states)
        output = self.network(magnitude, phase, return_dict=True, cache=cache)
        return (output.magnitude, output.phase, *self.layout.from_cache(cache))


def _export(module: nn.Module, args: tuple, dynamic_shapes: tuple, input_names: list, output_names: list):
    import onnx

    started = time.perf_counter()
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    with warnings.catch_warnings():
        # The exporter's notes on PyTorch's internals (deprecated guards, GRU weight views, missing torchvision
        # ops) concern neither the graph nor the user.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message="The tensor attributes")
        registration.setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(
                module.eval(),
                args,
                dynamo=True,
                opset_version=OPSET,
                dynamic_shapes=dynamic_shapes,
                input_names=input_names,
                output_names=output_names,
                verbose=False,
            )
        finally:
            registration.setLevel(level)
    proto = program.model_proto
    _strip_trace(proto.graph)
    onnx.checker.check_model(proto, full_check=True)
    logger.info("Exported the ONNX graph in %.1f s.", time.perf_counter() - started)
    return proto


def _strip_trace(graph) -> None:
    """Drop the exporter's per-node provenance (Python stack traces, FX names, module paths): for MUSE's 3,000 nodes it
    is three times the size of the weights, and no runtime reads it."""
    for node in graph.node:
        del node.metadata_props[:]
        for attribute in node.attribute:
            for subgraph in (attribute.g, *attribute.graphs):
                _strip_trace(subgraph)


def export_graph(network: nn.Module) -> tuple[object, str]:
    """The ONNX `ModelProto` of a network of the family (eval mode, float32, on the CPU), checked with
    `onnx.checker`, with its metadata, and the file name it goes in ([`GRAPH_FILE`] or, causal, [`STEP_GRAPH_FILE`])."""
    import onnx

    config = network.config
    freq = config.num_freq_bins
    metadata = {METADATA_CONFIG: json.dumps(graph_config(config.to_dict()), sort_keys=True), METADATA_OPSET: str(OPSET)}
    auto = torch.export.Dim.AUTO
    if not config.causal:
        # Example frames and batch away from 0/1, which torch.export would specialise.
        spectra = (torch.rand(2, freq, 40), torch.rand(2, freq, 40) * 6 - 3)
        proto = _export(
            _SpectrumGraph(network),
            spectra,
            ({0: auto, 2: auto}, {0: auto, 2: auto}),
            ["magnitude", "phase"],
            ["enhanced_magnitude", "enhanced_phase"],
        )
        metadata[METADATA_KIND] = "offline"
        name = GRAPH_FILE
    else:
        layout = StateLayout(network)
        states = layout.zeros(2)
        count = len(states)
        state_shapes = tuple(
            {entry["batch_axis"]: auto} if entry["batch_axis"] is not None else None for entry in layout.entries
        )
        proto = _export(
            _StepGraph(network, layout),
            (torch.rand(2, freq, 3), torch.rand(2, freq, 3) * 6 - 3, *states),
            ({0: auto, 2: auto}, {0: auto, 2: auto}, state_shapes),
            ["magnitude", "phase", *(f"state.{i}" for i in range(count))],
            ["enhanced_magnitude", "enhanced_phase", *(f"next_state.{i}" for i in range(count))],
        )
        metadata[METADATA_KIND] = "step"
        metadata[METADATA_STATES] = json.dumps(layout.entries)
        name = STEP_GRAPH_FILE
    onnx.helper.set_model_props(proto, metadata)
    return proto, name


def export_onnx(model: nn.Module, output_dir: str | Path, overwrite: bool = False) -> Path:
    """Export `model` (any model class of the family) to ONNX as a model folder for [`OnnxEnhancer`].

    The folder gets the graph (`model.onnx`, or `model_step.onnx` for a causal model; see the module docstring),
    `config.json`, `preprocessor_config.json` and `model.safetensors`. It is written beside `output_dir` and moved
    into place when complete; an existing folder is replaced only with `overwrite` and if this package wrote it.

    Returns:
        The folder's path.
    """
    import onnx

    output_dir = Path(output_dir)
    check_replaceable_folder(output_dir, overwrite)
    architecture = ARCHITECTURES[model.config.model_type]
    config = architecture.load("config").from_dict(model.config.to_dict())
    complete = architecture.load("enhancement")(config)
    complete.load_state_dict(model.state_dict())
    complete.eval()
    proto, name = export_graph(complete)
    with atomic_directory(output_dir, "ONNX model") as folder:
        complete.save_pretrained(folder)
        onnx.save(proto, folder / name)
    return output_dir
