"""Every Python and shell sample of the README and the docs runs, from a folder holding a copy of `examples/`:
each page's Python blocks in order in one fresh interpreter (a block may use what an earlier one defined), each
shell block in `bash -euo pipefail`. A block right after `<!-- sample: skip, REASON -->` is reported as skipped with
that reason; one after `<!-- sample: slow -->` runs in the slow suite."""

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(?P<language>[a-z]*)\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)
MARK = re.compile(r"<!-- sample: (?:skip, (?P<reason>[^>]+?)|(?P<slow>slow)) -->\s*$")


@dataclass
class Sample:
    page: str
    line: int
    language: str
    code: str
    skip: str | None
    slow: bool

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"


def page_samples(path: Path) -> list[Sample]:
    """The fenced `python` and `bash` blocks of a page, with their markers."""
    text = path.read_text()
    found = []
    for block in FENCE.finditer(text):
        if block["language"] not in ("python", "bash"):
            continue
        before = text[: block.start()].rstrip("\n").rsplit("\n", 1)[-1]
        mark = MARK.search(before)
        line = text.count("\n", 0, block.start()) + 1
        page = str(path.relative_to(ROOT))
        reason, slow = (mark["reason"], bool(mark["slow"])) if mark else (None, False)
        found.append(Sample(page, line, block["language"], block["code"], reason, slow))
    return found


SAMPLES = [sample for page in PAGES for sample in page_samples(page)]


def _marks(slow: bool) -> list:
    return [pytest.mark.slow] if slow else []


def _cases():
    """One case per shell block and per page's Python blocks (skipped blocks as their own cases)."""
    cases = []
    for page in PAGES:
        samples = page_samples(page)
        for sample in samples:
            if sample.skip is not None:
                cases.append(pytest.param([sample], id=sample.name, marks=pytest.mark.skip(reason=sample.skip)))
            elif sample.language == "bash":
                cases.append(pytest.param([sample], id=sample.name, marks=_marks(sample.slow)))
        python = [s for s in samples if s.language == "python" and s.skip is None]
        if python:
            name = f"{python[0].page}:python"
            cases.append(pytest.param(python, id=name, marks=_marks(any(s.slow for s in python))))
    return cases


def test_the_pages_have_samples_and_only_known_markers():
    assert len(SAMPLES) >= 30
    for page in PAGES:
        for line in page.read_text().splitlines():
            if "<!-- sample" in line:
                assert MARK.search(line), f"{page}: unknown sample marker {line!r}"


@pytest.mark.parametrize("samples", _cases())
def test_sample_runs(samples: list[Sample], tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    if samples[0].language == "python":
        script = "\n".join(f"# {s.name}\n{s.code}" for s in samples)
        command = [sys.executable, "-c", script]
    else:
        command = ["bash", "-euo", "pipefail", "-c", samples[0].code]
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{samples[0].name}:\n{result.stderr[-3000:]}"


def test_troubleshooting_quotes_the_messages_the_package_prints():
    source = "".join(path.read_text() for path in (ROOT / "src" / "hybrid_mpsenet").rglob("*.py"))
    quoted = re.findall(r"^### `(.+)`$", (ROOT / "docs" / "troubleshooting.md").read_text(), re.MULTILINE)
    assert len(quoted) >= 30
    missing = [message for message in quoted if message not in source]
    assert not missing, missing
