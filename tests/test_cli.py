import json
import subprocess
import sys

import pytest

from hybrid_mpsenet.cli import main


def test_info_lists_every_preset_with_its_parameter_count(capsys):
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {name: v["parameters"] for name, v in info.items()} == {
        "mpsenet": 2263372,
        "hybrid-large": 5948492,
        "hybrid-small": 2037836,
    }
    assert info["hybrid-large"]["blocks"] == {
        "shared": "6 x transformer",
        "magnitude": "6 x mamba",
        "phase": "6 x transformer",
    }


def test_info_on_a_saved_folder_and_a_missing_one(tmp_path, capsys):
    from helpers import tiny_config

    from hybrid_mpsenet import HybridMPSENetModel

    HybridMPSENetModel(tiny_config()).save_pretrained(tmp_path / "tiny")
    assert main(["info", str(tmp_path / "tiny")]) == 0
    assert json.loads(capsys.readouterr().out)[str(tmp_path / "tiny")]["fusion"] == "cross_attention"
    assert main(["info", str(tmp_path / "absent")]) == 2
    assert "hybrid-mpsenet info: error" in capsys.readouterr().err


def test_console_script_requires_a_command():
    result = subprocess.run([sys.executable, "-m", "hybrid_mpsenet.cli"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "choose a command: convert, info" in result.stderr


def test_unknown_command_lists_the_allowed_ones(capsys):
    with pytest.raises(SystemExit):
        main(["denoise"])
    assert "convert" in capsys.readouterr().err
