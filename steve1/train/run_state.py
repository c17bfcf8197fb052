"""Where a training run stands: the counters the loop advances and the checkpoint's ``trainer_state.json``.

:class:`RunState` is the schema of that file: its fields are exactly the keys a checkpoint stores
(the same keys as before the class existed, so older checkpoints load unchanged), and
:meth:`RunState.from_dict` refuses a file with a missing, unknown or mistyped key, naming the file
and the key. The learning-rate schedule is a pure function of ``frames``, so it needs no state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, Optional

from steve1.errors import UserError


class RunStateError(UserError, ValueError):
    """A checkpoint's trainer state is missing a key, has an unknown one, or holds a value of the wrong type."""


@dataclass
class RunState:
    """The training loop's counters, the loader position and the best validation so far."""

    fingerprint: str                          # config_fingerprint of the params that made the run
    step: int = 0                             # optimizer steps taken
    micro: int = 0                            # micro-steps (trunc_t-frame calls) taken
    frames: int = 0                           # frames trained on, all processes together
    batches: int = 0                          # loader batches consumed (seeds the augmentation)
    best_val_loss: Optional[float] = None     # lowest validation loss so far (None: not validated yet)
    best_step: Optional[int] = None           # the step that reached it
    last_val_step: int = 0                    # step of the last validation
    last_ckpt_step: int = 0                   # step of the last periodic checkpoint
    last_log_step: int = 0                    # step of the last metrics row
    next_snapshot_frames: int = 0             # frame count at which the next snapshot is written
    loader: dict[str, Any] = field(default_factory=dict)  # ChunkLoader.state_dict() when last checkpointed

    def to_dict(self) -> dict[str, Any]:
        """The JSON document a checkpoint stores."""
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Any, source: str = "trainer state") -> "RunState":
        """Validate a stored document; ``source`` (the file) starts every error message."""
        hint = "delete the checkpoint folder to start the run afresh"
        if not isinstance(doc, Mapping):
            raise RunStateError(f"{source}: expected a JSON object of run counters, got {type(doc).__name__}; {hint}")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in doc]
        unknown = sorted(k for k in doc if k not in names)
        if missing or unknown:
            parts = ([f"missing key(s) {missing}"] if missing else []) + ([f"unknown key(s) {unknown}"] if unknown else [])
            raise RunStateError(f"{source}: not a trainer state this code can resume ({'; '.join(parts)}); {hint}")
        for name in names:
            types, expected = _EXPECTED.get(name, ((int,), "an integer"))
            if not isinstance(doc[name], types) or isinstance(doc[name], bool):
                raise RunStateError(f"{source}: key {name!r} is {doc[name]!r}, expected {expected}; {hint}")
        return cls(**{n: doc[n] for n in names})


# Types of the fields that are not plain integer counters (JSON writes 1.0 as 1.0, but accept 1 too).
_EXPECTED: dict[str, tuple[tuple[type, ...], str]] = {
    "fingerprint": ((str,), "a string"),
    "best_val_loss": ((float, int, type(None)), "a number or null"),
    "best_step": ((int, type(None)), "an integer or null"),
    "loader": ((dict,), "an object"),
}
