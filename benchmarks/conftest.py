"""Benchmark conventions shared by every suite.

Each benchmark measures its figure AND a same-run reference (memcpy of the same bytes, a plain
matmul, the naive algorithm) and records both with :func:`record`, so the ratio means something
on a noisy shared machine. The CI gate (benchmarks/gate.py) compares ``extra_info['figure']`` of
this tree against the reference commit's, both measured in the same run on the same machine.

``STEVE1_BENCH_QUICK=1`` shrinks problem sizes for CI; figures in benchmarks/results/ come from
full runs. ``STEVE1_BENCH_GATE=1`` (set by benchmarks/gate.py) lets a benchmark skip a same-run
reference that costs far more than its figure: the gate reads only the figures, and the figure is
measured the same way either way (benchmarks that skip one say so in ``reference_name``).
"""

from __future__ import annotations

import os

import pytest

QUICK = os.environ.get("STEVE1_BENCH_QUICK", "0") == "1"
GATE = os.environ.get("STEVE1_BENCH_GATE", "0") == "1"


def record(benchmark, *, figure: float, reference: float, unit: str, reference_name: str, **extra) -> float:
    """Store a throughput figure (higher is better) and its same-run reference; return the ratio."""
    ratio = figure / reference if reference > 0 else float("nan")
    benchmark.extra_info.update(figure=figure, reference=reference, ratio=ratio, unit=unit,
                                reference_name=reference_name, quick=QUICK, **extra)
    print(f"\n{benchmark.name}: {figure:,.1f} {unit} vs {reference_name} {reference:,.1f} {unit} -> ratio {ratio:.3f}")
    return ratio


@pytest.fixture
def quick() -> bool:
    return QUICK
