"""VPT contractor index files: load and validate, episode ids and versions, URLs, selection.

An index is ``{"basedir": <URL or path>, "relpaths": ["data/<version>/<id>.mp4", ...]}``; each
recording is the ``.mp4`` plus the ``.jsonl`` beside it. The index location and its ``basedir``
may be http(s):// URLs, file:// URLs or plain paths; a relative ``basedir`` (like ``"."``) is
resolved against the index file's own folder. Everything is turned into absolute URLs here so
the downloader sees only ``http(s)://`` and ``file://``.

What outputs and logs record of a location is :func:`steve1.fetch.recorded_url`: no credentials (``user:password@``
is dropped) and, for local files, no trace of where the workspace lives (a path relative to the
working directory, else to the index's folder), so two clones give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence
from urllib.parse import quote, urljoin, urlsplit

from steve1.errors import UserError
from steve1.fetch import file_url_path, recorded_url, redact_text, redact_url
from steve1.io import TEMP_PREFIX

log = logging.getLogger(__name__)

MP4 = ".mp4"
JSONL = ".jsonl"
SELECT_MODES = ("first", "sample", "list")
_VERSION_RE = re.compile(r"^\d+(\.\d+)*$")
_URL_SCHEMES = ("http", "https", "file")


class IndexFileError(UserError, ValueError):
    """An index file is unreadable, malformed, or a selection names what it does not hold."""


@dataclass(frozen=True)
class Entry:
    """One recording of an index."""

    episode_id: str         # file stem: the name in every data folder
    version: Optional[str]  # recorder version, the relpath's folder ('10.0'); None if it is not a version
    relpath: str            # as written in the index
    mp4_url: str            # absolute http(s):// or file:// URL (may hold credentials: fetch with it, never record it)
    jsonl_url: str
    source: str             # what the manifest records of mp4_url: recorded_url(mp4_url)


@dataclass(frozen=True)
class Index:
    """A loaded index: where it came from and its recordings in file order (duplicates kept)."""

    location: str           # as given by the caller
    url: str                # absolute URL of the index file
    basedir: str            # where every relpath is joined to (ends with '/'), as recorded_url records it
    sha256: str             # of the index file's bytes
    entries: tuple[Entry, ...]

    @property
    def versions(self) -> list[str]:
        """Recorder versions present, in order of first appearance."""
        return list(dict.fromkeys(e.version for e in self.entries if e.version is not None))

    @property
    def episode_ids(self) -> list[str]:
        """Distinct episode ids in file order."""
        return list(dict.fromkeys(e.episode_id for e in self.entries))


def is_url(location: str) -> bool:
    return urlsplit(location).scheme.lower() in _URL_SCHEMES


def to_url(location: str | Path) -> str:
    """A URL for a URL or a plain path (made absolute against the working directory)."""
    location = str(location)
    if is_url(location):
        return location
    return Path(location).expanduser().resolve().as_uri()


def join_url(base: str, relpath: str) -> str:
    """``relpath`` (a URL, an absolute path or a path relative to ``base``) as an absolute URL."""
    if is_url(relpath):
        return relpath
    if not base.endswith("/"):
        base += "/"
    return urljoin(base, quote(relpath, safe="/:@!$&'()*+,;=-._~"))


def _resolve_basedir(index_url: str, basedir: str) -> str:
    if is_url(basedir):
        url = basedir
    elif Path(basedir).expanduser().is_absolute():
        url = Path(basedir).expanduser().as_uri()
    else:
        url = join_url(index_url.rsplit("/", 1)[0] + "/", basedir)
    return url if url.endswith("/") else url + "/"


def read_location(url: str, timeout_s: float = 60.0) -> bytes:
    """The bytes at a file:// or http(s):// URL (small files only: index JSONs)."""
    if url.lower().startswith("file:"):
        path = file_url_path(url)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise IndexFileError(f"{path}: cannot read the index file ({exc.strerror or exc})") from None
    import requests

    try:
        resp = requests.get(url, timeout=timeout_s)
    except requests.RequestException as exc:
        raise IndexFileError(redact_text(f"{redact_url(url)}: cannot fetch the index ({exc})")) from None
    if resp.status_code != 200:
        raise IndexFileError(f"{redact_url(url)}: fetching the index answered HTTP {resp.status_code}, expected 200")
    return resp.content


def _episode_id(relpath: str) -> str:
    return relpath.rstrip("/").rsplit("/", 1)[-1][: -len(MP4)]


def _version(relpath: str) -> Optional[str]:
    parts = relpath.split("/")
    if len(parts) >= 2 and _VERSION_RE.match(parts[-2]):
        return parts[-2]
    return None


def parse_index(data: bytes, location: str, url: str) -> Index:
    """Validate an index's bytes; errors name the location and the offending field."""
    try:
        raw = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexFileError(f"{location}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise IndexFileError(f"{location}: expected an object with 'basedir' and 'relpaths', got {type(raw).__name__}")
    missing = [k for k in ("basedir", "relpaths") if k not in raw]
    if missing:
        raise IndexFileError(f"{location}: missing key(s) {', '.join(missing)}; an index is {{\"basedir\": ..., \"relpaths\": [...]}}")
    basedir, relpaths = raw["basedir"], raw["relpaths"]
    if not isinstance(basedir, str):
        raise IndexFileError(f"{location}: 'basedir' must be a string URL or path, got {basedir!r}")
    if not isinstance(relpaths, list) or not relpaths:
        raise IndexFileError(f"{location}: 'relpaths' must be a non-empty list of '<folder>/<id>.mp4' strings")
    base = _resolve_basedir(url, basedir)
    entries = []
    for i, rel in enumerate(relpaths):
        if not isinstance(rel, str) or not rel.endswith(MP4) or len(rel) <= len(MP4) or rel.endswith("/" + MP4):
            raise IndexFileError(f"{location}: relpaths[{i}] = {rel!r} is not a path ending in '<id>.mp4'")
        if _episode_id(rel).startswith(TEMP_PREFIX):     # every data folder deletes such files as temp files
            raise IndexFileError(f"{location}: relpaths[{i}] = {rel!r}: an episode id may not start with "
                                 f"{TEMP_PREFIX!r} (the prefix of steve1's temporary files); rename the recording")
        mp4_url = join_url(base, rel)
        entries.append(
            Entry(
                episode_id=_episode_id(rel),
                version=_version(rel),
                relpath=rel,
                mp4_url=mp4_url,
                jsonl_url=mp4_url[: -len(MP4)] + JSONL,
                source=recorded_url(mp4_url, url),
            )
        )
    return Index(location=location, url=url, basedir=recorded_url(base, url), sha256=hashlib.sha256(data).hexdigest(), entries=tuple(entries))


def load_index(location: str | Path, timeout_s: float = 60.0) -> Index:
    """Read and validate the index at a path, file:// URL or http(s):// URL."""
    url = to_url(str(location))
    return parse_index(read_location(url, timeout_s), redact_url(str(location)), url)


def load_indices(locations: str | Path | Sequence[str | Path], timeout_s: float = 60.0) -> Index:
    """One index, or several read in order and concatenated (e.g. the OpenAI 6.x-10.x files)."""
    if isinstance(locations, (str, Path)):
        return load_index(locations, timeout_s)
    if not locations:
        raise IndexFileError("no index given: download.index is an empty list")
    parts = [load_index(loc, timeout_s) for loc in locations]
    if len(parts) == 1:
        return parts[0]
    digest = hashlib.sha256("".join(p.sha256 for p in parts).encode()).hexdigest()
    return Index(location=" + ".join(p.location for p in parts), url=parts[0].url, basedir=parts[0].basedir,
                 sha256=digest, entries=tuple(e for p in parts for e in p.entries))


def _unique(entries: Iterable[Entry]) -> list[Entry]:
    """First listing of each id: the raw folder holds one file per id."""
    seen: dict[str, Entry] = {}
    for e in entries:
        seen.setdefault(e.episode_id, e)
    return list(seen.values())


def select_entries(
    index: Index,
    select: str = "first",
    n_episodes: Optional[int] = None,
    episodes: Sequence[str] = (),
    versions: Sequence[str] = (),
    seed: int = 0,
) -> list[Entry]:
    """The recordings to fetch, in index order.

    ``versions`` filters first; an id listed under several versions then keeps its first
    listing. ``first`` takes the first ``n_episodes``, ``sample`` a seeded sample of
    ``n_episodes`` (both: all when None or when fewer are available), ``list`` exactly
    ``episodes``.
    """
    if select not in SELECT_MODES:
        raise IndexFileError(f"select = {select!r} is not one of {', '.join(SELECT_MODES)}")
    if n_episodes is not None and n_episodes < 1:
        raise IndexFileError(f"n_episodes = {n_episodes} must be at least 1 (or null for all)")
    pool = list(index.entries)
    if versions:
        unknown = [v for v in versions if v not in index.versions]
        if unknown:
            raise IndexFileError(
                f"{index.location}: version(s) {', '.join(map(repr, unknown))} not in the index; "
                f"it holds {', '.join(index.versions) or 'no versioned folders'}"
            )
        wanted = set(versions)
        pool = [e for e in pool if e.version in wanted]
    pool = _unique(pool)
    if select == "list":
        if not episodes:
            raise IndexFileError("select is 'list' but no episode ids were given")
        by_id = {e.episode_id: e for e in pool}
        unknown = [ep for ep in episodes if ep not in by_id]
        if unknown:
            shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
            where = f" with versions {list(versions)}" if versions else ""
            raise IndexFileError(f"{index.location}: episode id(s) not in the index{where}: {shown}")
        wanted_ids = set(episodes)
        return [e for e in pool if e.episode_id in wanted_ids]
    n = len(pool) if n_episodes is None else n_episodes
    if n > len(pool):
        log.warning("n_episodes = %d but only %d episodes are available; taking all of them", n, len(pool))
        n = len(pool)
    if select == "first":
        return pool[:n]
    order = {e.episode_id: i for i, e in enumerate(pool)}
    picked = random.Random(seed).sample(pool, n)
    return sorted(picked, key=lambda e: order[e.episode_id])
