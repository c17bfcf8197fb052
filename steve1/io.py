"""Atomic file writes: every output is written to a temporary name and renamed into place.

A killed run therefore never leaves a half-written file under a final name; leftovers carry
the ``.tmp-`` prefix and are removed by :func:`remove_stale_temps` on the next run. A write that
fails for lack of space raises :class:`DiskFullError` ("disk full at PATH") and leaves no temp
behind; :func:`check_writable` finds an unusable output folder before any expensive work.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from steve1.errors import UserError

TEMP_PREFIX = ".tmp-"
_UMASK = os.umask(0)
os.umask(_UMASK)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
LOW_SPACE_BYTES = 1 << 20  # below this, a failed write (C++ writers give no errno) is taken as disk full


class DiskFullError(UserError, OSError):
    """No space left where an output is written; the partial output was removed."""

    def __str__(self) -> str:
        return str(self.strerror)


class NotWritableError(UserError, OSError):
    """An output folder cannot be created or written to."""

    def __str__(self) -> str:
        return str(self.strerror)


def free_bytes(path: str | Path) -> int:
    """Bytes available to this user on the filesystem holding ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def disk_full(path: str | Path, detail: str = "") -> DiskFullError:
    return DiskFullError(errno.ENOSPC, f"disk full at {path}{detail}: free space on that filesystem "
                                       f"(or lower the output size) and run again")


@contextlib.contextmanager
def disk_full_errors(path: str | Path) -> Iterator[None]:
    """Turn a failed write into :class:`DiskFullError` naming ``path`` when the disk is full.

    Python writers report ENOSPC; torch's C++ writer only says ``basic_ios::clear: iostream error``,
    so a write error with (almost) no space left is also reported as disk full.
    """
    try:
        yield
    except DiskFullError:
        raise
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise disk_full(path) from None
        raise
    except RuntimeError as exc:
        if free_bytes(path) < LOW_SPACE_BYTES:
            raise disk_full(path, f" ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        raise


@contextlib.contextmanager
def atomic_path(final: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside ``final``; rename it to ``final`` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX + final.name + ".", suffix=suffix, dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; final files get the usual mode
    try:
        with disk_full_errors(final):
            yield tmp_path
            os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_bytes_atomic(final: str | Path, data: bytes, suffix: str = "") -> None:
    """``data`` under ``final``; refused up front when the filesystem has less room than ``data``."""
    free = free_bytes(Path(final).parent)
    if free < len(data):
        raise disk_full(final, f" ({len(data)} bytes to write, {free} free)")
    with atomic_path(final, suffix) as tmp:
        tmp.write_bytes(data)


def check_writable(*folders: str | Path) -> None:
    """Make sure each output folder can be created and written to, before any work; leave no trace.

    A real write (a probe file, then the folders this created are removed again) rather than a
    permission check: ``os.access`` answers yes to root whatever the mode bits, and cannot see a
    server-side refusal (NFS root squash, quotas).
    """
    for folder in folders:
        folder = Path(folder)
        created = [p for p in (folder, *folder.parents) if not p.exists()]
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=TEMP_PREFIX + "probe.", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise disk_full(folder) from None
            raise NotWritableError(exc.errno, f"{folder}: output folder is not writable "
                                              f"({exc.strerror or exc}); fix the path or its permissions") from None
        finally:
            for p in created:  # deepest first
                with contextlib.suppress(OSError):
                    p.rmdir()
        if free_bytes(folder) < LOW_SPACE_BYTES:
            raise disk_full(folder, f" ({free_bytes(folder)} bytes free)")


def write_text_atomic(final: str | Path, text: str) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(text)


def write_json_atomic(final: str | Path, obj: Any, indent: int | None = 1) -> None:
    """JSON with sorted keys so identical content gives identical bytes."""
    write_text_atomic(final, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in chunks (the one hashing helper of the project)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def sha256_file(path: str | Path) -> str:
    return file_digest(path, "sha256")


def read_json(path: str | Path, error: type[Exception] = ValueError, missing_hint: str = "") -> Any:
    """Parse a JSON file; a missing or malformed file raises ``error`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file not found" + (f" ({missing_hint})" if missing_hint else ""))
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON: {exc}") from None


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Delete temp files a killed run left in ``directory``; return what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for p in directory.glob(TEMP_PREFIX + "*"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return removed
