"""Shared test constants and the tiny configuration."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from hybrid_mpsenet import HybridMPSENetConfig

DATA = Path(__file__).parent / "data"
SHARED = Path(__file__).resolve().parents[2] / "shared"


def tiny_config(**overrides) -> HybridMPSENetConfig:
    """A small hybrid: every block kind, both branches and criss-cross fusion, fast on CPU."""
    values = {
        "n_fft": 64,
        "hop_length": 16,
        "win_length": 64,
        "dense_channel": 8,
        "dense_depth": 2,
        "num_attention_heads": 2,
        "ffn_hidden_size": 8,
        "num_shared_blocks": 1,
        "shared_block_type": "transformer",
        "num_magnitude_blocks": 1,
        "magnitude_block_type": "mamba",
        "num_phase_blocks": 1,
        "phase_block_type": "transformer",
        "mamba_d_state": 4,
        "fusion": "cross_attention",
    }
    values.update(overrides)
    return HybridMPSENetConfig(**values)


def training_arguments(tmp_path: Path, **overrides):
    """`TrainingArguments` for a few seconds of CPU training of the tiny model in `tmp_path / "run"`."""
    from hybrid_mpsenet.training import TrainingArguments

    config = tiny_config(n_fft=128, hop_length=64, win_length=128).to_json_string(use_diff=True)
    values = dict(
        output_dir=str(tmp_path / "run"),
        config_overrides=config,
        batch_size=2,
        segment_seconds=0.5,
        pesq_workers=0,
        log_with="none",
        progress=False,
        eval_max_items=1,
    )
    values.update(overrides)
    return TrainingArguments(**values)


def fast_config(**overrides) -> HybridMPSENetConfig:
    """The cheapest model per second of audio (one TS-Transformer block, coarse STFT): long-audio tests."""
    values = {"n_fft": 256, "hop_length": 128, "win_length": 256, "fusion": "none"}
    values.update(num_magnitude_blocks=0, num_phase_blocks=0)
    values.update(overrides)
    return tiny_config(**values)


_HIDE_PACKAGE = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "hybrid_mpsenet":
            raise ImportError("hybrid_mpsenet is hidden in this test")
sys.meta_path.insert(0, _Block())
for _name in {hidden!r}:
    sys.modules[_name] = None  # as if not installed: imports fail, find_spec says None
"""


def run_without_package(
    code: str, tmp_path: Path, hidden: tuple[str, ...] = ("soundfile", "soxr", "wrapt")
) -> subprocess.CompletedProcess:
    """Run `code` in a fresh, offline Python where `import hybrid_mpsenet` fails: only remote code can serve.
    The modules in `hidden` (by default the package's audio I/O dependencies, which a saved model folder's code
    does not need) are unavailable too."""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    script = _HIDE_PACKAGE.format(hidden=hidden) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)


def noise_like_utterances(folder: Path, count: int = 16) -> list[Path]:
    """`count` noise-like utterances of distinct lengths (2,000 + 160 i samples at 16 kHz, never an exact zero), so
    that a zero-padded crop's length names its utterance."""
    import numpy as np
    import soundfile as sf

    folder.mkdir(parents=True)
    for i in range(count):
        rng = np.random.default_rng(i)
        audio = rng.uniform(0.05, 0.5, 2000 + 160 * i) * rng.choice([-1.0, 1.0], 2000 + 160 * i)
        sf.write(folder / f"utt{i:02d}.wav", audio, 16000, subtype="FLOAT")
    return sorted(folder.glob("*.wav"))
