"""The ray engine against the local one: decode and embed throughput of ``engine: local`` with one
worker, and of ``engine: ray`` on a local Ray of 1 and of 2 CPUs, in the same run.

Each configuration runs the stage's driver (``decode_all``, ``embed_all``) over n and 2n episodes
from nothing (outputs removed first), wall-clock. A line through the two points gives the fixed
cost of a run (Ray: starting workers or MineCLIP actors) and the time per episode; the ray engine's
**per-episode overhead** is its time per episode on 1 CPU minus the local one's, and the **scaling
ratio** is 2-CPU throughput over 1-CPU throughput (2.0 at best). The figure recorded is the 2-CPU
Ray throughput on 2n episodes; the same-run reference is the local engine's.

Work is pinned to one thread per worker (torch, FFmpeg) so that "1 CPU" means one core; the local
engine gets the same pin. Full mode only: Ray start-up and the minute it takes do not fit the quick
suite the CI gate repeats.
"""

from __future__ import annotations

import functools
import shutil
import time
from pathlib import Path

import pytest
import torch

from benchmarks.conftest import QUICK, record
from steve1.data.decode import decode_all
from steve1.data.embedding import embed_all, make_embedder
from steve1.data.synthetic import write_synthetic_recording
from steve1.engine import LocalExecutor, RayExecutor
from steve1.params import DecodeParams, RayParams, RayResources

pytestmark = pytest.mark.skipif(QUICK, reason="Ray start-up and a minute of work: full mode only")

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "assets" / "recordings" / "trimmed_lovely-persimmon-angora-a39257c803d3-20220422-051333"
N = 3                      # episodes of the small run; the large run has 2N
EMBED_STEPS = 220          # synthetic steps per embed episode (about 190 kept frames)
ENGINES = ("local", "ray-1cpu", "ray-2cpu")


_embedder = functools.partial(make_embedder, None, "tiny", 0, 64, "cpu")   # the default tiny MineCLIP


def _copy_raw(dest: Path, n: int) -> list[str]:
    """n copies of the real recording (1056 frames, 880 kept) under distinct ids."""
    dest.mkdir(parents=True, exist_ok=True)
    ids = [f"real-{k}" for k in range(n)]
    for eid in ids:
        for suffix in (".mp4", ".jsonl"):
            shutil.copyfile(REAL.with_suffix(suffix), dest / f"{eid}{suffix}")
    return ids


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ray-bench")
    _copy_raw(root / "decode-raw", 2 * N)
    for k in range(2 * N):        # embed needs decoded episodes and their raw videos
        write_synthetic_recording(root / "embed-raw", f"synthetic-{k}", EMBED_STEPS, seed=(7, k))
    report = decode_all(root / "embed-raw", root / "embed-episodes", DecodeParams(), progress=False)
    kept = sorted(r["n_kept"] for r in report.rows.values())
    return {"root": root, "frames": {"decode": 1056, "embed": sum(kept[:2 * N]) / (2 * N)}}


def _subset(src: Path, dest: Path, n: int, suffixes: tuple[str, ...]) -> Path:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    stems = sorted({p.stem for p in src.iterdir() if p.suffix in suffixes and p.stem != "manifest"})[:n]
    for stem in stems:
        for suffix in suffixes:
            if (src / f"{stem}{suffix}").exists():
                (dest / f"{stem}{suffix}").symlink_to(src / f"{stem}{suffix}")
    return dest


def _executor(engine: str):
    if engine == "local":
        return LocalExecutor()
    settings = RayParams(decode=RayResources(num_cpus=1), embed=RayResources(num_cpus=1, num_gpus=0))
    return RayExecutor(settings)


def _time_decode(root: Path, executor, n: int) -> float:
    raw = _subset(root / "decode-raw", root / f"raw-{n}", n, (".mp4", ".jsonl"))
    out = root / "decode-out"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    report = decode_all(raw, out, DecodeParams(video_threads=1), progress=False, executor=executor)
    seconds = time.perf_counter() - t0
    assert report.n_ok == n
    return seconds


def _time_embed(root: Path, executor, n: int) -> float:
    episodes = _subset(root / "embed-episodes", root / f"episodes-{n}", n, (".h5",))
    out = root / "embed-out"
    shutil.rmtree(out, ignore_errors=True)
    # local: the stage builds its MineCLIP before the loop, so it is timed too; Ray builds one per actor
    t0 = time.perf_counter()
    done = embed_all(_embedder if executor.name == "ray" else _embedder(), episodes, root / "embed-raw", out,
                     executor=executor)
    seconds = time.perf_counter() - t0
    assert {v["status"] for v in done.values()} == {"written"} and len(done) == n
    return seconds


def _measure(root: Path, stage: str) -> dict[str, dict[str, float]]:
    """{engine: {"t_n", "t_2n", "per_episode_s", "fixed_s"}} for one stage, every engine in this run."""
    import ray

    timer = _time_decode if stage == "decode" else _time_embed
    out: dict[str, dict[str, float]] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # the local engine's one worker: one core, like a 1-CPU Ray worker
    try:
        for engine in ENGINES:
            if engine != "local":
                ray.init(num_cpus=int(engine[4]), object_store_memory=200 << 20, include_dashboard=False)
            try:
                ex = _executor(engine)
                timer(root, ex, 1)       # warm: imports, page cache, Ray's first workers
                t_n, t_2n = timer(root, ex, N), timer(root, ex, 2 * N)
            finally:
                if engine != "local":
                    ray.shutdown()
            per = (t_2n - t_n) / N
            out[engine] = {"t_n": t_n, "t_2n": t_2n, "per_episode_s": per, "fixed_s": t_n - N * per}
            print(f"{stage} {engine}: {N} episodes {t_n:.2f} s, {2 * N} episodes {t_2n:.2f} s -> "
                  f"{per:.3f} s/episode + {t_n - N * per:.2f} s fixed")
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("stage", ["decode", "embed"])
def test_ray_engine_throughput_and_scaling(benchmark, inputs, stage):
    t = _measure(inputs["root"], stage)
    frames = inputs["frames"][stage]       # per episode: source frames decoded, or kept frames embedded
    eps = {e: 2 * N / t[e]["t_2n"] for e in ENGINES}                     # episodes/s on the large run
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    scaling = eps["ray-2cpu"] / eps["ray-1cpu"]
    overhead = t["ray-1cpu"]["per_episode_s"] - t["local"]["per_episode_s"]
    record(benchmark, figure=eps["ray-2cpu"], reference=eps["local"], unit="episodes/s",
           reference_name="engine: local, 1 worker", episodes=2 * N, frames_per_episode=frames,
           frames_per_s={e: eps[e] * frames for e in ENGINES},
           throughput={e: eps[e] for e in ENGINES}, scaling_1_to_2_cpus=scaling,
           ray_overhead_per_episode_s=overhead, timings=t)
    print(f"{stage}: scaling 1 -> 2 CPUs {scaling:.2f}x, ray overhead {overhead * 1000:+.0f} ms/episode, "
          f"ray-1cpu / local {eps['ray-1cpu'] / eps['local']:.2f}")
    assert scaling > 1.0, f"2 CPUs no faster than 1 ({scaling:.2f}x)"
