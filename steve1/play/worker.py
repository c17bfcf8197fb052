"""The worker of every stage that plays: one environment and its agents, playing whole episodes.

A playing stage's driver hands the engine (:mod:`steve1.engine`) one per-episode function and the
episodes (:func:`play_all`). Each worker -- this process, or a Ray actor -- builds its :class:`Worker`
once (:func:`worker_setup`): the env first, so a Ray node without MineRL says what to install before
any model loads (locally the driver made it already, :func:`driver_env`), then the agents, whose
weights load once per worker. It plays every episode it is given on them.

Nothing carries from one episode to the next: the world is seeded with the episode's own seed
before reset (:func:`start_episode`, ``seed + index`` by :func:`world_seed`) and the agents are reset
and reseeded from the episode (:class:`SeededPolicy`: a policy with its memory and its own sampler),
so which worker plays an episode, and what it played before, changes no byte.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Iterator, Sequence, TypeVar

from steve1.engine import Executor, Lost
from steve1.play.envs import EnvFactory, EnvSlot, closed_on_error, env_call, start_env

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Row = TypeVar("Row")


class Worker:
    """One env (made on demand, remade after a crash: :class:`~steve1.play.envs.EnvSlot`) and the agents."""

    def __init__(self, slot: EnvSlot, agents: Sequence[Any]):
        self.slot, self.agents = slot, list(agents)

    def close(self) -> None:
        """The map is over: close the env (a MineRL left open keeps its Minecraft process running)."""
        self.slot.discard()


def make_worker(env_factory: EnvFactory, build_agents: Callable[[], Sequence[Any]], first_env: Any = None,
                preflight: str | None = None) -> Worker:
    """A worker's env slot and agents, the env first: ``preflight`` (the env kind) makes it through
    :func:`~steve1.play.envs.start_env`, so a node without MineRL says what to install before any agent
    loads; the env is closed if ``build_agents`` fails."""
    if first_env is None and preflight is not None:
        first_env = start_env(preflight, env_factory)
    with closed_on_error(first_env):
        agents = build_agents()
    return Worker(EnvSlot(env_factory, first_env), agents)


def driver_env(executor: Executor, kind: str, env_factory: EnvFactory) -> Any:
    """The first env, made by the driver before any model loads when the workers run in this process (a
    missing MineRL stops the stage here, before any work); None when they run elsewhere (each makes its own)."""
    return start_env(kind, env_factory) if executor.runs_here else None


def worker_setup(executor: Executor, env_factory: EnvFactory, build_agents: Callable[[], Sequence[Any]], kind: str,
                 first_env: Any = None) -> Callable[[], Worker]:
    """What each worker of ``executor`` calls once for its :class:`Worker`: in this process with
    ``first_env`` (:func:`driver_env`); elsewhere with an env of ``kind`` each worker makes first."""
    if executor.runs_here:
        return functools.partial(make_worker, env_factory, build_agents, first_env)
    if first_env is not None:
        raise ValueError("the workers of this engine make their environments: give no first_env")
    return functools.partial(make_worker, env_factory, build_agents, None, kind)


def play_all(executor: Executor, play: Callable[[Worker, Item], Row], items: Sequence[Item], *, task: str,
             setup: Callable[[], Worker], key: Callable[[Item], str],
             lost: Callable[[Item, Lost], Row]) -> Iterator[tuple[Item, Row]]:
    """``play(worker, item)`` for every item on ``executor``'s workers, ``(item, row)`` as each finishes;
    an item whose worker died on every try gets the row ``lost(item, why)`` (a dropped or failed episode)."""
    for item, row in executor.map(play, items, task=task, setup=setup, key=key):
        if isinstance(row, Lost):
            log.warning("%s: %s", key(item), row.reason)
            row = lost(item, row)
        yield item, row


def world_seed(seed: int, index: int) -> int:
    """Episode ``index``'s world: ``seed + index`` (rollout prompts are compared on the same worlds)."""
    return seed + index


def start_episode(env: Any, seed: int) -> Any:
    """Seed the world, then reset it (MineRL applies a seed at the next reset); the first observation."""
    env_call("seed", None, env.seed, seed)
    return env_call("reset", None, env.reset)


class SeededPolicy:
    """A policy playing one env: on ``device`` in eval mode, its recurrent memory (``state``, made on the
    first act) and its own seeded sampler, so its draws depend on the seeds it is given only."""

    def __init__(self, policy: Any, device: Any = "cpu", seed: int | None = None):
        import torch

        self.policy, self.device = policy.to(device).eval(), torch.device(device)
        self.generator = torch.Generator(device=self.device)
        if seed is not None:
            self.generator.manual_seed(seed)
        h, w = policy.cfg.img_shape[:2]
        self.frame_size = (int(w), int(h))       # the policy's input frame, as cv2 sizes go: (W, H)
        self.state: Any = None

    def reseed(self, seed: int) -> None:
        """A fresh sampler for the next episode."""
        self.generator.manual_seed(seed)
