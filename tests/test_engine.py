"""steve1/engine.py: both executors return what the per-episode function returns, the function's
own errors come back as themselves, and a Ray worker that dies on every try comes back Lost."""

from __future__ import annotations

import functools
import os
import signal
import sys
from pathlib import Path

import pytest

from steve1.engine import EngineError, LocalExecutor, Lost, RayExecutor, _enter, open_executor
from steve1.params import Params, RayParams, RayResources

ITEMS = list(range(7))


def _square(x: int) -> int:
    return x * x


def _fails_on_3(x: int) -> int:
    if x == 3:
        raise ValueError(f"item {x} is bad")
    return x


def _dies_on_3(x: int) -> int:
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)     # as the OOM killer or a segfault would
    return x


def _pid_state() -> dict:
    return {"pid": os.getpid()}


def _with_state(state: dict, x: int) -> tuple[int, int]:
    return state["pid"], x * x


def _setup_fails() -> dict:
    raise FileNotFoundError("attn.pth: not found")


class _Env:
    """A state with a close(), as an environment: leaves ``<pid>.closed`` in ``folder`` when closed."""

    def __init__(self, folder: str):
        self.folder, self.pid = folder, os.getpid()

    def close(self) -> None:
        Path(self.folder, f"{self.pid}.closed").touch()


def _with_env(env: _Env, x: int) -> tuple[int, int]:
    return env.pid, x


def _ray_settings(**kw) -> RayParams:
    return RayParams(max_retries=kw.pop("max_retries", 1), decode=RayResources(num_cpus=1),
                     embed=RayResources(num_cpus=1, num_gpus=1, workers=kw.pop("actors", 2)), **kw)


@pytest.fixture
def by_value():
    """Ray workers cannot import this test module: its functions travel by value."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.mark.parametrize("workers,threads", [(1, False), (3, True), (2, False)])
def test_local_executor_returns_every_result(workers, threads):
    got = dict(LocalExecutor().map(_square, ITEMS, task="decode", workers=workers, threads=threads))
    assert got == {x: x * x for x in ITEMS}
    got = dict(LocalExecutor().map(_with_state, ITEMS, task="embed", setup=_pid_state, workers=workers,
                                   threads=threads))
    assert {x: sq for x, (_, sq) in got.items()} == {x: x * x for x in ITEMS}
    assert len({pid for pid, _ in got.values()}) <= workers       # one setup per worker


def test_local_executor_raises_the_functions_error():
    with pytest.raises(ValueError, match="item 3 is bad"):
        list(LocalExecutor().map(_fails_on_3, ITEMS, task="decode"))


def test_open_executor_follows_the_engine_param():
    with open_executor(Params()) as ex:
        assert isinstance(ex, LocalExecutor)


def test_a_worker_outside_the_drivers_workspace_refuses_with_a_sentence(tmp_path):
    with pytest.raises(EngineError, match="same workspace"):
        _enter(str(tmp_path), str(tmp_path / "elsewhere"))
    root = str(Path(__file__).resolve().parents[1])
    cwd = os.getcwd()
    try:
        with pytest.raises(EngineError, match="shared filesystem mounted at the same path"):
            _enter(str(tmp_path / "absent"), root)
    finally:
        os.chdir(cwd)


def test_ray_tasks_and_actors_return_what_the_function_returns(ray_local, by_value):
    ex = RayExecutor(_ray_settings())
    assert dict(ex.map(_square, ITEMS, task="decode")) == {x: x * x for x in ITEMS}
    got = dict(ex.map(_with_state, ITEMS, task="embed", setup=_pid_state))
    assert {x: sq for x, (_, sq) in got.items()} == {x: x * x for x in ITEMS}
    assert 1 <= len({pid for pid, _ in got.values()}) <= 2             # ray.embed.workers actors, each set up once
                                                                       # (items go to those set up first)
    assert not ex.reserves_gpus("embed")                               # num_gpus 1, but no GPU here: CPU actors
    ex.close()
    assert ray_local.is_initialized()                                  # a Ray it did not start is left running


def test_ray_reraises_the_functions_own_errors_as_themselves(ray_local, by_value):
    ex = RayExecutor(_ray_settings())
    with pytest.raises(ValueError, match="^item 3 is bad$"):
        list(ex.map(_fails_on_3, ITEMS, task="decode"))
    with pytest.raises(FileNotFoundError, match="^attn.pth: not found$"):     # from an actor's setup
        list(ex.map(_with_state, ITEMS, task="embed", setup=_setup_fails))


def test_a_worker_dying_on_every_try_comes_back_lost_with_a_reason(ray_local, by_value):
    ex = RayExecutor(_ray_settings(max_retries=1))
    got = dict(ex.map(_dies_on_3, ITEMS, task="decode"))
    assert {x: r for x, r in got.items() if x != 3} == {x: x for x in ITEMS if x != 3}
    assert isinstance(got[3], Lost)
    assert got[3].reason.startswith("its Ray worker died on each of 2 tries") and "WorkerCrashedError" in got[3].reason
    assert str(os.getpid()) not in got[3].reason                       # no PIDs or hosts: it goes into a manifest


def test_a_state_with_close_is_closed_once_the_map_ends_by_either_executor(ray_local, by_value, tmp_path):
    setup = functools.partial(_Env, str(tmp_path))
    got = dict(LocalExecutor().map(_with_env, ITEMS, task="rollout", setup=setup))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{os.getpid()}.closed"]     # one env, closed after the last
    (tmp_path / f"{os.getpid()}.closed").unlink()
    with pytest.raises(ValueError):                          # closed on an error too
        list(LocalExecutor().map(lambda env, x: _fails_on_3(x), ITEMS, task="rollout", setup=setup))
    assert len(list(tmp_path.iterdir())) == 1
    (tmp_path / f"{os.getpid()}.closed").unlink()
    ex = RayExecutor(_ray_settings(rollout=RayResources(num_cpus=1, workers=2)))
    got = dict(ex.map(_with_env, ITEMS, task="rollout", setup=setup))
    pids = {pid for pid, _ in got.values()}
    closed = {p.name for p in tmp_path.iterdir()}
    assert {f"{pid}.closed" for pid in pids} <= closed and len(closed) <= 2    # every actor that was set up


@pytest.mark.timeout(180)
def test_actors_the_cluster_has_no_room_for_get_no_items(ray_local, by_value):
    """Three 1-CPU actors on a 2-CPU Ray: the third never starts, and the items it would have held
    go to the two that did (before, they waited on it for ever)."""
    ex = RayExecutor(_ray_settings(rollout=RayResources(num_cpus=1, workers=3)))
    got = dict(ex.map(_with_state, ITEMS, task="rollout", setup=_pid_state))
    assert {x: sq for x, (_, sq) in got.items()} == {x: x * x for x in ITEMS}
    assert 1 <= len({pid for pid, _ in got.values()}) <= 2


def test_worker_device_keeps_the_param_locally_and_falls_back_to_cpu_on_ray_without_gpus(ray_local):
    assert LocalExecutor().worker_device("rollout", "cuda", "rollout.device") == "cuda"
    ex = RayExecutor(_ray_settings(rollout=RayResources(num_cpus=1, num_gpus=0.25)))    # no GPU on this Ray
    assert ex.worker_device("rollout", "auto", "rollout.device") == "cpu"
    with pytest.raises(EngineError, match=r"^rollout.device is 'cuda' but the Ray workers of rollout get no GPU"):
        ex.worker_device("rollout", "cuda", "rollout.device")


def test_local_workers_run_here_with_a_progress_bar_and_ray_workers_elsewhere_without():
    ray = RayExecutor(_ray_settings())          # not connected: what it is, not where it runs
    assert (LocalExecutor.runs_here, LocalExecutor.shows_progress) == (True, True)
    assert (ray.runs_here, ray.shows_progress) == (False, False)


def test_ranks_are_one_process_unless_launched_by_accelerate_which_ray_refuses(monkeypatch):
    import accelerate

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ranks = LocalExecutor().ranks("embed")
    assert (ranks.rank, ranks.world_size, ranks.local_rank) == (0, 1, 0)
    assert RayExecutor(_ray_settings()).ranks("embed").world_size == 1

    waited = []

    class FakeState:            # what accelerate's PartialState says in process 3 of 4 (GPU 1 of its node)
        process_index, num_processes, local_process_index = 3, 4, 1

        def wait_for_everyone(self):
            waited.append(True)

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setattr(accelerate, "PartialState", FakeState)
    ranks = LocalExecutor().ranks("embed")
    assert (ranks.rank, ranks.world_size, ranks.local_rank) == (3, 4, 1)
    ranks.wait()
    assert waited == [True]
    with pytest.raises(EngineError, match=r"^engine: ray spreads embed over the Ray cluster's workers itself; run "
                                          r"the stage without accelerate launch"):
        RayExecutor(_ray_settings()).ranks("embed")
