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
  which the driver removes at the end; Ray runs the episode again elsewhere, up to
  ``ray.max_retries`` times, after which the item comes back as :class:`Lost` with a reason
  (no host, PID or time in it: it goes into a DVC output). An exception raised by the function
  itself is re-raised on the driver as itself, as it would be locally.

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
import logging
import math
import multiprocessing
import os
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
CLOSE_WAIT_S = 60.0             # an actor's state gets this long to close (a MineRL env) before the actor is killed
PASSED_ENV = ("MALLOC_",)       # driver environment variables workers get (glibc tuning of embed)


@dataclass(frozen=True)
class Lost:
    """An item whose worker died on every try: the reason, for the manifest."""

    reason: str


class EngineError(UserError, RuntimeError):
    """The engine cannot run here (no Ray, a worker that sees other code or another folder)."""


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

    def ready(self) -> bool:
        """Answers once ``setup()`` has run: the actor has a place on the cluster."""
        return True

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


class RayExecutor:
    """A Ray cluster: per-item tasks, or per-worker state in actors; see the module docstring."""

    name = "ray"

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

    def _workers(self, task: str) -> Optional[int]:
        return getattr(self.settings, task).workers

    def _slots(self, cpus: float, gpus: float) -> int:
        """Workers of ``cpus`` CPUs (and ``gpus`` GPUs) the cluster's totals hold."""
        res = self.ray.cluster_resources()
        n = res.get("CPU", 0) / cpus
        if gpus:
            n = min(n, res.get("GPU", 0) / gpus)
        return max(1, math.floor(n + 1e-9))

    def _outcome(self, ref: Any, lost: tuple[type[BaseException], ...]) -> Any:
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:     # the function's own exception: as it is locally
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise
        except lost as exc:
            log.warning("Ray gave up on an item after %d tries: %s", self.settings.max_retries + 1, exc)
            return Lost(f"its Ray worker died on each of {self.settings.max_retries + 1} tries (a crash, the "
                        f"out-of-memory killer or a lost node; last: {type(exc).__name__}); see the driver's log")

    def map(self, fn: Callable[..., Any], items: Sequence[T], *, task: str, setup: Optional[Callable[[], Any]] = None,
            workers: int = 1, threads: bool = False, key: Callable[[T], str] = str) -> Iterator[tuple[T, Any]]:
        """As :meth:`LocalExecutor.map` (``workers``/``threads`` are the local engine's); an item whose
        worker died ``ray.max_retries + 1`` times comes back as :class:`Lost`."""
        if not items:
            return
        self.connect()
        if setup is None:
            yield from self._map_tasks(fn, items, task, key)
        else:
            yield from self._map_actors(fn, items, task, setup, key)

    def _map_tasks(self, fn: Callable[[T], Any], items: Sequence[T], task: str,
                   key: Callable[[T], str]) -> Iterator[tuple[T, Any]]:
        ray = self.ray
        cpus, gpus = self._resources(task)
        remote = ray.remote(_run_task)
        opts = dict(num_cpus=cpus, num_gpus=gpus, max_retries=self.settings.max_retries, retry_exceptions=False,
                    runtime_env=self.runtime_env)
        fn_ref = ray.put(fn)          # shipped once; every task takes it by reference
        window = self._workers(task) or IN_FLIGHT_PER_SLOT * self._slots(cpus, gpus)
        todo = iter(items)
        pending: dict[Any, T] = {}
        lost = _lost_errors(ray)

        def submit(n: int) -> None:
            for item in _take(todo, n):
                ref = remote.options(name=f"{task}:{key(item)}", **opts).remote(self.cwd, str(PROJECT_ROOT), fn_ref,
                                                                                 item)
                pending[ref] = item

        try:
            submit(window)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    item = pending.pop(ref)
                    yield item, self._outcome(ref, lost)
                submit(window - len(pending))
        finally:
            for ref in pending:       # an error or Ctrl-C on the driver: stop what is queued or running
                ray.cancel(ref)

    def _map_actors(self, fn: Callable[[Any, T], Any], items: Sequence[T], task: str, setup: Callable[[], Any],
                    key: Callable[[T], str]) -> Iterator[tuple[T, Any]]:
        ray = self.ray
        cpus, gpus = self._resources(task)
        n = min(self._workers(task) or self._slots(cpus, gpus), len(items))
        # A dead actor is restarted (on any node with room: "elsewhere" when its node was lost) and its
        # calls retried, each at most max_retries times; a poison item cannot kill the pool for good.
        cls = ray.remote(_Holder).options(num_cpus=cpus, num_gpus=gpus, max_restarts=-1,
                                          max_task_retries=self.settings.max_retries, runtime_env=self.runtime_env)
        log.info("%s: %d actor(s), %g CPU and %g GPU each", task, n, cpus, gpus)
        actors = [cls.remote(self.cwd, str(PROJECT_ROOT), setup) for _ in range(n)]
        fn_ref = ray.put(fn)
        # Items go only to actors that are set up: one the cluster has no room for (its nodes' free CPUs and
        # GPUs are split so that it fits nowhere) would otherwise hold its items for ever.
        starting = {actor.ready.remote(): i for i, actor in enumerate(actors)}
        load: dict[int, int] = {}           # calls in flight per started actor
        todo = collections.deque(items)
        pending: dict[Any, tuple[T, int]] = {}
        lost = _lost_errors(ray)

        def submit() -> None:
            for i in sorted(load, key=load.get):
                while load[i] < CALLS_PER_ACTOR and todo:
                    item = todo.popleft()
                    ref = actors[i].call.options(name=f"{task}:{key(item)}").remote(fn_ref, item)
                    pending[ref] = (item, i)
                    load[i] += 1

        finished = False
        try:
            while pending or todo:
                ready, _ = ray.wait([*pending, *starting], num_returns=1)
                for ref in ready:
                    if ref in starting:         # set up (or failed to: its calls raise that error)
                        load[starting.pop(ref)] = 0
                        continue
                    item, i = pending.pop(ref)
                    load[i] -= 1
                    yield item, self._outcome(ref, lost)
                submit()
            finished = True
            if starting:
                log.info("%s: %d actor(s) never started (no room on the cluster's nodes)", task, len(starting))
        finally:
            if finished:      # idle actors close their state (an env); on an error or Ctrl-C they are killed at once
                closing = [actors[i].close.remote() for i in load]
                ray.wait(closing, num_returns=len(closing), timeout=CLOSE_WAIT_S)
            for actor in actors:
                ray.kill(actor)


_END = object()


def _take(it: Iterator[T], n: int) -> Iterable[T]:
    for _ in range(max(0, n)):
        item = next(it, _END)
        if item is _END:
            return
        yield item


Executor = LocalExecutor | RayExecutor


def worker_device(executor: Executor, task: str, device: str, key: str) -> str:
    """The device param ``key`` (``auto``/``cpu``/``cuda``) as ``task``'s workers must see it: as given
    locally and for Ray workers that reserve GPUs (``auto`` is resolved where the worker runs), else ``cpu``."""
    if executor.name == "local" or executor.reserves_gpus(task):
        return device
    if device == "cuda":
        raise EngineError(f"{key} is 'cuda' but the Ray workers of {task} get no GPU (ray.{task}.num_gpus is 0 or "
                          f"the cluster has none); use 'auto' or 'cpu'")
    return "cpu"


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
