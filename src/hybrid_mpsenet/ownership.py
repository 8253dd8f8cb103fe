"""What a command may write: the one rule every writer of the package follows.

A command first decides which paths it will create or replace. A new path is created exclusively (two processes
cannot both create it); an existing path is replaced only if this package provably wrote it and nothing else was
put there since:

- a folder (model folder, upload folder, `best/` of a run) carries a manifest, `.hybrid-mpsenet.json`, listing
  every file written into it with its SHA-256; a folder with any other entry (hidden ones included) or a changed
  file is not ours;
- a run folder carries `run.json` (its identity) and, while a training runs, `run.lock` (pid and host);
- an audio file carries the `software` tag `hybrid-mpsenet` (formats that hold no tags cannot be proven ours);
- a JSON result carries `"written_by": "hybrid-mpsenet"`.

Paths built from data (ids, names) are checked to stay inside their folder. Only the standard library is imported,
so the model code `save_pretrained` copies can carry this module.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

MANIFEST = ".hybrid-mpsenet.json"
# The tag this package writes into the audio and JSON files it creates.
WRITTEN_BY = "hybrid-mpsenet"
# Temporary names start with this; a file name plus it must stay within the usual 255-byte limit.
MAX_NAME_BYTES = 255


class OwnershipError(FileExistsError):
    """A path that a command would create or replace belongs to someone else (or to another run); the message
    names it and says what to do."""


# Small metadata files (configs, run.json, manifests, history) are never larger than this; anything bigger is damaged.
MAX_METADATA_BYTES = 64 << 20


def read_small_text(path: str | Path, limit: int = MAX_METADATA_BYTES) -> str:
    """The UTF-8 text of a regular file of at most `limit` bytes. A FIFO, a device (a link to `/dev/zero`, say) or a
    larger file is an `OSError` naming it, raised before reading: opened without blocking, checked with `fstat`,
    read at most `limit + 1` bytes, so no such file can hang the reader or fill its memory.

    Raises:
        OSError: missing, unreadable, not a regular file, or too large (`FileNotFoundError` when missing).
        UnicodeDecodeError: not UTF-8.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path}: not a regular file (a device, FIFO or socket); a metadata file is expected here.")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise OSError(f"{path}: larger than {limit >> 20} MiB, far beyond any metadata file; it is damaged.")
    return data.decode("utf-8")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _entries(folder: Path) -> dict[str, bool]:
    """Every entry below `folder` (hidden ones too, symlinks not followed): relative POSIX path -> is a plain file."""
    found = {}
    for parent, folders, names in os.walk(folder):
        for name in [*folders, *names]:
            path = Path(parent, name)
            found[path.relative_to(folder).as_posix()] = path.is_file() and not path.is_symlink()
    return found


def write_manifest(folder: str | Path, kind: str) -> None:
    """Record every file now in `folder` (with its SHA-256) as written by this package; `kind` names what the
    folder is (`model`, `upload`, ...) for the messages."""
    folder = Path(folder)
    files = {name: _sha256(folder / name) for name, plain in sorted(_entries(folder).items()) if plain}
    files.pop(MANIFEST, None)
    (folder / MANIFEST).write_text(json.dumps({"written_by": WRITTEN_BY, "kind": kind, "files": files}, indent=1))


def read_manifest(folder: str | Path) -> dict | None:
    """The manifest of `folder`, or `None` if it has none (or a damaged one)."""
    try:
        manifest = json.loads(read_small_text(Path(folder) / MANIFEST))
    except (OSError, ValueError):
        return None
    ok = isinstance(manifest, dict) and manifest.get("written_by") == WRITTEN_BY
    return manifest if ok and isinstance(manifest.get("files"), dict) else None


def foreign_entries(folder: str | Path) -> list[str]:
    """Entries of `folder` that its manifest does not vouch for: any entry not listed (hidden ones included), or a
    listed file changed since. Without a manifest, every entry."""
    folder = Path(folder)
    entries = _entries(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        return sorted(entries)
    listed = manifest["files"]
    # A folder is vouched for when some listed file lies below it.
    parents = {parent.as_posix() for name in listed for parent in Path(name).parents}
    foreign = []
    for name, plain in sorted(entries.items()):
        if name == MANIFEST:
            continue
        if name in listed:
            if not plain or _sha256(folder / name) != listed[name]:
                foreign.append(f"{name} (changed)")
        elif plain or name not in parents:
            foreign.append(name)
    return foreign


# renameat2(2) flags: fail if the target exists; swap source and target atomically.
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100


def _renameat2(source: Path, target: Path, flags: int) -> None:
    """Linux's `renameat2(source, target, flags)` through libc. `OSError` with `errno.ENOSYS` where libc or the
    kernel lacks it, `errno.EINVAL` where the file system does not support the flag."""
    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if function is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available", str(target))
    if function(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(target))


def publish_folder(tmp: Path, path: Path, replace: bool, what: str = "folder") -> None:
    """Move the complete folder `tmp` to `path`, the one way every writer of a folder publishes.

    `replace=False` (`path` was absent when writing began): `path` is created exclusively (`renameat2` with
    `RENAME_NOREPLACE`; where that is missing, an empty folder is claimed with `mkdir` and `tmp` renamed onto it,
    which fails if anything was put into it), so of two writers of one new folder exactly one wins.
    `replace=True` (`path` was checked replaceable when writing began): it is checked again now, swapped with `tmp`
    atomically (`RENAME_EXCHANGE`), and what was swapped out is checked once more before it is deleted; if something
    foreign reached it in between, the swap is undone. On a system without the exchange, it is renamed aside first.

    Raises:
        OwnershipError: `path` was created, or changed by someone else, while `tmp` was written; nothing was
            replaced or lost.
    """
    if not replace:
        try:
            _renameat2(tmp, path, _RENAME_NOREPLACE)
            return
        except FileExistsError:
            raise OwnershipError(
                f"{path} was created by someone else while this {what} was written; nothing was replaced. Choose "
                "another output folder."
            ) from None
        except OSError as error:
            if error.errno not in (errno.ENOSYS, errno.EINVAL):
                raise
        try:
            path.mkdir()
            tmp.rename(path)  # onto the empty claim only: ENOTEMPTY if something was put into it meanwhile
            return
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            raise OwnershipError(
                f"{path} was created by someone else while this {what} was written; nothing was replaced."
            ) from None
    _check_still_ours(path, what)
    try:
        _renameat2(tmp, path, _RENAME_EXCHANGE)
        old = tmp
    except OSError as error:
        if error.errno not in (errno.ENOSYS, errno.EINVAL):
            raise
        old = Path(tempfile.mkdtemp(prefix=temporary_name(path, "old"), dir=path.parent)) / path.name
        path.rename(old)
        tmp.rename(path)
    try:
        _check_still_ours(old, what)
    except OwnershipError:  # give the changed folder its name back
        if old == tmp:
            _renameat2(tmp, path, _RENAME_EXCHANGE)
        else:
            path.rename(tmp)
            old.rename(path)
            old.parent.rmdir()
        raise
    shutil.rmtree(old if old == tmp else old.parent)


def _check_still_ours(folder: Path, what: str) -> None:
    """Refuse to replace `folder` unless it is empty or holds only what this package wrote there (its manifest)."""
    if folder.is_symlink() or not folder.is_dir():
        raise OwnershipError(f"{folder} is no longer a folder this package wrote; nothing was replaced.")
    foreign = foreign_entries(folder) if any(folder.iterdir()) else []
    if foreign:
        raise OwnershipError(
            f"{folder} changed while this {what} was written ({', '.join(foreign[:4])}); nothing was replaced or "
            "deleted. Move those files away, or choose another output folder."
        )


def check_replaceable_folder(path: str | Path, overwrite: bool = False, what: str = "model folder") -> None:
    """Allow writing the folder `path` (through [`atomic_directory`]): it is absent or empty, or it is a `what`
    this package wrote, unchanged, and `overwrite` is set.

    Raises:
        OwnershipError: `path` is a file, holds anything this package did not write (named), or is ours but
            `overwrite` is not set.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        raise OwnershipError(f"{path} exists and is not a folder; choose another output folder.")
    if not any(path.iterdir()):
        return
    foreign = foreign_entries(path)
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        unproven = (
            ""
            if read_manifest(path)
            else f" has no manifest ({MANIFEST}: an older version or someone else wrote it) and"
        )
        raise OwnershipError(
            f"{path}{unproven} holds files this package did not write ({', '.join(foreign[:5])}{more}); refusing to "
            "replace it, even with --overwrite. Choose a new or empty folder, or move those files away."
        )
    if not overwrite:
        raise OwnershipError(f"{path} holds a {what} written before; pass --overwrite to replace it.")


def inside(folder: str | Path, name: str) -> Path:
    """`folder / name` for a name that comes from data (an id, a file name), refusing names that would leave the
    folder (`../x`, absolute paths) or are empty.

    Raises:
        ValueError: naming the offending name.
    """
    relative = Path(name)
    if not name or relative.is_absolute() or ".." in relative.parts or name.startswith("~"):
        raise ValueError(f"{name!r} is not a plain name inside {folder}; refusing to write outside it.")
    return Path(folder) / relative


def temporary_name(path: Path, tag: str) -> str:
    """A hidden temporary name beside `path` (`.NAME.TAG-`), shortened so that the random part still fits the
    file system's name limit."""
    stem, suffix = path.stem, path.suffix
    room = MAX_NAME_BYTES - len(f"..{tag}-XXXXXXXX{suffix}".encode())
    while len(stem.encode(errors="surrogateescape")) > room:
        stem = stem[:-1]
    return f".{stem}.{tag}-"


def publish_file(tmp: Path, path: Path, overwrite: bool, is_ours: Callable[[Path], bool], what: str) -> None:
    """Move the complete temporary file `tmp` to `path`.

    A new `path` is created exclusively (a hard link, which fails if the name exists), so of two processes writing
    the same output only one wins and the other gets an error. An existing `path` is replaced only with
    `overwrite` and when `is_ours(path)` says this package wrote it.

    Raises:
        OwnershipError: `path` exists and may not be replaced; the message says why.
    """
    if path.exists() or path.is_symlink():
        check_replaceable_file(path, overwrite, is_ours, what)
        os.replace(tmp, path)
        return
    try:  # absent a moment ago: claim the name exclusively
        os.link(tmp, path)
    except FileExistsError:
        raise OwnershipError(
            f"{path} was created by another process while this one was writing it; nothing was replaced."
        ) from None
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        # No hard links on this file system: claim the name exclusively, then move the result over the claim.
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            raise OwnershipError(f"{path} was created by another process meanwhile; nothing was replaced.") from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def check_replaceable_file(path: Path, overwrite: bool, is_ours: Callable[[Path], bool], what: str) -> None:
    """Allow writing the file `path`: it is absent, or it exists and `overwrite` is set and `is_ours(path)`.

    Raises:
        OwnershipError: with the reason and what to do.
    """
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_file():
        raise OwnershipError(f"{path} exists and is not a plain file; refusing to replace it.")
    if not is_ours(path):
        raise OwnershipError(
            f"{path} exists and was not written by hybrid-mpsenet (it carries no {WRITTEN_BY} tag); refusing to "
            "replace it, even with --overwrite. Move it away or choose another output name."
        )
    if not overwrite:
        raise OwnershipError(f"{path} already exists; pass --overwrite to replace this {what} written before.")


def json_is_ours(path: Path) -> bool:
    """Whether `path` is a JSON object this package wrote (its `written_by` key)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("written_by") == WRITTEN_BY


def write_json(path: str | Path, data: dict, overwrite: bool = False) -> Path:
    """Write `data` (tagged `written_by`) as JSON to `path` atomically and exclusively; non-finite numbers become
    `null` (JSON has no NaN). An existing `path` is replaced only with `overwrite` and if this package wrote it.

    Raises:
        OwnershipError: see [`publish_file`].
    """
    path = Path(path)
    text = json.dumps(_finite({"written_by": WRITTEN_BY, **data}), indent=2, allow_nan=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=temporary_name(path, "tmp"), suffix=path.suffix, dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        tmp.chmod(new_file_mode())
        publish_file(tmp, path, overwrite, json_is_ours, "result")
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _finite(value):
    """`value` with every non-finite float replaced by `None`, recursively."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def new_file_mode(directory: bool = False) -> int:
    """The permission bits `open()` / `mkdir()` would give a new file (0o666) or folder (0o777) under the umask.

    Temporary files and folders are created private (0o600 / 0o700); results renamed from them get these bits.
    """
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def apply_new_file_modes(folder: Path) -> None:
    """Give every file and folder below `folder` the ordinary permissions of a new file (libraries that write
    through private temporaries, such as safetensors, leave 0600)."""
    for parent, folders, names in os.walk(folder):
        for name in folders:
            Path(parent, name).chmod(new_file_mode(directory=True))
        for name in names:
            Path(parent, name).chmod(new_file_mode())


class RunLock:
    """`run.lock` in a run folder: created exclusively with this process's pid and host, removed on release.

    A lock left by a process that no longer runs on this host is taken over (with the caller told so); a lock of
    a live process, or of another host, is an [`OwnershipError`].
    """

    NAME = "run.lock"

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / self.NAME
        self.taken_over: dict | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        owner = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and not self._stale(holder):
                    raise OwnershipError(
                        f"{self.path.parent} is in use by another training (pid {holder.get('pid')} on "
                        f"{holder.get('host')}); wait for it to end, or choose another --output_dir. If no training "
                        f"runs there (a run folder copied from {holder.get('host')}), delete {self.path}."
                    ) from None
                self.taken_over = holder or {}
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(owner, handle)
            return self
        raise OwnershipError(f"{self.path}: another process claims this run folder; try again.")

    def release(self) -> None:
        holder = self._holder()
        if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def _holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    @staticmethod
    def _stale(holder: dict) -> bool:
        if holder.get("host") != socket.gethostname():
            return False
        pid = holder.get("pid")
        if not isinstance(pid, int) or pid <= 0:
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
