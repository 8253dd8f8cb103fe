"""Copy a trained model (e.g. a run's `best/` folder) into the package as the bundled default checkpoint.

Only the weights (safetensors), `config.json` and `preprocessor_config.json` are copied; the installed package
provides the code. The copy is atomic: the previous default stays in place until the new one is complete.

    python scripts/export_default_model.py outputs/default-model/best
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from hybrid_mpsenet import HybridMPSENetForSpeechEnhancement
from hybrid_mpsenet.inference import DEFAULT_MODEL_DIR
from hybrid_mpsenet.utils import atomic_directory

FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="folder written by save_pretrained")
    args = parser.parse_args()
    source = Path(args.model)
    HybridMPSENetForSpeechEnhancement.from_pretrained(source)  # refuse a folder that does not load
    with atomic_directory(DEFAULT_MODEL_DIR) as tmp:
        for name in FILES:
            shutil.copyfile(source / name, tmp / name)
            (tmp / name).chmod(0o644)
    size = sum((DEFAULT_MODEL_DIR / name).stat().st_size for name in FILES)
    print(f"exported {source} to {DEFAULT_MODEL_DIR} ({size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
