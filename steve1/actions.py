"""The VPT action space: mu-law camera bins and the hierarchical joint button index (8641 x 121).

Env side is the MineRL action dict (23 buttons + camera [pitch, yaw] in degrees); policy side is
two joint indices, ``buttons`` in [0, 8641) and ``camera`` in [0, 121). Everything here is
vectorised over a leading batch axis and matches the official VPT ``ActionTransformer`` +
``CameraHierarchicalMapping(n_camera_bins=11)`` bit for bit (see tests/test_actions.py).
"""

from __future__ import annotations

import itertools
from typing import Mapping

import numpy as np

# ---------------------------------------------------------------- camera quantiser
CAMERA_MAXVAL = 10          # degrees; env camera is clipped to +-10 before binning
CAMERA_BINSIZE = 2
CAMERA_MU = 10
N_CAMERA_BINS = 11          # per axis: (2 * maxval) / binsize + 1
CAMERA_NULL_BIN = CAMERA_MAXVAL // CAMERA_BINSIZE           # 5: the bin of 0 degrees
N_CAMERA = N_CAMERA_BINS * N_CAMERA_BINS                    # 121 joint camera indices
CAMERA_NULL_IDX = CAMERA_NULL_BIN * N_CAMERA_BINS + CAMERA_NULL_BIN   # 60

# ---------------------------------------------------------------- buttons
# factored order (VPT Buttons.ALL): bit j of a factored bitmask is BUTTONS_ALL[j]
BUTTONS_ALL = (
    "attack", "back", "forward", "jump", "left", "right", "sneak", "sprint", "use", "drop", "inventory",
    *(f"hotbar.{i}" for i in range(1, 10)),
)
N_FACTORED_BUTTONS = len(BUTTONS_ALL)   # 20
_BIDX = {b: i for i, b in enumerate(BUTTONS_ALL)}

# MineRL env buttons (sorted as MineRL lists them); ESC, pickItem and swapHands are dropped by env2policy
ENV_BUTTON_KEYS = (
    "ESC", "attack", "back", "drop", "forward", *(f"hotbar.{i}" for i in range(1, 10)), "inventory", "jump",
    "left", "pickItem", "right", "sneak", "sprint", "swapHands", "use",
)
CAMERA_KEY = "camera"

# joint button groups, in index order (LAST group varies fastest); "none" is option 0 of each
BUTTON_GROUPS: dict[str, tuple[str, ...]] = {
    "hotbar": ("none", *(f"hotbar.{i}" for i in range(1, 10))),
    "fore_back": ("none", "forward", "back"),
    "left_right": ("none", "left", "right"),
    "sprint_sneak": ("none", "sprint", "sneak"),
    "use": ("none", "use"),
    "drop": ("none", "drop"),
    "attack": ("none", "attack"),
    "jump": ("none", "jump"),
    "camera": ("none", "camera"),      # camera-meta: is the camera head used at all
}
_RADICES = np.array([len(g) for g in BUTTON_GROUPS.values()])
_N_COMBOS = int(np.prod(_RADICES))     # 8640 ordinary combinations
INVENTORY_IDX = _N_COMBOS              # 8640: inventory alone (camera forced null)
N_BUTTONS = _N_COMBOS + 1              # 8641
NULL_BUTTONS_IDX = 0
# groups where pressing both options means "neither"
_CANCELLING = ("fore_back", "left_right")


def _build_tables() -> tuple[np.ndarray, np.ndarray]:
    """Joint index -> factored bitmask [8641] and camera-meta-off flag [8641] (built once)."""
    bitmask = np.zeros(N_BUTTONS, dtype=np.int64)
    meta_off = np.zeros(N_BUTTONS, dtype=bool)
    for idx, opts in enumerate(itertools.product(*(range(r) for r in _RADICES))):   # last group fastest
        bits = 0
        for (name, options), o in zip(BUTTON_GROUPS.items(), opts):
            if name != "camera" and o:
                bits |= 1 << _BIDX[options[o]]
        bitmask[idx] = bits
        meta_off[idx] = opts[-1] == 0
    bitmask[INVENTORY_IDX] = 1 << _BIDX["inventory"]
    meta_off[INVENTORY_IDX] = False       # official quirk: to_factored leaves inventory's camera alone
    return bitmask, meta_off


BUTTON_IDX_TO_BITMASK, BUTTON_IDX_CAMERA_META_OFF = _build_tables()
_BITS = 1 << np.arange(N_FACTORED_BUTTONS)


# ---------------------------------------------------------------- camera
def discretize_camera(camera: np.ndarray) -> np.ndarray:
    """Env degrees [..., 2] -> bins [..., 2] int64 (clip, mu-law encode, round half to even)."""
    xy = np.clip(np.asarray(camera, dtype=np.float64), -CAMERA_MAXVAL, CAMERA_MAXVAL) / CAMERA_MAXVAL
    xy = np.sign(xy) * (np.log(1.0 + CAMERA_MU * np.abs(xy)) / np.log(1.0 + CAMERA_MU)) * CAMERA_MAXVAL
    return np.round((xy + CAMERA_MAXVAL) / CAMERA_BINSIZE).astype(np.int64)


def undiscretize_camera(bins: np.ndarray) -> np.ndarray:
    """Bins [..., 2] -> env degrees [..., 2] float64 (the bin centres)."""
    xy = (np.asarray(bins) * CAMERA_BINSIZE - CAMERA_MAXVAL) / CAMERA_MAXVAL
    return np.sign(xy) * (1.0 / CAMERA_MU) * ((1.0 + CAMERA_MU) ** np.abs(xy) - 1.0) * CAMERA_MAXVAL


# ---------------------------------------------------------------- env <-> factored
def env2policy(env: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Env action columns -> (factored buttons [N,20] int64, camera bins [N,2] int64).

    Keys not in BUTTONS_ALL (ESC, pickItem, swapHands) are ignored; missing buttons count as 0.
    """
    camera = np.asarray(env[CAMERA_KEY], dtype=np.float64).reshape(-1, 2)   # [N,2]
    n = len(camera)
    buttons = np.zeros((n, N_FACTORED_BUTTONS), dtype=np.int64)
    for j, key in enumerate(BUTTONS_ALL):
        if key in env:
            buttons[:, j] = np.asarray(env[key]).reshape(n)
    return buttons, discretize_camera(camera)


def from_factored(buttons: np.ndarray, camera_bins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(factored buttons [N,20], camera bins [N,2]) -> joint (buttons [N], camera [N]) int64."""
    pressed = np.asarray(buttons).reshape(-1, N_FACTORED_BUTTONS) != 0      # [N,20]
    bins = np.asarray(camera_bins, dtype=np.int64).reshape(-1, 2)           # [N,2]
    camera_on = np.any(bins != CAMERA_NULL_BIN, axis=1)
    idx = np.zeros(len(pressed), dtype=np.int64)
    for name, options in BUTTON_GROUPS.items():
        if name == "camera":
            choice = camera_on.astype(np.int64)
        else:
            cols = pressed[:, [_BIDX[o] for o in options[1:]]]              # [N, n_options-1]
            # the last pressed option wins (sneak over sprint, higher hotbar over lower)
            choice = np.where(cols.any(1), cols.shape[1] - np.argmax(cols[:, ::-1], axis=1), 0)
            if name in _CANCELLING:
                choice = np.where(cols.all(1), 0, choice)
        idx = idx * len(options) + choice
    inventory = pressed[:, _BIDX["inventory"]]
    idx = np.where(inventory, INVENTORY_IDX, idx)
    cam_idx = np.where(inventory, CAMERA_NULL_IDX, bins[:, 0] * N_CAMERA_BINS + bins[:, 1])
    return idx, cam_idx


def to_factored(buttons_idx: np.ndarray, camera_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Joint (buttons [N], camera [N]) -> (factored buttons [N,20] int64, camera bins [N,2] int64)."""
    b = np.asarray(buttons_idx, dtype=np.int64).reshape(-1)
    c = np.asarray(camera_idx, dtype=np.int64).reshape(-1)
    if b.size and (b.min() < 0 or b.max() >= N_BUTTONS or c.min() < 0 or c.max() >= N_CAMERA):
        raise ValueError(f"action indices out of range: buttons must be in [0, {N_BUTTONS}), "
                         f"camera in [0, {N_CAMERA}); got buttons {b.min()}..{b.max()}, camera {c.min()}..{c.max()}")
    factored = ((BUTTON_IDX_TO_BITMASK[b][:, None] & _BITS) != 0).astype(np.int64)   # [N,20]
    bins = np.stack([c // N_CAMERA_BINS, c % N_CAMERA_BINS], axis=1)                 # [N,2]
    bins[BUTTON_IDX_CAMERA_META_OFF[b]] = CAMERA_NULL_BIN
    return factored, bins


def policy2env(buttons: np.ndarray, camera_bins: np.ndarray) -> dict[str, np.ndarray]:
    """Factored (buttons [N,20], bins [N,2]) -> env columns: one [N] per BUTTONS_ALL key + camera [N,2]."""
    buttons = np.asarray(buttons).reshape(-1, N_FACTORED_BUTTONS)
    out = {key: buttons[:, j] for j, key in enumerate(BUTTONS_ALL)}
    out[CAMERA_KEY] = undiscretize_camera(np.asarray(camera_bins).reshape(-1, 2))
    return out


def env_to_agent(env: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Env action columns -> joint (buttons [N], camera [N]): env2policy then from_factored."""
    return from_factored(*env2policy(env))


def agent_to_env(buttons_idx: int, camera_idx: int) -> dict[str, object]:
    """One agent action -> a full MineRL env action dict (all 24 keys; camera float degrees).

    Keys the policy cannot express (ESC, pickItem, swapHands) are 0, as in the official agent.
    """
    factored, bins = to_factored(np.array([buttons_idx]), np.array([camera_idx]))
    cols = policy2env(factored, bins)
    action: dict[str, object] = {key: 0 for key in ENV_BUTTON_KEYS}
    action.update({key: int(cols[key][0]) for key in BUTTONS_ALL})
    action[CAMERA_KEY] = cols[CAMERA_KEY][0].astype(np.float64)
    return action
