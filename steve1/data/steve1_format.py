"""Datasets in the official STEVE-1 on-disk format (its ``EpisodeStorage``), in and embedded.

One folder per episode, as the official ``1_generate_dataset.sh`` / ``convert_from_contractor.py``
/ ``gen_mixed_agents.py`` write it and its ``MinecraftDataset`` reads it:

* ``frames.mp4``: 128x128 BGR ``mp4v`` frames (20 fps), decoded here as the official
  ``load_frames`` does (OpenCV's FFmpeg, BGR -> RGB; no cursor and no resize: the frames are
  already the agent's);
* ``actions.pkl``: a pickled ``list[dict]``, one MineRL env action per frame (``camera`` a numpy
  [2] pitch, yaw in degrees); the agent actions are ``steve1.actions.env_to_agent`` of them, the
  official ``env_action_to_agent`` (ActionTransformer + 11-bin camera) bit for bit. No step is
  dropped: the official conversion already dropped the null ones, and training reads every frame;
* ``embeds_attn.pkl``: a pickled ``list``, ``None`` for the first 15 frames, then one float32
  [1,512] MineCLIP embedding per frame (of the 16-frame window ending there);
* ``len.txt`` (the episode length) and ``metadata.json`` (free-form; not read).

Both pickles are untrusted: they are read by :func:`steve1.unpickle.load_numpy_pickle`
(builtins and numpy arrays only). ``len.txt``, the decoded frames, the actions and the embeddings
must agree in length, every embedding from row 15 on must be a finite [512] vector: an episode
that breaks any of this is skipped with the reason (:class:`~steve1.data.decode.DecodeSkip`).

The import writes the episode (``steve1.data.custom``) and two companions in the set's ``raw/``:
``<id>.mp4`` (``frames.mp4`` copied, for MineCLIP if the user recomputes) and ``<id>.embeds.npy``
(the pickled vectors, float32 [N,512], zero rows before 15). ``embed-set`` then writes the set's
embeds files from those vectors (:mod:`steve1.data.dataset_embeds`) instead of running MineCLIP; their
``weights`` attribute says they came from the dataset, and the
sampling's mixing rule (:func:`steve1.data.formats.mineclip_space`) decides what they mix with.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

from steve1 import actions as A
from steve1.data import formats
from steve1.data.action_dicts import ActionOrigin, parse_action_dicts
from steve1.data.decode import DecodeSkip
from steve1.data.episodes import Episode
from steve1.data.recording import RecordingActions
from steve1.data.video import VideoError, check_container_size, iter_raw_frames
from steve1.io import atomic_path, sha256_file
from steve1.unpickle import UnsafePickleError, load_numpy_pickle

VIDEO = "frames.mp4"
ACTIONS = "actions.pkl"
EMBEDS = "embeds_attn.pkl"
LENGTH = "len.txt"
METADATA = "metadata.json"                 # free-form; never read
FILES = (VIDEO, ACTIONS, EMBEDS, LENGTH)   # what an episode folder must hold
EMBED_DIM = formats.STEVE1_EMBED_DIM
MAX_PICKLE_BYTES = 1 << 31                 # refuse absurd files before reading them into memory


def is_steve1_folder(folder: Path) -> bool:
    return (folder / VIDEO).is_file() or (folder / ACTIONS).is_file() or (folder / EMBEDS).is_file()


def embeds_companion(raw_dir: str | Path, episode_id: str) -> Path:
    return Path(raw_dir) / f"{episode_id}{formats.DATASET_EMBEDS_SUFFIX}"


# ------------------------------------------------------------------------------------ reading
def _require(folder: Path) -> None:
    for name in FILES:
        if not (folder / name).is_file():
            raise DecodeSkip(f"missing file: {folder / name} not found (a STEVE-1 episode folder holds "
                             f"{', '.join(FILES)})")


def source_digests(folder: Path) -> tuple[str, str]:
    """sha256 of ``frames.mp4``, and one digest of the actions, embeddings and length files."""
    _require(folder)
    h = hashlib.sha256()
    for name in (ACTIONS, EMBEDS, LENGTH):
        h.update(f"{name}\0{sha256_file(folder / name)}\n".encode())
    return sha256_file(folder / VIDEO), h.hexdigest()


def read_length(path: Path) -> int:
    text = path.read_text(errors="replace").strip()
    if not text.isdigit():
        raise DecodeSkip(f"{path}: {text[:40]!r} is not an episode length; expected a non-negative integer")
    return int(text)


def load_pickle(path: Path) -> Any:
    """An untrusted pickle: builtins and numpy arrays only, else one line naming the file."""
    size = path.stat().st_size
    if size > MAX_PICKLE_BYTES:
        raise DecodeSkip(f"{path}: {size} bytes, more than the {MAX_PICKLE_BYTES} a STEVE-1 episode pickle may hold")
    try:
        return load_numpy_pickle(path.read_bytes(), str(path))
    except UnsafePickleError as exc:
        raise DecodeSkip(str(exc).splitlines()[0]) from None
    except RecursionError:
        raise DecodeSkip(f"{path}: not a readable pickle: nested too deeply") from None


def env_actions(actions: Any, path: Path) -> RecordingActions:
    """The pickled env-action dicts -> every step kept (null ones too, as the official dataset reads them)."""
    if not isinstance(actions, list):
        raise DecodeSkip(f"{path}: holds a {type(actions).__name__}, expected a list of MineRL action dicts")
    n = len(actions)
    buttons, camera = parse_action_dicts(actions, ActionOrigin(str(path)))    # [n,23], [n,2] pitch, yaw degrees
    env = {key: buttons[:, j] for j, key in enumerate(A.ENV_BUTTON_KEYS)}
    env[A.CAMERA_KEY] = camera
    is_null = ~(buttons.any(1) | (camera != 0).any(1))
    return RecordingActions(n, is_null, np.arange(n, dtype=np.int64), env, np.zeros(n, bool), np.zeros((n, 2)), 0, 0)


def embeddings(rows: Any, path: Path) -> np.ndarray:
    """The pickled list -> float32 [N,512], zero rows before :data:`formats.NONE_EMBED_OFFSET` (never read)."""
    if not isinstance(rows, list):
        raise DecodeSkip(f"{path}: holds a {type(rows).__name__}, expected a list (None x 15, then [1,512] arrays)")
    out = np.zeros((len(rows), EMBED_DIM), np.float32)
    for t in range(formats.NONE_EMBED_OFFSET, len(rows)):
        v = rows[t]
        if not isinstance(v, np.ndarray):
            raise DecodeSkip(f"{path}: row {t} is {type(v).__name__ if v is not None else 'None'}; rows from "
                             f"{formats.NONE_EMBED_OFFSET} on must be [1,{EMBED_DIM}] arrays")
        if v.dtype.kind != "f" or v.size != EMBED_DIM or v.ndim > 2 or (v.ndim == 2 and v.shape[0] != 1):
            raise DecodeSkip(f"{path}: row {t} is {v.dtype} {list(v.shape)}, expected float [1,{EMBED_DIM}]")
        v = v.reshape(EMBED_DIM)
        if not np.isfinite(v).all():
            raise DecodeSkip(f"{path}: row {t} holds non-finite values (NaN or inf)")
        out[t] = v
    return out


def decode_frames(video: Path, n: int) -> np.ndarray:
    """The episode's frames as the official ``load_frames(to_rgb=True)`` returns them: uint8 RGB [n,128,128,3]."""
    size = (formats.FRAME_SHAPE[1], formats.FRAME_SHAPE[0])
    frames = np.empty((n,) + formats.FRAME_SHAPE, np.uint8)
    count = 0
    try:
        check_container_size(video)
        for bgr in iter_raw_frames(video):
            if bgr.shape != (size[1], size[0], 3):
                raise DecodeSkip(f"{video}: frame {count} is {bgr.shape[1]}x{bgr.shape[0]}, expected {size[0]}x"
                                 f"{size[1]} (the official EpisodeStorage writes 128x128 frames)")
            if count < n:
                frames[count] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            count += 1
    except VideoError as exc:
        raise DecodeSkip(str(exc)) from None
    if count != n:
        raise DecodeSkip(f"{video}: {count} frames decode but {LENGTH} says {n}; truncated or not this episode's video")
    return frames


def import_steve1_episode(folder: Path, episode_id: str, video_out: Path, embeds_out: Path, min_kept_steps: int = 1,
                          attrs: Optional[dict[str, Any]] = None) -> Episode:
    """One official episode folder -> :class:`Episode`; writes the two companions (nothing if it is skipped)."""
    _require(folder)
    n = read_length(folder / LENGTH)
    rec = env_actions(load_pickle(folder / ACTIONS), folder / ACTIONS)
    vectors = embeddings(load_pickle(folder / EMBEDS), folder / EMBEDS)
    lengths = {LENGTH: n, ACTIONS: rec.n_lines, EMBEDS: len(vectors)}
    if len(set(lengths.values())) != 1:
        raise DecodeSkip(f"{folder}: lengths disagree: " + ", ".join(f"{k} {v}" for k, v in lengths.items()))
    if n < min_kept_steps:
        raise DecodeSkip(f"only {n} steps (min_kept_steps is {min_kept_steps})")
    frames = decode_frames(folder / VIDEO, n)
    with atomic_path(video_out, suffix=".mp4") as tmp:
        shutil.copyfile(folder / VIDEO, tmp)
    with atomic_path(embeds_out, suffix=".npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, vectors, allow_pickle=False)
    buttons, camera = rec.agent_actions()
    counts = {"n_lines": n, "n_frames_video": n, "n_kept": n, "n_null": int(rec.is_null.sum()),
              "n_kept_without_frame": 0, "n_attack_removed": 0, "n_hotbar_changes": 0, "n_gui": 0,
              "n_embeddings": n - min(n, formats.NONE_EMBED_OFFSET)}
    return Episode(episode_id=episode_id, frames=frames, buttons=buttons, camera=camera, env_actions=rec.env,
                   source_step=rec.kept_steps, gui_open=rec.gui_open, cursor_xy=rec.cursor_xy,
                   attrs={formats.A_FPS: 20.0, formats.A_DECODE_COUNTS: json.dumps(counts, sort_keys=True), **(attrs or {})})
