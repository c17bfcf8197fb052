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


# ---------------------------------------------------------------------------------------------- retries


def test_a_lost_workers_running_item_is_retried_first_and_never_handed_to_it_again():
    from steve1.engine import _Book

    book = _Book(5, limit=3, per_worker=2)
    book.add(0)
    book.add(1)
    assert book.assign() == [(0, 0), (0, 1), (1, 2), (1, 3)]
    assert book.lose(0) == (0, False)               # worker 0 ran item 0 (its oldest call): one try charged
    assert book.tries == [1, 0, 0, 0, 0] and list(book.todo) == [0, 1, 4]   # item 1, queued behind it: uncharged
    book.add(0)                                     # a late "ready" of the lost worker changes nothing
    assert 0 not in book.calls
    book.done(1, 2)
    assert book.assign() == [(1, 0)]                # the retry goes to the live worker
    book.add(2)                                     # the replacement
    assert book.assign() == [(2, 1), (2, 4)]
    assert all(w != 0 for w in book.calls) and book.retried == 1 and book.losses == 1


def test_an_item_whose_workers_all_die_is_given_up_after_the_limit():
    from steve1.engine import _Book

    book = _Book(1, limit=2, per_worker=1)
    for w, expected in [(0, (0, False)), (1, (0, True))]:
        book.add(w)
        assert book.assign(only=w) == [(w, 0)]
        assert book.lose(w) == expected
    assert not book.busy() and book.retried == 1
    book.add(2)
    assert book.lose(2) == (None, False)            # lost before taking anything


def test_a_stage_no_live_node_can_hold_fails_with_one_line(ray_local, by_value):
    ex = RayExecutor(RayParams(decode=RayResources(num_cpus=64), rollout=RayResources(num_cpus=64)))
    for kw in ({}, {"setup": _pid_state}):
        with pytest.raises(EngineError, match=r"^(decode|rollout): no live Ray node can take the work: it needs 64 "
                                              r"CPU\(s\) and 0 GPU\(s\) per worker"):
            list(ex.map(_with_state if kw else _square, ITEMS, task="rollout" if kw else "decode", **kw))


def test_retries_after_a_lost_worker_are_logged(ray_local, by_value, caplog):
    caplog.set_level("INFO", logger="steve1.engine")
    ex = RayExecutor(_ray_settings(max_retries=1))
    dict(ex.map(_dies_on_3, ITEMS, task="decode"))
    assert "decode: 3: its worker was lost (WorkerCrashedError); retry 1 of 1 on another worker" in caplog.text
    assert "decode: 3: its worker died on each of 2 tries" in caplog.text
    assert "decode: 1 retry after a lost worker" in caplog.text


def _dies_on_3_in_an_actor(state: dict, x: int) -> int:
    return _dies_on_3(x)


def _left_to_the_cyclic_gc(run) -> list[str]:
    """The Ray handles (actor handles, object refs) that ``run()`` leaves for the cyclic garbage collector."""
    import gc

    from ray import ObjectRef
    from ray.actor import ActorHandle

    gc.collect()
    gc.disable()
    try:
        run()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        return sorted(type(o).__name__ for o in gc.garbage if isinstance(o, (ObjectRef, ActorHandle)))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def test_a_map_leaves_no_ray_handle_to_the_cyclic_garbage_collector(ray_local, by_value):
    """Whether workers were lost (tasks, actors) or the function raised, a map's actor handles and
    object refs are freed by reference counting, in this process. Left in a reference cycle (Ray's
    error and the frames of ray.get hold each other), they were freed by whichever process collected
    next: a forked DataLoader worker, whose copy of the Ray client then wrote to the driver's GCS
    connection, after which ray.cluster_resources() in the driver waited for ever."""
    ex = RayExecutor(_ray_settings(max_retries=1, actors=1))
    assert _left_to_the_cyclic_gc(lambda: dict(ex.map(_dies_on_3, ITEMS, task="decode"))) == []
    assert _left_to_the_cyclic_gc(lambda: dict(ex.map(_dies_on_3_in_an_actor, ITEMS, task="embed",
                                                      setup=_pid_state))) == []

    def fails() -> None:
        with pytest.raises(ValueError, match="^item 3 is bad$"):
            list(ex.map(_fails_on_3, ITEMS, task="decode"))

    assert _left_to_the_cyclic_gc(fails) == []


def _slow_square(state: dict, x: int) -> int:
    import time

    time.sleep(0.5)
    return x * x


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_when_the_only_node_that_fits_is_lost_the_map_fails_with_one_line(ray_gpu_node, by_value, tmp_path):
    """Actors of one GPU: only the worker node has one. It is lost mid-episode: no node is left that
    can take the work, and the map says so (before, it waited for ever or failed every try on the dead actor)."""
    from fixtures.ray_kill import NodeLoss

    ex = RayExecutor(_ray_settings(max_retries=3, actors=1))
    with NodeLoss(ray_gpu_node, "embed:", tmp_path) as loss:
        with pytest.raises(EngineError, match=r"^embed: no live Ray node can take the work: it needs 1 CPU\(s\) "
                                              r"and 1 GPU\(s\) per worker"):
            list(ex.map(_slow_square, ITEMS, task="embed", setup=_pid_state))
    assert len(loss.killed) == 1


class _SlowClose:
    """A state whose close() takes seconds, as a MineRL environment stopping its Minecraft."""

    def __init__(self) -> None:
        self.pid = os.getpid()

    def close(self) -> None:
        import time

        time.sleep(5)


def _with_slow_close(state: _SlowClose, x: int) -> tuple[int, int]:
    return state.pid, x


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_node_lost_while_the_driver_closes_its_actors_ends_the_map_with_every_result(ray_two_nodes, by_value,
                                                                                      tmp_path):
    """Every episode is done; the node of the one actor is lost while the actor closes its state: the
    map ends with every result (a dead actor's close is not waited for, nor retried)."""
    from fixtures.ray_kill import NodeLoss

    ex = RayExecutor(_ray_settings(actors=1))
    with NodeLoss(ray_two_nodes, "_Holder.close", tmp_path) as loss:
        got = dict(ex.map(_with_slow_close, ITEMS, task="embed", setup=_SlowClose))
    assert len(loss.killed) == 1, "the actor was never seen closing on the worker node"
    assert {x: r for x, (_, r) in got.items()} == {x: x for x in ITEMS}


_FORKED_GC = '''
import gc, os, signal, sys, threading, time
from pathlib import Path
import ray
from steve1.engine import RayExecutor
from steve1.params import RayParams, RayResources

MARK = Path(sys.argv[1])

def setup():
    return {}

def dies_once_on_3(state, x):
    if x == 3 and not MARK.exists():
        MARK.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return x

ray.init(address="local", num_cpus=2, object_store_memory=100 << 20, include_dashboard=False)
one = RayResources(num_cpus=1, num_gpus=0, workers=1)
gc.disable()                     # no collection in the driver before the fork
assert dict(RayExecutor(RayParams(max_retries=2, embed=one)).map(dies_once_on_3, list(range(6)), task="embed",
                                                                 setup=setup)) == {x: x for x in range(6)}
pid = os.fork()
if pid == 0:                     # as a DataLoader worker
    gc.collect()
    os._exit(0)
os.waitpid(pid, 0)
gc.enable()
threading.Timer(60, lambda: (print("ray.cluster_resources() did not answer", flush=True), os._exit(3))).start()
ray.cluster_resources()
print("answered", flush=True)
ray.shutdown()
os._exit(0)
'''


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_driver_still_reaches_the_cluster_after_a_forked_child_collects_garbage(tmp_path):
    """The fresh-clone hang: after a map that lost an actor, a forked child (a DataLoader worker) ran
    the cyclic garbage collector; the driver's next GCS call never answered. A driver of its own."""
    import subprocess

    script = tmp_path / "forked_gc.py"
    script.write_text(_FORKED_GC)
    root = str(Path(__file__).resolve().parents[1])
    driver = subprocess.Popen([sys.executable, str(script), str(tmp_path / "killed")], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": root},
                              start_new_session=True)
    try:
        out = driver.communicate(timeout=240)[0]
    finally:
        try:                      # its Ray's processes (agents) outlive a driver that hung
            os.killpg(driver.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        driver.wait()
    assert driver.returncode == 0 and "answered" in out, out[-3000:]
