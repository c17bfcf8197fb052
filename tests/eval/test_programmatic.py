"""Programmatic metrics on scripted stand-in trajectories (exact values) and CI aggregation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from steve1.eval.programmatic import METRICS, ProgrammaticTracker, aggregate, bootstrap_ci, inventory_counts, t_interval
from steve1.play.standin import BREAK_TICKS, SPEED, StandInEnv, noop_action


def _run(env, actions):
    obs = env.reset()
    tr = ProgrammaticTracker(obs)
    for a in actions:
        obs, _, _, _ = env.step(a)
        tr.update(obs)
    return tr.result()


def _act(**kw):
    a = noop_action()
    for k, v in kw.items():
        a[k] = np.asarray(v, dtype=np.float32) if k == "camera" else v
    return a


def test_walking_out_and_back_keeps_the_maximum_distance():
    # 8 steps forward (+z at yaw 0), 8 back to spawn, turn to yaw -90 (faces +x), 4 steps forward
    acts = [_act(forward=1)] * 8 + [_act(back=1)] * 8 + [_act(camera=[0, -90])] + [_act(forward=1)] * 4
    env = StandInEnv(trees=[])
    r = _run(env, acts)
    assert (env.x - 0.5, env.z - 0.5) == pytest.approx((4 * SPEED, 0.0))   # ends 1 block from spawn
    assert r["travel_dist"] == pytest.approx(8 * SPEED) == 2.0              # the farthest point counts
    assert all(r[m] == 0 for m in ("log", "dirt", "seed", "planks", "crafting_table"))


def test_attacking_tree_dirt_and_grass_then_crafting():
    tree_logs = [_act(attack=1)] * (3 * BREAK_TICKS)                          # tree ahead: 3 logs
    dirt = [_act(camera=[60, 0])] + [_act(attack=1)] * (2 * BREAK_TICKS)     # look down: 2 dirt
    grass = [_act(camera=[-60, 180])] + [_act(attack=1)] * BREAK_TICKS       # level, away from tree: 1 seed
    craft = [_act(use=1)] * 3 + [_act(use=1)] * 2                            # 3 logs -> 12 planks -> 2 tables (4 left)
    r = _run(StandInEnv(), tree_logs + dirt + grass + craft)
    assert (r["log"], r["dirt"], r["seed"], r["planks"], r["crafting_table"]) == (3, 2, 1, 12, 2)
    assert r["travel_dist"] == 0.0


def test_attack_must_be_held_uninterrupted():
    acts = ([_act(attack=1)] * (BREAK_TICKS - 1) + [_act()]) * 3
    assert _run(StandInEnv(), acts)["log"] == 0


def test_inventory_families_sum_matching_keys_like_the_official_filter():
    inv = {"oak_log": 2, "birch_log": 3, "dirt": 1, "coarse_dirt": 1, "wheat_seeds": 4, "beetroot_seeds": 1,
           "oak_planks": 5, "crafting_table": 1, "log_unrelated": 9}
    assert inventory_counts(inv) == {"log": 5, "dirt": 2, "seed": 5, "planks": 5, "crafting_table": 1}


def test_bootstrap_ci_is_seeded_and_brackets_the_mean():
    x = [1.0, 2.0, 3.0, 4.0, 10.0]
    lo, hi = bootstrap_ci(x, 0.95, 2000, seed=0)
    assert (lo, hi) == bootstrap_ci(x, 0.95, 2000, seed=0)
    assert 1.0 <= lo < np.mean(x) < hi <= 10.0
    assert bootstrap_ci([3.0], 0.95, 500, 0) == (3.0, 3.0)


def test_t_interval_matches_the_textbook_value():
    lo, hi = t_interval([1.0, 2.0, 3.0], 0.95)      # mean 2, sd 1, t(0.975, 2) = 4.302653
    half = 4.302652729911275 / math.sqrt(3)
    assert (lo, hi) == pytest.approx((2 - half, 2 + half))
    assert all(math.isnan(v) for v in t_interval([5.0]))


def test_aggregate_schema():
    eps = [{m: float(i) for m in METRICS} for i in range(4)]
    agg = aggregate(eps, "t", 0.9)
    assert set(agg) == set(METRICS)
    assert agg["log"]["mean"] == 1.5 and agg["log"]["n"] == 4 and agg["log"]["min"] == 0 and agg["log"]["max"] == 3
    assert agg["log"]["ci_low"] < 1.5 < agg["log"]["ci_high"]
    with pytest.raises(ValueError, match="'wilson'"):
        aggregate(eps, "wilson")
