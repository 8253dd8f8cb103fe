"""The checkpoints shipped inside the package, by public name. Plain `pathlib` only: the model and feature-extractor
files import it, and they are also copied into saved folders as remote code that needs nothing but torch,
transformers and numpy."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).parent / "pretrained"
# The public name of the bundled checkpoint: `from_pretrained("default")`, `--model default`, `info default`.
DEFAULT_MODEL = "default"
# The bundled checkpoints by public name: the offline default, its causal (streaming) sibling, and MUSE's released
# VoiceBank+DEMAND weights (MIT, Lin, Chen and Wang 2024) converted exactly.
BUNDLED_MODELS = {
    DEFAULT_MODEL: DEFAULT_MODEL_DIR,
    "default-streaming": Path(__file__).parent / "pretrained_streaming",
    "muse-vb": Path(__file__).parent / "pretrained_muse_vb",
}


def model_location(name: str | Path | None) -> str | Path:
    """`name` itself (a folder or Hub id), or a bundled checkpoint's folder: the default for no name or the string
    `"default"`, the causal one for `"default-streaming"`, MUSE's for `"muse-vb"` (a local folder of such a name is
    reached as `./NAME`).

    Raises:
        OSError: the bundled checkpoint is missing from the installation.
    """
    if name is None:
        name = DEFAULT_MODEL
    if not (isinstance(name, str) and name in BUNDLED_MODELS):
        return name
    folder = BUNDLED_MODELS[name]
    if not (folder / "config.json").is_file():
        raise OSError(
            f"The bundled {name} checkpoint is missing from {folder}; reinstall the package or pass a model folder or "
            "Hub id."
        )
    return folder
