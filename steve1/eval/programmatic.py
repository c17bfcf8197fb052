"""STEVE-1's programmatic evaluation: per-episode metrics from MineRL observations and their
aggregation over episodes with confidence intervals.

Per episode (as the official ``programmatic_eval.py``): the farthest horizontal (x-z) distance
from the spawn position, and the maximum inventory count of each item family, where a family is
the sum over inventory keys that *contain* a filter string (``"_log"`` counts oak_log, birch_log,
...; ``"seed"`` counts wheat_seeds, beetroot_seeds, ...). We add planks and crafting tables,
the next steps of the tech tree. The maxima are lower bounds of what was collected: items used
or dropped are not counted twice.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

# metric -> substring of MineRL inventory keys; the first three are the paper's
INVENTORY_FILTERS: dict[str, str] = {
    "log": "_log",
    "dirt": "dirt",
    "seed": "seed",
    "planks": "_planks",
    "crafting_table": "crafting_table",
}
TRAVEL = "travel_dist"
METRICS = (TRAVEL, *INVENTORY_FILTERS)
# what each metric counts (plot titles and axes)
METRIC_LABELS: dict[str, str] = {
    TRAVEL: "farthest horizontal distance from spawn (blocks)",
    "log": "logs collected (max inventory count)",
    "dirt": "dirt collected (max inventory count)",
    "seed": "seeds collected (max inventory count)",
    "planks": "planks (max inventory count)",
    "crafting_table": "crafting tables (max inventory count)",
}


def _xz(obs: Mapping[str, Any]) -> tuple[float, float]:
    try:
        loc = obs["location_stats"]
        return float(loc["xpos"]), float(loc["zpos"])
    except KeyError as exc:
        raise KeyError(f"observation lacks location_stats/{exc.args[0]}; HumanSurvival provides xpos/zpos") from None


def inventory_counts(inventory: Mapping[str, Any]) -> dict[str, int]:
    """Count of each item family in one inventory observation."""
    return {m: int(sum(int(v) for k, v in inventory.items() if f in k)) for m, f in INVENTORY_FILTERS.items()}


class ProgrammaticTracker:
    """Running maxima over an episode; ``update`` once per env step with the new observation.

    The spawn position is that of the observation returned by ``reset``.
    """

    def __init__(self, initial_obs: Mapping[str, Any]):
        self.spawn = _xz(initial_obs)
        self.values: dict[str, float] = {m: 0 for m in METRICS}
        self.values[TRAVEL] = 0.0

    def update(self, obs: Mapping[str, Any]) -> None:
        x, z = _xz(obs)
        dist = math.hypot(x - self.spawn[0], z - self.spawn[1])
        self.values[TRAVEL] = max(self.values[TRAVEL], dist)
        for m, n in inventory_counts(obs.get("inventory", {})).items():
            self.values[m] = max(self.values[m], n)

    def result(self) -> dict[str, float]:
        return dict(self.values)


def bootstrap_ci(x: Sequence[float], level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (seeded); a single value gives a zero-width interval."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def t_interval(x: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean; NaN bounds for fewer than 2 values (no spread to estimate)."""
    from scipy import stats

    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        return (math.nan, math.nan)
    m, se = x.mean(), x.std(ddof=1) / math.sqrt(len(x))
    half = float(stats.t.ppf(0.5 + level / 2, df=len(x) - 1)) * se
    return float(m - half), float(m + half)


def aggregate(per_episode: Sequence[Mapping[str, float]], method: str = "bootstrap", level: float = 0.95,
              n_boot: int = 2000, seed: int = 0) -> dict[str, dict[str, float]]:
    """``{metric: {mean, std, min, max, n, ci_low, ci_high}}`` over episodes."""
    out: dict[str, dict[str, float]] = {}
    for i, m in enumerate(METRICS):
        x = np.array([float(e[m]) for e in per_episode], dtype=np.float64)
        if method == "bootstrap":
            lo, hi = bootstrap_ci(x, level, n_boot, seed + i)
        elif method == "t":
            lo, hi = t_interval(x, level)
        else:
            raise ValueError(f"unknown confidence interval method {method!r}; expected 'bootstrap' or 't'")
        n = len(x)
        out[m] = {
            "n": n,
            "mean": float(x.mean()) if n else math.nan,
            "std": float(x.std(ddof=1)) if n > 1 else 0.0 if n else math.nan,
            "min": float(x.min()) if n else math.nan,
            "max": float(x.max()) if n else math.nan,
            "ci_low": lo, "ci_high": hi,
        }
    return out
