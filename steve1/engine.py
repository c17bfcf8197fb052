"""Where per-episode work runs: this machine (``engine: local``) or a Ray cluster (``engine: ray``).

A stage's driver hands an executor one picklable per-episode function and the episodes; the
executor runs the function on each and yields ``(item, result)`` as episodes finish, in
completion order. The function writes its episode atomically (``steve1.io``) and returns its
manifest row; the driver alone writes manifests. Both executors run the same function on the same
arguments, so the engine changes where work runs, never what is written.

* :class:`LocalExecutor`: in this process, or a pool of ``workers`` threads or processes.
* :class:`RayExecutor`: one Ray task per item (``ray.<task>`` resources), or, with ``setup``, a set
  of actors that each build the state once (one MineCLIP; one environment and its agents) and take
  items. A state with a ``close()`` method (an environment) is closed when the map ends, by either
  executor: a MineRL left open keeps its Minecraft process running.
  A worker that dies mid-episode (a crash, the OOM killer, a lost node) leaves only a temp file,
  which the driver removes at the end; the driver sends the episode again, up to ``ray.max_retries``
  times, to a live worker (a dead actor gets nothing more: it is replaced by a new actor, on
  another node where one has room), and logs each retry; after the last try the item comes back as
  :class:`Lost` with a reason (no host, PID or time in it: it goes into a DVC output). When no live
  node can hold a worker of the stage any more, the map fails with an :class:`EngineError` saying so.
  An exception raised by the function itself is re-raised on the driver as itself, as it would be
  locally.

The cluster is the one ``RAY_ADDRESS`` names (Ray's convention); without it, a local Ray sized to
this machine is started and stopped with the stage. Workers run in the driver's working directory
with the driver's code on ``PYTHONPATH``: on a real cluster both must be the same paths on every
node (a shared filesystem); a worker that finds otherwise refuses with a sentence saying so.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import functools
import itertools
import logging
import math
import multiprocessing
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, Sequence, TypeVar

from steve1.errors import UserError

if TYPE_CHECKING:
    from steve1.params import Params, RayParams

log = logging.getLogger(__name__)

T = TypeVar("T")
PROJECT_ROOT = Path(__file__).resolve().parents[1]     # the folder holding this steve1 package
IN_FLIGHT_PER_SLOT = 2          # tasks queued per free slot: workers never wait on the driver, and a
                                # 10^5-episode run does not hold 10^5 pending tasks in the driver
CALLS_PER_ACTOR = 2             # one running, one queued
POLL_S = 5.0                    # after a lost worker, how often the driver checks that a live node can still take the work
CLOSE_WAIT_S = 60.0             # an actor's state gets this long to close (a MineRL env) before the actor is killed
PASSED_ENV = ("MALLOC_",)       # driver environment variables workers get (glibc tuning of embed)


@dataclass(frozen=True)
class Lost:
    """An item whose worker died on every try: the reason, for the manifest."""

    reason: str


@dataclass(frozen=True)
class _Gone:
    """A Ray call whose worker (a task's process, an actor, a node) is gone: the name of Ray's error.
    The error itself is not kept: see :meth:`RayExecutor._result`."""

    error: str


class EngineError(UserError, RuntimeError):
    """The engine cannot run here (no Ray, a worker that sees other code or another folder)."""


@dataclass(frozen=True)
class Ranks:
    """This process's share of a stage's work: its ``rank`` of ``world_size`` processes, and its GPU on
    the node (``local_rank``); ``wait()`` returns once every process has reached it."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    wait: Callable[[], None] = lambda: None


def _launched_ranks() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the environment set by ``accelerate launch``/torchrun."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))


# ---------------------------------------------------------------------------------------------- local

_STATE: Any = None              # a process-pool worker's ``setup()`` result


def _init_worker(setup: Callable[[], Any]) -> None:
    global _STATE
    _STATE = setup()


def _with_state(fn: Callable[[Any, T], Any], item: T) -> Any:
    return fn(_STATE, item)


def close_state(state: Any) -> None:
    """Close a ``setup()`` result that has a ``close()`` (an environment); the map is over."""
    close = getattr(state, "close", None)
    if callable(close):
        close()


class LocalExecutor:
    """This machine: inline for one worker, else a pool of threads (I/O-bound work) or processes."""

    name = "local"
    runs_here = True            # setup and the function run in this process: the driver may hand a worker its env
    shows_progress = True       # a per-episode progress bar has a terminal to draw on

    def worker_device(self, task: str, device: str, key: str) -> str:
        """The device param ``key`` as ``task``'s workers must see it: here, as given."""
        return device

    def ranks(self, task: str) -> Ranks:
        """This process's share under ``accelerate launch``/torchrun (``WORLD_SIZE`` > 1: ranks split the
        items, each takes its local GPU), else all of it."""
        rank, world_size, local_rank = _launched_ranks()
        if world_size == 1:
            return Ranks(rank, world_size, local_rank)
        from accelerate import PartialState

        state = PartialState()
        return Ranks(state.process_index, state.num_processes, state.local_process_index, state.wait_for_everyone)

    def map(self, fn: Callable[..., Any], items: Sequence[T], *, task: str, setup: Optional[Callable[[], Any]] = None,
            workers: int = 1, threads: bool = False, key: Callable[[T], str] = str) -> Iterator[tuple[T, Any]]:
        """``fn(item)`` (``fn(state, item)`` with ``setup``) for every item; ``(item, result)`` as each finishes.

        ``task`` names the work (Ray's resources; unused here). Exceptions propagate; a worker never
        comes back :class:`Lost` here (a crashed process pool fails the stage).
        """
        workers = max(1, min(workers, len(items)))
        state = None
        if workers == 1:
            state = setup() if setup is not None else None
            try:
                for item in items:
                    yield item, (fn(state, item) if setup is not None else fn(item))
            finally:
                close_state(state)
            return
        if threads:
            state = setup() if setup is not None else None
            call = functools.partial(fn, state) if setup is not None else fn
            pool: cf.Executor = cf.ThreadPoolExecutor(workers, thread_name_prefix=task)
        else:   # spawn: cv2/FFmpeg threads and fork do not mix (a worker's state ends with its process)
            init = dict(initializer=_init_worker, initargs=(setup,)) if setup is not None else {}
            pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), **init)
            call = functools.partial(_with_state, fn) if setup is not None else fn
        try:
            futures = {pool.submit(call, item): item for item in items}
            for future in cf.as_completed(futures):
                yield futures[future], future.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)   # on an error or Ctrl-C: finish what runs, start no more
            close_state(state)


# ---------------------------------------------------------------------------------------------- ray


def _enter(cwd: str, root: str) -> None:
    """Run in the driver's folder with the driver's code, or say why not (in a Ray worker)."""
    import steve1

    here = Path(steve1.__file__).resolve().parents[1]
    if here != Path(root):
        raise EngineError(f"this Ray worker imports steve1 from {here}, the driver from {root}: run every node "
                          f"from the same workspace (a shared filesystem mounted at the same path)")
    try:
        os.chdir(cwd)
    except OSError as exc:
        raise EngineError(f"the driver's working directory {cwd} is not usable on this Ray node ({exc.strerror}): "
                          f"put the workspace on a shared filesystem mounted at the same path on every node") from None


def _run_task(cwd: str, root: str, fn: Callable[[T], Any], item: T) -> Any:
    _enter(cwd, root)
    return fn(item)


class _Holder:
    """A Ray actor holding one ``setup()`` result (a MineCLIP, an environment) and running items on it."""

    def __init__(self, cwd: str, root: str, setup: Callable[[], Any]):
        self.state, self.error = None, None
        try:
            _enter(cwd, root)
            self.state = setup()
        except Exception as exc:   # raised by each call instead: the driver then sees it as it is
            self.error = exc

    def call(self, fn: Callable[[Any, T], Any], item: T) -> Any:
        if self.error is not None:
            raise self.error
        return fn(self.state, item)

    def ready(self) -> str:
        """Answers once ``setup()`` has run (the actor has a place on the cluster): its node's id."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def close(self) -> None:
        close_state(self.state)


def _import_ray() -> Any:
    try:
        import pyarrow  # noqa: F401  Ray imports it whenever it is installed
    except ModuleNotFoundError:
        pass
    except ImportError as exc:
        raise EngineError(f"pyarrow is installed but cannot be imported ({exc}); Ray imports it when present: "
                          f"install the version the lock pins (pyarrow 19.0.1 works with numpy 1.26.4), or uninstall it") from None
    try:
        import ray
    except ModuleNotFoundError:
        raise EngineError("engine: ray needs the ray package (ray[default] in requirements.lock): "
                          "run `make env`, or set engine: local") from None
    return ray


def _lost_errors(ray: Any) -> tuple[type[BaseException], ...]:
    """Ray's errors that mean the process running an item is gone (after Ray's own retries)."""
    e = ray.exceptions
    return (e.WorkerCrashedError, e.NodeDiedError, e.OutOfMemoryError, e.RayActorError, e.ObjectLostError)


def _drop_tracebacks(exc: Optional[BaseException]) -> None:
    """Clear the frames of ``exc``'s traceback and of those of the errors chained to it, and drop them
    (see :meth:`RayExecutor._result`)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__


class RayExecutor:
    """A Ray cluster: per-item tasks, or per-worker state in actors; see the module docstring."""

    name = "ray"
    runs_here = False           # setup and the function run in actors: each makes its own env
    shows_progress = False      # a worker's progress bar would only fill the driver's log

    def __init__(self, settings: "RayParams"):
        self.settings = settings
        self.ray = _import_ray()
        self.started = False
        self.cwd = os.getcwd()
        env = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ENV)}
        env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
        self.runtime_env = {"env_vars": env}

    # -- the cluster
    def connect(self) -> "RayExecutor":
        """Join the running Ray of this process, else ``RAY_ADDRESS``'s cluster, else start a local one."""
        ray = self.ray
        if ray.is_initialized():
            return self
        address = os.environ.get("RAY_ADDRESS")
        try:
            if address:
                log.info("connecting to the Ray cluster at %s (RAY_ADDRESS)", address)
                ray.init(address=address, log_to_driver=True)
            else:
                s = self.settings
                ray.init(address="local", num_cpus=s.local_num_cpus,
                         object_store_memory=s.local_object_store_mb << 20, include_dashboard=False, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {address} (RAY_ADDRESS)" if address else "a local Ray"
            raise EngineError(f"engine: ray could not start or reach {where}: {exc}. Start the cluster "
                              f"(`ray start --head` on the head node), fix or unset RAY_ADDRESS, or set engine: local") from None
        self.started = True
        res = ray.cluster_resources()
        log.info("Ray: %d node(s), %g CPU(s), %g GPU(s)", len([n for n in ray.nodes() if n.get("Alive")]),
                 res.get("CPU", 0), res.get("GPU", 0))
        return self

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
        self.started = False

    # -- work
    def _resources(self, task: str) -> tuple[float, float]:
        """(CPUs, GPUs) per task or actor of ``task``; GPUs only where the cluster has some."""
        r = getattr(self.settings, task)
        has_gpus = self.ray.cluster_resources().get("GPU", 0) > 0
        return r.num_cpus, (r.num_gpus if has_gpus else 0.0)

    def reserves_gpus(self, task: str) -> bool:
        """Whether ``task``'s workers get GPUs (``ray.<task>.num_gpus`` > 0 and the cluster has some)."""
        self.connect()
        return self._resources(task)[1] > 0

    def worker_device(self, task: str, device: str, key: str) -> str:
        """The device param ``key`` (``auto``/``cpu``/``cuda``) as ``task``'s workers must see it: as given when
        they reserve GPUs (``auto`` is resolved where the worker runs), else ``cpu``."""
        if self.reserves_gpus(task):
            return device
        if device == "cuda":
            raise EngineError(f"{key} is 'cuda' but the Ray workers of {task} get no GPU (ray.{task}.num_gpus is 0 "
                              f"or the cluster has none); use 'auto' or 'cpu'")
        return "cpu"

    def ranks(self, task: str) -> Ranks:
        """All of the work: Ray spreads it over its workers, so a stage under ``accelerate launch`` is refused."""
        if _launched_ranks()[1] > 1:
            raise EngineError(f"engine: ray spreads {task} over the Ray cluster's workers itself; run the stage "
                              f"without accelerate launch/torchrun (or set engine: local)")
        return Ranks()

    def _workers(self, task: str) -> Optional[int]:
        return getattr(self.settings, task).workers

    def _slots(self, cpus: float, gpus: float) -> int:
        """Workers of ``cpus`` CPUs (and ``gpus`` GPUs) the cluster's totals hold."""
        res = self.ray.cluster_resources()
        n = res.get("CPU", 0) / cpus
        if gpus:
            n = min(n, res.get("GPU", 0) / gpus)
        return max(1, math.floor(n + 1e-9))

    def _result(self, ref: Any) -> Any:
        """The value of a finished call, or :class:`_Gone` when its worker is gone; the function's own
        exception is raised as it is locally.

        Nothing of Ray's error outlives this call. The error and the frames of ``ray.get`` that raised
        it hold each other (a reference cycle), and its traceback reaching the map's frames would put
        the map's actor handles and object refs into that cycle too. Only the cyclic garbage collector
        frees such objects, and it may run in a forked child (a DataLoader worker of the same process):
        that child's copy of the Ray client then tells the GCS an actor went out of scope over the
        connection it shares with the driver, the two processes' HTTP/2 header tables part, and every
        later GCS call of the driver (``ray.cluster_resources()``) waits for ever. So the frames are
        cleared here, and a lost worker is answered with a value, not an exception through the map.
        """
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as exc:
            _drop_tracebacks(exc)
            cause = getattr(exc, "cause", None) if isinstance(exc, ray.exceptions.RayTaskError) else None
            if not isinstance(cause, BaseException):
                if isinstance(exc, _lost_errors(ray)):
                    return _Gone(type(exc).__name__)
                raise
        try:       # raised outside the handler, so that it does not chain Ray's error (which holds it)
            raise cause
        finally:
            del cause

    def _lost(self, task: str, label: str, gone: _Gone, book: "_Book", i: int, gave_up: bool) -> Optional[Lost]:
        """Log a lost worker's item (its retry, or that it is given up); the :class:`Lost` when given up."""
        if gave_up:
            log.warning("%s: %s: its worker died on each of %d tries (last: %s); recorded as failed",
                        task, label, book.limit, gone.error)
            return Lost(f"its Ray worker died on each of {book.limit} tries (a crash, the out-of-memory killer "
                        f"or a lost node; last: {gone.error}); see the driver's log")
        log.warning("%s: %s: its worker was lost (%s); retry %d of %d on another worker", task, label,
                    gone.error, book.tries[i], book.limit - 1)
        return None

    def _feasible(self, task: str, cpus: float, gpus: float, avoid: set[str]) -> list[dict]:
        """The live nodes, other than ``avoid``, that can hold one worker of ``task``; raises
        :class:`EngineError` when no live node can (the work cannot run anywhere). Nodes count as the
        cluster has them now: nodes an autoscaler would add on demand are not waited for."""
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        fits = [n for n in nodes if n.get("Resources", {}).get("CPU", 0) + 1e-9 >= cpus
                and n.get("Resources", {}).get("GPU", 0) + 1e-9 >= gpus]
        if not fits:
            raise EngineError(f"{task}: no live Ray node can take the work: it needs {cpus:g} CPU(s) and {gpus:g} "
                              f"GPU(s) per worker and the cluster's {len(nodes)} live node(s) have less (a lost node "
                              f"or a cluster too small); add a node, lower ray.{task}.num_cpus/num_gpus, or set "
                              f"engine: local")
        return [n for n in fits if n["NodeID"] not in avoid] or fits

    def map(self, fn: Callable[..., Any], items: Sequence[T], *, task: str, setup: Optional[Callable[[], Any]] = None,
            workers: int = 1, threads: bool = False, key: Callable[[T], str] = str) -> Iterator[tuple[T, Any]]:
        """As :meth:`LocalExecutor.map` (``workers``/``threads`` are the local engine's); an item whose
        worker died ``ray.max_retries + 1`` times comes back as :class:`Lost`."""
        if not items:
            return
        self.connect()
        cpus, gpus = self._resources(task)
        self._feasible(task, cpus, gpus, set())
        if setup is None:
            yield from self._map_tasks(fn, items, task, key)
        else:
            yield from self._map_actors(fn, items, task, setup, key)

    def _map_tasks(self, fn: Callable[[T], Any], items: Sequence[T], task: str,
                   key: Callable[[T], str]) -> Iterator[tuple[T, Any]]:
        ray = self.ray
        cpus, gpus = self._resources(task)
        remote = ray.remote(_run_task)
        # Retried by this driver, not by Ray: each try is counted and logged, and a lost node's task is
        # sent again only once the driver has seen it fail.
        opts = dict(num_cpus=cpus, num_gpus=gpus, max_retries=0, retry_exceptions=False, runtime_env=self.runtime_env)
        fn_ref = ray.put(fn)          # shipped once; every task takes it by reference
        window = self._workers(task) or IN_FLIGHT_PER_SLOT * self._slots(cpus, gpus)
        book = _Book(len(items), self.settings.max_retries + 1, per_worker=1)
        pending: dict[Any, int] = {}
        tasks = itertools.count()

        def submit() -> None:
            while len(pending) < window and book.todo:
                w = next(tasks)
                book.add(w)
                for _, i in book.assign(only=w):
                    ref = remote.options(name=f"{task}:{key(items[i])}", **opts).remote(
                        self.cwd, str(PROJECT_ROOT), fn_ref, items[i])
                    pending[ref] = w

        try:
            submit()
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=None if not book.losses else POLL_S)
                if not ready:                        # after a loss: fail with a sentence if no node is left
                    self._feasible(task, cpus, gpus, set())
                for ref in ready:
                    w = pending.pop(ref)
                    i = book.calls[w][0]
                    result = self._result(ref)
                    if isinstance(result, _Gone):
                        i, gave_up = book.lose(w)
                        out = self._lost(task, key(items[i]), result, book, i, gave_up)
                        if out is not None:
                            yield items[i], out
                        continue
                    book.done(w, i)
                    yield items[i], result
                submit()
        finally:
            for ref in pending:       # an error or Ctrl-C on the driver: stop what is queued or running
                ray.cancel(ref)
            pending.clear()           # Ray's handles go now, in this process (see _result)
            del fn_ref
        if book.retried:
            log.info("%s: %d retr%s after a lost worker", task, book.retried, "y" if book.retried == 1 else "ies")

    def _map_actors(self, fn: Callable[[Any, T], Any], items: Sequence[T], task: str, setup: Callable[[], Any],
                    key: Callable[[T], str]) -> Iterator[tuple[T, Any]]:
        ray = self.ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        cpus, gpus = self._resources(task)
        n = min(self._workers(task) or self._slots(cpus, gpus), len(items))
        # A dead actor is not restarted by Ray (a restart waits for its node to be declared dead, and calls
        # sent to it meanwhile fail one after the other): this driver replaces it with a new actor, on
        # another node where one can hold it, and sends its episode to a live actor.
        cls = ray.remote(_Holder)
        cls_opts = dict(num_cpus=cpus, num_gpus=gpus, max_restarts=0, max_task_retries=0, runtime_env=self.runtime_env)
        log.info("%s: %d actor(s), %g CPU and %g GPU each", task, n, cpus, gpus)
        fn_ref = ray.put(fn)
        book = _Book(len(items), self.settings.max_retries + 1, per_worker=CALLS_PER_ACTOR)
        actors: dict[int, Any] = {}
        node_of: dict[int, str] = {}          # a started actor's node
        lost_nodes: set[str] = set()          # nodes where an actor of this map was lost
        starting: dict[Any, int] = {}
        pending: dict[Any, tuple[int, int]] = {}
        spare = n * self.settings.max_retries  # replacements for actors lost before taking an item
        ids = itertools.count()

        def start(prefer_elsewhere: bool) -> None:
            opts = {}
            if prefer_elsewhere:               # a live node that can hold it, with the fewest of our actors
                here = collections.Counter(node_of[w] for w in book.calls if w in node_of)
                node = min(self._feasible(task, cpus, gpus, lost_nodes), key=lambda d: (here[d["NodeID"]], d["NodeID"]))
                opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node["NodeID"], soft=True)
            w = next(ids)
            actors[w] = cls.options(**cls_opts, **opts).remote(self.cwd, str(PROJECT_ROOT), setup)
            starting[actors[w].ready.remote()] = w

        def submit() -> None:
            for w, i in book.assign():
                ref = actors[w].call.options(name=f"{task}:{key(items[i])}").remote(fn_ref, items[i])
                pending[ref] = (w, i)

        def lose(w: int, gone: _Gone) -> Iterator[tuple[T, Any]]:
            """Actor ``w`` is gone: what it finished comes back, its running item is retried elsewhere (or
            given up), what was queued behind it goes back to the queue; a new actor takes its place."""
            nonlocal spare
            mine = [ref for ref, (v, _) in pending.items() if v == w]
            done, _ = ray.wait(mine, num_returns=len(mine), timeout=0) if mine else ([], [])
            for ref in done:
                result = self._result(ref)
                if isinstance(result, _Gone):
                    continue
                _, i = pending.pop(ref)
                book.done(w, i)
                yield items[i], result
            for ref in [ref for ref, (v, _) in pending.items() if v == w]:
                del pending[ref]
            if w in node_of:
                lost_nodes.add(node_of[w])
            ray.kill(actors[w], no_restart=True)
            i, gave_up = book.lose(w)
            if i is None:
                spare -= 1
                log.warning("%s: an actor was lost before taking an episode (%s)", task, gone.error)
            else:
                out = self._lost(task, key(items[i]), gone, book, i, gave_up)
                if out is not None:
                    yield items[i], out
            if book.busy() and spare >= 0:
                start(prefer_elsewhere=True)
                book.replaced += 1

        for _ in range(n):
            start(prefer_elsewhere=False)
        finished = False
        try:
            while book.busy():
                ready, _ = ray.wait([*pending, *starting], num_returns=1, timeout=None if not book.losses else POLL_S)
                if not ready and not book.calls:      # after a loss, no live actor: is any node left for one?
                    self._feasible(task, cpus, gpus, set())
                for ref in ready:
                    if ref in starting:               # set up (or failed to: its calls raise that error)
                        w = starting.pop(ref)
                        node = self._result(ref)
                        book.add(w)
                        if isinstance(node, _Gone):
                            yield from lose(w, node)
                        else:
                            node_of[w] = node
                        continue
                    if ref not in pending:            # a call of an actor already lost: handled with it
                        continue
                    w, i = pending[ref]
                    result = self._result(ref)
                    if isinstance(result, _Gone):
                        yield from lose(w, result)
                        continue
                    del pending[ref]
                    book.done(w, i)
                    yield items[i], result
                if not book.calls and not starting and book.busy():
                    raise EngineError(f"{task}: every Ray actor was lost and none could be started again "
                                      f"({book.losses} lost); see the driver's log")
                submit()
            finished = True
            if starting:
                log.info("%s: %d actor(s) never started (no room on the cluster's nodes)", task, len(starting))
        finally:
            if finished:      # live actors close their state (an env); on an error or Ctrl-C they are killed at once
                closing = [actors[w].close.remote() for w in book.calls]
                if closing:
                    ray.wait(closing, num_returns=len(closing), timeout=CLOSE_WAIT_S)
            for actor in actors.values():
                ray.kill(actor, no_restart=True)
            actors.clear()            # Ray's handles go now, in this process (see _result)
            pending.clear()
            starting.clear()
            del fn_ref
        if book.losses:
            log.info("%s: %d actor(s) lost, %d replaced, %d retr%s of an episode", task, book.losses, book.replaced,
                     book.retried, "y" if book.retried == 1 else "ies")


class _Book:
    """The driver's book of one map: which item each worker holds and how many tries each item has had.

    Items are positions in the map's list; workers are numbers. A worker runs its calls in order, so
    the first of its calls in flight is the one running: when the worker is lost, that item is charged
    a try and goes first in the queue again (or is given up after ``limit`` tries), and those queued
    behind it go back uncharged. A lost worker is out of the book: nothing is handed to it again.
    Kept apart from Ray so that these rules are tested without a cluster.
    """

    def __init__(self, n_items: int, limit: int, per_worker: int):
        self.todo: collections.deque[int] = collections.deque(range(n_items))
        self.tries = [0] * n_items
        self.limit, self.per_worker = limit, per_worker
        self.calls: dict[int, list[int]] = {}          # a live worker's items in flight, oldest first
        self.dead: set[int] = set()
        self.losses = self.retried = self.replaced = 0

    def add(self, w: int) -> None:
        """Worker ``w`` is ready for items."""
        if w not in self.dead:
            self.calls[w] = []

    def assign(self, only: Optional[int] = None) -> list[tuple[int, int]]:
        """(worker, item) pairs to send now: the least loaded live workers first, ``per_worker`` each at most."""
        out = []
        for w in sorted(self.calls if only is None else [only], key=lambda w: (len(self.calls[w]), w)):
            while len(self.calls[w]) < self.per_worker and self.todo:
                i = self.todo.popleft()
                self.calls[w].append(i)
                out.append((w, i))
        return out

    def done(self, w: int, i: int) -> None:
        self.calls[w].remove(i)
        if not self.calls[w] and self.per_worker == 1:      # a task: one item per worker
            del self.calls[w]

    def lose(self, w: int) -> tuple[Optional[int], bool]:
        """Worker ``w`` died: (the item it was running or None, whether that item is given up)."""
        self.dead.add(w)
        self.losses += 1
        calls = self.calls.pop(w, [])
        if not calls:
            return None, False
        running, queued = calls[0], calls[1:]
        self.todo.extendleft(reversed(queued))
        self.tries[running] += 1
        if self.tries[running] >= self.limit:
            return running, True
        self.todo.appendleft(running)
        self.retried += 1
        return running, False

    def busy(self) -> bool:
        """Items left to send or in flight."""
        return bool(self.todo) or any(self.calls.values())


_END = object()


def _take(it: Iterator[T], n: int) -> Iterable[T]:
    for _ in range(max(0, n)):
        item = next(it, _END)
        if item is _END:
            return
        yield item


Executor = LocalExecutor | RayExecutor


@contextlib.contextmanager
def open_executor(params: "Params") -> Iterator[Executor]:
    """The executor ``params.engine`` names, connected for the stage's life (a local Ray is stopped after)."""
    if params.engine == "local":
        yield LocalExecutor()
        return
    ex = RayExecutor(params.ray).connect()
    try:
        yield ex
    finally:
        ex.close()
