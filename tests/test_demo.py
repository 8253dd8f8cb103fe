import importlib.util
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hybrid_mpsenet import HybridMPSENetForSpeechEnhancement
from hybrid_mpsenet.plotting import spectrogram_figure

ROOT = Path(__file__).resolve().parents[1]


def test_spectrogram_figure_has_one_panel_per_signal(speech, tmp_path):
    figure = spectrogram_figure({"noisy": speech, "enhanced": speech * 0.5}, 16000)
    titles = [axis.get_title() for axis in figure.axes if axis.get_title()]
    assert titles == ["noisy", "enhanced"]
    figure.savefig(tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 10_000


def test_gradio_callback_enhances_stereo_int16_and_reports_errors():
    gr = pytest.importorskip("gradio")
    spec = importlib.util.spec_from_file_location("gradio_app", ROOT / "examples" / "gradio_app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    model = HybridMPSENetForSpeechEnhancement.from_pretrained().eval()
    noisy, rate = sf.read(ROOT / "examples" / "audio" / "p257_418_noisy.wav", dtype="int16")
    enhance = app.make_enhancer(model)
    (out_rate, enhanced), figure = enhance((rate, np.stack([noisy, noisy], axis=1)))
    assert out_rate == rate and enhanced.shape == noisy.shape and len(figure.axes) >= 2
    with pytest.raises(gr.Error, match="Upload or record"):
        enhance(None)
    with pytest.raises(gr.Error, match=f"the demo takes up to {app.MAX_SECONDS} s"):
        enhance((8000, np.zeros(8000 * (app.MAX_SECONDS + 1), np.int16)))
    demo = app.build_demo(model, "my-model")
    shown = [block for block in demo.blocks.values() if isinstance(block, gr.Markdown)]
    assert any("`my-model` (" in block.value for block in shown)
    assert any(isinstance(block, gr.Dataset) for block in demo.blocks.values())  # the example clip
    assert app.EXAMPLE.is_file()
