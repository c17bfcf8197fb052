"""Training dataset: chunks of frames and actions with hindsight-relabeled MineCLIP goals.

Relabeling reproduces STEVE-1's ``get_episode_chunk`` (``steve1/data/minecraft_dataset.py``):

1. **Goal times** are drawn over the *whole episode* of ``n`` frames, not the chunk:
   ``c = 0; while c < n-1: c += gap; if n - c < min_btwn_goals: c = n-1; goals.append(c)``,
   with ``gap ~ randint(min_btwn_goals, max_btwn_goals)`` (uniform on ``[min, max)``). The
   "tail rule" snaps a goal that would leave fewer than ``min_btwn_goals`` frames to ``n-1``,
   which is always the last goal. :func:`goal_times_from_gaps` does this with one cumsum.
2. **Each step takes the next goal at or after it:** step ``t`` is conditioned on
   ``embeds[g]`` with ``g`` the smallest goal time ``>= t``. STEVE-1's loop advances to the next
   goal one step late, so its step ``g+1`` still sees goal ``g`` (a goal in the past);
   ``official_goal_lag=True`` reproduces that bit-for-bit, the default does not.
3. ``embeds[g]`` is the MineCLIP embedding of frames ``g-15..g``; STEVE-1 asserts
   ``min_btwn_goals >= 15`` so every goal index is ``>= 15`` (rows 0..14 have no embedding).
   We enforce the same bound.
4. With probability ``p_uncond`` a whole chunk's goals are zeroed (classifier-free guidance).
5. ``firsts`` is True at the chunk's first step only.

Randomness is one generator per sample, ``default_rng([seed, epoch, chunk_index])`` drawing the
gaps then the unconditional coin, so any sample is reproducible in isolation and a resumed
run replays nothing. ``gap_dist="geometric"`` draws ``gap = min_btwn_goals - 1 + G`` with
``G ~ Geometric(p)`` on ``{1, 2, ...}`` and ``p = 2 / (max_btwn_goals - min_btwn_goals + 1)``,
so its mean equals the uniform's, ``(min + max - 1) / 2``; its tail is unbounded (gaps can
exceed ``max_btwn_goals``).

Batches are assembled inside the dataset (the sampler hands over a whole batch of indices), so
frames are read (lossless codecs) or decoded (``jpeg``) straight into the ``[B,T,128,128,3]``
uint8 batch buffer: no collate copy, no float conversion. HDF5 files are opened lazily in
whichever process reads them (never in the parent before the DataLoader forks its workers).

Buffers are allocated once and reused. In one process, :class:`BufferPool` hands a buffer out
again once nothing refers to it. With workers, each worker writes into a few batch *slots* of
shared memory that it allocates once and sends to the parent the first time only; afterwards a
batch crosses the process boundary as a slot number plus the small arrays, and the parent hands
out its own mapping of the slot. The parent marks a slot free (a flag in shared memory) once
nothing in the parent refers to it any more, so a consumer that keeps a batch never sees it
overwritten; a worker that finds no free slot sends a fresh buffer instead.

Decode threads: each loading process gets its share of the cores it may use
(:func:`process_threads`: cores / (local ranks x workers)), as Blosc threads and as threads that
decode a chunk's JPEG frames in parts (libjpeg-turbo releases the GIL).

Mixed samplings (``sample.mix``) key each chunk by ``<set>/<episode_id>`` (the bare id in the
main set); the dataset opens a chunk's files through its set's folders and caches handles by
that key, so equal ids in two sets are two episodes and a goal is always a row of the chunk's own
embeds file. The sampler shuffles all chunks together: each batch mixes the sets in their share.
"""

from __future__ import annotations

import os
import sys
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from steve1.data import formats
from steve1.data.episodes import EpisodeFormatError, FrameStore, check_episode_version, open_store, reading
from steve1.data.sampling import MAIN_SET, Chunk, Sampling, episode_files, split_key
from steve1.errors import UserError
from steve1.params import Params, SampleParams

_SAMPLE = SampleParams()  # goal-gap defaults of samplings written before they were recorded

GapDist = Literal["uniform", "geometric"]


class DatasetError(UserError):
    """A split, its chunks or the loader's settings cannot make batches (empty split, T or goal gaps
    that do not fit, a set without folders, too few chunks for one batch)."""


# ----------------------------------------------------------------------------- relabeling (pure)

def draw_gaps(rng: np.random.Generator, n_frames: int, min_btwn_goals: int, max_btwn_goals: int,
              gap_dist: GapDist = "uniform") -> np.ndarray:
    """Enough gaps (each ``>= min_btwn_goals``) for their cumsum to pass ``n_frames - min_btwn_goals``."""
    k = (n_frames - 1) // min_btwn_goals + 2
    if gap_dist == "uniform":
        return rng.integers(min_btwn_goals, max_btwn_goals, size=k, dtype=np.int64)
    if gap_dist == "geometric":
        p = 2.0 / (max_btwn_goals - min_btwn_goals + 1)
        return rng.geometric(p, size=k).astype(np.int64) + (min_btwn_goals - 1)
    raise ValueError(f"gap_dist must be 'uniform' or 'geometric', got {gap_dist!r}")


def goal_times_from_gaps(gaps: np.ndarray, n_frames: int, min_btwn_goals: int) -> np.ndarray:
    """STEVE-1's goal-time loop (with its tail rule) as one cumsum; ``gaps`` must be long enough."""
    if n_frames <= 1:
        return np.zeros(0, dtype=np.int64)
    c = np.cumsum(gaps)
    keep = (c <= n_frames - min_btwn_goals) & (c < n_frames - 1)  # a prefix: c is increasing
    k = int(np.count_nonzero(keep))
    if k == len(c):
        raise ValueError(f"{len(gaps)} gaps do not reach the end of a {n_frames}-frame episode")
    return np.append(c[:k], n_frames - 1)


def step_goal_times(goal_times: np.ndarray, start: int, end: int, official_goal_lag: bool = False) -> np.ndarray:
    """Goal time of each step in ``[start, end)``: the first goal ``>= t`` (``>= t-1`` with the lag)."""
    steps = np.arange(start, end, dtype=np.int64) - (1 if official_goal_lag else 0)
    return goal_times[np.searchsorted(goal_times, steps, side="left")]


# ----------------------------------------------------------------------------- dataset

class BufferPool:
    """Reusable batch buffers for the main process.

    A fresh 377 MB batch costs ~90k page faults, which made reading 4-5x slower than reading into
    a warm buffer. A pooled buffer is handed out again only when nothing refers to it any more
    (its refcount is back to the pool's own: every tensor, view or array made from it holds a
    reference), so a consumer that keeps old batches just causes fresh allocations, never reuse
    of memory it still sees. Workers write into shared-memory slots instead (:class:`ChunkLoader`).
    """

    def __init__(self, keep: int = 4):
        self.keep = keep
        self._bufs: dict[tuple[tuple[int, ...], str], list[np.ndarray]] = {}

    def get(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        if get_worker_info() is not None:
            nbytes = int(np.prod(shape)) * np_dtype.itemsize
            return torch.empty(0, dtype=dtype).set_(torch.UntypedStorage._new_shared(max(nbytes, 1)), 0, shape)
        bufs = self._bufs.setdefault((tuple(shape), np_dtype.str), [])
        for buf in bufs:
            if sys.getrefcount(buf) == 3:  # the list, this loop variable, getrefcount's argument
                return torch.from_numpy(buf)
        buf = np.empty(shape, np_dtype)  # numpy asks the kernel for huge pages: fewer faults than torch
        if len(bufs) < self.keep:
            bufs.append(buf)
        return torch.from_numpy(buf)


def process_threads(num_workers: int = 0, cores: Optional[int] = None) -> int:
    """Decode threads for each loading process: its share of the cores this process may use.

    The loading processes are the workers (or the training process itself with 0 workers), one
    set per training process on this node (``LOCAL_WORLD_SIZE``, set by torchrun/accelerate).
    Two workers each running two Blosc threads on 2 cores made the loader slower than no workers.
    """
    cores = formats.available_cores() if cores is None else cores
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, cores // (local * max(1, num_workers)))


@dataclass
class SlotBatch:
    """A batch a worker wrote into its shared slot ``(worker, slot)``; what crosses to the parent.

    ``big`` carries the slot's shared tensors the first time the slot (or its shape) is used, and
    a fresh buffer's tensors when ``slot`` is -1 (no free slot); otherwise it is empty and the
    parent uses its own mapping of the slot. ``small`` are the batch's small numpy arrays.
    """

    worker: int
    slot: int
    big: dict[str, torch.Tensor]
    small: dict[str, np.ndarray]


def _identity(x: Any) -> Any:
    """The DataLoader's collate: batches are assembled by the dataset, numpy stays numpy."""
    return x


_DEFAULT_CHUNK_CACHE = 8 << 20  # HDF5's per-dataset chunk cache as h5py opens files (bytes)


class _Handles:
    """One episode's open files and datasets (looked up once: a name lookup costs ~0.4 ms)."""

    def __init__(self, episode: Path, embeds: Path):
        self.episode_path, self.embeds_path = episode, embeds
        self.file = open_store(episode, "episode")
        chunks = self.file[formats.FRAMES].chunks if formats.FRAMES in self.file else None  # per-frame codecs: no chunk cache
        cache = 2 * int(np.prod(chunks)) if chunks else 0  # uint8: bytes == elements
        if cache > _DEFAULT_CHUNK_CACHE:  # a compressed chunk must fit, or HDF5 re-decodes it per piece
            self.file.close()
            self.file = open_store(episode, "episode", rdcc_nbytes=cache)
        try:
            self.embeds_file = open_store(embeds, "embeds")
        except (OSError, EpisodeFormatError):
            self.file.close()
            raise
        try:  # a chunk reads a few scattered goal rows: kernel read-ahead around each would read ~6x the bytes
            os.posix_fadvise(self.embeds_file.id.get_vfd_handle(), 0, 0, os.POSIX_FADV_RANDOM)
        except (AttributeError, OSError, ValueError):
            pass
        try:
            check_episode_version(self.file, episode)
        except EpisodeFormatError:
            self.close()
            raise
        if self.embeds_file.attrs.get(formats.A_FORMAT_VERSION) != formats.EMBED_FORMAT_VERSION:
            self.close()
            found = self.embeds_file.attrs.get(formats.A_FORMAT_VERSION)
            raise EpisodeFormatError(f"{embeds}: format_version {found!r}, expected {formats.EMBED_FORMAT_VERSION}")
        self.n_frames = int(self.file.attrs[formats.A_N_FRAMES])
        try:
            self.frames = FrameStore(self.file, episode)
            with reading(episode, "episode"):
                self.buttons, self.camera = self.file[formats.BUTTONS], self.file[formats.CAMERA]
            with reading(embeds, "embeds"):
                self.embeds = self.embeds_file[formats.EMBEDS]
        except EpisodeFormatError:
            self.close()
            raise
        if self.embeds.ndim != 2 or self.embeds.shape[0] != self.n_frames:
            shape = self.embeds.shape
            self.close()
            raise EpisodeFormatError(f"{embeds}: embeddings have shape {list(shape)}, expected "
                                     f"[{self.n_frames}, D] (the episode's frames x MineCLIP dim)")
        self.embed_dim = int(self.embeds.shape[1])

    def close(self) -> None:
        self.file.close()
        self.embeds_file.close()


class ChunkDataset(Dataset):
    """Chunks ``(episode key, start, end)`` of one split; item = a whole batch ``(epoch, [indices])``.

    ``lengths`` (episode key -> frames, from the sampling JSON) saves opening files to learn ``n``.
    ``sets`` (set name -> (episodes dir, embeds dir)) gives the folders of a mixed sampling's
    other sets; chunks keyed ``<set>/<id>`` are read from there, bare ids from the main folders.
    ``threads``: decode threads of each process that reads (default :func:`process_threads` of 0 workers).
    """

    def __init__(self, chunks: Sequence[Chunk], episodes_dir: str | Path, embeds_dir: str | Path, *,
                 seed: int, min_btwn_goals: int = _SAMPLE.min_btwn_goals, max_btwn_goals: int = _SAMPLE.max_btwn_goals,
                 p_uncond: float = 0.1,
                 gap_dist: GapDist = "uniform", official_goal_lag: bool = False,
                 lengths: Optional[dict[str, int]] = None, max_open_files: int = 64,
                 sets: Optional[dict[str, tuple[str | Path, str | Path]]] = None, threads: Optional[int] = None):
        if not chunks:
            raise DatasetError("no chunks: the split is empty")
        Ts = {int(e) - int(s) for _, s, e in chunks}
        if len(Ts) != 1:
            raise ValueError(f"chunks must all have the same length, got lengths {sorted(Ts)[:5]}")
        if min_btwn_goals < formats.NONE_EMBED_OFFSET:
            raise DatasetError(f"min_btwn_goals={min_btwn_goals} must be >= {formats.NONE_EMBED_OFFSET}: the first goal "
                             f"is drawn at >= min_btwn_goals and embedding rows < {formats.NONE_EMBED_OFFSET} do not exist")
        if max_btwn_goals <= min_btwn_goals:
            raise DatasetError(f"max_btwn_goals={max_btwn_goals} must be greater than min_btwn_goals={min_btwn_goals}")
        if not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"p_uncond={p_uncond} must be in [0, 1]")
        if gap_dist not in ("uniform", "geometric"):
            raise ValueError(f"gap_dist must be 'uniform' or 'geometric', got {gap_dist!r}")
        self.chunks = [(str(e), int(s), int(t)) for e, s, t in chunks]
        self.T = Ts.pop()
        self.episodes_dir, self.embeds_dir = Path(episodes_dir), Path(embeds_dir)
        self.dirs = {name: (Path(ep), Path(em)) for name, (ep, em) in (sets or {}).items()}
        self.dirs[MAIN_SET] = (self.episodes_dir, self.embeds_dir)
        unknown = sorted({split_key(e)[0] for e, _, _ in self.chunks} - set(self.dirs))
        if unknown:
            raise DatasetError(f"chunks name set(s) {unknown} but folders are known only for {sorted(self.dirs)}; "
                             f"pass their (episodes, embeds) folders in sets=")
        self.seed, self.min_btwn_goals, self.max_btwn_goals = seed, min_btwn_goals, max_btwn_goals
        self.p_uncond, self.gap_dist, self.official_goal_lag = p_uncond, gap_dist, official_goal_lag
        self.lengths = dict(lengths or {})
        self.max_open_files = max_open_files
        self._open: OrderedDict[str, _Handles] = OrderedDict()
        self._pid = os.getpid()
        self._pool = BufferPool()
        self.threads = threads if threads is not None else process_threads(0)
        self._executor: Optional[ThreadPoolExecutor] = None
        self._configured_pid: Optional[int] = None
        # worker slots: [workers, slots] uint8 flags in shared memory (1 = written, not yet released by
        # the parent), set by ChunkLoader before its workers start; each worker's slot buffers
        self.slot_busy: Optional[torch.Tensor] = None
        self._slots: dict[int, dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.chunks)

    # -- files: opened lazily, per process, a bounded number at a time
    def _files(self, eid: str) -> _Handles:
        if self._pid != os.getpid():  # forked after opening: the inherited handles are not ours to use
            self._open, self._pid = OrderedDict(), os.getpid()
        if eid in self._open:
            self._open.move_to_end(eid)
            return self._open[eid]
        h = _Handles(*episode_files(eid, self.dirs))
        self._open[eid] = h
        while len(self._open) > self.max_open_files:
            self._open.popitem(last=False)[1].close()
        return h

    def close(self) -> None:
        for h in self._open.values():
            h.close()
        self._open.clear()
        if self._executor is not None and self._configured_pid == os.getpid():
            self._executor.shutdown(wait=False)
        self._executor = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()  # never ship open handles to another process
        state["_pool"] = BufferPool()
        state["_executor"], state["_configured_pid"], state["_slots"] = None, None, {}
        return state

    # -- per process: decode threads (threads do not survive a fork; Blosc reads its variable per call)
    def _decoder(self) -> Optional[ThreadPoolExecutor]:
        if self._configured_pid != os.getpid() or (self._executor._max_workers if self._executor else 1) != self.threads:
            if self._executor is not None and self._configured_pid == os.getpid():
                self._executor.shutdown(wait=False)
            if self._configured_pid != os.getpid():
                self._slots = {}
            self._configured_pid, self._executor = os.getpid(), None
            if self.threads > 1:
                self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="steve1-decode")
        if os.environ.get("BLOSC_NTHREADS") != str(self.threads):  # process-wide: set per batch, two loaders may differ
            os.environ["BLOSC_NTHREADS"] = str(self.threads)
        return self._executor

    # -- worker slots
    def _slot_buffers(self, shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]
                      ) -> tuple[int, int, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(worker, slot, buffers, to_send)`` for the next batch of this worker."""
        info = get_worker_info()

        def fresh() -> dict[str, torch.Tensor]:  # shared memory in a worker, a pooled buffer in the main process
            return {k: self._pool.get(shape, dtype) for k, (shape, dtype) in shapes.items()}

        if info is None or self.slot_busy is None:
            bufs = fresh()
            return -1, -1, bufs, bufs
        busy = self.slot_busy[info.id].numpy()
        free = np.flatnonzero(busy == 0)
        if not len(free):
            bufs = fresh()
            return info.id, -1, bufs, bufs
        slot = int(free[0])
        bufs = self._slots.get(slot)
        send: dict[str, torch.Tensor] = {}
        if bufs is None or any(bufs[k].shape != shape or bufs[k].dtype != dtype for k, (shape, dtype) in shapes.items()):
            bufs = self._slots[slot] = send = fresh()
        busy[slot] = 1
        return info.id, slot, bufs, send

    # -- sampling
    def draw(self, epoch: int, index: int, n_frames: int) -> tuple[np.ndarray, bool]:
        """Goal times over the episode and the unconditional coin of sample ``(epoch, index)``."""
        rng = np.random.default_rng([self.seed, epoch, index])
        gaps = draw_gaps(rng, n_frames, self.min_btwn_goals, self.max_btwn_goals, self.gap_dist)
        goals = goal_times_from_gaps(gaps, n_frames, self.min_btwn_goals)
        uncond = bool(rng.random() < self.p_uncond)
        return goals, uncond

    def batch(self, epoch: int, indices: Sequence[int]) -> dict[str, np.ndarray]:
        """Numpy batch: frames uint8 [B,T,128,128,3], goal_embeds float32 [B,T,D] (D = the embeds' width, 512 for MineCLIP), buttons/camera
        int64 [B,T], firsts bool [B,T], goal_times int64 [B,T], uncond bool [B], index int64 [B]."""
        big, small = self._batch(epoch, indices)[2:4]
        return {**{k: v.numpy() for k, v in big.items()}, **small}

    def _batch(self, epoch: int, indices: Sequence[int]
               ) -> tuple[int, int, dict[str, torch.Tensor], dict[str, np.ndarray], dict[str, torch.Tensor]]:
        """``(worker, slot, big tensors, small arrays, tensors to send)``: see :meth:`_slot_buffers`."""
        pool = self._decoder()
        B, T = len(indices), self.T
        D = self._files(self.chunks[indices[0]][0]).embed_dim  # goal width from the data (512 for MineCLIP)
        worker, slot, big, send = self._slot_buffers({"frames": ((B, T) + formats.FRAME_SHAPE, torch.uint8),
                                                      "goal_embeds": ((B, T, D), torch.float32)})
        frames, goal_embeds = big["frames"].numpy(), big["goal_embeds"].numpy()
        buttons = np.empty((B, T), np.int64)
        camera = np.empty((B, T), np.int64)
        goal_times = np.empty((B, T), np.int64)
        uncond = np.zeros(B, bool)
        pending: list[Future] = []   # frame decodes left running on the pool while the next chunk is read
        try:
            for b, i in enumerate(indices):
                eid, start, end = self.chunks[i]
                h = self._files(eid)
                if h.embed_dim != D:
                    raise EpisodeFormatError(f"{eid}: {h.embed_dim}-d embeddings in a batch of {D}-d ones; "
                                             f"all episode sets must be embedded by the same MineCLIP")
                n = self.lengths.get(eid) or h.n_frames
                goals, uncond[b] = self.draw(epoch, int(i), n)
                g = step_goal_times(goals, start, end, self.official_goal_lag)
                goal_times[b] = g
                h.frames.read_into(frames[b], start, end, pool, self.threads, pending)
                with reading(h.episode_path, "episode", f"actions [{start}, {end})"):
                    buttons[b] = h.buttons[start:end]
                    camera[b] = h.camera[start:end]
                if uncond[b]:
                    goal_embeds[b] = 0.0
                else:  # only the chunk's few distinct goal rows: from disk, the rows between them are not read
                    distinct = np.unique(g)
                    with reading(h.embeds_path, "embeds", f"rows {distinct.tolist()}"):
                        rows = np.stack([h.embeds[int(t)] for t in distinct])
                    np.take(rows.astype(np.float32, copy=False), np.searchsorted(distinct, g), axis=0, out=goal_embeds[b])
        finally:
            wait(pending)   # nothing writes into the buffers after this returns or raises
        for f in pending:
            f.result()
        firsts = np.zeros((B, T), bool)
        firsts[:, 0] = True
        small = {"buttons": buttons, "camera": camera, "firsts": firsts, "goal_times": goal_times,
                 "uncond": uncond, "index": np.asarray(indices, np.int64)}
        return worker, slot, big, small, send

    def sample(self, index: int, epoch: int = 0) -> dict[str, np.ndarray]:
        """One chunk, without the batch axis (for inspection and tests)."""
        return {k: v[0] for k, v in self.batch(epoch, [index]).items()}

    def __getitem__(self, key: tuple[int, Sequence[int]]) -> dict[str, torch.Tensor] | SlotBatch:
        """A batch of tensors; in a worker of a :class:`ChunkLoader`, a :class:`SlotBatch` for it."""
        epoch, indices = key
        worker, slot, big, small, send = self._batch(epoch, indices)
        if self.slot_busy is not None and get_worker_info() is not None:
            return SlotBatch(worker, slot, send, small)
        return {**big, **{k: torch.from_numpy(v) for k, v in small.items()}}


# ----------------------------------------------------------------------------- sampler and loader

class ChunkBatchSampler(Sampler):
    """Yields ``(epoch, [chunk indices])`` for one rank, one epoch, from a start step.

    Every epoch, all ranks compute the same permutation ``default_rng([seed, epoch])`` of all
    chunks, drop the remainder so each rank gets ``n // world_size``, and rank ``r`` takes
    positions ``r, r + world_size, ...``: disjoint, deterministic and the same number of steps on
    every rank. The epoch travels with each key, so persistent workers need no ``set_epoch``.
    """

    def __init__(self, n_chunks: int, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, drop_last: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.n_chunks, self.batch_size, self.seed = n_chunks, batch_size, seed
        self.rank, self.world_size, self.shuffle, self.drop_last = rank, world_size, shuffle, drop_last
        if self.steps_per_epoch == 0:
            raise DatasetError(f"{n_chunks} chunks give no full batch of {batch_size} on each of {world_size} "
                             f"rank(s); lower batch_size or add episodes")
        self.epoch, self.start_step = 0, 0

    @property
    def per_rank(self) -> int:
        return self.n_chunks // self.world_size

    @property
    def steps_per_epoch(self) -> int:
        q, r = divmod(self.per_rank, self.batch_size)
        return q + (1 if r and not self.drop_last else 0)

    def rank_indices(self, epoch: int) -> np.ndarray:
        order = (np.random.default_rng([self.seed, epoch]).permutation(self.n_chunks) if self.shuffle
                 else np.arange(self.n_chunks))
        return order[: self.per_rank * self.world_size][self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        idx = self.rank_indices(self.epoch)
        for step in range(self.start_step, self.steps_per_epoch):
            yield self.epoch, idx[step * self.batch_size:(step + 1) * self.batch_size].tolist()

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step


class ChunkLoader:
    """A DataLoader over one split with a resumable position.

    Iterating yields the remaining batches of the current epoch and then moves to the next
    epoch; ``state_dict()`` records ``(epoch, step)`` counted in batches *consumed*, so loading it
    into a fresh loader continues with exactly the batches an uninterrupted run would produce.

    Workers are persistent and write into shared-memory slots (``prefetch_factor + 2`` each: the
    batches in flight, the one being consumed and the one before it); ``decode_threads`` is
    per loading process (default :func:`process_threads`). ``pin_memory`` copies each batch into
    page-locked memory (torch's caching host allocator) before handing it out.
    """

    def __init__(self, dataset: ChunkDataset, sampler: ChunkBatchSampler, *, num_workers: int = 0,
                 pin_memory: Optional[bool] = None, prefetch_factor: int = 2, epoch: int = 0, start_step: int = 0,
                 decode_threads: Optional[int] = None):
        self.dataset, self.sampler = dataset, sampler
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.num_workers = num_workers
        dataset.threads = decode_threads if decode_threads is not None else process_threads(num_workers)
        extra: dict[str, Any] = {}
        if num_workers > 0:
            extra = {"persistent_workers": True, "prefetch_factor": prefetch_factor}
            dataset.slot_busy = torch.zeros((num_workers, prefetch_factor + 2), dtype=torch.uint8).share_memory_()
        self._views: dict[tuple[int, int], dict[str, np.ndarray]] = {}   # the parent's mapping of each slot
        self._lent: set[tuple[int, int]] = set()                          # slots handed out, not yet released
        self.loader = DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=num_workers,
                                 collate_fn=_identity if num_workers > 0 else None, pin_memory=False, **extra)
        self.epoch, self.step = epoch, start_step
        self._check_step()

    def _check_step(self) -> None:
        if not 0 <= self.step <= self.sampler.steps_per_epoch:
            raise ValueError(f"start step {self.step} is outside the epoch's {self.sampler.steps_per_epoch} steps")

    def __len__(self) -> int:
        return self.sampler.steps_per_epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.step >= self.sampler.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
        self.sampler.epoch, self.sampler.start_step = self.epoch, self.step
        batches = iter(self.loader)
        while True:
            self._release()  # before the DataLoader sends the next index: the worker finds its slot free
            item = next(batches, None)
            if item is None:
                break
            batch = self._receive(item)
            del item
            if self.pin_memory:
                batch = {k: v.pin_memory() for k, v in batch.items()}
            self.step += 1
            yield batch
            del batch
        self.epoch, self.step = self.epoch + 1, 0

    def _receive(self, item: dict[str, torch.Tensor] | SlotBatch) -> dict[str, torch.Tensor]:
        """A worker's :class:`SlotBatch` as tensors on the parent's mapping of its slot."""
        if not isinstance(item, SlotBatch):
            return item
        small = {k: torch.from_numpy(v) for k, v in item.small.items()}
        if item.slot < 0:
            return {**item.big, **small}
        key = (item.worker, item.slot)
        if item.big:
            self._views[key] = {k: t.numpy() for k, t in item.big.items()}
        self._lent.add(key)
        return {**{k: torch.from_numpy(a) for k, a in self._views[key].items()}, **small}

    def _release(self) -> None:
        """Give back to their workers the slots nothing in this process refers to any more."""
        busy = self.dataset.slot_busy
        for key in list(self._lent):
            views = self._views[key]
            # refs: the dict, the loop variable, getrefcount's argument; each live tensor's storage adds one
            if all(sys.getrefcount(a) == 3 for a in views.values()):
                busy[key] = 0
                self._lent.discard(key)

    def state_dict(self) -> dict[str, int]:
        s = self.sampler
        return {"epoch": self.epoch, "step": self.step, "seed": s.seed, "n_chunks": s.n_chunks,
                "batch_size": s.batch_size, "world_size": s.world_size, "rank": s.rank}

    def load_state_dict(self, state: dict[str, int]) -> None:
        s = self.sampler
        for key in ("seed", "n_chunks", "batch_size", "world_size"):
            if state[key] != getattr(s, key):
                raise ValueError(f"loader state has {key}={state[key]} but this loader has {getattr(s, key)}; "
                                 f"resuming would not reproduce the same batches")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self._check_step()


@dataclass(frozen=True)
class LoaderConfig:
    """How a loader batches, relabels and shards one split of a :class:`~steve1.data.sampling.Sampling`.

    ``T`` (checked against the sampling's chunks) and the goal gaps default to the sampling's own
    params; ``seed`` drives both the per-epoch shuffle and the per-sample relabeling. Worker and
    thread settings: :class:`ChunkLoader`; sharding: :class:`ChunkBatchSampler`.
    """

    batch_size: int
    seed: int
    T: Optional[int] = None
    p_uncond: float = 0.1
    gap_dist: GapDist = "uniform"
    official_goal_lag: bool = False
    min_btwn_goals: Optional[int] = None
    max_btwn_goals: Optional[int] = None
    num_workers: int = 0
    prefetch_factor: int = 2
    pin_memory: Optional[bool] = None
    decode_threads: Optional[int] = None
    rank: int = 0
    world_size: int = 1
    shuffle: bool = True
    drop_last: bool = True

    @classmethod
    def for_training(cls, params: Params, *, rank: int = 0, world_size: int = 1) -> "LoaderConfig":
        """The train loader of ``params.train`` (T from :attr:`Params.train_T`) on one of ``world_size`` processes."""
        tp = params.train
        return cls(batch_size=tp.batch_size, seed=tp.seed, T=params.train_T, p_uncond=tp.p_uncond,
                   gap_dist=tp.gap_dist, official_goal_lag=tp.official_goal_lag, num_workers=tp.num_workers,
                   rank=rank, world_size=world_size)

    def for_validation(self, drop_last: bool = True) -> "LoaderConfig":
        """The same relabeling in file order, in the main process (no workers)."""
        return replace(self, num_workers=0, shuffle=False, drop_last=drop_last)


def make_dataloader(sampling: Sampling | str | Path, split: str, config: LoaderConfig,
                    dirs: Optional[Mapping[str, tuple[str | Path, str | Path]]] = None, *,
                    epoch: int = 0, start_step: int = 0) -> ChunkLoader:
    """Loader over ``split`` ("train"/"val") of a sampling (or the path of its JSON), shaped by ``config``.

    ``dirs`` (set name -> (episodes dir, embeds dir), :meth:`Sampling.set_dirs`) says where each
    set's files are; by default the folders the sampling JSON records (mixed samplings only).
    ``(epoch, start_step)`` is where iteration starts (or use ``load_state_dict``).
    """
    data = sampling if isinstance(sampling, Sampling) else Sampling.load(sampling)
    c = config
    chunks = data.chunks(split)
    if c.T is not None and chunks and chunks[0][2] - chunks[0][1] != c.T:
        raise DatasetError(f"{data.where}: T={c.T} but the sampling's chunks have T={chunks[0][2] - chunks[0][1]}; "
                           f"re-run the sample stage with sample.T={c.T}")
    folders = dict(dirs) if dirs is not None else data.set_dirs()
    if MAIN_SET not in folders:
        raise DatasetError(f"{data.where}: no folders for the main set (given {sorted(folders)})")
    main_episodes, main_embeds = folders.pop(MAIN_SET)
    gap = {k: getattr(c, k) if getattr(c, k) is not None else data.sample_param(k, getattr(_SAMPLE, k))
           for k in ("min_btwn_goals", "max_btwn_goals")}
    ds = ChunkDataset(chunks, main_episodes, main_embeds, sets=folders, seed=c.seed, **gap, p_uncond=c.p_uncond,
                      gap_dist=c.gap_dist, official_goal_lag=c.official_goal_lag, lengths=data.lengths or None)
    sampler = ChunkBatchSampler(len(ds), c.batch_size, seed=c.seed, rank=c.rank, world_size=c.world_size,
                                shuffle=c.shuffle, drop_last=c.drop_last)
    return ChunkLoader(ds, sampler, num_workers=c.num_workers, pin_memory=c.pin_memory,
                       prefetch_factor=c.prefetch_factor, epoch=epoch, start_step=start_step,
                       decode_threads=c.decode_threads)
