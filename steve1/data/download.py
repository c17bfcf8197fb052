"""Resumable, verified, parallel fetch of contractor recordings (http(s):// and file://).

Each selected episode becomes ``<raw>/<id>.mp4`` + ``<raw>/<id>.jsonl``. Files stream into the
staging folder ``<raw>.partial/`` beside the raw folder (``<id>.mp4.part``, sha256 computed on the
way) through the resumable fetcher (``steve1.fetch``), and an episode moves into the raw
folder only once both files are complete and verified. A body shorter than the size the server
declared is refused; a body without a declared size is confirmed by a ``Range`` request past its
end where the server supports it, else (a jsonl) by a line for every frame of the video. An episode is ``ok`` once every jsonl line parses and the mp4
is as long as its container says, with its first and last frames decodable; anything else is
``failed`` with a reason. ``<raw>/manifest.json`` records every selected episode and is rewritten
(atomically) as episodes finish, so a killed run loses little and a rerun re-hashes ``ok`` files
instead of fetching them again.

The raw folder is the stage's output (tracked by DVC) and mirrors the selection: it holds only
finished recordings and the manifest; partials of failed episodes wait in the staging folder for
the next run, and the staging folder is removed once empty.

:func:`fetch_or_reuse` is one episode's work; :func:`download_entries`, the driver, runs it over the
selection through an executor (``steve1.engine``: threads here, or Ray tasks) and alone writes the
manifest.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import requests
from tqdm import tqdm

from steve1.data.formats import RAW_ACTIONS_SUFFIX, RAW_FORMAT_VERSION, RAW_VIDEO_SUFFIX
from steve1.data.index import Entry, Index, load_indices, select_entries
from steve1.data.video import VideoError, probe_video
from steve1.engine import Executor, LocalExecutor, Lost
from steve1.errors import UserError
from steve1.fetch import (PART_SUFFIX, FetchError, OnBytes, RetryPolicy, fetch_file, file_url_path, part_path,
                          redact_text)
from steve1.io import atomic_path, remove_stale_temps, sha256_file, write_json_atomic
from steve1.layout import MANIFEST

log = logging.getLogger(__name__)

MANIFEST_EVERY_S = 1.0          # the manifest is rewritten at most this often while episodes finish


class VerifyError(UserError, ValueError):
    """A fetched file is not what it should be (truncated, unparsable jsonl, undecodable mp4)."""


# ------------------------------------------------------------------------------------ verify


def verify_jsonl(path: Path, size_known: bool = True) -> int:
    """Every non-blank line parses as JSON; return the number of lines.

    Without a known size the file must also end with a newline (a body cut inside its last line
    may still parse). A cut exactly at a line boundary cannot be seen in the jsonl alone: the
    episode then needs a line for every frame of its video (:func:`verify_unsized_jsonl`).
    """
    if not size_known:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 1))
            if f.read(1) != b"\n":
                raise VerifyError(f"{path.name}: the server declared no size and the file does not end with a "
                                  f"newline: the transfer was probably cut; run the download again")
        log.warning("%s: the server declared no size and does not answer Range requests: the file is checked "
                    "against its video's frame count instead", path.name)
    n = 0
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise VerifyError(f"{path.name}: line {lineno} is not valid JSON ({exc})") from None
            n += 1
    if n == 0:
        raise VerifyError(f"{path.name}: no JSON lines")
    return n


def verify_mp4(path: Path) -> int:
    """Opens, is as long as its boxes declare, and its first and last declared frames decode; returns
    the frame count its container declares."""
    try:
        return probe_video(path, check_end=True).n_frames
    except VideoError as exc:
        raise VerifyError(str(exc)) from None


def verify_unsized_jsonl(path: Path, n_lines: int, n_frames: int) -> None:
    """A jsonl whose size neither the server declared nor a ``Range`` request confirmed holds a line
    for every video frame, or is refused: a body cut at a line boundary is never taken as whole."""
    if n_lines < n_frames:
        raise VerifyError(f"{path.name}: {n_lines} lines for the {n_frames} frames of the video, and the server "
                          f"declared no size and ignores Range requests: the transfer was probably cut at a line "
                          f"boundary; run the download again (or serve the file with a Content-Length)")


# ------------------------------------------------------------------------------------ episodes


def staging_dir(raw_dir: str | Path) -> Path:
    """Where partial downloads wait: ``<raw>.partial/`` beside the (DVC-tracked) raw folder."""
    raw = Path(os.path.abspath(raw_dir))
    return raw.with_name(raw.name + ".partial")


def episode_paths(raw_dir: Path, episode_id: str) -> dict[str, Path]:
    return {"mp4": raw_dir / (episode_id + RAW_VIDEO_SUFFIX), "jsonl": raw_dir / (episode_id + RAW_ACTIONS_SUFFIX)}


def _still_ok(record: Optional[dict], entry: Entry, paths: dict[str, Path]) -> bool:
    """A previous ok record whose files still have their recorded size and sha256.

    A local (``file://``) source is re-checked too, since it can be regenerated in place (the
    embedded default is); remote recordings are immutable releases and are not re-requested.
    """
    if not record or record.get("status") != "ok" or record.get("url") != entry.source:
        return False
    sources = {"mp4": entry.mp4_url, "jsonl": entry.jsonl_url}
    for kind, path in paths.items():
        checks = [path]
        if sources[kind].lower().startswith("file:"):
            checks.append(file_url_path(sources[kind]))
        try:
            for p in checks:
                if p.stat().st_size != record["bytes"][kind] or sha256_file(p) != record["sha256"][kind]:
                    return False
        except (OSError, KeyError, TypeError):
            return False
    return True


def _move_into(src: Path, dest: Path) -> None:
    """Rename ``src`` to ``dest``; across filesystems, copy to a temp name beside ``dest`` first."""
    try:
        os.replace(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)
        src.unlink()


def fetch_episode(
    entry: Entry, raw_dir: Path, policy: RetryPolicy, on_bytes: OnBytes = lambda n: None
) -> dict[str, Any]:
    """Fetch and verify one episode in the staging folder, then move it into ``raw_dir``; return its
    manifest record (never raises for a bad episode). The record holds only what the sources
    determine (no timings): the manifest is a DVC output."""
    paths = episode_paths(raw_dir, entry.episode_id)
    staged = episode_paths(staging_dir(raw_dir), entry.episode_id)
    urls = {"mp4": entry.mp4_url, "jsonl": entry.jsonl_url}
    try:
        results = {}
        with requests.Session() as session:
            for kind in ("mp4", "jsonl"):
                results[kind] = fetch_file(urls[kind], staged[kind], policy, session, on_bytes)
        n_lines = verify_jsonl(staged["jsonl"], results["jsonl"].size_known)
        n_frames = verify_mp4(staged["mp4"])
        if not results["jsonl"].size_known:
            verify_unsized_jsonl(staged["jsonl"], n_lines, n_frames)
        for kind in ("mp4", "jsonl"):
            _move_into(staged[kind], paths[kind])
    except (FetchError, VerifyError, OSError) as exc:
        for kind in ("mp4", "jsonl"):  # the raw folder holds verified recordings only
            paths[kind].unlink(missing_ok=True)
            if isinstance(exc, VerifyError):
                staged[kind].unlink(missing_ok=True)
                part_path(staged[kind]).unlink(missing_ok=True)
            elif staged[kind].exists():  # a complete file of an unfinished episode: the next run resumes it at its end
                os.replace(staged[kind], part_path(staged[kind]))
        return failed_record(entry, str(exc))
    return {"url": entry.source, "version": entry.version, "status": "ok", "reason": None,
            "bytes": {k: r.bytes for k, r in results.items()}, "sha256": {k: r.sha256 for k, r in results.items()}}


def failed_record(entry: Entry, reason: str) -> dict[str, Any]:
    return {"url": entry.source, "version": entry.version, "status": "failed", "reason": redact_text(reason), "bytes": None,
            "sha256": None}


def fetch_or_reuse(item: tuple[Entry, Optional[dict[str, Any]]], raw_dir: Path,
                   policy: RetryPolicy) -> tuple[dict[str, Any], bool, int]:
    """``(record, reused, bytes fetched)`` of one episode: the last run's ok record when its files
    still match it, else a fresh fetch. The one per-episode function of every engine; ``item`` is
    the entry and its record in the last manifest (or None)."""
    entry, previous = item
    if _still_ok(previous, entry, episode_paths(raw_dir, entry.episode_id)):
        return previous, True, 0
    fetched = 0

    def on_bytes(n: int) -> None:
        nonlocal fetched
        fetched += n

    return fetch_episode(entry, raw_dir, policy, on_bytes), False, fetched


# ------------------------------------------------------------------------------------ manifest


def read_manifest(raw_dir: Path) -> dict[str, Any]:
    """The previous run's manifest, or an empty one when absent or unreadable."""
    path = raw_dir / MANIFEST
    try:
        data = json.loads(path.read_text())
        if data.get("format_version") == RAW_FORMAT_VERSION and isinstance(data.get("episodes"), dict):
            return data
        log.warning("%s: format_version %r is not %d; ignoring it", path, data.get("format_version"), RAW_FORMAT_VERSION)
    except FileNotFoundError:
        pass
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("%s: unreadable (%s); every episode will be fetched again", path, exc)
    return {"format_version": RAW_FORMAT_VERSION, "episodes": {}}


class _ManifestWriter:
    """The manifest being built; rewritten atomically, at most every MANIFEST_EVERY_S seconds."""

    def __init__(self, path: Path, header: dict[str, Any]):
        self.path, self.header = path, header
        self.episodes: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.last_write = 0.0

    def set(self, episode_id: str, record: dict[str, Any]) -> None:
        with self.lock:
            self.episodes[episode_id] = record
            if time.monotonic() - self.last_write >= MANIFEST_EVERY_S:
                self._write()

    def flush(self) -> None:
        with self.lock:
            self._write()

    def _write(self) -> None:
        write_json_atomic(self.path, {**self.header, "format_version": RAW_FORMAT_VERSION, "episodes": self.episodes})
        self.last_write = time.monotonic()


def _remove_unselected(raw_dir: Path, selected: set[str]) -> int:
    """Delete recordings and partials of episodes outside the selection; return how many files.

    Partials left inside the raw folder by older versions move to the staging folder.
    """
    suffixes = (RAW_VIDEO_SUFFIX, RAW_ACTIONS_SUFFIX)
    staging = staging_dir(raw_dir)
    removed = 0
    for folder in (raw_dir, staging):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            name = path.name
            if name.endswith(PART_SUFFIX):
                name = name[: -len(PART_SUFFIX)]
            for suffix in suffixes:
                if not (name.endswith(suffix) and path.is_file()):
                    continue
                if name[: -len(suffix)] not in selected:
                    path.unlink(missing_ok=True)
                    removed += 1
                elif folder == raw_dir and path.name != name:
                    staging.mkdir(exist_ok=True)
                    os.replace(path, staging / path.name)
    return removed


def _remove_empty_staging(raw_dir: Path) -> None:
    staging = staging_dir(raw_dir)
    if staging.is_dir():
        remove_stale_temps(staging)
        if not any(staging.iterdir()):
            staging.rmdir()


# ------------------------------------------------------------------------------------ a run


@dataclass
class DownloadReport:
    manifest_path: Path
    episodes: dict[str, dict[str, Any]]
    reused: int = 0            # ok episodes verified from the last run, not fetched
    fetched_bytes: int = 0
    removed_files: int = 0
    seconds: float = 0.0
    failed: dict[str, str] = field(default_factory=dict)  # id -> reason

    @property
    def n_selected(self) -> int:
        return len(self.episodes)

    @property
    def n_ok(self) -> int:
        return self.n_selected - len(self.failed)

    @property
    def failed_fraction(self) -> float:
        return len(self.failed) / self.n_selected if self.n_selected else 0.0

    def summary(self) -> str:
        return (
            f"{self.n_ok}/{self.n_selected} episodes ok ({self.reused} verified from the last run, "
            f"{self.n_ok - self.reused} fetched, {self.fetched_bytes / 1e6:.1f} MB), {len(self.failed)} failed, "
            f"{self.removed_files} unselected file(s) removed, {self.seconds:.1f} s -> {self.manifest_path}"
        )

    def failure_message(self, limit: int = 20) -> str:
        lines = [f"  {ep}: {reason}" for ep, reason in list(self.failed.items())[:limit]]
        if len(self.failed) > limit:
            lines.append(f"  ... and {len(self.failed) - limit} more (see {self.manifest_path})")
        return "\n".join(lines)


def download_entries(
    entries: Sequence[Entry],
    raw_dir: str | Path,
    policy: RetryPolicy = RetryPolicy(),
    concurrency: int = 4,
    header: Optional[dict[str, Any]] = None,
    progress: bool = True,
    executor: Optional[Executor] = None,
) -> DownloadReport:
    """Fetch (or re-verify) ``entries`` into ``raw_dir``: ``concurrency`` threads here, or ``executor``'s workers."""
    t0 = time.monotonic()
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(raw_dir)
    previous = read_manifest(raw_dir)["episodes"]
    selected = {e.episode_id for e in entries}
    if len(selected) != len(entries):
        raise ValueError("download_entries: episode ids must be unique (select_entries guarantees it)")
    report = DownloadReport(raw_dir / MANIFEST, {}, removed_files=_remove_unselected(raw_dir, selected))
    writer = _ManifestWriter(report.manifest_path, header or {})
    bar = tqdm(total=len(entries), unit="ep", desc="download", disable=not progress, dynamic_ncols=True)
    work = functools.partial(fetch_or_reuse, raw_dir=raw_dir, policy=policy)
    items = [(e, previous.get(e.episode_id)) for e in entries]
    executor = executor or LocalExecutor()
    try:
        for (entry, _), result in executor.map(work, items, task="download", workers=concurrency, threads=True,
                                               key=lambda item: item[0].episode_id):
            if isinstance(result, Lost):   # its worker died on every try: failed, like a bad transfer
                record, reused, fetched = failed_record(entry, result.reason), False, 0
                for path in episode_paths(raw_dir, entry.episode_id).values():
                    path.unlink(missing_ok=True)
            else:
                record, reused, fetched = result
            writer.set(entry.episode_id, record)
            report.reused += reused
            report.fetched_bytes += fetched
            if record["status"] != "ok":
                report.failed[entry.episode_id] = record["reason"]
            bar.set_postfix_str(f"{report.fetched_bytes / 1e6:.1f} MB, {len(report.failed)} failed", refresh=False)
            bar.update(1)
    finally:
        bar.close()
        order = {e.episode_id: i for i, e in enumerate(entries)}
        writer.episodes = dict(sorted(writer.episodes.items(), key=lambda kv: order[kv[0]]))
        writer.flush()
        remove_stale_temps(raw_dir)     # temps of workers that died mid-move
        _remove_empty_staging(raw_dir)
    report.episodes = writer.episodes
    report.failed = {ep: report.failed[ep] for ep in writer.episodes if ep in report.failed}
    report.seconds = time.monotonic() - t0
    return report


def run_download(
    raw_dir: str | Path,
    index: str | Path | Sequence[str | Path],
    select: str = "first",
    n_episodes: Optional[int] = None,
    episodes: Sequence[str] = (),
    versions: Sequence[str] = (),
    seed: int = 0,
    policy: RetryPolicy = RetryPolicy(),
    concurrency: int = 4,
    progress: bool = True,
    executor: Optional[Executor] = None,
) -> DownloadReport:
    """Load the index, select episodes and download them; the stage's one library call."""
    idx: Index = load_indices(index, timeout_s=policy.timeout_s)
    index = idx.location
    entries = select_entries(idx, select, n_episodes, episodes, versions, seed)
    header = {
        "index": {"location": str(index), "sha256": idx.sha256, "basedir": idx.basedir, "n_relpaths": len(idx.entries)},
        "selection": {"select": select, "n_episodes": n_episodes, "episodes": list(episodes),
                      "versions": list(versions), "seed": seed},
    }
    log.info("%s: %d recordings; %d selected (%s)", index, len(idx.entries), len(entries), select)
    return download_entries(entries, raw_dir, policy, concurrency, header, progress, executor)
