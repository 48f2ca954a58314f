"""Atomic file writes: a reader (or a run killed mid-write) sees the old file or the new one, never half.

The bytes go to a temporary file in the destination's folder (so the final ``os.replace`` never
crosses a file system), are flushed and fsynced, and the temporary file is moved over the
destination; the folder entry is fsynced too. If anything fails before the move, the temporary
file is removed and the destination is untouched. The temporary file is created with mode
``0o666`` minus the umask, so the result has the permissions a plain ``open(path, "w")`` gives.
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


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
