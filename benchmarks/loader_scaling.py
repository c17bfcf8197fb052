"""Loader scaling with workers, interleaved: ``python -m benchmarks.loader_scaling [--cold] [--codec jpeg]``.

The pytest suite measures each worker count in turn, minutes apart; on a shared machine the load
drifts between them. Here every configuration (0 workers with one decode thread, 0 workers with
the default threads, 1 and 2 workers) keeps a live loader and they take turns, one epoch each,
in a rotating order, for ``--reps`` rounds. Each round also measures the memcpy reference, and
each configuration's rate is divided by the 0-worker rate of the same round (paired ratios), so a
load change between rounds moves both sides of a ratio (against 0 workers with its default threads,
and against 0 workers with one thread: the per-process baseline). ``--cold`` drops the files from the page
cache before every epoch. Prints a markdown table: medians with [min-max] over the rounds.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.test_dataloader import (OFFICIAL_FRAMES_PER_S, _cpu_seconds, _epoch, _evict, _memcpy_frames_per_s,
                                        _pids, _read_bytes, _write_corpus)
from steve1.data.dataset import LoaderConfig, make_dataloader

CONFIGS = {"0 workers, 1 thread": dict(num_workers=0, decode_threads=1),
           "0 workers": dict(num_workers=0),
           "1 worker": dict(num_workers=1),
           "2 workers": dict(num_workers=2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--codec", default="jpeg")
    ap.add_argument("--cold", action="store_true", help="drop the files from the page cache before every epoch")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    from benchmarks import test_dataloader as bench

    B, T = bench.B, bench.T
    with tempfile.TemporaryDirectory(dir=os.environ.get("STEVE1_BENCH_DIR")) as tmp:
        root = Path(tmp)
        # cold: B episodes x 3 chunks, each once (every byte read once an epoch); warm: the suite's corpus
        sampling, bytes_per_frame = (_write_corpus(root, args.codec, B, 1) if args.cold
                                     else _write_corpus(root, args.codec, bench.N_EPISODES, bench.REPEAT))
        dirs = sampling.set_dirs(root / "episodes", root / "embeds")
        loaders = {name: make_dataloader(sampling, "train", LoaderConfig(batch_size=B, seed=0, T=T, p_uncond=0.1,
                                                                         pin_memory=False, **kw), dirs)
                   for name, kw in CONFIGS.items()}
        for loader in loaders.values():
            _epoch(loader)   # starts workers, opens files, allocates buffers
            _epoch(loader)
        names = list(loaders)
        rows: dict[str, dict[str, list[float]]] = {n: {"fps": [], "cpu": [], "mb": [], "ratio": [], "ratio1": []}
                                                   for n in names}
        memcpy, loads = [], []
        for rep in range(args.reps):
            order = names[rep % len(names):] + names[:rep % len(names)]
            this = {}
            for name in order:
                loader = loaders[name]
                if args.cold:
                    _evict(root)
                pids = _pids(loader)
                c0, io0, t0 = _cpu_seconds(pids), _read_bytes(pids), time.perf_counter()
                _epoch(loader)
                wall = time.perf_counter() - t0
                frames = len(loader) * B * T
                this[name] = frames / wall
                rows[name]["fps"].append(frames / wall)
                rows[name]["cpu"].append(frames / max(_cpu_seconds(pids) - c0, 1e-9))
                rows[name]["mb"].append((_read_bytes(pids) - io0) / wall / 1e6)
            for name in names:
                rows[name]["ratio"].append(this[name] / this["0 workers"])
                rows[name]["ratio1"].append(this[name] / this["0 workers, 1 thread"])
            memcpy.append(_memcpy_frames_per_s())
            loads.append(os.getloadavg()[0])
        threads = {n: loaders[n].dataset.threads for n in names}
        del loaders

    def cell(v: list[float], fmt: str = ",.0f") -> str:
        return f"{np.median(v):{fmt}} [{min(v):{fmt}}-{max(v):{fmt}}]"

    print(f"codec {args.codec}, {'cold (evicted before every epoch)' if args.cold else 'warm (page cache)'}, "
          f"B={B}, T={T}, {bytes_per_frame:,.0f} frame bytes/frame, {args.reps} interleaved rounds, "
          f"load average {cell(loads, '.1f')}, memcpy {cell(memcpy)} frames/s")
    print()
    print("| loader | decode threads per process | frames/s | vs STEVE-1 (2,756) | frames per CPU-s | "
          "disk MB/s | / 0 workers (same round) | / 0 workers, 1 thread (same round) |")
    print("|---|---|---|---|---|---|---|---|")
    for n in names:
        r = rows[n]
        print(f"| {n} | {threads[n]} | {cell(r['fps'])} | {np.median(r['fps']) / OFFICIAL_FRAMES_PER_S:.1f}x | "
              f"{cell(r['cpu'])} | {cell(r['mb'], ',.1f')} | {cell(r['ratio'], '.2f')} | {cell(r['ratio1'], '.2f')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
