"""Atomic file writes: a reader (or a run killed mid-write) sees the old file or the new one, never half.

The bytes go to a temporary file in the destination's folder (so the final ``os.replace`` never
crosses a file system), are flushed and fsynced, and the temporary file is moved over the
destination; the folder entry is fsynced too. If anything fails before the move, the temporary
file is removed and the destination is untouched. The temporary file is created with mode
``0o666`` minus the umask, so the result has the permissions a plain ``open(path, "w")`` gives.
"""
from __future__ import annotations

import fcntl
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


class FolderInUseError(RuntimeError):
    """Another process is writing into the folder a run was told to use."""


@contextmanager
def claim_folder(folder: str | Path) -> Iterator[Path]:
    """Hold ``folder`` for this process for the ``with`` block: an exclusive, non-blocking ``flock`` on
    ``.<name>.lock`` beside it. A second process that claims the same folder meanwhile gets
    :class:`FolderInUseError` at once (before any work), so two identical runs started together never train in
    one folder. The lock goes with the process (a killed run leaves nothing to clean up)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = folder.parent / f".{folder.name}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUseError(f"{folder} is in use by another process (it holds {lock}): wait for that run to "
                                   "end, or give this run another output folder") from None
        yield folder
    finally:
        os.close(fd)


def fsync_directory(directory: str | Path) -> None:
    """Flush ``directory``'s entries to disk (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: str | Path, temp_prefix: str | None = None) -> Iterator[BinaryIO]:
    """A binary handle whose content replaces ``path`` atomically when the ``with`` block ends cleanly.

    ``temp_prefix`` names the temporary file (default ``.<name>.tmp-``), so that callers can find
    and delete files left behind by a process killed mid-write. The parent folder must exist.
    """
    path = Path(path)
    prefix = temp_prefix if temp_prefix is not None else f".{path.name}.tmp-"
    temp = path.with_name(f"{prefix}{secrets.token_hex(6)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring); returns ``path``."""
    with atomic_writer(path) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see the module docstring); returns ``path``."""
    return atomic_write_bytes(path, text.encode(encoding))


def check_output_file(path: str | Path, what: str = "output file", overwrite: bool = False) -> Path:
    """Refuse, before any work, an output ``path`` that cannot be written: one that names a directory, one that
    exists (unless ``overwrite``), one under a file, or one whose folder (or nearest existing ancestor, which
    the writer will create the rest under) does not accept new files. Writability is probed by creating and
    removing a temporary file there (permission bits do not tell for root or read-only mounts); nothing is
    left behind. Returns ``path``. Raises FileExistsError / IsADirectoryError / NotADirectoryError /
    PermissionError with one line naming the path."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a directory; give a file name")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")
    _probe_writable(path.parent, f"{what} {path}", "cannot be written")
    return path


def check_writable_folder(folder: str | Path, what: str = "output folder") -> Path:
    """Refuse, before any work, a ``folder`` that cannot take new files (or the nearest existing ancestor it
    would be created under): probed by creating and removing a temporary file, as :func:`check_output_file`.
    Raises NotADirectoryError / PermissionError with one line naming the folder."""
    folder = Path(folder)
    _probe_writable(folder, f"{what} {folder}", "cannot be created")
    return folder


def _probe_writable(folder: Path, label: str, verb: str) -> None:
    """Create and remove a temporary file in ``folder`` or the nearest existing ancestor it would be created under
    (permission bits do not tell for root or read-only mounts); nothing is left behind. ``label`` names what is
    refused in the one-line NotADirectoryError / PermissionError."""
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise NotADirectoryError(f"{label} {verb}: {ancestor} is not a directory")
    probe = ancestor / f".probe-{secrets.token_hex(6)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as error:
        raise PermissionError(f"{label} cannot be written: {ancestor} does not accept new files "
                              f"({error.strerror or error})") from None
    os.close(fd)
    probe.unlink(missing_ok=True)
