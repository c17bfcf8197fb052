"""Where a jpeg loader frame's CPU goes: ``python -m benchmarks.loader_costs [--reps 8]``.

Times each stage of the loader's per-frame work on its own, in thread CPU time (steadier than wall
time on a shared machine), taking turns every round so a load change moves them all; prints
microseconds per frame, median [min-max]. Stages: the JPEG decode into a batch row (private
memory, as the one-process pool; and torch shared memory, as a worker's slot), simplejpeg's
per-call setup alone (header parse), the per-frame Python around each decode, the one HDF5 read of
a chunk's JPEG bytes, a chunk's actions and goal rows, and the whole loader (0 workers, 1 thread).
Frames: the benchmark suite's corpus (real footage). The memcpy of a frame is the reference.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import simplejpeg
import torch

from steve1.data import formats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=8)
    args = ap.parse_args(argv)
    from benchmarks import test_dataloader as bench
    from benchmarks.test_dataloader import _cpu_seconds, _epoch, _write_corpus
    from steve1.data.dataset import LoaderConfig, make_dataloader

    B, T = bench.B, bench.T
    with tempfile.TemporaryDirectory(dir=os.environ.get("STEVE1_BENCH_DIR")) as tmp:
        root = Path(tmp)
        sampling, _ = _write_corpus(root, "jpeg", bench.N_EPISODES, bench.REPEAT)
        f = h5py.File(root / "episodes" / "ep-0.h5", "r")
        emb = h5py.File(root / "embeds" / "ep-0.h5", "r")
        stored, offsets = f[formats.FRAME_BYTES], f[formats.FRAME_OFFSETS][:]
        data = stored[:]
        n = len(offsets) - 1
        bounds = offsets.tolist()
        view = memoryview(data)
        shape = (n,) + formats.FRAME_SHAPE
        private = np.zeros(shape, np.uint8)
        shared = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(private.nbytes), 0, shape).numpy()
        shared.fill(0)
        source = private.copy()
        starts = list(range(formats.NONE_EMBED_OFFSET, n - T + 1, T))
        config = LoaderConfig(batch_size=B, seed=0, T=T, p_uncond=0.1, pin_memory=False, num_workers=0, decode_threads=1)
        loader = make_dataloader(sampling, "train", config, sampling.set_dirs(root / "episodes", root / "embeds"))
        _epoch(loader)

        def loop_only() -> None:
            for i in range(n):
                view[bounds[i]:bounds[i + 1]], private[i]

        def header() -> None:
            for i in range(n):
                simplejpeg.decode_jpeg_header(view[bounds[i]:bounds[i + 1]])

        def chunk_bytes() -> None:
            for s in starts:
                stored[bounds[s]:bounds[s + T]]

        buttons, camera, embeds = f[formats.BUTTONS], f[formats.CAMERA], emb[formats.EMBEDS]   # looked up once, as the loader does

        def actions_and_goals() -> None:
            for s in starts:
                buttons[s:s + T], camera[s:s + T]
                np.stack([embeds[g] for g in range(s + 20, s + T, 107)])   # ~6 distinct goal rows a chunk

        stages = {  # name -> (work, frames it covers)
            "JPEG decode into a batch row (private memory)": (lambda: formats.decode_frames_into(data, offsets, private), n),
            "JPEG decode into a batch row (torch shared memory)": (lambda: formats.decode_frames_into(data, offsets, shared), n),
            "  of which simplejpeg's per-call setup (header parse alone)": (header, n),
            "per-frame Python around the decode (slice, row view)": (loop_only, n),
            "HDF5 read of a chunk's JPEG bytes (one read a chunk)": (chunk_bytes, len(starts) * T),
            "a chunk's actions and ~6 goal rows (HDF5 reads)": (actions_and_goals, len(starts) * T),
            "memcpy of a frame (reference)": (lambda: np.copyto(private, source), n),
        }
        times: dict[str, list[float]] = {name: [] for name in [*stages, "whole loader, 0 workers, 1 thread (process CPU)"]}
        loads = []
        for _ in range(args.reps):
            for name, (work, frames) in stages.items():
                c0 = time.thread_time()
                work()
                times[name].append((time.thread_time() - c0) / frames * 1e6)
            c0 = _cpu_seconds([os.getpid()])
            _epoch(loader)
            times["whole loader, 0 workers, 1 thread (process CPU)"].append(
                (_cpu_seconds([os.getpid()]) - c0) / (len(loader) * B * T) * 1e6)
            loads.append(os.getloadavg()[0])
        f.close()
        emb.close()
        del loader
    print(f"jpeg, {n} frames an episode, B={B}, T={T}, {args.reps} rounds, load average "
          f"{np.median(loads):.1f} [{min(loads):.1f}-{max(loads):.1f}], simplejpeg {simplejpeg.__version__}")
    print()
    print("| stage | us per frame (CPU) |")
    print("|---|---|")
    for name, v in times.items():
        print(f"| {name} | {np.median(v):.2f} [{min(v):.2f}-{max(v):.2f}] |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
