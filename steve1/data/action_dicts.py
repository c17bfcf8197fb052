"""MineRL env-action dicts -> per-step button and camera columns: the one parser of the importers.

A custom ``frames`` recording's ``actions.jsonl`` (env format) and a STEVE-1 episode's
``actions.pkl`` both hold one dict of MineRL 1.0 env actions per frame (the 23 button keys and
``camera`` = ``[pitch, yaw]`` degrees). Missing keys are 0. A button is 0 or 1 (bool, int or float;
a numpy scalar or one-element array, as an agent's action keeps its batch axis); the camera is two
finite numbers (a list, tuple or array, ``[[pitch, yaw]]`` too). Anything else, an unknown key or a
step that is not a dict is refused naming its origin (:class:`ActionOrigin`), step and key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from steve1 import actions as A
from steve1.data.decode import DecodeSkip

KEYS = (*A.ENV_BUTTON_KEYS, A.CAMERA_KEY)   # the 24 MineRL 1.0 keys


@dataclass(frozen=True)
class ActionOrigin:
    """Where action dicts come from, as errors name a step: ``<file>:<line>`` for a JSON-lines file
    (line = step + 1), ``<file>: action <step>`` for a list (a pickle)."""

    label: str
    lines: bool = False

    def step(self, i: int) -> str:
        return f"{self.label}:{i + 1}" if self.lines else f"{self.label}: action {i}"


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` on one short line (a hostile file may hold anything)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit] + "..."


def button_value(value: Any, where: str) -> int:
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "biuf":
        value = value.reshape(()).item()      # an agent's action keeps its batch axis: array([1])
    if isinstance(value, (bool, int, np.integer, np.bool_)) and value in (0, 1):
        return int(value)
    if isinstance(value, (float, np.floating)) and value in (0.0, 1.0):
        return int(value)
    raise DecodeSkip(f"{where}: value {shown(value)}, expected 0 or 1")


def camera_value(value: Any, where: str) -> tuple[float, float]:
    arr = value if isinstance(value, np.ndarray) else np.asarray(value, dtype=object)
    if arr.shape == (1, 2):                   # an agent's action keeps its batch axis: [[pitch, yaw]]
        arr = arr[0]
    ok = arr.shape == (2,) and (arr.dtype.kind in "iuf" or all(
        isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in arr))
    if ok:
        pitch, yaw = float(arr[0]), float(arr[1])
        if math.isfinite(pitch) and math.isfinite(yaw):
            return pitch, yaw
    raise DecodeSkip(f"{where}: value {shown(value)}, expected [pitch, yaw] in degrees (two finite numbers)")


def parse_action_dicts(actions: Sequence[Any], origin: ActionOrigin) -> tuple[np.ndarray, np.ndarray]:
    """``(buttons uint8 [n,23] in A.ENV_BUTTON_KEYS order, camera float64 [n,2] pitch/yaw degrees)``."""
    n = len(actions)
    buttons = np.zeros((n, len(A.ENV_BUTTON_KEYS)), np.uint8)
    camera = np.zeros((n, 2), np.float64)
    col = {k: j for j, k in enumerate(A.ENV_BUTTON_KEYS)}
    for i, action in enumerate(actions):
        where = origin.step(i)
        if not isinstance(action, dict):
            raise DecodeSkip(f"{where}: a {type(action).__name__}, expected a dict (JSON object) of MineRL actions")
        for key, value in action.items():
            if key == A.CAMERA_KEY:
                camera[i] = camera_value(value, f"{where}: key 'camera'")
            elif key in col:
                buttons[i, col[key]] = button_value(value, f"{where}: key {key!r}")
            else:
                raise DecodeSkip(f"{where}: unknown key {shown(key)}; expected MineRL action keys ({', '.join(KEYS)})")
    return buttons, camera
