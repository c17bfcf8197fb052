"""Recordings (mp4 + jsonl) -> HDF5 episodes: 128x128 RGB frames, env and agent actions.

One recording is converted by :func:`decode_recording` (pure: files in, :class:`Episode` out);
:func:`_decode_one` decodes one episode of a raw folder and writes it atomically; :func:`decode_all`,
the driver, runs it over every recording through an executor (``steve1.engine``: this process, a
process pool, or a Ray cluster) and alone writes the manifest, one row per episode. A bad recording
is skipped with a reason, never fatal. Re-running keeps every episode whose sources (sha256) and
conversion settings are unchanged.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import cv2
import h5py
import numpy as np
from tqdm import tqdm

from steve1.data import formats
from steve1.data.episodes import Episode, FrameStorage, episode_path, write_episode
from steve1.data.recording import RecordingError, convert_recording
from steve1.data.video import (ReadStats, VideoError, check_container_size, iter_kept_bgr, load_cursor, probe_video,
                               to_rgb_resized)
from steve1.engine import Executor, LocalExecutor, Lost
from steve1.errors import InputFileError, MissingInputError, UserError
from steve1.io import check_writable, remove_stale_temps, sha256_file, write_json_atomic
from steve1.layout import MANIFEST
from steve1.params import DecodeParams

log = logging.getLogger(__name__)

EXPECTED_SIZE = (640, 360)      # (W, H) of contractor recordings
EXPECTED_FPS = 20.0
AGENT_SIZE = (formats.FRAME_SHAPE[1], formats.FRAME_SHAPE[0])   # (W, H) for cv2
DRAWN_CURSOR = "drawn-arrow-v1"


class DecodeSkip(UserError, ValueError):
    """A recording that cannot be decoded; the message is the manifest's reason."""


def conversion_settings(settings: DecodeParams) -> dict[str, Any]:
    """Everything that shapes an episode's bytes; stored in the file and compared on resume."""
    cursor = DRAWN_CURSOR if settings.cursor_png is None else f"png:sha256={sha256_file(Path(settings.cursor_png))}"
    return {
        "format_version": formats.EPISODE_FORMAT_VERSION,
        "camera_int_truncation": settings.camera_int_truncation,
        **FrameStorage.from_params(settings).settings(),
        "codec_library": formats.codec_library(settings.frame_codec),
        "cursor": cursor,
        "frame_size": list(AGENT_SIZE),
        "resize": "cv2.INTER_LINEAR",
        "opencv": cv2.__version__,
    }


def decode_recording(video: str | Path, jsonl: str | Path, episode_id: str, settings: DecodeParams,
                     attrs: Optional[dict[str, Any]] = None) -> Episode:
    """Convert one recording; raise :class:`DecodeSkip` (with a reason) for unusable input."""
    video, jsonl = Path(video), Path(jsonl)
    for p in (video, jsonl):
        if not p.is_file():
            raise DecodeSkip(f"missing pair: {p.name} not found")
    try:
        check_container_size(video)
        info = probe_video(video, decode_first=False)   # the decode below proves the frames
    except VideoError as exc:
        raise DecodeSkip(str(exc)) from None
    if (info.width, info.height) != EXPECTED_SIZE or abs(info.fps - EXPECTED_FPS) > 1e-3:
        raise DecodeSkip(f"{video.name}: {info.width}x{info.height} at {info.fps:g} fps, expected "
                         f"{EXPECTED_SIZE[0]}x{EXPECTED_SIZE[1]} at {EXPECTED_FPS:g} fps")
    try:
        rec = convert_recording(jsonl, settings.camera_int_truncation)
    except RecordingError as exc:
        raise DecodeSkip(str(exc)) from None
    _check_counts(video, rec.n_lines, info.n_frames, settings.max_frame_mismatch, "header")

    frames = np.empty((rec.n_kept,) + formats.FRAME_SHAPE, np.uint8)            # [K,128,128,3]
    stats = ReadStats()
    try:
        for k, bgr in enumerate(iter_kept_bgr(video, rec.kept_steps, rec.gui_open, rec.cursor_xy,
                                              load_cursor(settings.cursor_png), stats, settings.video_threads,
                                              count_rest=True)):
            frames[k] = to_rgb_resized(bgr, AGENT_SIZE)
    except VideoError as exc:
        raise DecodeSkip(str(exc)) from None
    if (stats.video_ended or stats.counted_to_end) and stats.frames_read < info.n_frames:
        # the decoder stopped (a cut file, a decode error) before the frames the container lists
        raise DecodeSkip(f"{video.name}: truncated or damaged: only {stats.frames_read} of the {info.n_frames} "
                         f"frames its container declares decode")
    if stats.video_ended:   # only the frames actually decoded count; lines past the end are dropped
        _check_counts(video, rec.n_lines, stats.frames_read, settings.max_frame_mismatch, "decoded")
    n_dropped = rec.n_kept - stats.kept_yielded
    rec = rec.take(stats.kept_yielded)
    frames = frames[:stats.kept_yielded]
    if rec.n_kept < settings.min_kept_steps:
        raise DecodeSkip(f"only {rec.n_kept} kept steps (min_kept_steps is {settings.min_kept_steps})")

    buttons, camera = rec.agent_actions()
    counts = {
        "n_lines": rec.n_lines,
        "n_frames_video": stats.frames_read if stats.video_ended else info.n_frames,
        "n_kept": rec.n_kept,
        "n_null": int(rec.is_null.sum()),
        "n_kept_without_frame": n_dropped,
        "n_attack_removed": rec.n_attack_removed,
        "n_hotbar_changes": rec.n_hotbar_changes,
        "n_gui": int(rec.gui_open.sum()),
    }
    return Episode(
        episode_id=episode_id, frames=frames, buttons=buttons, camera=camera, env_actions=rec.env,
        source_step=rec.kept_steps, gui_open=rec.gui_open, cursor_xy=rec.cursor_xy,
        attrs={formats.A_FPS: info.fps, formats.A_DECODE_COUNTS: json.dumps(counts, sort_keys=True), **(attrs or {})},
    )


def _check_counts(video: Path, n_lines: int, n_frames: int, limit: int, what: str) -> None:
    if abs(n_lines - n_frames) > limit:
        raise DecodeSkip(f"{video.name}: {n_frames} video frames ({what}) but {n_lines} jsonl lines; "
                         f"they may differ by at most max_frame_mismatch={limit}")


# ------------------------------------------------------------------------------------ many episodes
@dataclass
class Source:
    """One recording to decode, as found in the raw folder."""

    episode_id: str
    video: Path
    jsonl: Path
    url: Optional[str] = None
    version: Optional[str] = None


@dataclass
class DecodeReport:
    manifest_path: Path
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    reused: int = 0
    removed: int = 0

    @property
    def n_ok(self) -> int:
        return sum(r["status"] == "ok" for r in self.rows.values())

    @property
    def skipped(self) -> dict[str, str]:
        return {k: r["reason"] for k, r in self.rows.items() if r["status"] != "ok"}

    def summary(self) -> str:
        return (f"{self.n_ok}/{len(self.rows)} episodes ok ({self.reused} kept from an earlier run), "
                f"{len(self.skipped)} skipped, {self.removed} stale file(s) removed -> {self.manifest_path}")


def find_sources(raw_dir: str | Path) -> list[Source]:
    """Recordings in ``raw_dir``: the download manifest's ok episodes when present, else every pair."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise MissingInputError(f"{raw_dir}: raw recordings folder not found (run the download stage)")
    manifest = raw_dir / MANIFEST
    if manifest.is_file():
        try:
            episodes = json.loads(manifest.read_text())["episodes"]
        except (ValueError, KeyError, TypeError) as exc:
            raise InputFileError(f"{manifest}: not a download manifest ({exc}); expected {{'episodes': {{id: {{...}}}}}}") from None
        out = []
        for eid, row in sorted(episodes.items()):
            if row.get("status") != "ok":
                continue
            out.append(Source(eid, raw_dir / f"{eid}{formats.RAW_VIDEO_SUFFIX}", raw_dir / f"{eid}{formats.RAW_ACTIONS_SUFFIX}",
                              row.get("url"), row.get("version")))
        return out
    stems = {p.stem for p in raw_dir.iterdir()
             if p.suffix in (formats.RAW_VIDEO_SUFFIX, formats.RAW_ACTIONS_SUFFIX) and not p.name.startswith(".")}
    return [Source(s, raw_dir / f"{s}{formats.RAW_VIDEO_SUFFIX}", raw_dir / f"{s}{formats.RAW_ACTIONS_SUFFIX}") for s in sorted(stems)]


def existing_episode_counts(path: Path, conversion: str, video_sha: str, jsonl_sha: str) -> Optional[dict[str, Any]]:
    """The stored counts when ``path`` is a complete episode of the same sources and settings."""
    try:
        with h5py.File(path, "r") as f:
            a = f.attrs
            if (a.get(formats.A_CONVERSION) == conversion and a.get(formats.A_VIDEO_SHA256) == video_sha
                    and a.get(formats.A_JSONL_SHA256) == jsonl_sha):
                return json.loads(a[formats.A_DECODE_COUNTS])
    except (OSError, KeyError, ValueError):
        pass
    return None


def write_or_reuse(dest: Path, settings: DecodeParams, conversion: str, video_sha: str, jsonl_sha: str,
                   make: Callable[[dict[str, Any]], Episode], reusable: bool = True) -> tuple[dict[str, Any], bool]:
    """``(counts, reused)``: keep ``dest`` when it was made from the same sources and settings,
    else build the episode with ``make(attrs)`` and write it (the resume rule of decode and import)."""
    if reusable and dest.is_file():
        counts = existing_episode_counts(dest, conversion, video_sha, jsonl_sha)
        if counts is not None:
            return counts, True
    ep = make({formats.A_VIDEO_SHA256: video_sha, formats.A_JSONL_SHA256: jsonl_sha, formats.A_CONVERSION: conversion})
    write_episode(dest, ep, FrameStorage.from_params(settings))
    return json.loads(ep.attrs[formats.A_DECODE_COUNTS]), False


def skipped_row(reason: Optional[str] = None) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason, "n_lines": None, "n_frames_video": None, "n_kept": None}


def _decode_one(src: Source, out_dir: Path, settings: DecodeParams, conversion: str) -> tuple[dict[str, Any], bool]:
    """Decode one source into ``out_dir`` (or keep the matching file); return its manifest row and
    whether the file was kept (reported, never written: the manifest is a DVC output). The one
    per-episode function of every engine."""
    row = skipped_row()
    reused = False
    dest = episode_path(out_dir, src.episode_id)
    try:
        for p in (src.video, src.jsonl):
            if not p.is_file():
                raise DecodeSkip(f"missing pair: {p.name} not found")
        origin = {formats.A_SOURCE_URL: src.url or "", formats.A_RECORDER_VERSION: src.version or ""}
        counts, reused = write_or_reuse(
            dest, settings, conversion, sha256_file(src.video), sha256_file(src.jsonl),
            lambda attrs: decode_recording(src.video, src.jsonl, src.episode_id, settings, {**origin, **attrs}))
        row.update(status="ok", n_lines=counts["n_lines"], n_frames_video=counts["n_frames_video"],
                   n_kept=counts["n_kept"])
    except DecodeSkip as exc:
        row["reason"] = str(exc)
        dest.unlink(missing_ok=True)      # an old episode of a now-bad recording is stale
    return row, reused


def decode_all(raw_dir: str | Path, out_dir: str | Path, settings: DecodeParams,
               progress: bool = True, executor: Optional[Executor] = None) -> DecodeReport:
    """Decode every recording of ``raw_dir`` into ``out_dir``/<id>.h5 and write the decode manifest.

    ``executor`` runs the episodes (default: this machine, ``settings.workers`` processes).
    """
    out_dir = Path(out_dir)
    check_writable(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    removed = remove_stale_temps(out_dir)
    if removed:
        log.info("removed %d temp file(s) of an interrupted run", len(removed))
    sources = find_sources(raw_dir)
    ids = {s.episode_id for s in sources}
    stale = [p for p in out_dir.glob(f"*{formats.EPISODE_SUFFIX}") if p.stem not in ids and not p.name.startswith(".")]
    for p in stale:   # episodes whose recording left the raw folder
        p.unlink()
    conversion = json.dumps(conversion_settings(settings), sort_keys=True)
    report = DecodeReport(out_dir / MANIFEST, removed=len(stale))
    work = functools.partial(_decode_one, out_dir=out_dir, settings=settings, conversion=conversion)
    executor = executor or LocalExecutor()
    with tqdm(total=len(sources), desc="decode", unit="ep", disable=not progress) as bar:
        for src, result in executor.map(work, sources, task="decode", workers=settings.workers,
                                        key=lambda s: s.episode_id):
            if isinstance(result, Lost):   # its worker died on every try: skipped, like a bad recording
                report.rows[src.episode_id] = skipped_row(result.reason)
                episode_path(out_dir, src.episode_id).unlink(missing_ok=True)
            else:
                report.rows[src.episode_id], reused = result
                report.reused += reused
            bar.update()
    remove_stale_temps(out_dir)     # temps of workers that died (their episodes were rewritten or skipped)
    write_json_atomic(report.manifest_path, {
        "format_version": formats.DECODE_MANIFEST_VERSION,
        "conversion": json.loads(conversion),
        "episodes": dict(sorted(report.rows.items())),
    })
    return report
