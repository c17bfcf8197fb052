"""Loader before/after, interleaved: ``python -m benchmarks.loader_ab --base DIR [--codec jpeg] [--reps 6]``.

Compares the loader of this checkout with the one in ``DIR`` (another checkout of the project,
e.g. ``git archive <commit> | tar -x -C DIR``) on the same files, in the same run: each side runs
in its own process (``PYTHONPATH`` = its tree) that keeps its loaders alive and times one epoch
per request, and the two take turns (ABBA) for ``--reps`` rounds per configuration. Before any
timing each side reports a digest of every batch of one epoch; the two must be equal (same bytes
out). Configurations run one after another (only two loaders alive at once: a worker's slots hold
~1.5 GB at full size). Prints a markdown table: medians with [min-max].
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CONFIGS = {"0w1t": dict(num_workers=0, decode_threads=1),   # short name -> loader arguments
           "0w": dict(num_workers=0),
           "1w": dict(num_workers=1),
           "2w": dict(num_workers=2)}
LABELS = {"0w1t": "0 workers, 1 thread", "0w": "0 workers", "1w": "1 worker", "2w": "2 workers"}


def _serve(root: Path, config: str) -> None:
    """One side: a loader of ``config`` over ``root``; answers ``digest`` / ``epoch`` lines on stdin."""
    from benchmarks import test_dataloader as bench
    from benchmarks.test_dataloader import _cpu_seconds, _epoch, _pids
    from steve1.data.dataset import LoaderConfig, make_dataloader
    from steve1.data.sampling import Sampling

    sampling = Sampling.load(root / "sampling.json")
    config_ = LoaderConfig(batch_size=bench.B, seed=0, T=bench.T, p_uncond=0.1, pin_memory=False, **CONFIGS[config])
    loader = make_dataloader(sampling, "train", config_, sampling.set_dirs(root / "episodes", root / "embeds"))
    _epoch(loader)
    _epoch(loader)
    for line in sys.stdin:
        if line.strip() == "digest":
            digests = []
            for batch in loader:
                h = hashlib.sha256()
                for k in sorted(batch):
                    h.update(k.encode())
                    h.update(batch[k].numpy().tobytes())
                digests.append(h.hexdigest())
                del batch
            reply = {"digests": digests}
        else:
            pids = _pids(loader)
            c0, t0 = _cpu_seconds(pids), time.perf_counter()
            _epoch(loader)
            wall = time.perf_counter() - t0
            frames = len(loader) * bench.B * bench.T
            reply = {"fps": frames / wall, "cpu": frames / max(_cpu_seconds(pids) - c0, 1e-9),
                     "threads": loader.dataset.threads}
        print(json.dumps(reply), flush=True)


class _Side:
    def __init__(self, tree: Path, root: Path, config: str):
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve", str(root), config],
                                     cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, what: str) -> dict:
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"loader process ended (exit {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", type=Path, help="the other checkout (the 'before')")
    ap.add_argument("--codec", default="jpeg")
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    ap.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        _serve(Path(args.serve[0]), args.serve[1])
        return 0
    from benchmarks import test_dataloader as bench
    from benchmarks.test_dataloader import OFFICIAL_FRAMES_PER_S, _write_corpus

    here = Path(__file__).resolve().parents[1]
    trees = {"before": args.base.resolve(), "after": here}
    with tempfile.TemporaryDirectory(dir=os.environ.get("STEVE1_BENCH_DIR")) as tmp:
        root = Path(tmp)
        sampling, bytes_per_frame = _write_corpus(root, args.codec, bench.N_EPISODES, bench.REPEAT)
        sampling.write(root / "sampling.json")   # a base tree before the typed Sampling reads it as a dict
        print(f"codec {args.codec}, warm, B={bench.B}, T={bench.T}, {bytes_per_frame:,.0f} frame bytes/frame, "
              f"{args.reps} ABBA rounds per configuration")
        print()
        print("| loader | threads / process | before frames/s | after frames/s | after / before (paired) | "
              "after vs STEVE-1 (2,756) | before frames per CPU-s | after frames per CPU-s | same batches |")
        print("|---|---|---|---|---|---|---|---|---|")
        loads = []
        for config in args.configs.split(","):
            sides = {name: _Side(tree, root, config) for name, tree in trees.items()}
            try:
                digests = {name: s.ask("digest")["digests"] for name, s in sides.items()}
                runs: dict[str, list[dict]] = {name: [] for name in sides}
                for rep in range(args.reps):
                    for name in (["before", "after"] if rep % 2 == 0 else ["after", "before"]):
                        runs[name].append(sides[name].ask("epoch"))
                    loads.append(os.getloadavg()[0])
            finally:
                for s in sides.values():
                    s.close()

            def cell(name: str, key: str) -> str:
                v = [r[key] for r in runs[name]]
                return f"{np.median(v):,.0f} [{min(v):,.0f}-{max(v):,.0f}]"

            ratio = [a["fps"] / b["fps"] for a, b in zip(runs["after"], runs["before"])]
            after = float(np.median([r["fps"] for r in runs["after"]]))
            same = "yes" if digests["before"] == digests["after"] else "**NO**"
            print(f"| {LABELS[config]} | {runs['after'][0]['threads']} | {cell('before', 'fps')} | {cell('after', 'fps')} | "
                  f"{np.median(ratio):.2f} [{min(ratio):.2f}-{max(ratio):.2f}] | {after / OFFICIAL_FRAMES_PER_S:.1f}x | "
                  f"{cell('before', 'cpu')} | {cell('after', 'cpu')} | {same} |", flush=True)
        print()
        print(f"load average {np.median(loads):.1f} [{min(loads):.1f}-{max(loads):.1f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
