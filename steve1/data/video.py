"""mp4 decode and resize (agent 128x128, MineCLIP 160x256) and the GUI cursor overlay.

Decoding goes through OpenCV's FFmpeg backend, the decoder the official conversion used, so
frames match the reference hashes bit for bit. While the GUI is open the official code draws
its cursor PNG onto the frame; that PNG is not shipped here (unknown licence), so by default we
draw our own 16x16 arrow: GUI frames then differ from the official ones only under the cursor.
Pass the official ``mouse_cursor_white_16x16.png`` (``decode.cursor_png``) for bit-exact frames.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np

from steve1.data.recording import RECORDER_HEIGHT_PX
from steve1.errors import UserError


class VideoError(UserError, ValueError):
    """A video file cannot be opened or decoded."""


@dataclass(frozen=True)
class VideoInfo:
    n_frames: int      # container's frame count (CAP_PROP_FRAME_COUNT; may differ from decodable frames)
    fps: float
    width: int
    height: int


def check_container_size(path: str | Path) -> None:
    """Refuse an mp4 shorter than its own top-level boxes declare (a cut download or copy).

    Reads only the box headers. A faststart file (index first) that lost its tail still opens and
    decodes up to the cut, so only this, or counting frames, tells it is truncated.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        pos = 0
        while pos + 8 <= size:
            f.seek(pos)
            box_size, kind = struct.unpack(">I4s", f.read(8))
            if not kind.isalnum():
                if pos == 0:
                    return  # not an ISO-BMFF file: let the decoder judge it
                raise VideoError(f"{path}: not a valid mp4 video: no box header at byte {pos} ({kind.hex()})")
            if box_size == 1:
                box_size = struct.unpack(">Q", f.read(8))[0]
            elif box_size == 0:
                return  # "to the end of the file"
            if box_size < 8:
                raise VideoError(f"{path}: not a valid mp4 video: the box at byte {pos} declares {box_size} bytes")
            if pos + box_size > size:
                raise VideoError(f"{path}: truncated: its {kind.decode('latin-1')!r} box ends at byte "
                                 f"{pos + box_size} but the file holds {size} bytes")
            pos += box_size


def probe_video(path: str | Path, decode_first: bool = True, check_end: bool = False) -> VideoInfo:
    """Open ``path`` and read its header (and, by default, decode one frame to prove it has frames).

    ``check_end`` also refuses a file shorter than its boxes declare and decodes the last frame
    the container declares (one seek): a truncated or damaged tail fails there.
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise VideoError(f"{path}: video file is missing or empty")
    if check_end:
        check_container_size(path)
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise VideoError(f"{path}: OpenCV/FFmpeg cannot open this file as a video")
        info = VideoInfo(
            n_frames=int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
            fps=float(cap.get(cv2.CAP_PROP_FPS)),
            width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )
        if decode_first:
            ok, _ = cap.read()
            if not ok:
                raise VideoError(f"{path}: the video opens but no frame can be decoded")
        if check_end:
            if info.n_frames < 1:
                raise VideoError(f"{path}: the container declares no frame count")
            cap.set(cv2.CAP_PROP_POS_FRAMES, info.n_frames - 1)
            ok, _ = cap.read()
            if not ok:
                raise VideoError(f"{path}: truncated or damaged: the last of the {info.n_frames} frames its "
                                 f"container declares cannot be decoded")
        return info
    finally:
        cap.release()


# ---------------------------------------------------------------- GUI cursor
CURSOR_SIZE = 16              # the official cursor is the top-left 16x16 of a 256x256 RGBA PNG
# our own arrow (tip at the top-left pixel, like the official cursor), as a polygon in pixel
# coordinates; the official PNG's licence is unknown, so it is not shipped (see load_cursor)
_ARROW = np.array([[0, 0], [0, 13], [3, 10], [6, 15], [8, 14], [5, 9], [9, 9]], dtype=np.int32)


@dataclass(frozen=True)
class Cursor:
    """A cursor image to composite: BGR uint8 [16,16,3] and alpha float64 [16,16,1] in [0, 1]."""

    bgr: np.ndarray
    alpha: np.ndarray


def _drawn_cursor() -> Cursor:
    """A white arrow with a black outline, drawn procedurally (deterministic, no file)."""
    fill = np.zeros((CURSOR_SIZE, CURSOR_SIZE), np.uint8)
    cv2.fillPoly(fill, [_ARROW], 255)
    bgr = np.zeros((CURSOR_SIZE, CURSOR_SIZE, 3), np.uint8)
    bgr[fill > 0] = 255
    cv2.polylines(bgr, [_ARROW], isClosed=True, color=(0, 0, 0), thickness=1)
    alpha = (fill > 0)[:, :, None] / 1.0                                    # [16,16,1] float64
    return Cursor(bgr, alpha)


def load_cursor(cursor_png: Optional[str | Path] = None) -> Cursor:
    """The official ``mouse_cursor_white_16x16.png`` (read as the official code does) or our arrow."""
    if cursor_png is None:
        return _drawn_cursor()
    img = cv2.imread(str(cursor_png), cv2.IMREAD_UNCHANGED)
    if img is None or img.ndim != 3 or img.shape[2] != 4 or min(img.shape[:2]) < CURSOR_SIZE:
        raise VideoError(f"{cursor_png}: expected an RGBA PNG of at least {CURSOR_SIZE}x{CURSOR_SIZE} "
                         "(the official mouse_cursor_white_16x16.png)")
    img = img[:CURSOR_SIZE, :CURSOR_SIZE]
    return Cursor(np.ascontiguousarray(img[:, :, :3]), img[:, :, 3:] / 255.0)


def composite_cursor(frame: np.ndarray, cursor: Cursor, x: int, y: int) -> None:
    """Alpha-blend ``cursor`` onto ``frame`` (BGR, in place) with its top-left at (x, y).

    As the official code: blend in float64, truncate to uint8, clip at the right/bottom edges.
    """
    x, y = max(x, 0), max(y, 0)   # never met in real data (GUI coordinates are positive)
    ch = max(0, min(frame.shape[0] - y, CURSOR_SIZE))
    cw = max(0, min(frame.shape[1] - x, CURSOR_SIZE))
    if ch == 0 or cw == 0:
        return
    alpha = cursor.alpha[:ch, :cw]
    region = frame[y:y + ch, x:x + cw]
    region[:] = (region * (1 - alpha) + cursor.bgr[:ch, :cw] * alpha).astype(np.uint8)


def cursor_position(cursor_xy: np.ndarray, frame_height: int) -> tuple[int, int]:
    """Recorder cursor (1280x720 space) -> frame pixel, truncated like the official ``int()``."""
    scale = frame_height / RECORDER_HEIGHT_PX
    return int(cursor_xy[0] * scale), int(cursor_xy[1] * scale)


# ---------------------------------------------------------------- decode
# FFmpeg decoder threads per open video. One thread decodes the most frames per CPU-second and
# avoids oversubscription; parallelism comes from decoding episodes in worker processes
# (decode.workers). 0 lets FFmpeg choose. The decoded bytes do not depend on it.
DECODE_THREADS = 1
@dataclass
class ReadStats:
    """What a pass over a video saw (filled in while iterating)."""

    frames_read: int = 0          # frames decoded (grabbed) from the start of the video
    kept_yielded: int = 0         # kept steps that got a frame
    video_ended: bool = False     # the video ran out before the last kept step
    counted_to_end: bool = False  # frames after the last kept step were grabbed too (count_rest)


def iter_raw_frames(video_path: str | Path, threads: int = DECODE_THREADS) -> Iterator[np.ndarray]:
    """Every frame as ``cv2.VideoCapture.read()`` gives it: BGR uint8 [H,W,3]."""
    cap = _open(video_path, threads)
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield frame
    finally:
        cap.release()


def _open(video_path: str | Path, threads: int = DECODE_THREADS) -> "cv2.VideoCapture":
    path = Path(video_path)
    if not path.is_file() or path.stat().st_size == 0:
        raise VideoError(f"{path}: video file is missing or empty")
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, threads] if threads else [])
    if not cap.isOpened():
        cap.release()
        raise VideoError(f"{path}: OpenCV/FFmpeg cannot open this file as a video")
    return cap


def iter_kept_bgr(video_path: str | Path, source_step: np.ndarray, gui_open: np.ndarray,
                  cursor_xy: np.ndarray, cursor: Optional[Cursor] = None,
                  stats: Optional[ReadStats] = None, threads: int = DECODE_THREADS,
                  count_rest: bool = False) -> Iterator[np.ndarray]:
    """Full-resolution BGR frames of the kept steps, in order, cursor composited where the GUI is open.

    Frame i goes with jsonl line i. Frames of skipped lines are only grabbed (decoded, never
    converted); reading stops after the last kept step, or earlier when the video ends: kept steps
    past the end get no frame (the official code drops them too) and ``stats.video_ended`` is set.
    ``count_rest`` grabs the frames after the last kept step too, so ``stats.frames_read`` counts
    every decodable frame (to compare with the container's count).
    """
    steps = np.asarray(source_step, dtype=np.int64)
    if len(steps) and np.any(np.diff(steps) <= 0):
        raise ValueError("source_step must be strictly increasing")
    cursor = cursor or _drawn_cursor()
    stats = stats if stats is not None else ReadStats()
    if len(steps) == 0:
        return
    cap = _open(video_path, threads)
    try:
        for k, step in enumerate(steps):
            while stats.frames_read < step:           # frames of null lines: decode, do not convert
                if not cap.grab():
                    stats.video_ended = True
                    return
                stats.frames_read += 1
            ok, frame = cap.read()
            if not ok:
                stats.video_ended = True
                return
            stats.frames_read += 1
            if gui_open[k]:
                composite_cursor(frame, cursor, *cursor_position(cursor_xy[k], frame.shape[0]))
            stats.kept_yielded += 1
            yield frame
        if count_rest:
            while cap.grab():
                stats.frames_read += 1
            stats.counted_to_end = True
    finally:
        cap.release()


def to_rgb_resized(frame_bgr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """BGR [H,W,3] -> RGB resized to ``size`` (W, H) with INTER_LINEAR, as the official code.

    The resize is per channel, so resizing first and swapping channels after gives the same bytes
    as the official order (swap, then resize) with far less work.
    """
    small = cv2.resize(frame_bgr, size, interpolation=cv2.INTER_LINEAR)       # [h,w,3] BGR
    return cv2.cvtColor(small, cv2.COLOR_BGR2RGB)


def iter_processed_frames(video_path: str | Path, source_step: np.ndarray, gui_open: np.ndarray,
                          cursor_xy: np.ndarray, size: tuple[int, int], batch: int = 64,
                          cursor_png: Optional[str] = None) -> Iterator[np.ndarray]:
    """uint8 RGB batches [b, H, W, 3] (``size`` is (W, H) as in cv2) of the kept frames, in order.

    The frames are processed exactly as the decode stage does it (cursor, RGB, INTER_LINEAR);
    fewer frames than ``source_step`` come out when the video ends first.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    w, h = size
    buf = np.empty((batch, h, w, 3), np.uint8)
    n = 0
    for frame in iter_kept_bgr(video_path, source_step, gui_open, cursor_xy, load_cursor(cursor_png)):
        buf[n] = to_rgb_resized(frame, size)
        n += 1
        if n == batch:
            yield buf.copy()
            n = 0
    if n:
        yield buf[:n].copy()
