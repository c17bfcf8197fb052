"""Resumable, retried fetch of one file over http(s):// or file://, and the URL helpers it shares.

:func:`fetch_file` streams a URL into ``<dest>.part`` (sha256 computed on the way), resumes a broken
transfer with an HTTP ``Range`` request, retries transient failures (5xx, 408/429, short bodies,
dropped connections) with a doubling pause, and renames the partial to ``dest`` only once it is
complete. A body shorter than the size the server declared is refused; a body without a declared
size is confirmed by a ``Range`` request past its end where the server supports it
(:attr:`FileResult.size_known` says whether it could be).

The recordings' downloader (``steve1.data.download``) and the official checkpoint files
(``steve1.models.official_files``) both fetch through it; it knows nothing of either.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import unquote, urlsplit, urlunsplit
from urllib.request import url2pathname

import requests
import urllib3

from steve1.errors import UserError
from steve1.io import sha256_file

log = logging.getLogger(__name__)

PART_SUFFIX = ".part"           # a resumable partial download: <name>.part beside its destination

CHUNK_BYTES = 1 << 20           # streamed to disk in pieces this large; never a whole file in memory
MAX_BACKOFF_S = 60.0            # cap of the doubling retry delay
_RETRY_STATUS = {408, 429}      # plus every 5xx
_PERMANENT_REQUEST_ERRORS = (
    requests.exceptions.InvalidURL,
    requests.exceptions.InvalidSchema,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidHeader,
)
_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)")

OnBytes = Callable[[int], None]


class FetchError(UserError, RuntimeError):
    """A file could not be fetched: permanently (404, missing file) or after all retries."""


class _Retry(Exception):
    """A transient failure of one attempt (5xx, short body, bad resume): try again after a pause."""


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5            # extra attempts after the first
    backoff_s: float = 0.5      # pause before the first retry; doubles each time
    timeout_s: float = 60.0     # connect and per-read socket timeout

    def delay(self, attempt: int) -> float:
        return min(self.backoff_s * (2**attempt), MAX_BACKOFF_S)


@dataclass(frozen=True)
class FileResult:
    bytes: int
    sha256: str
    size_known: bool = True     # the server declared the size, or confirmed the end (416 past it)


# ------------------------------------------------------------------------------------ URLs


def redact_url(url: str) -> str:
    """``url`` without its userinfo (``user:password@``): what logs, messages and outputs may hold."""
    parts = urlsplit(str(url))
    if "@" not in parts.netloc:
        return str(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def redact_text(text: str) -> str:
    """Every URL's userinfo removed from a message (a reason recorded in a manifest, a log line)."""
    return re.sub(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@", r"\1", str(text))


def recorded_url(url: str, index_url: Optional[str] = None, workspace: Optional[Path] = None) -> str:
    """How an output records ``url``: a ``file://`` URL as a POSIX path relative to the workspace (the
    working directory) or, outside it, to the index file's folder; kept absolute only when it lies
    outside both (then params or the index named it so). Other URLs lose their credentials."""
    if urlsplit(url).scheme.lower() != "file":
        return redact_url(url)
    path = file_url_path(url)
    bases = [Path.cwd() if workspace is None else workspace]
    if index_url is not None and index_url.lower().startswith("file:"):
        bases.append(file_url_path(index_url).parent)
    for base in bases:
        try:
            return path.relative_to(base.resolve()).as_posix()
        except ValueError:
            continue
    return url


def file_url_path(url: str) -> Path:
    """The local path of a file:// URL."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "file":
        raise ValueError(f"{url}: not a file:// URL")
    return Path(url2pathname(unquote(parts.path)))


# ------------------------------------------------------------------------------------ one file


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + PART_SUFFIX)


def _content_range(value: Optional[str]) -> tuple[Optional[int], Optional[int]]:
    """(first byte, total size) of a ``Content-Range`` header; None where absent or '*'."""
    m = _CONTENT_RANGE.fullmatch((value or "").strip())
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(3)) if m.group(3) != "*" else None
    return start, total


def _http_attempt(
    session: requests.Session, url: str, part: Path, timeout_s: float, chunk_bytes: int, on_bytes: OnBytes
) -> FileResult:
    """One GET, resuming ``part`` if it holds bytes; returns when ``part`` is complete."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity"}  # byte ranges and Content-Length refer to the stored bytes
    if have:
        headers["Range"] = f"bytes={have}-"
    with session.get(url, headers=headers, stream=True, timeout=timeout_s, allow_redirects=True) as resp:
        code = resp.status_code
        if code == 416:
            _, total = _content_range(resp.headers.get("Content-Range"))
            if have and total == have:  # the partial already holds every byte
                return FileResult(have, sha256_file(part))
            part.unlink(missing_ok=True)
            raise _Retry(f"HTTP 416 for 'Range: bytes={have}-' (size {total}); restarting from byte 0")
        if code >= 500 or code in _RETRY_STATUS:
            raise _Retry(f"HTTP {code} {resp.reason}")
        if code not in (200, 206):
            raise FetchError(f"{redact_url(url)}: HTTP {code} {resp.reason}; expected 200 (not retried)")
        hasher = hashlib.sha256()
        if code == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != have:
                part.unlink(missing_ok=True)
                raise _Retry(f"asked to resume at byte {have} but the server sent Content-Range "
                             f"{resp.headers.get('Content-Range')!r}; restarting from byte 0")
            if total is None and resp.headers.get("Content-Length"):
                total = have + int(resp.headers["Content-Length"])
            with open(part, "rb") as f:
                while block := f.read(chunk_bytes):
                    hasher.update(block)
            mode, written, expected = "ab", have, total
        else:  # 200: a fresh transfer, or a server that ignores Range (then the partial is dropped)
            length = resp.headers.get("Content-Length")
            mode, written, expected = "wb", 0, int(length) if length and length.isdigit() else None
        read = getattr(resp.raw, "read1", resp.raw.read)  # read1 hands over bytes before a dropped connection
        with open(part, mode) as f:
            while data := read(chunk_bytes, decode_content=False):
                f.write(data)
                hasher.update(data)
                written += len(data)
                on_bytes(len(data))
    if expected is not None and written != expected:
        raise _Retry(f"short body: {written} of {expected} bytes")
    size_known = expected is not None or _confirm_end(session, url, written, timeout_s)
    return FileResult(written, hasher.hexdigest(), size_known)


def _confirm_end(session: requests.Session, url: str, have: int, timeout_s: float) -> bool:
    """Ask for the bytes after ``have`` of a body sent without a size: True when the server says
    there are none (416), False when it cannot say (it ignores ``Range``); more bytes: retry."""
    with session.get(url, headers={"Accept-Encoding": "identity", "Range": f"bytes={have}-"}, stream=True,
                     timeout=timeout_s, allow_redirects=True) as resp:
        if resp.status_code == 416:
            _, total = _content_range(resp.headers.get("Content-Range"))
            if total is None or total == have:
                return True
            raise _Retry(f"the body ended at byte {have} without a declared size, but the file has {total} bytes")
        if resp.status_code == 206:
            raise _Retry(f"the body ended at byte {have} without a declared size, but the server has more "
                         f"(Content-Range {resp.headers.get('Content-Range')!r}); resuming")
    return False


def _copy_local(url: str, part: Path, chunk_bytes: int, on_bytes: OnBytes) -> FileResult:
    src = file_url_path(url)
    if not src.is_file():
        raise FetchError(f"{recorded_url(url)}: file not found")
    hasher, written = hashlib.sha256(), 0
    with open(src, "rb") as fin, open(part, "wb") as fout:
        while block := fin.read(chunk_bytes):
            fout.write(block)
            hasher.update(block)
            written += len(block)
            on_bytes(len(block))
    if written != src.stat().st_size:
        raise FetchError(f"{src}: copied {written} bytes but the file holds {src.stat().st_size}; it changed while copying")
    return FileResult(written, hasher.hexdigest())


def fetch_file(
    url: str,
    dest: str | Path,
    policy: RetryPolicy = RetryPolicy(),
    session: Optional[requests.Session] = None,
    on_bytes: OnBytes = lambda n: None,
    chunk_bytes: int = CHUNK_BYTES,
) -> FileResult:
    """Fetch ``url`` to ``dest`` through ``dest.part``, resuming and retrying; raise FetchError."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    if url.lower().startswith("file:"):
        result = _copy_local(url, part, chunk_bytes, on_bytes)
        os.replace(part, dest)
        return result
    own = session is None
    session = session or requests.Session()
    try:
        for attempt in range(policy.retries + 1):
            try:
                result = _http_attempt(session, url, part, policy.timeout_s, chunk_bytes, on_bytes)
                break
            except _PERMANENT_REQUEST_ERRORS as exc:
                raise FetchError(redact_text(f"{redact_url(url)}: {exc}")) from None
            except (_Retry, requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, _Retry) else str(exc)
                if attempt == policy.retries:
                    raise FetchError(redact_text(f"{redact_url(url)}: gave up after {attempt + 1} attempt(s); "
                                                 f"last: {reason}")) from None
                log.debug("%s: attempt %d failed (%s); retrying", redact_url(url), attempt + 1, redact_text(reason))
                time.sleep(policy.delay(attempt))
    finally:
        if own:
            session.close()
    os.replace(part, dest)
    return result
