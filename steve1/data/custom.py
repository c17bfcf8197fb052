"""Custom recordings -> HDF5 episodes, with the decode stage's validation, manifest and resume.

Two source layouts, one folder per episode (the folder name is the episode id):

* ``frames``: ``<root>/<episode>/frames/*.png`` (ordered by the last number in the file name, any
  resolution) and ``<root>/<episode>/actions.jsonl`` with one line per frame. The line format is
  detected per file from its first line: VPT contractor lines (``mouse``/``keyboard`` fields) go
  through :mod:`steve1.data.recording` exactly as in decode; otherwise every line is a MineRL
  env-action dict with any subset of the 24 MineRL keys (missing keys are 0).
* ``minerl``: a MineRL v0.4 dataset trajectory, ``recording.mp4`` + ``rendered.npz`` (+
  ``metadata.json``). The npz holds one array per action key, ``action$forward``, ``action$camera``
  ([n,2] pitch, yaw degrees), ...; as in ``minerl.data.DataPipeline``, the video holds n+1 states at
  its end (``metadata.json``'s ``true_video_frame_count`` minus n+1 leading frames are skipped) and
  action t goes with state t. The v0.4 actions without a VPT key are mapped or dropped (see
  :data:`MINERL_PLACE_KEY`, :data:`MINERL_DROPPED_KEYS`), and counted in the episode's counts.
* ``steve1``: an episode folder of the official STEVE-1 ``EpisodeStorage`` (``frames.mp4``,
  ``actions.pkl``, ``embeds_attn.pkl``, ``len.txt``), read as the official training code reads it,
  its MineCLIP embeddings kept for ``embed-set`` (:mod:`steve1.data.steve1_format`).

MineDojo has no action-labelled recording format of its own (its YouTube data has no actions), so
it is not supported; export such data to the ``frames`` layout.

Steps with no action at all are dropped, as decode drops null jsonl lines (not in ``steve1`` sets:
the official conversion dropped them already and its training reads every frame). Frames take decode's
path (cursor where the GUI is open, BGR -> RGB, 128x128 INTER_LINEAR). The embed stage reads
MineCLIP frames from ``<raw>/<id>.mp4`` at ``source_step``; so every episode also gets a companion
video in ``video_dir``: the MineRL ``recording.mp4`` copied, or the PNG frames written losslessly
(PNG-coded mp4, decoded back bit for bit).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import cv2
import numpy as np
from tqdm import tqdm

from steve1 import actions as A
from steve1.data import formats
from steve1.data import steve1_format as S1
from steve1.data.action_dicts import ActionOrigin, parse_action_dicts
from steve1.data.decode import AGENT_SIZE, DecodeReport, DecodeSkip, conversion_settings, write_or_reuse
from steve1.data.episodes import Episode, episode_path
from steve1.data.recording import RecordingActions, RecordingError, convert_recording
from steve1.data.video import (ReadStats, VideoError, composite_cursor, cursor_position, iter_kept_bgr,
                               load_cursor, probe_video, to_rgb_resized)
from steve1.engine import Executor, LocalExecutor, Lost
from steve1.errors import UserError
from steve1.io import atomic_path, check_writable, remove_stale_temps, sha256_file, write_json_atomic
from steve1.layout import MANIFEST
from steve1.params import DecodeParams

log = logging.getLogger(__name__)

IMPORT_VERSION = 1
IMPORTER = "steve1.data.custom"   # marks our manifest apart from the decode stage's
SourceFormat = Literal["frames", "minerl", "steve1"]
FORMATS = ("auto", "frames", "minerl", "steve1")

FRAMES_DIR = "frames"
ACTIONS_FILE = "actions.jsonl"
MINERL_VIDEO = "recording.mp4"
MINERL_NPZ = "rendered.npz"
MINERL_META = "metadata.json"
MINERL_ACTION_PREFIX = "action$"
MINERL_PLACE_KEY = "place"            # v0.4 "place <block>": right click with the block -> VPT "use"
MINERL_DROPPED_KEYS = ("equip", "craft", "nearbyCraft", "nearbySmelt")   # GUI macros, no VPT key
MINERL_KEYS = (*A.ENV_BUTTON_KEYS, A.CAMERA_KEY)                         # the 24 MineRL 1.0 keys
COMPANION_FOURCC = "png "             # lossless: the embed stage decodes the same pixels (FFmpeg notes a
                                      # harmless "fallback to use tag mp4v" on stderr when writing)
DEFAULT_FPS = 20.0


class CustomImportError(UserError):
    """The import itself cannot run: an unknown format, a bad fps, an output folder that holds another manifest."""


# ------------------------------------------------------------------------------------ actions
def env_actions_from_dicts(lines: list[dict[str, Any]], origin: str) -> RecordingActions:
    """MineRL env-action dicts (one per frame; ``origin``: the file, errors name its lines) -> the kept
    steps, as :func:`convert_steps` gives them: a step with no button and a zero camera is null and dropped."""
    return _kept(*parse_action_dicts(lines, ActionOrigin(origin, lines=True)))


def _kept(buttons: np.ndarray, camera: np.ndarray, gui: Optional[np.ndarray] = None) -> RecordingActions:
    """Drop null steps (no button, zero camera) from per-step columns."""
    n = len(buttons)
    is_null = ~(buttons.any(1) | (camera != 0).any(1))
    kept = np.flatnonzero(~is_null).astype(np.int64)
    env = {key: buttons[kept, j] for j, key in enumerate(A.ENV_BUTTON_KEYS)}
    env[A.CAMERA_KEY] = camera[kept]
    gui_open = np.zeros(len(kept), bool) if gui is None else gui[kept]
    return RecordingActions(n, is_null, kept, env, gui_open, np.zeros((len(kept), 2)), 0, 0)


def read_actions_file(path: Path, camera_int_truncation: bool = False) -> tuple[str, RecordingActions]:
    """``("contractor" | "env", actions)`` of an ``actions.jsonl``; the format is read off line 1."""
    lines = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                lines.append(json.loads(raw))
            except ValueError as exc:
                raise DecodeSkip(f"{path}:{lineno}: not JSON ({exc})") from None
    if lines and isinstance(lines[0], dict) and ("mouse" in lines[0] or "keyboard" in lines[0]):
        try:
            return "contractor", convert_recording(path, camera_int_truncation)
        except RecordingError as exc:
            raise DecodeSkip(str(exc)) from None
    return "env", env_actions_from_dicts(lines, str(path))


# ------------------------------------------------------------------------------------ frames layout
def list_frames(frames_dir: Path) -> list[Path]:
    """PNGs of ``frames_dir`` ordered by the last number in their names (``frame_2`` before ``frame_10``)."""
    if not frames_dir.is_dir():
        raise DecodeSkip(f"{frames_dir}: frames folder not found")
    indexed: dict[int, Path] = {}
    for p in frames_dir.iterdir():
        if p.suffix.lower() != ".png" or p.name.startswith("."):
            continue
        numbers = re.findall(r"\d+", p.stem)
        if not numbers:
            raise DecodeSkip(f"{p}: frame name has no index; expected a number in every PNG name (e.g. 000012.png)")
        idx = int(numbers[-1])
        if idx in indexed:
            raise DecodeSkip(f"{p}: frame index {idx} also used by {indexed[idx].name}")
        indexed[idx] = p
    return [indexed[i] for i in sorted(indexed)]


def _read_png(path: Path, shape: Optional[tuple[int, ...]]) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)                       # BGR uint8 [H,W,3]
    if img is None:
        raise DecodeSkip(f"{path}: unreadable PNG (OpenCV cannot decode it)")
    if shape is not None and img.shape != shape:
        raise DecodeSkip(f"{path}: frame is {img.shape[1]}x{img.shape[0]}, expected {shape[1]}x{shape[0]} "
                         "like the first frame; all frames of an episode must have one size")
    return img


def import_frames_episode(folder: Path, episode_id: str, settings: DecodeParams, video_out: Path,
                          fps: float = DEFAULT_FPS, attrs: Optional[dict[str, Any]] = None) -> Episode:
    """One ``frames/*.png`` + ``actions.jsonl`` folder -> :class:`Episode`; writes the companion video."""
    pngs = list_frames(folder / FRAMES_DIR)
    actions = folder / ACTIONS_FILE
    if not actions.is_file():
        raise DecodeSkip(f"{actions}: actions file not found")
    line_format, rec = read_actions_file(actions, settings.camera_int_truncation)
    if len(pngs) != rec.n_lines:
        raise DecodeSkip(f"{folder.name}: {len(pngs)} PNG frames in {FRAMES_DIR}/ but {rec.n_lines} lines in "
                         f"{ACTIONS_FILE}; expected one line per frame")
    _check_min_kept(rec, settings)
    cursor = load_cursor(settings.cursor_png)
    frames = np.empty((rec.n_kept,) + formats.FRAME_SHAPE, np.uint8)           # [K,128,128,3]
    kept_pos = {int(s): k for k, s in enumerate(rec.kept_steps)}
    shape = None
    with atomic_path(video_out, suffix=".mp4") as tmp:
        writer = None
        try:
            for i, png in enumerate(pngs):
                bgr = _read_png(png, shape)
                if writer is None:
                    shape = bgr.shape
                    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*COMPANION_FOURCC), fps,
                                             (shape[1], shape[0]))
                    if not writer.isOpened():
                        raise DecodeSkip(f"{video_out}: OpenCV cannot write a {COMPANION_FOURCC!r} video here")
                writer.write(bgr)                                        # raw frame: embed composites itself
                k = kept_pos.get(i)
                if k is not None:
                    if rec.gui_open[k]:
                        composite_cursor(bgr, cursor, *cursor_position(rec.cursor_xy[k], bgr.shape[0]))
                    frames[k] = to_rgb_resized(bgr, AGENT_SIZE)
        finally:
            if writer is not None:
                writer.release()
    counts = _counts(rec, n_frames_video=len(pngs))
    return _episode(episode_id, frames, rec, fps, counts, {"line_format": line_format}, attrs)


# ------------------------------------------------------------------------------------ MineRL v0.4
def minerl_actions(npz_path: Path) -> tuple[RecordingActions, dict[str, int]]:
    """The ``action$*`` arrays of a ``rendered.npz`` -> kept steps, and counts of the lossy mappings."""
    try:
        data = np.load(npz_path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DecodeSkip(f"{npz_path}: not a readable npz ({exc})") from None
    with data:
        keys = [k for k in data.files if k.startswith(MINERL_ACTION_PREFIX)]
        if not keys:
            raise DecodeSkip(f"{npz_path}: no '{MINERL_ACTION_PREFIX}*' arrays; expected MineRL v0.4 rendered.npz")
        cols: dict[str, np.ndarray] = {}
        for k in keys:
            try:
                cols[k[len(MINERL_ACTION_PREFIX):]] = data[k]
            except ValueError as exc:         # object arrays need pickle: refused for untrusted files
                raise DecodeSkip(f"{npz_path}: key {k!r} cannot be read without pickle ({exc})") from None
        n_reward = len(data["reward"]) if "reward" in data.files else None
    lengths = {k: len(v) for k, v in cols.items()}
    n = lengths.get(A.CAMERA_KEY, next(iter(lengths.values())))
    if any(v != n for v in lengths.values()) or (n_reward is not None and n_reward != n):
        raise DecodeSkip(f"{npz_path}: action arrays differ in length: {lengths}, reward {n_reward}")
    buttons = np.zeros((n, len(A.ENV_BUTTON_KEYS)), np.uint8)
    camera = np.zeros((n, 2), np.float64)
    col = {k: j for j, k in enumerate(A.ENV_BUTTON_KEYS)}
    lossy = {"n_place_as_use": 0, "n_dropped_actions": 0}
    for key, v in cols.items():
        where = f"{npz_path}: key '{MINERL_ACTION_PREFIX}{key}'"
        if key == A.CAMERA_KEY:
            v = np.asarray(v)
            if v.shape != (n, 2) or v.dtype.kind not in "iuf" or not np.isfinite(v).all():
                raise DecodeSkip(f"{where}: {v.dtype} {list(v.shape)}, expected finite numbers [{n},2] (pitch, yaw)")
            camera[:] = v
        elif key in col:
            if v.dtype.kind not in "iub" or not np.isin(v, (0, 1)).all():
                raise DecodeSkip(f"{where}: values {np.unique(v)[:5].tolist()}, expected 0 or 1")
            buttons[:, col[key]] = v
        elif key == MINERL_PLACE_KEY or key in MINERL_DROPPED_KEYS:
            active = _enum_active(v, where)
            if key == MINERL_PLACE_KEY:
                buttons[:, col["use"]] |= active
                lossy["n_place_as_use"] += int(active.sum())
            else:
                lossy["n_dropped_actions"] += int(active.sum())
        else:
            raise DecodeSkip(f"{where}: unknown action key; expected MineRL keys ({', '.join(MINERL_KEYS)}, "
                             f"{MINERL_PLACE_KEY}, {', '.join(MINERL_DROPPED_KEYS)})")
    return _kept(buttons, camera), lossy


def _enum_active(v: np.ndarray, where: str) -> np.ndarray:
    """uint8 [n]: 1 where an enum action is not ``none`` (v0.4 stores names; some exports store ints)."""
    if v.dtype.kind in "US":
        return (v.astype(str) != "none").astype(np.uint8)
    if v.dtype.kind in "iu":
        return (v != 0).astype(np.uint8)
    raise DecodeSkip(f"{where}: {v.dtype} values, expected enum names ('none', ...) or integers")


def import_minerl_episode(folder: Path, episode_id: str, settings: DecodeParams, video_out: Path,
                          attrs: Optional[dict[str, Any]] = None) -> Episode:
    """One MineRL v0.4 trajectory folder -> :class:`Episode`; copies ``recording.mp4`` as the companion."""
    video, npz, meta = folder / MINERL_VIDEO, folder / MINERL_NPZ, folder / MINERL_META
    for p in (video, npz):
        if not p.is_file():
            raise DecodeSkip(f"missing file: {p} not found")
    try:
        info = probe_video(video, decode_first=False)
    except VideoError as exc:
        raise DecodeSkip(str(exc)) from None
    n_video = info.n_frames
    if meta.is_file():
        try:
            n_video = int(json.loads(meta.read_text())["true_video_frame_count"])
        except (ValueError, KeyError, TypeError) as exc:
            raise DecodeSkip(f"{meta}: no integer 'true_video_frame_count' ({type(exc).__name__}: {exc})") from None
    rec, lossy = minerl_actions(npz)
    offset = n_video - (rec.n_lines + 1)          # the last n+1 frames are the n+1 states
    if offset < 0:
        raise DecodeSkip(f"{video.name}: {n_video} video frames but {rec.n_lines} actions; "
                         f"expected at least actions + 1 frames")
    _check_min_kept(rec, settings)
    source_step = rec.kept_steps + offset
    frames = np.empty((rec.n_kept,) + formats.FRAME_SHAPE, np.uint8)
    stats = ReadStats()
    try:
        for k, bgr in enumerate(iter_kept_bgr(video, source_step, rec.gui_open, rec.cursor_xy, stats=stats,
                                              threads=settings.video_threads)):
            frames[k] = to_rgb_resized(bgr, AGENT_SIZE)
    except VideoError as exc:
        raise DecodeSkip(str(exc)) from None
    if stats.video_ended:
        raise DecodeSkip(f"{video.name}: the video ends after {stats.frames_read} frames; expected {n_video}")
    with atomic_path(video_out, suffix=".mp4") as tmp:
        shutil.copyfile(video, tmp)
    rec = dataclasses.replace(rec, kept_steps=source_step)      # steps index recording.mp4 frames
    counts = {**_counts(rec, n_frames_video=n_video), **lossy, "video_offset": offset}
    return _episode(episode_id, frames, rec, info.fps, counts, {}, attrs)


# ------------------------------------------------------------------------------------ shared
def _check_min_kept(rec: RecordingActions, settings: DecodeParams) -> None:
    if rec.n_kept < settings.min_kept_steps:
        raise DecodeSkip(f"only {rec.n_kept} kept steps (min_kept_steps is {settings.min_kept_steps})")


def _counts(rec: RecordingActions, n_frames_video: int) -> dict[str, Any]:
    return {"n_lines": rec.n_lines, "n_frames_video": n_frames_video, "n_kept": rec.n_kept,
            "n_null": int(rec.is_null.sum()), "n_kept_without_frame": 0,
            "n_attack_removed": rec.n_attack_removed, "n_hotbar_changes": rec.n_hotbar_changes,
            "n_gui": int(rec.gui_open.sum())}


def _episode(episode_id: str, frames: np.ndarray, rec: RecordingActions, fps: float, counts: dict[str, Any],
             extra: dict[str, Any], attrs: Optional[dict[str, Any]]) -> Episode:
    buttons, camera = rec.agent_actions()
    return Episode(episode_id=episode_id, frames=frames, buttons=buttons, camera=camera, env_actions=rec.env,
                   source_step=rec.kept_steps, gui_open=rec.gui_open, cursor_xy=rec.cursor_xy,
                   attrs={formats.A_FPS: float(fps), formats.A_DECODE_COUNTS: json.dumps({**counts, **extra}, sort_keys=True),
                          **(attrs or {})})


# ------------------------------------------------------------------------------------ many episodes
@dataclass
class CustomSource:
    """One episode folder to import."""

    episode_id: str
    folder: Path
    format: Optional[SourceFormat]     # None: the folder matches no layout (skipped with a reason)


def detect_format(folder: Path) -> Optional[SourceFormat]:
    if (folder / FRAMES_DIR).is_dir() or (folder / ACTIONS_FILE).is_file():
        return "frames"
    if (folder / MINERL_VIDEO).is_file() or (folder / MINERL_NPZ).is_file():
        return "minerl"
    if S1.is_steve1_folder(folder):
        return "steve1"
    return None


def find_custom_sources(src_dir: str | Path, fmt: str = "auto") -> list[CustomSource]:
    """Every episode folder directly under ``src_dir`` (sorted), with its layout."""
    src_dir = Path(src_dir)
    if fmt not in FORMATS:
        raise CustomImportError(f"format {fmt!r} is not known; expected one of {', '.join(FORMATS)}")
    if not src_dir.is_dir():
        raise FileNotFoundError(f"{src_dir}: recordings folder not found")
    folders = sorted(p for p in src_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [CustomSource(p.name, p, detect_format(p) if fmt == "auto" else fmt) for p in folders]  # type: ignore[arg-type]


def source_digests(src: CustomSource) -> tuple[str, str]:
    """sha256 of the frames (PNG sequence or mp4) and of the actions (jsonl, npz + metadata, or the
    STEVE-1 pickles + len.txt)."""
    if src.format == "steve1":
        return S1.source_digests(src.folder)
    if src.format == "frames":
        h = hashlib.sha256()
        for p in list_frames(src.folder / FRAMES_DIR):
            h.update(f"{p.name}\0{sha256_file(p)}\n".encode())
        actions = src.folder / ACTIONS_FILE
        if not actions.is_file():
            raise DecodeSkip(f"{actions}: actions file not found")
        return h.hexdigest(), sha256_file(actions)
    video, npz, meta = (src.folder / n for n in (MINERL_VIDEO, MINERL_NPZ, MINERL_META))
    for p in (video, npz):
        if not p.is_file():
            raise DecodeSkip(f"missing file: {p} not found")
    h = hashlib.sha256(sha256_file(npz).encode())
    if meta.is_file():
        h.update(sha256_file(meta).encode())
    return sha256_file(video), h.hexdigest()


def _refuse_outside_links(src: CustomSource) -> None:
    """A symbolic link in the episode's folder (or the folder itself) that leads out of the source
    folder is refused, naming it: the import reads only what lies inside the folder the set names."""
    root = src.folder.parent.resolve()
    links = [src.folder] + [Path(d, n) for d, dirs, files in os.walk(src.folder) for n in dirs + files]
    for link in links:
        if link.is_symlink() and not link.resolve().is_relative_to(root):
            raise DecodeSkip(f"{link}: a symbolic link to {link.resolve()}, outside the source folder {root}; "
                             f"copy the file in (links out of the source folder are not followed)")


def _skipped_row(src: CustomSource) -> dict[str, Any]:
    return {"status": "skipped", "reason": None, "format": src.format, "n_lines": None, "n_frames_video": None,
            "n_kept": None}


def _import_one(src: CustomSource, out_dir: Path, video_dir: Path, settings: DecodeParams, base: dict[str, Any],
                fps: float) -> tuple[dict[str, Any], bool]:
    """The episode's manifest row (sources and settings only) and whether its file was kept: the one
    per-episode function of every engine."""
    row = _skipped_row(src)
    reused = False
    dest, video_out = episode_path(out_dir, src.episode_id), video_dir / f"{src.episode_id}{formats.RAW_VIDEO_SUFFIX}"
    embeds_out = S1.embeds_companion(video_dir, src.episode_id)
    try:
        if src.format is None:
            raise DecodeSkip(f"{src.folder}: not a recording; expected {FRAMES_DIR}/*.png + {ACTIONS_FILE}, "
                             f"{MINERL_VIDEO} + {MINERL_NPZ}, or a STEVE-1 episode ({', '.join(S1.FILES)})")
        _refuse_outside_links(src)
        conversion = json.dumps({**base, "source_format": src.format,
                                 **({"fps": fps} if src.format == "frames" else {})}, sort_keys=True)
        frames_sha, actions_sha = source_digests(src)
        origin = {formats.A_SOURCE_URL: str(src.folder), formats.A_RECORDER_VERSION: f"import:{src.format}"}

        def make(attrs: dict[str, Any]) -> Episode:
            if src.format == "steve1":
                return S1.import_steve1_episode(src.folder, src.episode_id, video_out, embeds_out,
                                                settings.min_kept_steps, {**origin, **attrs})
            if src.format == "frames":
                return import_frames_episode(src.folder, src.episode_id, settings, video_out, fps, {**origin, **attrs})
            return import_minerl_episode(src.folder, src.episode_id, settings, video_out, {**origin, **attrs})

        counts, reused = write_or_reuse(dest, settings, conversion, frames_sha, actions_sha, make,
                                        reusable=video_out.is_file() and (src.format != "steve1"
                                                                          or embeds_out.is_file()))
        row.update(status="ok", n_lines=counts["n_lines"], n_frames_video=counts["n_frames_video"],
                   n_kept=counts["n_kept"])
    except DecodeSkip as exc:
        row["reason"] = str(exc)
        dest.unlink(missing_ok=True)          # an old episode of a now-bad source is stale
        video_out.unlink(missing_ok=True)
        embeds_out.unlink(missing_ok=True)
    return row, reused


def _previous_rows(manifest: Path) -> dict[str, dict[str, Any]]:
    """Rows of an earlier import into the same folder; refuses a folder that holds a decode manifest."""
    if not manifest.is_file():
        return {}
    try:
        data = json.loads(manifest.read_text())
        episodes = data["episodes"] if data.get("importer") == IMPORTER else None
    except (ValueError, KeyError, TypeError, AttributeError):
        episodes = None
    if not isinstance(episodes, dict):
        raise CustomImportError(f"{manifest}: not an import manifest (a decode stage output?); import into a folder "
                         "of its own, e.g. data/custom/episodes")
    return dict(episodes)


def import_all(src_dir: str | Path, out_dir: str | Path, settings: DecodeParams, fmt: str = "auto",
               video_dir: Optional[str | Path] = None, fps: float = DEFAULT_FPS,
               progress: bool = True, executor: Optional[Executor] = None) -> DecodeReport:
    """Import every episode folder of ``src_dir`` into ``out_dir``/<id>.h5 and write its manifest.

    Companion videos go to ``video_dir`` (default ``<out_dir>/raw``; point ``paths.raw`` there for
    the embed stage). Episodes of earlier imports from other folders are kept, never deleted.
    ``executor`` runs the episodes (default: one at a time in this process; ``steve1.engine``).
    """
    out_dir = Path(out_dir)
    video_dir = Path(video_dir) if video_dir is not None else out_dir / "raw"
    if not math.isfinite(fps) or fps <= 0:
        raise CustomImportError(f"fps {fps!r} must be a positive number")
    manifest = out_dir / MANIFEST
    rows = _previous_rows(manifest)
    sources = find_custom_sources(src_dir, fmt)
    check_writable(out_dir, video_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    video_dir.mkdir(parents=True, exist_ok=True)
    for d in (out_dir, video_dir):
        remove_stale_temps(d)
    base = {**conversion_settings(settings), "import_version": IMPORT_VERSION}
    report = DecodeReport(manifest)
    work = functools.partial(_import_one, out_dir=out_dir, video_dir=video_dir, settings=settings, base=base, fps=fps)
    executor = executor or LocalExecutor()
    for src, result in tqdm(executor.map(work, sources, task="decode", key=lambda s: s.episode_id),
                            total=len(sources), desc="import", unit="ep", disable=not progress):
        if isinstance(result, Lost):   # its worker died on every try: skipped, like a bad recording
            row, reused = {**_skipped_row(src), "reason": result.reason}, False
            episode_path(out_dir, src.episode_id).unlink(missing_ok=True)
            (video_dir / f"{src.episode_id}{formats.RAW_VIDEO_SUFFIX}").unlink(missing_ok=True)
            S1.embeds_companion(video_dir, src.episode_id).unlink(missing_ok=True)
        else:
            row, reused = result
        report.rows[src.episode_id] = rows[src.episode_id] = row
        report.reused += reused
        if row["status"] != "ok":
            log.warning("%s skipped: %s", src.episode_id, row["reason"])
    for d in (out_dir, video_dir):
        remove_stale_temps(d)      # temps of workers that died
    write_json_atomic(manifest, {"format_version": formats.DECODE_MANIFEST_VERSION, "importer": IMPORTER,
                                 "conversion": base, "video_dir": str(video_dir),
                                 "episodes": dict(sorted(rows.items()))})
    return report

