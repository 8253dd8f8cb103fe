import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import DATA


@pytest.fixture
def speech() -> np.ndarray:
    """1.9 s of real speech at 16 kHz, float32."""
    audio, rate = sf.read(DATA / "LJ001-0002.wav", dtype="float32")
    assert rate == 16000
    return audio


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
