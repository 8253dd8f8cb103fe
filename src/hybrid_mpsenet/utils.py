"""Small helpers shared by the converter, training and publishing code."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` in one rename, on error it is removed.

    A reader never sees a half-written folder: either the previous content or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            backup = path.with_name(f".{path.name}.old-{tmp.name[-8:]}")
            path.rename(backup)
            tmp.rename(path)
            shutil.rmtree(backup)
        else:
            tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
