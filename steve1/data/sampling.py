"""Train/val splits by frame budgets, and the chunk index the training dataset walks.

What we reproduce from STEVE-1 (``steve1/data/minecraft_dataset.py`` and
``steve1/data/sampling/generate_sampling.py`` of Shalev-Lifshitz/STEVE-1):

- **Validity.** An episode is usable when it has ``n >= max(T, min_btwn_goals) + 15`` frames
  (``NONE_EMBED_OFFSET = 15``: the first 15 frames have no MineCLIP embedding). We also require
  both the episode file and the embeds file, equal lengths, and every embedding row ``>= 15``
  marked valid; each rejected episode is listed with its reason.
- **Chunks.** For each valid episode, starts run ``15, 15+T, 15+2T, ... < n``; every chunk is
  ``[start, start+T)``, except that a chunk that would run past the end is shifted back to
  ``[n-T, n)`` (it overlaps its predecessor). Every chunk therefore has exactly T frames and
  never starts before frame 15 unless shifted back (then ``n-T >= 15`` by validity).
- **Split.** Episodes are shuffled with a seeded generator and taken greedily until each split's
  frame budget is met (the episode that crosses the budget is kept, as in STEVE-1).

Where we differ, and why:

- The shuffle is ``numpy.random.default_rng(seed).permutation`` of the *sorted* episode ids
  (STEVE-1 used ``random.seed(42)`` over ``os.listdir`` order, which is not reproducible).
- Val is filled first, then train from the rest (STEVE-1: train first). Same distribution when
  the budgets fit; when they do not, both splits still get episodes (val never takes the last
  remaining episode) and the shortage is reported as a warning in the JSON and the log instead
  of an assertion. ``val_frames: 0`` gives an empty val split (STEVE-1 kept one episode).
- ``val_from`` reads our sampling JSON (not ``<name>_val.txt``); its val episodes are reused
  as-is, must still be valid here, and are excluded from train.

Mixed samplings (``sample.mix``, fine-tuning: e.g. 80% contractor data, 20% own recordings):

- Every set (the main one from ``paths.episodes``/``paths.embeds``, named ``main``, and each mix
  set) is scanned and split on its own with its own budgets, so the realised shares are the
  requested ones whatever the sets' sizes. Budgets count *training* frames (T per chunk) and are
  met within one chunk: episodes are taken greedily and the one crossing the budget gives only
  the chunks still needed (its goals are still drawn over the whole episode). The main set's
  shuffle is the single-set one; a mix set's is seeded by ``[seed, crc32(name)]``, so adding or
  reordering sets does not reshuffle the others.
- Episode ids may repeat across sets, so every key in the JSON (episode lists, chunks, lengths,
  invalid) is :func:`episode_key`: the bare id for ``main``, ``<set>/<id>`` otherwise (a file
  stem never holds ``/``). A ``sets`` block records each set's folders once, its requested
  budgets, its totals and its realised share of each split's training frames.
- Without ``mix`` the JSON is byte-identical to what it was before mixing existed.
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np

from steve1.data import formats
from steve1.data.formats import SAMPLING_FORMAT_VERSION
from steve1.data.episodes import EpisodeFormatError, episode_path, list_episode_ids, open_store, reading, verify_store
from steve1.errors import UserError
from steve1.io import check_writable, write_json_atomic
from steve1.params import SampleParams

log = logging.getLogger(__name__)

Chunk = tuple[str, int, int]  # (episode key, start, end), end exclusive; the key is the id for the main set
MAIN_SET = "main"  # the set of paths.episodes/paths.embeds in a mixed sampling


class SamplingError(UserError):
    """The requested split cannot be made from the available episodes, or a sampling JSON is unusable."""


def episode_key(set_name: str, episode_id: str) -> str:
    """Key of an episode in a sampling JSON: the bare id in the main set, ``<set>/<id>`` in a mix set."""
    return episode_id if set_name == MAIN_SET else f"{set_name}/{episode_id}"


def split_key(key: str) -> tuple[str, str]:
    """Inverse of :func:`episode_key`: ``(set name, episode id)``."""
    set_name, sep, episode_id = key.partition("/")
    return (set_name, episode_id) if sep else (MAIN_SET, key)


# ----------------------------------------------------------------------------- the sampling JSON, typed

SPLITS = ("train", "val")
_SET_FOLDERS = ("episodes", "embeds")


def _fail(where: str, key: str, got: Any, expected: str) -> SamplingError:
    shown = repr(got)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return SamplingError(f"{where}: key {key!r} is {shown}, expected {expected} (a sampling JSON is written by the "
                         f"sample stage: re-run it)")


def _str_list(data: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = data[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(where, key, value, "a list of episode keys (strings)")
    return list(value)


def _chunk_list(value: Any, key: str, where: str) -> list[Chunk]:
    if not isinstance(value, list):
        raise _fail(where, key, value, "a list of [episode key, start, end] rows")
    out = []
    for i, row in enumerate(value):
        if (not isinstance(row, (list, tuple)) or len(row) != 3 or not isinstance(row[0], str)
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in row[1:])):
            raise _fail(where, f"{key}[{i}]", row, "[episode key, start, end] (a string and two integers)")
        out.append((row[0], int(row[1]), int(row[2])))
    return out


@dataclass
class Sampling:
    """A sampling JSON (``data/samplings/<name>.json``, :func:`run_sampling`), typed.

    The fields are the JSON's keys in file order; :meth:`to_dict` gives them back in that order
    (``sets`` only for a mixed sampling), so :meth:`write` writes the bytes :func:`run_sampling`
    always wrote. ``params`` is the sample params block as recorded (older samplings may lack keys).
    """

    params: dict[str, Any]
    train: list[str]
    val: list[str]
    train_chunks: list[Chunk]
    val_chunks: list[Chunk]
    lengths: dict[str, int] = field(default_factory=dict)
    totals: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    invalid: list[dict[str, str]] = field(default_factory=list)
    sets: Optional[dict[str, dict[str, Any]]] = None     # mixed samplings only: each set's folders, budgets, totals
    format_version: int = SAMPLING_FORMAT_VERSION
    path: Optional[Path] = field(default=None, compare=False)   # where it was read from (error messages)

    # -- reading and writing
    @classmethod
    def load(cls, path: str | Path, hint: str = "run the sample stage") -> "Sampling":
        """Read and check a sampling JSON; a missing, malformed or foreign file is a one-line :class:`SamplingError`."""
        path = Path(path)
        if not path.is_file():
            raise SamplingError(f"{path}: sampling JSON not found ({hint})")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SamplingError(f"{path}: not valid JSON ({exc}); {hint}") from None
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: Any, where: str | Path = "sampling") -> "Sampling":
        """Check a parsed sampling JSON (or :func:`make_sampling` body plus ``format_version``/``params``)."""
        w = str(where)
        if not isinstance(data, dict):
            raise SamplingError(f"{w}: expected a JSON object (a sampling), got {type(data).__name__}")
        version = data.get("format_version")
        if version != SAMPLING_FORMAT_VERSION:
            raise SamplingError(f"{w}: sampling format_version {version!r}, expected {SAMPLING_FORMAT_VERSION}")
        for key in ("params", "train", "val", "chunks"):
            if key not in data:
                raise SamplingError(f"{w}: key {key!r} is missing (a sampling JSON is written by the sample stage: "
                                    f"re-run it)")
        if not isinstance(data["params"], dict):
            raise _fail(w, "params", data["params"], "an object (the sample params)")
        chunks = data["chunks"]
        if not isinstance(chunks, dict) or set(SPLITS) - set(chunks):
            raise _fail(w, "chunks", chunks, "an object with 'train' and 'val' chunk lists")
        lengths = data.get("lengths", {})
        if not isinstance(lengths, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in lengths.items()):
            raise _fail(w, "lengths", lengths, "an object of episode key -> frames (integers)")
        sets = data.get("sets")
        if sets is not None:
            if not isinstance(sets, dict) or not all(isinstance(s, dict) for s in sets.values()):
                raise _fail(w, "sets", sets, "an object of set name -> its folders and budgets")
            for name, entry in sets.items():
                for k in _SET_FOLDERS:
                    if not isinstance(entry.get(k), str):
                        raise _fail(w, f"sets.{name}.{k}", entry.get(k), "a folder (string)")
        for key, kind in (("totals", dict), ("warnings", list), ("invalid", list)):
            if not isinstance(data.get(key, kind()), kind):
                raise _fail(w, key, data[key], f"a JSON {'object' if kind is dict else 'list'}")
        return cls(params=data["params"], train=_str_list(data, "train", w), val=_str_list(data, "val", w),
                   train_chunks=_chunk_list(chunks["train"], "chunks.train", w),
                   val_chunks=_chunk_list(chunks["val"], "chunks.val", w), lengths=dict(lengths),
                   totals=data.get("totals", {}), warnings=list(data.get("warnings", [])),
                   invalid=list(data.get("invalid", [])), sets=sets, format_version=version,
                   path=Path(where) if isinstance(where, Path) else None)

    @classmethod
    def from_body(cls, body: Mapping[str, Any], params: Optional[Mapping[str, Any]] = None) -> "Sampling":
        """A sampling of a :func:`make_sampling`/:func:`make_mixed_sampling` body (tests, benchmarks)."""
        return cls.from_dict({"format_version": SAMPLING_FORMAT_VERSION, "params": dict(params or {}), "invalid": [],
                              **body})

    def to_dict(self) -> dict[str, Any]:
        """The JSON document, keys in the order :func:`run_sampling` has always written them."""
        doc: dict[str, Any] = {"format_version": self.format_version, "params": self.params, "invalid": self.invalid,
                               "train": self.train, "val": self.val,
                               "chunks": {"train": [list(c) for c in self.train_chunks],
                                          "val": [list(c) for c in self.val_chunks]},
                               "lengths": self.lengths, "totals": self.totals, "warnings": self.warnings}
        if self.sets is not None:
            doc["sets"] = self.sets
        return doc

    def write(self, path: str | Path) -> Path:
        """Write atomically (``steve1.io.write_json_atomic``); return the path."""
        write_json_atomic(Path(path), self.to_dict())
        return Path(path)

    # -- what readers ask
    @property
    def where(self) -> str:
        return str(self.path) if self.path is not None else "sampling"

    def chunks(self, split: str) -> list[Chunk]:
        """The ``(episode key, start, end)`` tuples of one split, in file order (key: see :func:`episode_key`)."""
        if split not in SPLITS:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        return list(self.train_chunks if split == "train" else self.val_chunks)

    def episodes(self, split: str) -> list[str]:
        if split not in SPLITS:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        return list(self.train if split == "train" else self.val)

    def with_val_chunks(self, chunks: Sequence[Sequence[Any]]) -> "Sampling":
        """A copy whose val split is ``chunks`` (a subset validated or evaluated)."""
        return replace(self, val_chunks=[(str(e), int(s), int(t)) for e, s, t in chunks])

    def sample_param(self, key: str, default: Any) -> Any:
        """A recorded sample param (``min_btwn_goals``...), or ``default`` for samplings written before it was."""
        return self.params.get(key, default)

    def set_dirs(self, episodes_dir: Optional[str | Path] = None, embeds_dir: Optional[str | Path] = None,
                 overrides: Optional[Mapping[str, tuple[str | Path, str | Path]]] = None) -> dict[str, tuple[Path, Path]]:
        """:func:`set_dirs` of this sampling."""
        return set_dirs(self, episodes_dir, embeds_dir, overrides)


def set_dirs(sampling: Sampling, episodes_dir: Optional[str | Path] = None,
             embeds_dir: Optional[str | Path] = None,
             overrides: Optional[Mapping[str, tuple[str | Path, str | Path]]] = None) -> dict[str, tuple[Path, Path]]:
    """``set name -> (episodes dir, embeds dir)`` for every set a sampling's chunks may name.

    The main set's folders are the arguments when given (a sampling moved to another machine
    keeps working), else the JSON's ``sets.main``; mix sets' folders come from the JSON's
    ``sets`` block, relative paths against the working directory (the repository root, as every
    params path), and ``overrides`` replaces any of them.
    """
    recorded = {name: (s["episodes"], s["embeds"]) for name, s in (sampling.sets or {}).items()}
    if episodes_dir is not None or embeds_dir is not None:
        if episodes_dir is None or embeds_dir is None:
            raise SamplingError(f"give both episodes_dir and embeds_dir or neither (got {episodes_dir!r}, {embeds_dir!r})")
        recorded[MAIN_SET] = (episodes_dir, embeds_dir)
    recorded.update(overrides or {})
    if MAIN_SET not in recorded:
        raise SamplingError(f"{sampling.where}: this sampling does not record its episode folders (a single-set "
                            f"sampling): pass episodes_dir and embeds_dir")
    return {name: (Path(ep), Path(em)) for name, (ep, em) in recorded.items()}


def episode_files(key: str, dirs: Mapping[str, tuple[Path, Path]]) -> tuple[Path, Path]:
    """The episode and embeds files of an episode key, through its set's folders."""
    set_name, episode_id = split_key(key)
    if set_name not in dirs:
        raise SamplingError(f"episode {key!r} belongs to set {set_name!r}, but only sets {sorted(dirs)} have folders "
                       f"(is the sampling JSON's 'sets' block missing it?)")
    episodes_dir, embeds_dir = dirs[set_name]
    return episode_path(episodes_dir, episode_id), episode_path(embeds_dir, episode_id)


def min_episode_frames(T: int, min_btwn_goals: int) -> int:
    """Shortest usable episode: STEVE-1's ``max(T, min_btwn_goals) + NONE_EMBED_OFFSET``."""
    return max(T, min_btwn_goals) + formats.NONE_EMBED_OFFSET


def episode_chunks(episode_id: str, n_frames: int, T: int) -> list[Chunk]:
    """STEVE-1 chunking of one valid episode; the short last chunk is shifted back to end at n."""
    if n_frames < T + formats.NONE_EMBED_OFFSET:
        raise SamplingError(f"episode {episode_id}: {n_frames} frames is too short for T={T} "
                            f"(needs {T + formats.NONE_EMBED_OFFSET})")
    starts = np.arange(formats.NONE_EMBED_OFFSET, n_frames, T)
    starts = np.minimum(starts, n_frames - T)
    return [(episode_id, int(s), int(s) + T) for s in starts]


@dataclass
class EpisodeScan:
    """Lengths of usable episodes and the reason each other episode was rejected."""

    lengths: dict[str, int] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)
    weights: set[str] = field(default_factory=set)    # MineCLIP ids of the usable embeds files


def _n_frames(path: Path) -> int:
    with open_store(path, "episode") as f, reading(path, "episode", f"attribute {formats.A_N_FRAMES}"):
        return int(f.attrs[formats.A_N_FRAMES])


def scan_episodes(episodes_dir: str | Path, embeds_dir: str | Path, T: int, min_btwn_goals: int) -> EpisodeScan:
    """Check every episode id found in either folder: both stores open and the last chunk of each of
    their datasets reads (:func:`steve1.data.episodes.verify_store`); then metadata and the valid flags."""
    ep_ids = set(list_episode_ids(episodes_dir))
    em_ids = set(list_episode_ids(embeds_dir))
    need = min_episode_frames(T, min_btwn_goals)
    scan = EpisodeScan()
    for eid in sorted(ep_ids | em_ids):
        if eid not in em_ids:
            scan.invalid[eid] = f"no embeds file {episode_path(embeds_dir, eid)} (run the embed stage)"
            continue
        if eid not in ep_ids:
            scan.invalid[eid] = f"no episode file {episode_path(episodes_dir, eid)} (run the decode stage)"
            continue
        try:
            verify_store(episode_path(episodes_dir, eid), "episode")
            verify_store(episode_path(embeds_dir, eid), "embeds")
            n = _n_frames(episode_path(episodes_dir, eid))
            with open_store(episode_path(embeds_dir, eid), "embeds") as f:
                with reading(episode_path(embeds_dir, eid), "embeds", formats.EMBED_VALID):
                    valid = f[formats.EMBED_VALID][:]
                with reading(episode_path(embeds_dir, eid), "embeds", formats.EMBEDS):
                    finite = np.isfinite(f[formats.EMBEDS][:]).all(axis=1)
                weights = str(f.attrs.get(formats.A_WEIGHTS, ""))
        except (OSError, EpisodeFormatError) as exc:
            scan.invalid[eid] = f"unreadable: {exc}"
            continue
        if len(valid) != n:
            scan.invalid[eid] = f"embeds have {len(valid)} rows but the episode has {n} frames"
        elif n < need:
            scan.invalid[eid] = (f"too short: {n} frames < {need} = max(T={T}, min_btwn_goals={min_btwn_goals})"
                                 f" + {formats.NONE_EMBED_OFFSET}")
        elif not valid[formats.NONE_EMBED_OFFSET:].all():
            bad = int(np.flatnonzero(~valid[formats.NONE_EMBED_OFFSET:])[0]) + formats.NONE_EMBED_OFFSET
            scan.invalid[eid] = f"embedding row {bad} is marked invalid (rows >= {formats.NONE_EMBED_OFFSET} must be valid)"
        elif not finite[valid].all():       # a goal of NaNs trains on NaNs (rows marked invalid are never read)
            bad = int(np.flatnonzero(valid & ~finite)[0])
            scan.invalid[eid] = (f"{episode_path(embeds_dir, eid)}: embedding row {bad} is not finite (NaN or "
                                 f"infinity); the file is damaged: run the embed stage again")
        else:
            scan.lengths[eid] = n
            scan.weights.add(weights)
    return scan


def too_short_hint(T: int, min_btwn_goals: int) -> str:
    """What to change when episodes are too short for the chunk length."""
    return (f"each needs >= {min_episode_frames(T, min_btwn_goals)} frames = max(T={T}, min_btwn_goals="
            f"{min_btwn_goals}) + {formats.NONE_EMBED_OFFSET}; lower sample.T (train.trunc_t must divide it; "
            f"`steve1 fit-t` picks the largest T the episodes allow and writes it to params.yaml) or "
            f"use longer recordings")


def _take(order: Iterable[str], lengths: dict[str, int], budget: int, keep_last: int = 0) -> list[str]:
    """Greedy prefix of ``order`` until ``budget`` frames are reached, leaving ``keep_last`` episodes."""
    order = list(order)
    taken, total = [], 0
    for eid in order[: max(0, len(order) - keep_last)]:
        if total >= budget:
            break
        taken.append(eid)
        total += lengths[eid]
    return taken


def _reused_val(val_episodes: Sequence[str], lengths: dict[str, int], rng: np.random.Generator,
                where: str) -> tuple[list[str], list[str]]:
    """``(val, shuffled rest)`` when an earlier sampling's val episodes are reused (``val_from``)."""
    missing = [e for e in val_episodes if e not in lengths]
    if missing:
        raise SamplingError(f"{where} {len(missing)} reused val episode(s) are not valid here: "
                            f"{missing[:5]}{' ...' if len(missing) > 5 else ''}")
    val = list(val_episodes)
    rest = [e for e in sorted(lengths) if e not in set(val)]
    return val, [rest[i] for i in rng.permutation(len(rest))]


def make_sampling(lengths: dict[str, int], *, train_frames: int, val_frames: int, seed: int, T: int,
                  min_btwn_goals: int, val_episodes: Optional[list[str]] = None) -> dict[str, Any]:
    """Split valid episodes (``id -> n_frames``) and index their chunks; deterministic for a seed.

    ``val_episodes`` (from ``val_from``) fixes the val split; train is drawn from the rest.
    Returns the body of the sampling JSON (without the params block).
    """
    ids = sorted(lengths)
    warnings: list[str] = []
    if val_episodes is not None:
        val, order = _reused_val(val_episodes, lengths, np.random.default_rng(seed), "val_from:")
    else:
        order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
        val = _take(order, lengths, val_frames, keep_last=1) if val_frames > 0 else []
        order = order[len(val):]
    train = _take(order, lengths, train_frames)

    frames = {s: sum(lengths[e] for e in eps) for s, eps in (("train", train), ("val", val))}
    available = sum(lengths.values())
    if not train:
        raise SamplingError(f"no episode left for train: {len(ids)} valid episode(s), {available} frames, "
                            f"{len(val)} taken by val (train_frames={train_frames}, val_frames={val_frames})")
    if not val and val_frames > 0:
        raise SamplingError(f"val split is empty but val_frames={val_frames}: only {len(ids)} valid episode(s) "
                            f"({available} frames) and train needs at least one; add episodes or set val_frames: 0")
    if frames["train"] < train_frames or (val_episodes is None and frames["val"] < val_frames):
        warnings.append(f"budgets exceed the available frames: took everything: train {frames['train']} of "
                        f"{train_frames} frames, val {frames['val']} of {val_frames} frames "
                        f"({available} valid frames in {len(ids)} episodes)")
    chunks = {s: [list(c) for e in eps for c in episode_chunks(e, lengths[e], T)]
              for s, eps in (("train", train), ("val", val))}
    totals = {s: {"episodes": len(eps), "frames": frames[s], "chunks": len(chunks[s]),
                  "chunk_frames": len(chunks[s]) * T} for s, eps in (("train", train), ("val", val))}
    return {"train": train, "val": val, "chunks": chunks, "lengths": {e: lengths[e] for e in train + val},
            "totals": totals, "warnings": warnings}


@dataclass
class SetSpec:
    """One set of a mixed sampling: its valid episodes (bare id -> frames) and its budgets."""

    name: str
    lengths: dict[str, int]
    train_frames: int
    val_frames: int


def _take_chunks(order: Sequence[str], lengths: dict[str, int], T: int, budget: int,
                 keep_last: int = 0) -> tuple[list[str], list[Chunk]]:
    """Greedy episodes of ``order`` until ``budget`` training frames; the last one gives only the chunks needed."""
    need = -(-budget // T)
    episodes: list[str] = []
    chunks: list[Chunk] = []
    for eid in order[: max(0, len(order) - keep_last)]:
        if len(chunks) >= need:
            break
        episodes.append(eid)
        chunks.extend(episode_chunks(eid, lengths[eid], T)[: need - len(chunks)])
    return episodes, chunks


def _split_set(spec: SetSpec, *, seed: int, T: int, val_episodes: Optional[list[str]]) -> dict[str, Any]:
    """Train/val episodes and chunks (bare ids) of one set, each budget met within one chunk."""
    lengths, ids = spec.lengths, sorted(spec.lengths)
    rng = np.random.default_rng(seed if spec.name == MAIN_SET else [seed, zlib.crc32(spec.name.encode())])
    if val_episodes is not None:
        val, order = _reused_val(val_episodes, lengths, rng, f"val_from: set {spec.name!r}:")
        val_chunks = [c for e in val for c in episode_chunks(e, lengths[e], T)]
    else:
        order = [ids[i] for i in rng.permutation(len(ids))]
        val, val_chunks = _take_chunks(order, lengths, T, spec.val_frames, keep_last=1 if spec.train_frames else 0)
        order = order[len(val):]
    train, train_chunks = _take_chunks(order, lengths, T, spec.train_frames)
    where = f"set {spec.name!r}: {len(ids)} valid episode(s), {sum(lengths.values())} frames"
    if spec.train_frames and not train:
        raise SamplingError(f"{where}: no episode left for train ({len(val)} taken by val); add episodes or lower "
                            f"its val_frames")
    if spec.val_frames and not val and val_episodes is None:
        raise SamplingError(f"{where}: val split is empty but val_frames={spec.val_frames} (train needs at least one "
                            f"episode); add episodes or set its val_frames: 0")
    warnings = []
    got = {"train": len(train_chunks) * T, "val": len(val_chunks) * T}
    if got["train"] < spec.train_frames or (val_episodes is None and got["val"] < spec.val_frames):
        warnings.append(f"{where}: budgets exceed its chunks: took everything: train {got['train']} of "
                        f"{spec.train_frames} frames, val {got['val']} of {spec.val_frames} frames")
    return {"train": train, "val": val, "chunks": {"train": train_chunks, "val": val_chunks}, "warnings": warnings}


def _totals(episodes: Sequence[str], chunks: Sequence[Any], lengths: Mapping[str, int], T: int) -> dict[str, int]:
    return {"episodes": len(episodes), "frames": sum(lengths[e] for e in episodes), "chunks": len(chunks),
            "chunk_frames": len(chunks) * T}


def make_mixed_sampling(specs: Sequence[SetSpec], *, seed: int, T: int,
                        val_episodes: Optional[Mapping[str, list[str]]] = None) -> dict[str, Any]:
    """Split each set by its own budgets and concatenate them under :func:`episode_key` keys.

    ``val_episodes`` (set name -> bare ids, from ``val_from``) fixes the val split of the sets it
    names; the others draw theirs. Returns the body of the sampling JSON; its ``sets`` block has
    each set's requested budgets, totals and realised ``share`` of each split's training frames
    (the caller adds the folders).
    """
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise SamplingError(f"set names must be unique, got {names}")
    body: dict[str, Any] = {"train": [], "val": [], "chunks": {"train": [], "val": []}, "lengths": {},
                            "totals": {}, "warnings": [], "sets": {}}
    for spec in specs:
        part = _split_set(spec, seed=seed, T=T, val_episodes=(val_episodes or {}).get(spec.name))
        key = lambda e: episode_key(spec.name, e)  # noqa: E731
        for split in ("train", "val"):
            body[split] += [key(e) for e in part[split]]
            body["chunks"][split] += [[key(e), s, t] for e, s, t in part["chunks"][split]]
        body["lengths"].update({key(e): spec.lengths[e] for e in part["train"] + part["val"]})
        body["warnings"] += part["warnings"]
        body["sets"][spec.name] = {
            "train_frames": spec.train_frames, "val_frames": spec.val_frames,
            "totals": {s: _totals(part[s], part["chunks"][s], spec.lengths, T) for s in ("train", "val")}}
    if not body["train"]:
        raise SamplingError(f"no train chunks in any set ({names}); give some set a train_frames budget")
    lengths = body["lengths"]
    body["totals"] = {s: _totals(body[s], body["chunks"][s], lengths, T) for s in ("train", "val")}
    for entry in body["sets"].values():
        for s, t in entry["totals"].items():
            whole = body["totals"][s]["chunk_frames"]
            t["share"] = round(t["chunk_frames"] / whole, 6) if whole else 0.0
    return body


def run_sampling(sample_params: SampleParams, episodes_dir: str | Path, embeds_dir: str | Path,
                 out: str | Path, mix_dirs: Mapping[str, tuple[str | Path, str | Path]] = {}) -> Path:
    """Scan, split, index and write the sampling JSON ``out`` atomically (``Layout.sampling``); return it.

    ``mix_dirs`` gives each ``sample.mix`` set's (episodes, embeds) folders (``Layout.mix_dirs``)."""
    p = sample_params
    check_writable(Path(out).parent)
    if p.mix:  # scans (and reports) every set, the main one included, once
        return _run_mixed_sampling(p, episodes_dir, embeds_dir, Path(out), mix_dirs)
    scan = scan_episodes(episodes_dir, embeds_dir, p.T, p.min_btwn_goals)
    for eid, reason in scan.invalid.items():
        log.info("skipping %s: %s", eid, reason)
    if not scan.lengths:
        raise SamplingError(f"no valid episodes in {episodes_dir} with embeds in {embeds_dir} "
                            f"({len(scan.invalid)} rejected; {too_short_hint(p.T, p.min_btwn_goals)})")
    val_episodes = None
    if p.val_from:  # an earlier mixed sampling lends its main set's val
        val_episodes = [e for e in Sampling.load(p.val_from, "check sample.val_from").val if split_key(e)[0] == MAIN_SET]
    body = make_sampling(scan.lengths, train_frames=p.train_frames, val_frames=p.val_frames, seed=p.seed,
                         T=p.T, min_btwn_goals=p.min_btwn_goals, val_episodes=val_episodes)
    for w in body["warnings"]:
        log.warning("%s", w)
    out = Path(out)
    doc = {"format_version": formats.SAMPLING_FORMAT_VERSION, "params": p.model_dump(mode="json"),
           "invalid": [{"episode_id": e, "reason": r} for e, r in scan.invalid.items()], **body}
    Sampling.from_dict(doc, out).write(out)
    t = body["totals"]
    log.info("wrote %s: train %d episodes / %d chunks, val %d episodes / %d chunks", out,
             t["train"]["episodes"], t["train"]["chunks"], t["val"]["episodes"], t["val"]["chunks"])
    return out


def check_one_mineclip_space(weights: Mapping[str, str]) -> None:
    """The mixing rule (``steve1.data.formats``): goals from two MineCLIPs live in two different spaces,
    so every set of a sampling must be embedded by one MineCLIP, or reuse a dataset's embeddings that
    its ``custom.<name>.dataset_mineclip`` declares were made by that MineCLIP. ``weights`` maps each
    ``weights`` id found to where (a set and its embeds folder)."""
    spaces = {formats.mineclip_space(w) for w in weights}
    if len(spaces) <= 1:
        for w, where in weights.items():
            if w.startswith(formats.DATASET_WEIGHTS_PREFIX) and len(weights) > 1:
                log.info("%s reuses a dataset's embeddings, mixed as %r by its declared dataset_mineclip",
                         where, formats.mineclip_space(w))
        return
    undeclared = [where for w, where in weights.items()
                  if formats.mineclip_space(w).startswith(formats.UNVERIFIED_SPACE)]
    hint = "; embed every set with the same embed params (dvc repro embed-set@<name>)"
    if undeclared:
        hint += (f"; {', '.join(undeclared)} reuse(s) a dataset's embeddings from an undeclared MineCLIP: set "
                 f"custom.<name>.dataset_mineclip to the weights id of the MineCLIP that made them (if it is the "
                 f"one the other sets use), or custom.<name>.embeddings: mineclip to recompute them")
    raise SamplingError("the sets were embedded by different MineCLIP weights: " +
                        "; ".join(f"{w!r} in {where}" for w, where in weights.items()) + hint)


def _run_mixed_sampling(p: SampleParams, episodes_dir: str | Path, embeds_dir: str | Path, out: Path,
                        mix_dirs: Mapping[str, tuple[str | Path, str | Path]]) -> Path:
    """:func:`run_sampling` with ``p.mix``: scan and split every set, record each set's folders once."""
    missing = [m.name for m in p.mix if m.name not in mix_dirs]
    if missing:
        raise SamplingError(f"sample.mix names {missing} but no folders were given for them")
    sets = [(MAIN_SET, str(episodes_dir), str(embeds_dir), p.train_frames, p.val_frames)]
    sets += [(m.name, str(mix_dirs[m.name][0]), str(mix_dirs[m.name][1]), m.train_frames, m.val_frames)
             for m in p.mix]
    seen: dict[Path, str] = {}
    for name, ep_dir, _, _, _ in sets:
        where = Path(ep_dir).resolve()
        if where in seen:  # one episode under two keys could sit in train and val at once
            raise SamplingError(f"sets {seen[where]!r} and {name!r} both read episodes from {ep_dir}; "
                                f"each set needs its own folder")
        seen[where] = name
    specs, invalid, weights = [], [], {}
    for name, ep_dir, em_dir, train_frames, val_frames in sets:
        scan = scan_episodes(ep_dir, em_dir, p.T, p.min_btwn_goals)
        for eid, reason in scan.invalid.items():
            log.info("skipping %s: %s", episode_key(name, eid), reason)
            invalid.append({"episode_id": episode_key(name, eid), "reason": reason})
        if not scan.lengths:
            raise SamplingError(f"set {name!r}: no valid episodes in {ep_dir} with embeds in {em_dir} "
                                f"({len(scan.invalid)} rejected; {too_short_hint(p.T, p.min_btwn_goals)})")
        specs.append(SetSpec(name, scan.lengths, train_frames, val_frames))
        weights.update({w: f"set {name!r} ({em_dir})" for w in scan.weights if w not in weights})
    check_one_mineclip_space(weights)
    val_episodes = None
    if p.val_from:
        earlier = Sampling.load(p.val_from, "check sample.val_from")
        reused = set(earlier.sets or {MAIN_SET: None})  # a single-set sampling has only the main set
        val_episodes = {name: [] for name in reused}
        for key in earlier.val:
            name, eid = split_key(key)
            val_episodes.setdefault(name, []).append(eid)
    body = make_mixed_sampling(specs, seed=p.seed, T=p.T, val_episodes=val_episodes)
    for w in body["warnings"]:
        log.warning("%s", w)
    for name, ep_dir, em_dir, _, _ in sets:
        body["sets"][name] = {"episodes": ep_dir, "embeds": em_dir, **body["sets"][name]}
    doc = {"format_version": formats.SAMPLING_FORMAT_VERSION, "params": p.model_dump(mode="json"), "invalid": invalid,
           **body}
    Sampling.from_dict(doc, out).write(out)
    for name, entry in body["sets"].items():
        t = entry["totals"]
        log.info("set %s: train %d chunks (share %.3f), val %d chunks (share %.3f)", name, t["train"]["chunks"],
                 t["train"]["share"], t["val"]["chunks"], t["val"]["share"])
    log.info("wrote %s", out)
    return out
