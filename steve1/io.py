"""Atomic file writes: every output is written to a temporary name and renamed into place.

A killed run therefore never leaves a half-written file under a final name; leftovers carry
the ``.tmp-`` prefix and are removed by :func:`remove_stale_temps` on the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

TEMP_PREFIX = ".tmp-"
_UMASK = os.umask(0)
os.umask(_UMASK)


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
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


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
