"""The stand-in environment: a small deterministic world with MineRL ``HumanSurvival``'s interface.

The embedded default rolls out and generates data in it (``rollout.env`` / ``generate.env:
standin``), offline and in seconds, and the tests drive the rollout and generate loops with it.
Every output made with it says so (``stand-in env`` in results, metrics keys and video banners),
as embeddings from the random MineCLIP say ``random-tiny``: its numbers measure the pipeline,
not an agent's Minecraft skill. ``rollout.env: minerl`` runs the real game (``steve1.play.envs``).

What it shares with MineRL: the observation keys and shapes (``pov`` uint8 [H,W,3] RGB at VPT's
640x360, ``inventory`` counts, ``location_stats``), the 24-key action dict (other keys are an
error), and the ``seed`` (applies to the next ``reset``) / ``reset`` / ``step`` / ``close`` API.
It never ends an episode by itself unless ``max_steps`` is given, and it can be told to crash on a
given step or on reset, to exercise the callers' recreate-and-retry path.

Determinism: the world, and so every observation, is a function of the seed and the actions.

Rules of the world (per step):
- ``camera`` [pitch, yaw] degrees is added to the view (pitch clamped to +-90).
- ``forward``/``back``/``left``/``right`` move ``SPEED`` blocks along/across the yaw (x = -sin yaw,
  z = cos yaw, as Minecraft), ``sprint`` with ``forward`` multiplies by ``SPRINT``.
- ``attack`` held for ``BREAK_TICKS`` consecutive steps breaks a block: looking down
  (pitch >= 45) gives ``dirt``; otherwise a tree within ``REACH`` blocks ahead gives ``oak_log``;
  otherwise, unless looking up (pitch <= -45), grass gives ``wheat_seeds``.
- ``use`` crafts: one ``oak_log`` -> 4 ``oak_planks``; with no logs, 4 planks -> ``crafting_table``.
- Trees: one 2 blocks ahead of spawn; a seeded world (``seed`` before ``reset``) adds
  ``N_SEEDED_TREES`` more at seeded places. Unless ``trees`` is given, which fixes them all.

The picture: sky over grass split at a horizon that moves with pitch, ground stripes every
``STRIPE_DEG`` degrees of yaw (a turn is visible), and each tree in the 70-degree field of view as
a trunk whose width falls with distance.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

H, W = 360, 640
FOV_DEG = 70.0                 # horizontal field of view (VPT's fov_range)
ACTION_KEYS = (
    "ESC", "attack", "back", "camera", "drop", "forward", *(f"hotbar.{i}" for i in range(1, 10)),
    "inventory", "jump", "left", "pickItem", "right", "sneak", "sprint", "swapHands", "use",
)
ITEMS = ("dirt", "oak_log", "birch_log", "wheat_seeds", "oak_planks", "crafting_table", "stone")
SPEED = 0.25
SPRINT = 1.3
BREAK_TICKS = 4
REACH = 3.0
SPAWN = (0.5, 64.0, 0.5)
N_SEEDED_TREES = 6
SEEDED_TREE_RANGE = (3.0, 16.0)   # blocks from spawn
STRIPE_DEG = 15.0
SKY, GRASS, STRIPE, TRUNK = (120, 165, 255), (70, 140, 50), (60, 120, 42), (110, 80, 40)


class StandInCrash(RuntimeError):
    """What a scripted crash raises (MineRL's own failures are various RuntimeErrors/EOFErrors)."""


def noop_action() -> dict[str, Any]:
    """All 24 keys, nothing pressed, camera still."""
    a: dict[str, Any] = {k: 0 for k in ACTION_KEYS}
    a["camera"] = np.zeros(2, dtype=np.float32)
    return a


def seeded_trees(seed: Optional[int]) -> list[tuple[float, float]]:
    """The trees of a world: one 2 blocks ahead of spawn, plus seeded ones when ``seed`` is given."""
    trees = [(SPAWN[0], SPAWN[2] + 2.0)]
    if seed is not None:
        rng = np.random.default_rng([int(seed), 7919])
        for _ in range(N_SEEDED_TREES):
            r, a = rng.uniform(*SEEDED_TREE_RANGE), rng.uniform(0, 2 * math.pi)
            trees.append((SPAWN[0] + round(r * math.cos(a), 2), SPAWN[2] + round(r * math.sin(a), 2)))
    return trees


class StandInEnv:
    """See the module docstring. ``crash_at_step``: raise on that step (1-based, counted since
    reset); ``crash_on_reset``: raise on the next reset; ``trees``: fixed (x, z) positions instead
    of the seeded world; ``max_steps``: ``done`` after that many steps; ``resolution``: (W, H) of ``pov``."""

    def __init__(self, crash_at_step: Optional[int] = None, crash_on_reset: bool = False,
                 trees: Optional[Sequence[tuple[float, float]]] = None, max_steps: Optional[int] = None,
                 resolution: tuple[int, int] = (W, H)):
        self.crash_at_step = crash_at_step
        self.crash_on_reset = crash_on_reset
        self.fixed_trees = None if trees is None else [tuple(map(float, t)) for t in trees]
        self.trees = self.fixed_trees if self.fixed_trees is not None else seeded_trees(None)
        self.max_steps = max_steps
        self.width, self.height = int(resolution[0]), int(resolution[1])
        self.closed = False
        self._seed: Optional[int] = None
        self.seeds_used: list[Optional[int]] = []
        self._ready = False

    # ---------------------------------------------------------------- MineRL API
    def seed(self, seed: Optional[int] = None) -> None:
        """Applies to the next ``reset`` (as MineRL: call before reset)."""
        self._seed = seed

    def reset(self) -> dict[str, Any]:
        self._check_open()
        if self.crash_on_reset:
            self.crash_on_reset = False
            raise StandInCrash("stand-in env: scripted crash on reset")
        self.seeds_used.append(self._seed)
        self.trees = self.fixed_trees if self.fixed_trees is not None else seeded_trees(self._seed)
        self.x, self.y, self.z = SPAWN
        self.pitch, self.yaw = 0.0, 0.0
        self.attack_ticks = 0
        self.t = 0
        self.inventory = {k: 0 for k in ITEMS}
        self._ready = True
        return self._obs()

    def step(self, action: dict[str, Any]) -> tuple[dict[str, Any], float, bool, dict[str, Any]]:
        self._check_open()
        if not self._ready:
            raise RuntimeError("stand-in env: step() before reset()")
        keys = set(action)
        if keys != set(ACTION_KEYS):
            raise KeyError(f"action keys differ from MineRL's 24: missing {sorted(set(ACTION_KEYS) - keys)}, "
                           f"extra {sorted(keys - set(ACTION_KEYS))}")
        self.t += 1
        if self.crash_at_step is not None and self.t == self.crash_at_step:
            self.crash_at_step = None
            raise StandInCrash(f"stand-in env: scripted crash at step {self.t}")
        self._apply(action)
        done = self.max_steps is not None and self.t >= self.max_steps
        return self._obs(), 0.0, done, {}

    def close(self) -> None:
        self.closed = True

    # ---------------------------------------------------------------- the world
    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("stand-in env: used after close()")

    def _facing(self) -> tuple[float, float]:
        return -math.sin(math.radians(self.yaw)), math.cos(math.radians(self.yaw))

    def _apply(self, a: dict[str, Any]) -> None:
        cam = np.asarray(a["camera"], dtype=np.float64).reshape(2)
        self.pitch = float(np.clip(self.pitch + cam[0], -90.0, 90.0))
        self.yaw = float((self.yaw + cam[1] + 180.0) % 360.0 - 180.0)
        fx, fz = self._facing()
        fwd = int(a["forward"]) - int(a["back"])
        side = int(a["left"]) - int(a["right"])       # left of facing is (fz, -fx)
        speed = SPEED * (SPRINT if a["sprint"] and fwd > 0 else 1.0)
        self.x += speed * (fwd * fx + side * fz)
        self.z += speed * (fwd * fz - side * fx)

        if a["attack"]:
            self.attack_ticks += 1
            if self.attack_ticks == BREAK_TICKS:
                self.attack_ticks = 0
                block = self._target_block()
                if block:
                    self.inventory[block] += 1
        else:
            self.attack_ticks = 0

        if a["use"]:
            if self.inventory["oak_log"] > 0:
                self.inventory["oak_log"] -= 1
                self.inventory["oak_planks"] += 4
            elif self.inventory["oak_planks"] >= 4:
                self.inventory["oak_planks"] -= 4
                self.inventory["crafting_table"] += 1

    def _relative(self, tx: float, tz: float) -> tuple[float, float]:
        """(along, across) of a point in the view's frame: ahead, and to the right."""
        fx, fz = self._facing()
        dx, dz = tx - self.x, tz - self.z
        return dx * fx + dz * fz, dx * fz - dz * fx

    def _tree_ahead(self) -> bool:
        for tx, tz in self.trees:
            along, across = self._relative(tx, tz)
            if 0.0 < along <= REACH and abs(across) <= 0.5:
                return True
        return False

    def _target_block(self) -> Optional[str]:
        if self.pitch >= 45.0:
            return "dirt"
        if self._tree_ahead():
            return "oak_log"
        if self.pitch <= -45.0:
            return None
        return "wheat_seeds"

    def _render(self) -> np.ndarray:
        h, w = self.height, self.width
        horizon = int(np.clip(h / 2 + self.pitch * (h / 180.0), 0, h))
        pov = np.empty((h, w, 3), dtype=np.uint8)
        pov[:horizon] = SKY
        pov[horizon:] = GRASS
        # ground stripes fixed in the world: a column shows one where its yaw crosses a multiple of STRIPE_DEG
        col_yaw = self.yaw + (np.arange(w) - w / 2) * (FOV_DEG / w)
        stripe = (np.floor(col_yaw / STRIPE_DEG) != np.floor((col_yaw + FOV_DEG / w) / STRIPE_DEG))
        pov[horizon:, stripe] = STRIPE
        # trees, far to near; the one in reach straight ahead spans the middle (as the attack rule sees it)
        half_fov = math.radians(FOV_DEG / 2)
        for along, across in sorted((self._relative(*t) for t in self.trees), reverse=True):
            if along <= 0.0:
                continue
            bearing = math.atan2(across, along)
            if abs(bearing) > half_fov:
                continue
            dist = math.hypot(along, across)
            cx = int(w / 2 + (bearing / half_fov) * (w / 2))
            half_w = int(np.clip(80.0 / dist, 2, w // 4))
            top = int(np.clip(horizon - 250.0 / dist, 20, h))
            bottom = int(np.clip(horizon + 60.0 / dist, 0, h))
            pov[top:bottom, max(cx - half_w, 0):min(cx + half_w, w)] = TRUNK
        if self._tree_ahead():
            pov[20:, w // 2 - 40:w // 2 + 40] = TRUNK
        return pov

    def _obs(self) -> dict[str, Any]:
        return {
            "pov": self._render(),
            "inventory": {k: np.array(v) for k, v in self.inventory.items()},
            "location_stats": {
                "xpos": np.array(self.x), "ypos": np.array(self.y), "zpos": np.array(self.z),
                "pitch": np.array(self.pitch), "yaw": np.array(self.yaw),
            },
        }
