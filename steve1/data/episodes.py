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
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import h5py
import numpy as np

from steve1.data import formats
from steve1.errors import MissingInputError, UserError
from steve1.io import write_bytes_atomic

_H5_ERRORS = (OSError, KeyError, RuntimeError)  # what h5py raises for damaged files and missing objects
_STAGE = {"episode": "decode", "embeds": "embed"}


class EpisodeFormatError(UserError, ValueError):
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
        raise MissingInputError(f"{path}: {what} file not found (run the {_STAGE.get(what, 'decode')} stage)")
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
    write_bytes_atomic(path, image, suffix=formats.EPISODE_SUFFIX)


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
            formats.BUTTONS: self.buttons, formats.CAMERA: self.camera, formats.SOURCE_STEP: self.source_step,
            formats.GUI_OPEN: self.gui_open, formats.GUI_CURSOR: self.cursor_xy,
            **{f"{formats.ENV_ACTIONS}/{k}": v for k, v in self.env_actions.items()},
        }
        bad = {k: len(v) for k, v in checks.items() if len(v) != n}
        if bad:
            raise EpisodeFormatError(f"episode {self.episode_id}: lengths differ from frames ({n}): {bad}")
        if self.frames.dtype != np.uint8 or self.frames.shape[1:] != formats.FRAME_SHAPE:
            raise EpisodeFormatError(
                f"episode {self.episode_id}: frames must be uint8 [N,{','.join(map(str, formats.FRAME_SHAPE))}], "
                f"got {self.frames.dtype} {list(self.frames.shape)}"
            )

    @property
    def n_frames(self) -> int:
        return len(self.frames)


@dataclass(frozen=True)
class FrameStorage:
    """How an episode's frames are stored (``decode.frame_codec`` and friends): the codec, a lossless
    codec's compression ``level`` and HDF5 chunk length, a per-frame codec's JPEG ``quality``."""

    codec: str = "lzf"
    level: int = 1
    quality: int = 85
    chunk_frames: int = 64

    def __post_init__(self) -> None:
        if self.codec not in formats.CODECS:
            raise ValueError(f"unknown frame codec {self.codec!r}; expected one of {', '.join(formats.CODECS)}")

    @classmethod
    def from_params(cls, decode: Any) -> "FrameStorage":
        """The storage ``decode`` params (:class:`steve1.params.DecodeParams`) ask for."""
        return cls(decode.frame_codec, decode.codec_level, decode.frame_quality, decode.chunk_frames)

    @property
    def per_frame(self) -> bool:
        """One encoded image per frame (``jpeg``), rather than an HDF5 filter over a frames dataset."""
        return self.codec in formats.PER_FRAME_CODECS

    def settings(self) -> dict[str, Any]:
        """The settings that shape the stored frames, as episodes' conversion records name them
        (``frame_quality`` only for a per-frame codec: lossless codecs ignore it)."""
        return {"frame_codec": self.codec, "codec_level": self.level,
                "frame_quality": self.quality if self.per_frame else None, "chunk_frames": self.chunk_frames}


def write_episode(path: str | Path, ep: Episode, storage: FrameStorage = FrameStorage()) -> Path:
    """Write ``ep`` to ``path`` atomically (temp name, then rename), its frames as ``storage`` says.

    A lossless codec is an HDF5 filter on ``frames`` (``level`` and ``chunk_frames`` apply);
    ``"jpeg"`` is one JPEG of ``quality`` per frame in ``frame_bytes`` + ``frame_offsets``.
    """
    path = Path(path)
    n = ep.n_frames
    codec, level, chunk_frames, quality = storage.codec, storage.level, storage.chunk_frames, storage.quality
    encoded = formats.encode_frames(ep.frames, quality) if storage.per_frame else None

    def fill(f: h5py.File) -> None:
        if encoded is not None:
            f.create_dataset(formats.FRAME_BYTES, data=encoded[0])
            f.create_dataset(formats.FRAME_OFFSETS, data=encoded[1])
            f.attrs[formats.A_FRAME_QUALITY] = quality
        else:
            chunks = (max(1, min(chunk_frames, n)),) + formats.FRAME_SHAPE if n else None
            f.create_dataset(formats.FRAMES, data=ep.frames, chunks=chunks, **(formats.codec_kwargs(codec, level) if n else {}))
        f.attrs[formats.A_FRAME_CODEC] = codec
        f.create_dataset(formats.BUTTONS, data=np.asarray(ep.buttons, dtype=np.int16))
        f.create_dataset(formats.CAMERA, data=np.asarray(ep.camera, dtype=np.int16))
        for key, col in ep.env_actions.items():
            dtype = np.float32 if key == "camera" else np.uint8
            f.create_dataset(f"{formats.ENV_ACTIONS}/{key}", data=np.asarray(col, dtype=dtype))
        f.create_dataset(formats.SOURCE_STEP, data=np.asarray(ep.source_step, dtype=np.int32))
        f.create_dataset(formats.GUI_OPEN, data=np.asarray(ep.gui_open, dtype=bool))
        f.create_dataset(formats.GUI_CURSOR, data=np.asarray(ep.cursor_xy, dtype=np.float32).reshape(n, 2))
        attrs = {
            formats.A_FORMAT_VERSION: formats.EPISODE_FORMAT_VERSION,
            formats.A_EPISODE_ID: ep.episode_id,
            formats.A_N_FRAMES: n,
        }
        for k, v in {**ep.attrs, **attrs}.items():
            f.attrs[k] = json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v

    with formats.deterministic_compression():
        _write_store(path, fill)
    return path


def check_episode_version(f: h5py.File, path: str | Path) -> int:
    """The file's episode format version, or :class:`EpisodeFormatError` saying what to do."""
    version = f.attrs.get(formats.A_FORMAT_VERSION)
    if version not in formats.READABLE_EPISODE_VERSIONS:
        newer = isinstance(version, (int, np.integer)) and version > formats.EPISODE_FORMAT_VERSION
        hint = ("it was written by a newer steve1: update this checkout" if newer
                else "it is not a steve1 episode file: run the decode stage again")
        raise EpisodeFormatError(f"{path}: episode format_version {version!r}, this code reads "
                                 f"{', '.join(map(str, formats.READABLE_EPISODE_VERSIONS))}; {hint}")
    return int(version)


class FrameStore:
    """The frames of an open episode file, whatever their codec: :meth:`read_into` a slice.

    Lossless files (every version 1 file) hold an HDF5-filtered ``frames`` dataset, read by HDF5
    straight into the destination. Per-frame codecs hold the encoded frames back to back: a slice
    is one contiguous read of its bytes, then each frame is decoded into its row of the
    destination, in parts on ``pool``'s threads when one is given.
    """

    def __init__(self, f: h5py.File, path: str | Path):
        self.path = Path(path)
        with reading(self.path, "episode", "frames"):
            check_episode_version(f, self.path)
            codec = f.attrs.get(formats.A_FRAME_CODEC)
            self.codec = codec.decode() if isinstance(codec, bytes) else codec
            if formats.FRAMES in f:
                self.frames: Optional[h5py.Dataset] = f[formats.FRAMES]
                self.data, self.offsets = None, None
            else:
                if self.codec not in formats.PER_FRAME_CODECS:
                    raise EpisodeFormatError(f"{self.path}: no {formats.FRAMES} dataset and frame codec {self.codec!r}; "
                                             f"this code decodes {', '.join(formats.PER_FRAME_CODECS)}: update this checkout")
                self.frames = None
                self.data = f[formats.FRAME_BYTES]
                self.offsets = f[formats.FRAME_OFFSETS][:]   # [N+1] int64: small, read once
        self.n_frames = len(self.frames) if self.frames is not None else len(self.offsets) - 1

    def read_into(self, out: np.ndarray, start: int, end: int, pool: Optional[Executor] = None,
                  parts: int = 1, pending: Optional[list[Future]] = None) -> None:
        """Frames ``[start, end)`` into ``out`` (uint8 [end-start,128,128,3], C-contiguous).

        With ``pool``, a per-frame codec decodes in ``parts`` on its threads; with ``pending`` as
        well, the decodes are left running and their futures appended there (the caller reads
        the next slice meanwhile and waits on them; each raises :class:`StoreError`).
        """
        rows = f"frames [{start}, {end})"
        if self.frames is not None:
            with reading(self.path, "episode", rows):
                self.frames.read_direct(out, np.s_[start:end])
            return
        if not 0 <= start <= end <= self.n_frames:
            raise IndexError(f"{self.path}: {rows} outside the episode's {self.n_frames} frames")
        offsets = self.offsets[start:end + 1]
        with reading(self.path, "episode", rows):
            data = self.data[int(offsets[0]):int(offsets[-1])]
        n = end - start
        cuts = np.linspace(0, n, min(max(parts, 1), n) + 1, dtype=np.int64) if n else np.zeros(1, np.int64)

        def decode(a: int, b: int) -> None:
            try:
                formats.decode_frames_into(data[int(offsets[a] - offsets[0]):], offsets[a:b + 1], out[a:b], self.codec)
            except ValueError as exc:
                raise _store_error(self.path, "episode", f"decode {rows} of", exc) from None

        jobs = [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:])]
        if pool is None or (len(jobs) < 2 and pending is None):
            for job in jobs:
                decode(*job)
            return
        futures = [pool.submit(decode, *job) for job in jobs]
        if pending is not None:
            pending.extend(futures)
        else:
            for f in futures:
                f.result()

    def read(self, start: int = 0, end: Optional[int] = None) -> np.ndarray:
        """Frames ``[start:end]`` with Python slice semantics (negative and open ends)."""
        rows = range(self.n_frames)[start:end]
        start, end = rows.start, max(rows.start, rows.stop)
        out = np.empty((end - start,) + formats.FRAME_SHAPE, np.uint8)
        self.read_into(out, start, end)
        return out


class EpisodeReader:
    """Lazy reader of one episode file; opens the HDF5 on first use (safe across fork)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._f: Optional[h5py.File] = None
        self._frames: Optional[FrameStore] = None

    def _file(self) -> h5py.File:
        if self._f is None:
            f = open_store(self.path, "episode")
            try:
                check_episode_version(f, self.path)
            except EpisodeFormatError:
                f.close()
                raise
            self._f = f
        return self._f

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
            self._frames = None

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
        return str(self._file().attrs[formats.A_EPISODE_ID])

    @property
    def n_frames(self) -> int:
        return int(self._file().attrs[formats.A_N_FRAMES])

    @property
    def frame_codec(self) -> str:
        return self.frame_store.codec or "hdf5-filter"

    @property
    def frame_store(self) -> FrameStore:
        if self._frames is None:
            self._frames = FrameStore(self._file(), self.path)
        return self._frames

    def frames(self, start: int = 0, end: Optional[int] = None) -> np.ndarray:
        """RGB uint8 [n,128,128,3] of frames ``[start, end)``, decoded whatever the codec."""
        return self.frame_store.read(start, end)

    def array(self, name: str, start: int = 0, end: Optional[int] = None) -> np.ndarray:
        """Any per-step dataset by its formats name, e.g. ``formats.BUTTONS`` (``FRAMES`` decodes)."""
        if name == formats.FRAMES:
            return self.frames(start, end)
        f = self._file()
        with reading(self.path, "episode", f"{name} [{start}, {'end' if end is None else end})"):
            return f[name][start:end]

    def env_action_keys(self) -> list[str]:
        f = self._file()
        with reading(self.path, "episode", formats.ENV_ACTIONS):
            return list(f[formats.ENV_ACTIONS].keys())


def write_embeds(path: str | Path, episode_id: str, embeds: np.ndarray, valid: np.ndarray,
                 weights: str, store_dtype: str = "float32", extra_attrs: Optional[dict[str, Any]] = None) -> Path:
    """Write one episode's MineCLIP embeddings atomically."""
    path = Path(path)
    if len(embeds) != len(valid):
        raise EpisodeFormatError(f"{episode_id}: {len(embeds)} embeddings but {len(valid)} valid flags")

    def fill(f: h5py.File) -> None:
        f.create_dataset(formats.EMBEDS, data=np.asarray(embeds, dtype=store_dtype))
        f.create_dataset(formats.EMBED_VALID, data=np.asarray(valid, dtype=bool))
        f.attrs[formats.A_FORMAT_VERSION] = formats.EMBED_FORMAT_VERSION
        f.attrs[formats.A_EPISODE_ID] = episode_id
        f.attrs[formats.A_N_FRAMES] = len(embeds)
        f.attrs[formats.A_WEIGHTS] = weights
        f.attrs[formats.A_EMBED_DIM] = int(embeds.shape[1]) if embeds.ndim == 2 else 0
        for k, v in (extra_attrs or {}).items():
            f.attrs[k] = json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v

    _write_store(path, fill)
    return path


def read_embeds(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Return ``(embeds [N,D] float32, valid [N] bool, attrs)`` of an embeds file."""
    path = Path(path)
    with open_store(path, "embeds") as f:
        if f.attrs.get(formats.A_FORMAT_VERSION) != formats.EMBED_FORMAT_VERSION:
            raise EpisodeFormatError(f"{path}: embeds format_version {f.attrs.get(formats.A_FORMAT_VERSION)!r}, "
                                     f"expected {formats.EMBED_FORMAT_VERSION}")
        with reading(path, "embeds", f"{formats.EMBEDS} and {formats.EMBED_VALID}"):
            return f[formats.EMBEDS][:].astype(np.float32), f[formats.EMBED_VALID][:], dict(f.attrs)


def episode_path(directory: str | Path, episode_id: str) -> Path:
    return Path(directory) / f"{episode_id}{formats.EPISODE_SUFFIX}"


def list_episode_ids(directory: str | Path) -> list[str]:
    """Episode ids of the complete files in ``directory``, sorted (temp files are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob(f"*{formats.EPISODE_SUFFIX}") if not p.name.startswith("."))
