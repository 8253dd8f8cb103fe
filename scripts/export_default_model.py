"""Copy a trained or converted model (e.g. a run's `best/` folder) into the package as a bundled checkpoint: the
default, with `--name default-streaming` the causal one, with `--name muse-vb` MUSE's converted released weights
(the folder's LICENSE, the MIT notice of those weights, is copied too).

Only the weights (safetensors), `config.json` and `preprocessor_config.json` are copied, and the model's ONNX graph
is exported beside them (`model.onnx`, or `model_step.onnx` for the causal one), so the ONNX backend runs the same
weights; the installed package provides the code. The copy is atomic: the previous default stays in place until
the new one is complete.

    python scripts/export_default_model.py outputs/default-model/best
    python scripts/export_default_model.py outputs/default-streaming/best --name default-streaming
    hybrid-mpsenet convert MUSE/paper_result/g_best muse-vb --config MUSE/paper_result/config.json
    python scripts/export_default_model.py muse-vb --name muse-vb --license MUSE/LICENSE
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import onnx

from hybrid_mpsenet import HybridMPSENetForSpeechEnhancement
from hybrid_mpsenet.inference import BUNDLED_MODELS, DEFAULT_MODEL
from hybrid_mpsenet.onnx_export import export_graph
from hybrid_mpsenet.utils import atomic_directory

FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="folder written by save_pretrained")
    parser.add_argument("--name", choices=sorted(BUNDLED_MODELS), default=DEFAULT_MODEL, help="which bundled model")
    parser.add_argument("--license", type=Path, help="licence of the weights, copied as the folder's LICENSE")
    args = parser.parse_args()
    source, target = Path(args.model), BUNDLED_MODELS[args.name]
    model = HybridMPSENetForSpeechEnhancement.from_pretrained(source)  # refuse a folder that does not load
    if model.config.causal != (args.name == "default-streaming"):
        kind = "causal" if model.config.causal else "not causal"
        parser.error(f"{source} is {kind}; default-streaming must be causal, default must not.")
    graph, graph_name = export_graph(model.eval())
    with atomic_directory(target) as tmp:
        for name in FILES:
            shutil.copyfile(source / name, tmp / name)
            (tmp / name).chmod(0o644)
        onnx.save(graph, tmp / graph_name)
        if args.license:
            shutil.copyfile(args.license, tmp / "LICENSE")
            (tmp / "LICENSE").chmod(0o644)
    size = sum(path.stat().st_size for path in target.iterdir())
    print(f"exported {source} to {target} ({size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
