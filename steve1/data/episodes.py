"""HDF5 episode and embedding stores: atomic writes, lazy reads of slices, validation.

Layout and names live in :mod:`steve1.data.formats`. A store is built in memory and its bytes
written with :func:`steve1.io.write_bytes_atomic`: a file under its final name is always complete,
and a full disk is a plain :class:`steve1.io.DiskFullError` (HDF5 writing into a full disk fails
inside h5py's cleanup and ends in a segfault). Every open and read of a store turns HDF5's errors
into :class:`StoreError` naming the file (and the rows) and the cause.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import h5py
import numpy as np

from steve1.data import formats as F
from steve1.io import write_bytes_atomic

_H5_ERRORS = (OSError, KeyError, RuntimeError)  # what h5py raises for damaged files and missing objects
_STAGE = {"episode": "decode", "embeds": "embed"}


class EpisodeFormatError(ValueError):
    """An episode or embeds file does not follow the declared format."""


class StoreError(EpisodeFormatError):
    """An episode or embeds file cannot be opened or read: damaged, truncated or not HDF5."""


def _cause(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 300 else text[:300] + "..."


def _store_error(path: Path, what: str, action: str, exc: BaseException) -> StoreError:
    return StoreError(f"{path}: cannot {action} this {what} file ({_cause(exc)}); it is damaged or truncated: "
                      f"delete it and run the {_STAGE.get(what, 'decode')} stage again")


def open_store(path: str | Path, what: str = "episode", **kwargs: Any) -> h5py.File:
    """``h5py.File(path, "r")`` whose failures name the file: FileNotFoundError or :class:`StoreError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} file not found (run the {_STAGE.get(what, 'decode')} stage)")
    try:
        return h5py.File(path, "r", **kwargs)
    except _H5_ERRORS as exc:
        raise _store_error(path, what, "open", exc) from None


@contextlib.contextmanager
def reading(path: str | Path, what: str = "episode", rows: str = "") -> Iterator[None]:
    """Reads inside the block that fail raise :class:`StoreError` naming ``path`` and ``rows``."""
    try:
        yield
    except _H5_ERRORS as exc:
        raise _store_error(Path(path), what, f"read {rows} of" if rows else "read", exc) from None


def verify_store(path: str | Path, what: str = "episode") -> None:
    """Open ``path`` and read the last chunk of every dataset (cheap: one chunk each).

    Catches a file that does not open and damage at the end of any dataset; damage elsewhere
    is named, with its rows, when those rows are read.
    """
    with open_store(path, what) as f:
        names: list[str] = []
        with reading(path, what):
            f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        for name in names:
            d = f[name]
            n = d.shape[0] if d.shape else 0
            step = d.chunks[0] if d.chunks else 1
            start = (n - 1) // step * step if n else 0
            with reading(path, what, f"{name} rows [{start}, {n})"):
                if d.shape:
                    d[start:n]
                else:
                    d[()]


def _write_store(path: Path, fill: Callable[[h5py.File], None]) -> None:
    """Build an HDF5 file in memory with ``fill`` and write its bytes atomically (same bytes as on disk)."""
    with h5py.File(path.name, "w", driver="core", backing_store=False) as f:
        fill(f)
        f.flush()
        image = f.id.get_file_image()
    write_bytes_atomic(path, image, suffix=F.EPISODE_SUFFIX)


@dataclass
class Episode:
    """One decoded recording held in memory (what the decode stage produces)."""

    episode_id: str
    frames: np.ndarray                     # uint8 [N,128,128,3] RGB
    buttons: np.ndarray                    # int [N] in [0, 8641)
    camera: np.ndarray                     # int [N] in [0, 121)
    env_actions: dict[str, np.ndarray]     # key -> [N] uint8 (buttons) / [N,2] float32 (camera)
    source_step: np.ndarray                # int [N]
    gui_open: np.ndarray                   # bool [N]
    cursor_xy: np.ndarray                  # float32 [N,2]
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.frames)
        checks = {
            F.BUTTONS: self.buttons, F.CAMERA: self.camera, F.SOURCE_STEP: self.source_step,
            F.GUI_OPEN: self.gui_open, F.GUI_CURSOR: self.cursor_xy,
            **{f"{F.ENV_ACTIONS}/{k}": v for k, v in self.env_actions.items()},
        }
        bad = {k: len(v) for k, v in checks.items() if len(v) != n}
        if bad:
            raise EpisodeFormatError(f"episode {self.episode_id}: lengths differ from frames ({n}): {bad}")
        if self.frames.dtype != np.uint8 or self.frames.shape[1:] != F.FRAME_SHAPE:
            raise EpisodeFormatError(
                f"episode {self.episode_id}: frames must be uint8 [N,{','.join(map(str, F.FRAME_SHAPE))}], "
                f"got {self.frames.dtype} {list(self.frames.shape)}"
            )

    @property
    def n_frames(self) -> int:
        return len(self.frames)


def write_episode(path: str | Path, ep: Episode, codec: str = "lzf", level: int = 1, chunk_frames: int = 64) -> Path:
    """Write ``ep`` to ``path`` atomically (temp name, then rename)."""
    path = Path(path)
    n = ep.n_frames

    def fill(f: h5py.File) -> None:
        chunks = (max(1, min(chunk_frames, n)),) + F.FRAME_SHAPE if n else None
        f.create_dataset(F.FRAMES, data=ep.frames, chunks=chunks, **(F.codec_kwargs(codec, level) if n else {}))
        f.create_dataset(F.BUTTONS, data=np.asarray(ep.buttons, dtype=np.int16))
        f.create_dataset(F.CAMERA, data=np.asarray(ep.camera, dtype=np.int16))
        for key, col in ep.env_actions.items():
            dtype = np.float32 if key == "camera" else np.uint8
            f.create_dataset(f"{F.ENV_ACTIONS}/{key}", data=np.asarray(col, dtype=dtype))
        f.create_dataset(F.SOURCE_STEP, data=np.asarray(ep.source_step, dtype=np.int32))
        f.create_dataset(F.GUI_OPEN, data=np.asarray(ep.gui_open, dtype=bool))
        f.create_dataset(F.GUI_CURSOR, data=np.asarray(ep.cursor_xy, dtype=np.float32).reshape(n, 2))
        attrs = {
            F.A_FORMAT_VERSION: F.EPISODE_FORMAT_VERSION,
            F.A_EPISODE_ID: ep.episode_id,
            F.A_N_FRAMES: n,
        }
        for k, v in {**ep.attrs, **attrs}.items():
            f.attrs[k] = json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v

    with F.deterministic_compression():
        _write_store(path, fill)
    return path


class EpisodeReader:
    """Lazy reader of one episode file; opens the HDF5 on first use (safe across fork)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._f: Optional[h5py.File] = None

    def _file(self) -> h5py.File:
        if self._f is None:
            self._f = open_store(self.path, "episode")
            version = self._f.attrs.get(F.A_FORMAT_VERSION)
            if version != F.EPISODE_FORMAT_VERSION:
                raise EpisodeFormatError(
                    f"{self.path}: episode format_version {version!r}, expected {F.EPISODE_FORMAT_VERSION}"
                )
        return self._f

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> "EpisodeReader":
        self._file()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._file().attrs)

    @property
    def episode_id(self) -> str:
        return str(self._file().attrs[F.A_EPISODE_ID])

    @property
    def n_frames(self) -> int:
        return int(self._file().attrs[F.A_N_FRAMES])

    def frames(self, start: int = 0, end: Optional[int] = None) -> np.ndarray:
        return self.array(F.FRAMES, start, end)

    def array(self, name: str, start: int = 0, end: Optional[int] = None) -> np.ndarray:
        """Any per-step dataset by its formats name, e.g. ``formats.BUTTONS``."""
        f = self._file()
        with reading(self.path, "episode", f"{name} [{start}, {'end' if end is None else end})"):
            return f[name][start:end]

    def env_action_keys(self) -> list[str]:
        f = self._file()
        with reading(self.path, "episode", F.ENV_ACTIONS):
            return list(f[F.ENV_ACTIONS].keys())


def write_embeds(path: str | Path, episode_id: str, embeds: np.ndarray, valid: np.ndarray,
                 weights: str, store_dtype: str = "float32", extra_attrs: Optional[dict[str, Any]] = None) -> Path:
    """Write one episode's MineCLIP embeddings atomically."""
    path = Path(path)
    if len(embeds) != len(valid):
        raise EpisodeFormatError(f"{episode_id}: {len(embeds)} embeddings but {len(valid)} valid flags")

    def fill(f: h5py.File) -> None:
        f.create_dataset(F.EMBEDS, data=np.asarray(embeds, dtype=store_dtype))
        f.create_dataset(F.EMBED_VALID, data=np.asarray(valid, dtype=bool))
        f.attrs[F.A_FORMAT_VERSION] = F.EMBED_FORMAT_VERSION
        f.attrs[F.A_EPISODE_ID] = episode_id
        f.attrs[F.A_N_FRAMES] = len(embeds)
        f.attrs[F.A_WEIGHTS] = weights
        f.attrs[F.A_EMBED_DIM] = int(embeds.shape[1]) if embeds.ndim == 2 else 0
        for k, v in (extra_attrs or {}).items():
            f.attrs[k] = json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v

    _write_store(path, fill)
    return path


def read_embeds(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Return ``(embeds [N,D] float32, valid [N] bool, attrs)`` of an embeds file."""
    path = Path(path)
    with open_store(path, "embeds") as f:
        if f.attrs.get(F.A_FORMAT_VERSION) != F.EMBED_FORMAT_VERSION:
            raise EpisodeFormatError(f"{path}: embeds format_version {f.attrs.get(F.A_FORMAT_VERSION)!r}, "
                                     f"expected {F.EMBED_FORMAT_VERSION}")
        with reading(path, "embeds", f"{F.EMBEDS} and {F.EMBED_VALID}"):
            return f[F.EMBEDS][:].astype(np.float32), f[F.EMBED_VALID][:], dict(f.attrs)


def episode_path(directory: str | Path, episode_id: str) -> Path:
    return Path(directory) / f"{episode_id}{F.EPISODE_SUFFIX}"


def list_episode_ids(directory: str | Path) -> list[str]:
    """Episode ids of the complete files in ``directory``, sorted (temp files are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob(f"*{F.EPISODE_SUFFIX}") if not p.name.startswith("."))
