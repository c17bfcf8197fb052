"""Training loader throughput: ready batches of uint8 frames [B,T,128,128,3] with hindsight goals,
per frame codec, with 0, 1 and 2 workers, from the page cache (warm) and from disk (cold),
against a same-run memcpy of the same bytes.

Full mode: B=12, T=640 (STEVE-1's chunk). Frames are the real contractor recording shipped in
``assets/recordings`` decoded by the project's decode path (``decode_recording``: cv2, cursor,
INTER_LINEAR to 128x128), looped forward then backward, so sizes and decode costs are those of
real footage. Quick mode (``STEVE1_BENCH_QUICK=1``, the CI gate): B=2, T=64.

- ``test_dataloader_frames_per_s``: 2 episodes of 15 + 3T frames whose 6 chunks are listed 4
  times (2 in quick mode), files in the page cache (a warm run's shards). One round is one epoch; the figure is
  frames / mean epoch seconds (sustained).
- ``test_dataloader_cold_frames_per_s``: B episodes (3 chunks each, each listed once: an epoch
  reads every stored byte of its chunks once); before each round every episode and embeds file
  is fsync'ed and dropped from the page cache (``posix_fadvise(DONTNEED)``), so the epoch reads
  from the disk. ``disk_mb_per_s`` is what the loading processes read from storage
  (``/proc/<pid>/io`` ``read_bytes``) per second.

Every entry records ``frames_per_cpu_s``: frames per CPU-second of the loading processes (the
parent and its workers, all threads), i.e. the rate one core sustains; on a shared machine it is
steadier than frames/s. The reference is ``np.copyto`` of a warm [B,T,128,128,3] buffer, the
loader's ceiling if reading cost nothing. STEVE-1's own loader made 2,756 frames/s here
(``OFFICIAL_FRAMES_PER_S``).
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.conftest import QUICK, record
from steve1.data import formats
from steve1.data.dataset import ChunkLoader, LoaderConfig, make_dataloader
from steve1.data.episodes import FrameStorage, episode_path, write_embeds, write_episode
from steve1.data.sampling import Sampling, make_sampling
from tests.fixtures.episodes import make_embeds, make_episode

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "assets" / "recordings" / "trimmed_lovely-persimmon-angora-a39257c803d3-20220422-051333"

B, T = (2, 64) if QUICK else (12, 640)
N_EPISODES, REPEAT = 2, (2 if QUICK else 4)   # warm: 2 episodes x 3 chunks, listed REPEAT times an epoch
ROUNDS = 3                         # epochs timed (warm: 2 batches each in full mode, 12 in quick)
COLD_ROUNDS = 2
COLD_CODECS = ("jpeg", "blosc-lz4")  # the default and the fastest lossless codec
OFFICIAL_FRAMES_PER_S = 2756.0


@functools.lru_cache(maxsize=1)
def _real_frames(n: int) -> np.ndarray:
    """The shipped real recording through the decode path (128x128 RGB), looped to n frames."""
    from steve1.data.decode import decode_recording
    from steve1.params import DecodeParams

    frames = decode_recording(REAL.with_suffix(".mp4"), REAL.with_suffix(".jsonl"), REAL.name, DecodeParams()).frames
    loop = np.concatenate([frames, frames[::-1]])
    return loop[np.arange(n) % len(loop)]


def _write_corpus(root: Path, codec: str, n_episodes: int, repeat: int) -> tuple[dict, float]:
    """Episodes of 15 + 3T real frames under ``root``; ``(sampling, frame bytes per frame)``."""
    import h5py

    n = formats.NONE_EMBED_OFFSET + 3 * T
    real = _real_frames(n + 97 * n_episodes)
    size = 0
    for i in range(n_episodes):
        ep = make_episode(f"ep-{i}", n, tag=i + 1, seed=i + 1)
        ep.frames = real[97 * i:97 * i + n]
        path = write_episode(episode_path(root / "episodes", ep.episode_id), ep, FrameStorage(codec))
        with h5py.File(path, "r") as f:
            size += sum(f[name].id.get_storage_size() for name in (formats.FRAMES, formats.FRAME_BYTES, formats.FRAME_OFFSETS) if name in f)
        e, v = make_embeds(n, 1)
        write_embeds(episode_path(root / "embeds", ep.episode_id), ep.episode_id, e, v, weights="bench")
    lengths = {f"ep-{i}": n for i in range(n_episodes)}
    sampling = Sampling.from_body(make_sampling(lengths, train_frames=10**9, val_frames=0, seed=0, T=T, min_btwn_goals=15))
    sampling.train_chunks = sampling.train_chunks * repeat
    return sampling, size / (n * n_episodes)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """``corpus(codec, cold)`` -> (root, sampling, bytes_per_frame), written once per module."""
    root, made = tmp_path_factory.mktemp("dataloader"), {}

    def get(codec: str, cold: bool = False):
        key = (codec, cold)
        if key not in made:
            d = root / f"{codec}-{'cold' if cold else 'warm'}"
            made[key] = (d, *(_write_corpus(d, codec, B, 1) if cold else _write_corpus(d, codec, N_EPISODES, REPEAT)))
        return made[key]

    return get


def _memcpy_frames_per_s() -> float:
    src = np.random.default_rng(0).integers(0, 256, (B, T) + formats.FRAME_SHAPE, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return B * T / float(np.median(times))


def _pids(loader: ChunkLoader) -> list[int]:
    """The loading processes: this one and the loader's workers (started by the first epoch)."""
    it = getattr(loader.loader, "_iterator", None)
    return [os.getpid()] + [w.pid for w in getattr(it, "_workers", [])]


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime
    return total


def _read_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("read_bytes:"):
                total += int(line.split()[1])
    return total


def _evict(root: Path) -> None:
    """Drop every file under ``root`` from the page cache (written back first, so it can go)."""
    for path in root.rglob("*.h5"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _epoch(loader: ChunkLoader) -> tuple:
    shape = None
    for batch in loader:
        shape = (tuple(batch["frames"].shape), tuple(batch["goal_embeds"].shape))
        del batch
    return shape


def _run(benchmark, loader: ChunkLoader, frames_per_epoch: int, rounds: int, setup=None) -> dict:
    """Two warm-up epochs (start the workers, open files, allocate their buffers), then ``rounds``
    timed epochs: figures and CPU/IO totals."""
    _epoch(loader)
    _epoch(loader)
    pids = _pids(loader)
    cpu0, io0 = _cpu_seconds(pids), _read_bytes(pids)
    kwargs = {"setup": setup} if setup else {}
    shape = benchmark.pedantic(lambda: _epoch(loader), rounds=rounds, iterations=1, **kwargs)
    cpu, read = _cpu_seconds(pids) - cpu0, _read_bytes(pids) - io0
    assert shape == ((B, T) + formats.FRAME_SHAPE, (B, T, 512)), shape
    times = benchmark.stats.stats
    return dict(figure=frames_per_epoch / times.mean, best_round_frames_per_s=frames_per_epoch / times.min,
                frames_per_cpu_s=frames_per_epoch * rounds / cpu, cpu_s=cpu, read_bytes=read,
                disk_mb_per_s=read / (times.mean * rounds) / 1e6)


@pytest.mark.parametrize("workers", [0, 2, 1])
@pytest.mark.parametrize("codec", formats.CODECS)
def test_dataloader_frames_per_s(benchmark, corpus, codec, workers):
    d, sampling, bytes_per_frame = corpus(codec)
    loader = make_dataloader(sampling, "train", LoaderConfig(batch_size=B, seed=0, T=T, p_uncond=0.1, num_workers=workers,
                                                           pin_memory=False), sampling.set_dirs(d / "episodes", d / "embeds"))
    frames = len(loader) * B * T
    r = _run(benchmark, loader, frames, ROUNDS)
    memcpy = _memcpy_frames_per_s()
    record(benchmark, figure=r["figure"], reference=memcpy, unit="frames/s", reference_name="memcpy of the same bytes",
           codec=codec, workers=workers, decode_threads=loader.dataset.threads, batch=B, T=T,
           bytes_per_frame=bytes_per_frame, raw_bytes_per_frame=int(np.prod(formats.FRAME_SHAPE)),
           vs_official=r["figure"] / OFFICIAL_FRAMES_PER_S, frames_per_cpu_s=r["frames_per_cpu_s"],
           best_round_frames_per_s=r["best_round_frames_per_s"], load_average=os.getloadavg()[0])
    print(f"  {codec:10s} workers={workers}: {bytes_per_frame:,.0f} B/frame, {r['figure']:,.0f} frames/s "
          f"({r['frames_per_cpu_s']:,.0f} per cpu-s), {r['figure'] / OFFICIAL_FRAMES_PER_S:.1f}x STEVE-1's loader")


@pytest.mark.parametrize("workers", [0, 1, 2])
@pytest.mark.parametrize("codec", COLD_CODECS)
def test_dataloader_cold_frames_per_s(benchmark, corpus, codec, workers):
    d, sampling, bytes_per_frame = corpus(codec, cold=True)
    loader = make_dataloader(sampling, "train", LoaderConfig(batch_size=B, seed=0, T=T, p_uncond=0.1, num_workers=workers,
                                                           pin_memory=False), sampling.set_dirs(d / "episodes", d / "embeds"))
    frames = len(loader) * B * T
    r = _run(benchmark, loader, frames, COLD_ROUNDS, setup=lambda: _evict(d))
    stored = sum(p.stat().st_size for p in d.rglob("*.h5"))
    memcpy = _memcpy_frames_per_s()
    record(benchmark, figure=r["figure"], reference=memcpy, unit="frames/s", reference_name="memcpy of the same bytes",
           codec=codec, workers=workers, decode_threads=loader.dataset.threads, batch=B, T=T, cold=True,
           bytes_per_frame=bytes_per_frame, frames_per_cpu_s=r["frames_per_cpu_s"],
           disk_mb_per_s=r["disk_mb_per_s"], read_bytes_per_epoch=r["read_bytes"] / COLD_ROUNDS,
           stored_bytes=stored, evicted=r["read_bytes"] > 0.3 * stored * COLD_ROUNDS,
           cores_for_10k_frames_per_s=10_000 / r["frames_per_cpu_s"],
           vs_official=r["figure"] / OFFICIAL_FRAMES_PER_S, best_round_frames_per_s=r["best_round_frames_per_s"],
           load_average=os.getloadavg()[0])
    print(f"  cold {codec:10s} workers={workers}: {r['figure']:,.0f} frames/s, {r['frames_per_cpu_s']:,.0f} per cpu-s, "
          f"{r['disk_mb_per_s']:,.1f} MB/s from disk ({r['read_bytes'] / COLD_ROUNDS / 1e6:,.1f} MB an epoch)")
