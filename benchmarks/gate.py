"""Benchmark regression gate: the code under test against a reference commit, side by side.

A ratio recorded on one machine does not hold on another (a tiny model's step against a matmul
moves by 30% between two x86 generations), so the gate never compares with a figure measured
elsewhere. It exports the reference commit named in ``benchmarks/reference.json`` into a
temporary tree, then runs the quick benchmark suite of both trees on this machine, in this run,
in the same Python environment, alternating base and head (B H H B B H ...) so that load drifts
hit both. Each side runs its own ``benchmarks/`` against its own ``steve1`` (the tree is first on
``sys.path``); benchmarks are matched by name. Both sides get ``STEVE1_BENCH_QUICK=1`` (CI sizes) and,
when both trees know it, ``STEVE1_BENCH_GATE=1``: a benchmark may then skip a same-run reference the
gate does not read (benchmarks/conftest.py). Only both or neither: skipping a reference changes when
the figure's runs happen, so one side alone would measure differently.

Per benchmark the gate compares each benchmark's throughput figure (``extra_info['figure']``,
higher is better; see ``benchmarks/conftest.py``) over the repetitions:

- ``change`` is the ratio of the medians, head / base, minus one;
- each side's repetitions lose their one most extreme figure (the one farthest from the
  median; from 4 repetitions on), since a stray slow run (a page-cache miss, a neighbour's
  burst) would otherwise decide the verdict alone;
- ``noise`` is the larger relative range (max - min) / median of the two sides' kept figures;
- an entry whose noise exceeds the threshold cannot resolve a drop of that size: it is
  reported as ``noisy``, not gated;
- a gated entry is flagged SLOWER when the change is below ``-threshold`` AND every kept head
  figure is below every kept base figure (the drop stands clear of the run's own spread; with 4
  kept repetitions a side, chance alone orders them so 1 time in 70);
- a flagged entry is measured again, alone, with fresh interleaved repetitions of both sides, and
  the gate FAILS only on entries flagged SLOWER by both measurements. One measurement is not
  enough on a shared VM: a process's figure is often bimodal (a fast and a slow mode per process),
  so 5 processes a side split between the modes by chance, and trimming the odd one out can leave
  two cleanly separated sides. An A/A run (the same commit on both sides) flagged 2 of 14 gated
  entries "faster" that way (benchmarks/results/gate_cpu-2core_2026-12-06_aa.md). A real slowdown
  is in the code and shows again; a chance split of the modes does not, as often.

Same-run references inside each benchmark (memcpy, matmul, plain decode) stay in the results
as figures; they are not the gate's yardstick.

    python -m benchmarks.gate                      # head = this working tree, base = reference.json
    python -m benchmarks.gate --base HEAD~3 --reps 6 -k policy --json out.json

Exit status: 0 pass, 1 regression, 2 unusable input (no reference, a side that fails to run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE_FILE = Path(__file__).resolve().parent / "reference.json"
DEFAULT_THRESHOLD = 0.25
DEFAULT_REPS = 5
QUICK_ENV = {"STEVE1_BENCH_QUICK": "1"}
GATE_ENV = {"STEVE1_BENCH_GATE": "1"}   # skip same-run references the gate does not read (benchmarks/conftest.py)


class GateError(Exception):
    """Input the gate cannot judge: no reference commit, a side whose benchmarks fail to run."""


@dataclass(frozen=True)
class Reference:
    """The commit the code under test is measured against, and why it was chosen."""

    commit: str
    reason: str
    moved: str


def read_reference(path: Path = REFERENCE_FILE) -> Reference:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise GateError(f"{path}: no such file; it names the reference commit (keys commit, reason, moved)") from None
    except json.JSONDecodeError as exc:
        raise GateError(f"{path}: not valid JSON ({exc})") from None
    missing = [k for k in ("commit", "reason", "moved") if not isinstance(data.get(k), str) or not data[k]]
    if missing:
        raise GateError(f"{path}: needs non-empty string(s) {', '.join(missing)}, got {data!r}")
    return Reference(data["commit"], data["reason"], data["moved"])


def resolve_commit(repo: Path, ref: str) -> str:
    proc = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=repo,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise GateError(f"reference {ref!r} is not a commit of {repo} (a shallow clone? `git fetch --unshallow`)")
    return proc.stdout.strip()


def export_tree(repo: Path, commit: str, dest: Path) -> Path:
    """The commit's tracked files in ``dest`` (git archive: no worktree metadata left behind)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=repo, capture_output=True)
    if archive.returncode != 0:
        raise GateError(f"git archive {commit} failed: {archive.stderr.decode(errors='replace').strip()}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def knows_gate_switch(tree: Path) -> bool:
    """Whether ``tree``'s benchmarks honour ``STEVE1_BENCH_GATE`` (commits before it do not)."""
    conftest = tree / "benchmarks" / "conftest.py"
    return conftest.is_file() and "STEVE1_BENCH_GATE" in conftest.read_text()


def side_env(tree: Path, gate_switch: bool = False) -> dict[str, str]:
    """Environment for one side: its tree first on sys.path, quick sizes, the gate switch when both
    sides honour it (else neither side gets it: both measure the same way), nothing else changed."""
    env = dict(os.environ, **QUICK_ENV, **(GATE_ENV if gate_switch else {}))
    if not gate_switch:
        env.pop("STEVE1_BENCH_GATE", None)
    env["PYTHONPATH"] = os.pathsep.join([str(tree)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("PYTEST_ADDOPTS", None)
    return env


def check_import_origin(tree: Path) -> None:
    """Refuse to measure when ``steve1`` would not come from ``tree`` (an install shadowing it)."""
    proc = subprocess.run([sys.executable, "-c", "import steve1, sys; sys.stdout.write(steve1.__file__)"],
                          cwd=tree, env=side_env(tree), capture_output=True, text=True)
    if proc.returncode != 0:
        raise GateError(f"{tree}: `import steve1` fails there:\n{proc.stderr.strip()[-2000:]}")
    origin = Path(proc.stdout).resolve()
    if not origin.is_relative_to(tree.resolve()):
        raise GateError(f"{tree}: `import steve1` loads {origin}, not this tree's copy")


def run_side(tree: Path, out_json: Path, select: str | None, log: Path, gate_switch: bool = False,
             nodeids: tuple[str, ...] = ()) -> dict[str, dict]:
    """One quick-suite run of ``tree``'s benchmarks (or only ``nodeids``); ``{fullname: extra_info}``
    (empty: none collected)."""
    cmd = [sys.executable, "-m", "pytest", *(nodeids or ("benchmarks",)), "--benchmark-only",
           f"--benchmark-json={out_json}", "-q", "-p", "no:cacheprovider"]
    if select:
        cmd += ["-k", select]
    with log.open("a") as fh:
        fh.write(f"\n$ (cd {tree} && {' '.join(cmd)})\n")
        fh.flush()
        rc = subprocess.run(cmd, cwd=tree, env=side_env(tree, gate_switch), stdout=fh,
                            stderr=subprocess.STDOUT).returncode
    if rc == 5:  # pytest: nothing collected
        return {}
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        raise GateError(f"the benchmarks of {tree} failed (pytest exit {rc}); last lines of {log}:\n{tail}")
    data = json.loads(out_json.read_text())
    return {b.get("fullname") or b["name"]: b.get("extra_info") or {} for b in data.get("benchmarks", [])}


@dataclass
class Samples:
    """One benchmark's figures over the repetitions, per side."""

    unit: str = ""
    base: list[float] = field(default_factory=list)
    head: list[float] = field(default_factory=list)


def _figure(name: str, info: dict) -> float:
    value = info.get("figure")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise GateError(f"benchmark {name!r} recorded no positive extra_info['figure'] (got {value!r}); "
                        "every benchmark must call benchmarks.conftest.record(...)")
    return float(value)


def measure(base: Path, head: Path, reps: int, select: str | None, workdir: Path,
            progress=print, nodeids: tuple[str, ...] = (), stage: str = "") -> dict[str, Samples]:
    """``reps`` runs of each side, interleaved B H H B B H ...; figures by benchmark name.
    ``nodeids``: run only these benchmarks (the confirmation of flagged ones)."""
    samples: dict[str, Samples] = {}
    log = workdir / "gate.log"
    switch = knows_gate_switch(base) and knows_gate_switch(head)
    if not stage:
        progress(f"gate: STEVE1_BENCH_GATE {'on for both sides' if switch else 'off: the base commit does not know it'}")
    for i in range(reps):
        order = (("base", base), ("head", head)) if i % 2 == 0 else (("head", head), ("base", base))
        for side, tree in order:
            t0 = time.perf_counter()
            infos = run_side(tree, workdir / f"{stage}{side}-{i}.json", select, log, switch, nodeids)
            progress(f"gate: {stage}repetition {i + 1}/{reps} {side}: {len(infos)} benchmark(s) in "
                     f"{time.perf_counter() - t0:.0f} s")
            for name, info in infos.items():
                entry = samples.setdefault(name, Samples(unit=str(info.get("unit", ""))))
                getattr(entry, side).append(_figure(name, info))
    return samples


@dataclass(frozen=True)
class Row:
    name: str
    unit: str
    base: float | None   # median figure
    head: float | None
    change: float | None  # head / base - 1
    noise: float | None   # larger relative range of the two sides' kept figures
    verdict: str          # ok | faster | SLOWER | noisy | new | gone


def _relative_range(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else 0.0


def trimmed(values: list[float]) -> list[float]:
    """``values`` without the one farthest from their median (kept whole below 4 values)."""
    if len(values) < 4:
        return list(values)
    median = statistics.median(values)
    drop = max(range(len(values)), key=lambda i: abs(values[i] - median))
    return [v for i, v in enumerate(values) if i != drop]


def judge(samples: dict[str, Samples], threshold: float) -> list[Row]:
    rows = []
    for name in sorted(samples):
        s = samples[name]
        if not s.base or not s.head:
            median = statistics.median(s.base or s.head)
            rows.append(Row(name, s.unit, median if s.base else None, median if s.head else None, None, None,
                            "new" if s.head else "gone"))
            continue
        base, head = statistics.median(s.base), statistics.median(s.head)
        change = head / base - 1.0
        kept_base, kept_head = trimmed(s.base), trimmed(s.head)
        noise = max(_relative_range(kept_base), _relative_range(kept_head))
        if noise > threshold:
            verdict = "noisy"
        elif change < -threshold and max(kept_head) < min(kept_base):
            verdict = "SLOWER"
        elif change > threshold and min(kept_head) > max(kept_base):
            verdict = "faster"
        else:
            verdict = "ok"
        rows.append(Row(name, s.unit, base, head, change, noise, verdict))
    return rows


def format_table(rows: list[Row], threshold: float) -> str:
    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:,.4g}"

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:+.1%}"

    table = [("benchmark", "unit", "base", "head", "change", "noise", "verdict")]
    table += [(r.name.split("::", 1)[-1], r.unit, num(r.base), num(r.head), pct(r.change),
               "-" if r.noise is None else f"{r.noise:.0%}", r.verdict) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"(medians of the repetitions; SLOWER: change below -{threshold:.0%} with every kept head figure "
                 f"below every kept base one; noise above {threshold:.0%}: reported, not gated)")
    return "\n".join(lines)


def confirmed(first: list[Row], again: list[Row]) -> list[str]:
    """Benchmarks flagged SLOWER by the first measurement and again by their own (the gate fails on these)."""
    slower_again = {r.name for r in again if r.verdict == "SLOWER"}
    return [r.name for r in first if r.verdict == "SLOWER" and r.name in slower_again]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=None,
                        help="reference commit (default: the one in benchmarks/reference.json)")
    parser.add_argument("--head", type=Path, default=REPO,
                        help="tree of the code under test (default: this working tree, %(default)s)")
    parser.add_argument("--repo", type=Path, default=REPO, help="git repository holding the base commit")
    parser.add_argument("--reps", type=int, default=DEFAULT_REPS, help="repetitions per side (default: %(default)s)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                        help="largest tolerated drop of a figure, e.g. 0.25 (default: %(default)s)")
    parser.add_argument("-k", dest="select", default=None, help="pytest -k expression: gate only these benchmarks")
    parser.add_argument("--json", type=Path, default=None, help="also write every sample and verdict here")
    parser.add_argument("--no-confirm", dest="confirm", action="store_false",
                        help="fail on the first measurement's SLOWER entries without measuring them again alone")
    args = parser.parse_args(argv)
    if not 0 < args.threshold < 1:
        parser.error(f"--threshold must be in (0, 1), got {args.threshold}")
    if args.reps < 2:
        parser.error(f"--reps must be at least 2 (the noise needs two repetitions), got {args.reps}")

    workdir = Path(tempfile.mkdtemp(prefix="steve1-gate-"))
    try:
        if args.base is None:
            ref = read_reference()
            base_ref, why = ref.commit, f"benchmarks/reference.json (moved {ref.moved}: {ref.reason})"
        else:
            base_ref, why = args.base, "--base"
        commit = resolve_commit(args.repo, base_ref)
        head = args.head.resolve()
        print(f"gate: base {commit[:12]} from {why}")
        print(f"gate: head {head}; {args.reps} repetitions a side, interleaved, threshold {args.threshold:.0%}")
        base = export_tree(args.repo, commit, workdir / "base")
        for tree in (base, head):
            check_import_origin(tree)
        samples = measure(base, head, args.reps, args.select, workdir)
        rows = judge(samples, args.threshold)
        flagged = tuple(r.name for r in rows if r.verdict == "SLOWER")
        again_samples: dict[str, Samples] = {}
        if flagged and args.confirm:
            print(format_table(rows, args.threshold))
            print(f"gate: {len(flagged)} benchmark(s) flagged SLOWER; measuring them again, alone, "
                  f"{args.reps} repetitions a side, to confirm: " + ", ".join(flagged))
            again_samples = measure(base, head, args.reps, None, workdir, nodeids=flagged, stage="confirm ")
    except GateError as exc:
        print(f"gate: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if (workdir / "gate.log").exists() and args.json:
            shutil.copy(workdir / "gate.log", args.json.with_suffix(".log"))
        shutil.rmtree(workdir, ignore_errors=True)

    again = judge(again_samples, args.threshold) if again_samples else []
    slower = confirmed(rows, again) if args.confirm else list(flagged)
    if args.json:
        args.json.write_text(json.dumps({
            "base": commit, "head": str(head), "reps": args.reps, "threshold": args.threshold,
            "samples": {k: asdict(v) for k, v in samples.items()}, "rows": [asdict(r) for r in rows],
            "confirmation": {"samples": {k: asdict(v) for k, v in again_samples.items()},
                             "rows": [asdict(r) for r in again]},
            "failed": slower}, indent=1))
    if not rows:
        print("gate: no benchmark collected on either side: nothing to compare")
        return 0
    if again:
        print("gate: the flagged benchmarks measured again, alone:")
        print(format_table(again, args.threshold))
    else:
        print(format_table(rows, args.threshold))
    for verdict, what in (("noisy", "too noisy in this run to resolve the threshold, reported only"),
                          ("new", "only in head, not compared"), ("gone", "only in base, not compared")):
        names = [r.name for r in rows if r.verdict == verdict]
        if names:
            print(f"note: {len(names)} {what}: " + ", ".join(names))
    if slower:
        both = " in both measurements" if args.confirm else ""
        print(f"FAIL: {len(slower)} benchmark(s) slower than base beyond {args.threshold:.0%}{both}: "
              + ", ".join(slower))
        return 1
    gated = sum(r.verdict in ("ok", "faster", "SLOWER") for r in rows)
    unconfirmed = [name for name in flagged if name not in slower]
    print(f"gate: pass ({gated} gated, {len(rows) - gated} reported only"
          + (f"; {len(unconfirmed)} flagged SLOWER in the first measurement and not again alone: "
             + ", ".join(unconfirmed) if unconfirmed else "") + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
