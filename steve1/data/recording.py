"""Contractor jsonl -> MineRL env actions, with the official VPT/STEVE-1 semantics and quirks.

One jsonl line is one 20 Hz tick and goes with video frame i. The rules (checked against the
official code's outputs in tests/data/test_recording.py):

* keys map to env buttons through :data:`KEY_TO_BUTTON`; unknown keys are ignored;
  mouse buttons 0/1/2 are attack/use/pickItem;
* camera = [dy, dx] * 360/2400 degrees. The official code stores it in an int64 array, which
  truncates toward zero to whole degrees; that is reproduced with ``camera_int_truncation=True``,
  the default keeps the float64 value;
* stuck attack: when line 0's ``newButtons == [0]`` exactly, attack is removed from every line
  until one whose ``newButtons`` contains 0 (that line keeps it);
* hotbar: a change of the ``hotbar`` field sets ``hotbar.{h+1}``; it is tracked on null lines
  too, so a scroll-only line is dropped and its change is lost (as in the official code);
* a line is null when no mapped key, no mouse move and no mouse button is present; null lines
  are skipped. ESC, swapHands and pickItem make a line non-null (policy drops them later).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from steve1 import actions as A
from steve1.errors import UserError

CAMERA_SCALER = 360.0 / 2400.0          # degrees per mouse pixel
RECORDER_HEIGHT_PX = 720                 # GUI cursor coordinates are in 1280x720 space

KEY_TO_BUTTON = {
    "key.keyboard.escape": "ESC",
    "key.keyboard.s": "back",
    "key.keyboard.q": "drop",
    "key.keyboard.w": "forward",
    **{f"key.keyboard.{i}": f"hotbar.{i}" for i in range(1, 10)},
    "key.keyboard.e": "inventory",
    "key.keyboard.space": "jump",
    "key.keyboard.a": "left",
    "key.keyboard.d": "right",
    "key.keyboard.left.shift": "sneak",
    "key.keyboard.left.control": "sprint",
    "key.keyboard.f": "swapHands",
}
MOUSE_TO_BUTTON = {0: "attack", 1: "use", 2: "pickItem"}
_COL = {k: j for j, k in enumerate(A.ENV_BUTTON_KEYS)}


class RecordingError(UserError, ValueError):
    """A jsonl recording cannot be parsed."""


@dataclass
class RecordingActions:
    """Env actions of the kept (non-null) lines of one recording; every per-step array is [K]."""

    n_lines: int
    is_null: np.ndarray            # bool [n_lines]
    kept_steps: np.ndarray         # int64 [K]: jsonl line (= video frame) of each kept step
    env: dict[str, np.ndarray]     # 23 env buttons -> uint8 [K]; "camera" -> float64 [K,2] (pitch, yaw)
    gui_open: np.ndarray           # bool [K]
    cursor_xy: np.ndarray          # float64 [K,2]: mouse x, y in 1280x720 space
    n_attack_removed: int          # lines whose attack press the stuck-attack rule removed
    n_hotbar_changes: int          # lines where the hotbar field changed (kept or not)

    @property
    def n_kept(self) -> int:
        return len(self.kept_steps)

    def take(self, k: int) -> "RecordingActions":
        """The first ``k`` kept steps (when the video ends before the jsonl)."""
        return RecordingActions(
            self.n_lines, self.is_null, self.kept_steps[:k], {key: v[:k] for key, v in self.env.items()},
            self.gui_open[:k], self.cursor_xy[:k], self.n_attack_removed, self.n_hotbar_changes,
        )

    def agent_actions(self) -> tuple[np.ndarray, np.ndarray]:
        """Joint agent indices (buttons [K] in [0, 8641), camera [K] in [0, 121))."""
        return A.env_to_agent(self.env)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Parse a contractor jsonl; errors name the file and the 1-based line number."""
    path = Path(path)
    steps = []
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                step = json.loads(line)
                step["mouse"]["buttons"], step["keyboard"]["keys"]  # the fields every rule needs
            except (ValueError, KeyError, TypeError) as exc:
                raise RecordingError(f"{path}:{lineno}: not a contractor action line ({type(exc).__name__}: {exc})") from None
            steps.append(step)
    return steps


def convert_steps(steps: Iterable[dict[str, Any]], camera_int_truncation: bool = False,
                  origin: str = "<steps>") -> RecordingActions:
    """Apply the official conversion to parsed jsonl lines (the input is not modified)."""
    steps = list(steps)
    n = len(steps)
    buttons = np.zeros((n, len(A.ENV_BUTTON_KEYS)), dtype=np.uint8)    # [n,23]
    dxdy = np.zeros((n, 2), dtype=np.float64)                          # [n,2] (dy, dx) pixels
    gui = np.zeros(n, dtype=bool)
    cursor = np.zeros((n, 2), dtype=np.float64)
    active = np.zeros(n, dtype=bool)                                   # a mapped key or a mouse button
    attack_stuck, last_hotbar, n_removed, n_hotbar = False, 0, 0, 0
    for i, step in enumerate(steps):
        try:
            mouse, keys = step["mouse"], step["keyboard"]["keys"]
            new_buttons = mouse["newButtons"]
            if i == 0:
                attack_stuck = new_buttons == [0]
            elif attack_stuck and 0 in new_buttons:
                attack_stuck = False
            pressed = mouse["buttons"]
            if attack_stuck and 0 in pressed:
                pressed = [b for b in pressed if b != 0]
                n_removed += 1
            row = buttons[i]
            for key in keys:
                if key in KEY_TO_BUTTON:
                    row[_COL[KEY_TO_BUTTON[key]]] = 1
                    active[i] = True
            for b, name in MOUSE_TO_BUTTON.items():
                if b in pressed:
                    row[_COL[name]] = 1
                    active[i] = True
            dxdy[i] = mouse["dy"], mouse["dx"]
            hotbar = step["hotbar"]
            if hotbar != last_hotbar:
                row[_COL[f"hotbar.{hotbar + 1}"]] = 1
                n_hotbar += 1
            last_hotbar = hotbar
            gui[i] = bool(step["isGuiOpen"])
            cursor[i] = mouse["x"], mouse["y"]
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordingError(f"{origin}:{i + 1}: missing or malformed field ({type(exc).__name__}: {exc})") from None

    # a hotbar change alone does not make a line non-null
    is_null = ~(active | (dxdy != 0).any(1))
    camera = dxdy * CAMERA_SCALER                                      # [n,2] degrees
    if camera_int_truncation:
        camera = np.trunc(camera) + 0.0                                # toward zero, no -0.0
    kept = np.flatnonzero(~is_null)
    env = {key: buttons[kept, j] for j, key in enumerate(A.ENV_BUTTON_KEYS)}
    env[A.CAMERA_KEY] = camera[kept]
    return RecordingActions(n, is_null, kept.astype(np.int64), env, gui[kept], cursor[kept], n_removed, n_hotbar)


def convert_recording(path: str | Path, camera_int_truncation: bool = False) -> RecordingActions:
    """Read and convert one contractor jsonl file."""
    return convert_steps(read_jsonl(path), camera_int_truncation, origin=str(path))
