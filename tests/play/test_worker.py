"""steve1/play/worker.py: a worker holds one env and its agents, the env made first (by the driver when
the workers run here, by each worker elsewhere), and an episode whose worker was lost gets the stage's row."""

from __future__ import annotations

import pytest

from steve1.engine import LocalExecutor, Lost, RayExecutor
from steve1.params import RayParams
from steve1.play import envs as E
from steve1.play.standin import StandInEnv
from steve1.play.worker import (Worker, driver_env, make_worker, play_all, start_episode, world_seed,
                                worker_setup)


class Made:
    """An env factory that keeps what it made, and the order of events."""

    def __init__(self, log: list):
        self.log, self.envs = log, []

    def __call__(self) -> StandInEnv:
        self.log.append("env")
        self.envs.append(StandInEnv())
        return self.envs[-1]


def test_the_env_is_made_before_the_agents_and_closed_when_they_fail():
    log: list = []
    factory = Made(log)
    worker = make_worker(factory, lambda: log.append("agents") or ["a", "b"], preflight="standin")
    assert log == ["env", "agents"] and worker.agents == ["a", "b"] and worker.slot.env is factory.envs[0]
    worker.close()
    assert factory.envs[0].closed and worker.slot.env is None

    def broken():
        raise RuntimeError("weights unreadable")

    with pytest.raises(RuntimeError, match="weights unreadable"):
        make_worker(factory, broken, preflight="standin")
    assert factory.envs[1].closed


def test_a_missing_minerl_stops_a_worker_before_its_agents_load(monkeypatch):
    monkeypatch.setattr(E, "check_minerl", lambda: ["the minerl package is not installed"])
    loaded = []
    with pytest.raises(E.EnvError, match="MineRL cannot start"):
        make_worker(E.make_minerl_env, lambda: loaded.append(1) or [], preflight="minerl")
    assert loaded == []


def test_the_driver_makes_the_first_env_only_when_the_workers_run_here():
    log: list = []
    ray = RayExecutor(RayParams())                 # not connected: only where its workers run matters
    assert driver_env(ray, "standin", Made(log)) is None and log == []
    env = driver_env(LocalExecutor(), "standin", Made(log))
    assert isinstance(env, StandInEnv) and log == ["env"]

    local = worker_setup(LocalExecutor(), Made(log), lambda: ["agent"], "standin", env)()
    assert local.slot.env is env and log == ["env"]           # the driver's env, no other made
    remote = worker_setup(ray, Made(log), lambda: ["agent"], "standin")()
    assert isinstance(remote.slot.env, StandInEnv) and log == ["env", "env"]     # each worker makes its own first
    with pytest.raises(ValueError, match="give no first_env"):
        worker_setup(ray, Made(log), lambda: [], "standin", env)


class LosesOdd:
    """An executor whose workers die on odd items (as Ray reports them), else run them on one worker."""

    def map(self, fn, items, *, task, setup, key):
        worker = setup()
        for item in items:
            yield item, (Lost(f"{task} worker died") if item % 2 else fn(worker, item))


def test_play_all_gives_a_lost_episode_the_stages_row():
    rows = dict(play_all(LosesOdd(), lambda w, i: {"ok": i, "agents": w.agents}, [0, 1, 2], task="generate",
                         setup=lambda: Worker(E.EnvSlot(StandInEnv), ["a"]), key=str,
                         lost=lambda i, lost: {"dropped": i, "reason": lost.reason}))
    assert rows == {0: {"ok": 0, "agents": ["a"]}, 1: {"dropped": 1, "reason": "generate worker died"},
                    2: {"ok": 2, "agents": ["a"]}}


def test_an_episode_is_seeded_before_reset_with_its_own_world():
    env = StandInEnv()
    assert world_seed(10, 3) == 13
    start_episode(env, world_seed(10, 3))
    start_episode(env, world_seed(10, 4))
    assert env.seeds_used == [13, 14]


def test_play_sits_above_data_models_and_eval_none_of_which_imports_it(repo_root):
    import ast

    found = []
    for package in ("data", "models", "eval", "train"):
        for path in sorted((repo_root / "steve1" / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                found += [f"{path.relative_to(repo_root)}: {n}" for n in names if n.startswith("steve1.play")]
    assert found == []


def test_a_seeded_policy_draws_again_what_it_drew_after_the_same_seed():
    import torch

    from steve1.play.worker import SeededPolicy

    class Tiny(torch.nn.Linear):
        cfg = type("Cfg", (), {"img_shape": (128, 96, 3)})()     # [H, W, C] of the policy's input frame

    agent = SeededPolicy(Tiny(1, 1), "cpu", seed=5)
    assert agent.frame_size == (96, 128) and agent.state is None and not agent.policy.training
    first = torch.rand(3, generator=agent.generator)
    agent.reseed(5)
    assert torch.equal(torch.rand(3, generator=agent.generator), first)
