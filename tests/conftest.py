import signal

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import DATA


def pytest_configure(config: pytest.Config) -> None:
    # A suite started in the background without job control (`pytest &` in a script) inherits Ctrl-C ignored, and
    # so would every command a test starts; the tests that send SIGINT expect a terminal's Ctrl-C. A handler (unlike
    # an ignored signal) is reset to the default by exec, so the commands start as they would from a terminal.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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
