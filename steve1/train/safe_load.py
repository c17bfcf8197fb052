"""Resume checkpoints load as data, never as code.

DeepSpeed loads its model and optimizer states with ``torch.load(weights_only=False)``, and
Accelerate only logs a random-states file it refuses; a tampered checkpoint (it can arrive by
``dvc pull`` or over a shared filesystem) could then run code. Here every pickle of a checkpoint
is first loaded weights-only with an explicit allow-list (:func:`verify_checkpoint`), and while
Accelerate/DeepSpeed restore it every ``torch.load`` is forced weights-only with the same list
(:func:`weights_only_loads`), so a file swapped after the check is refused too. Any refusal stops
the run with :class:`UnsafeCheckpointError` naming the file.

The allow-list is what Accelerate + DeepSpeed checkpoints of this trainer hold besides tensors
and plain containers (found by listing the pickles' globals under ZeRO-1/2/3 and plain
Accelerate): DeepSpeed's loss scaler, ZeRO stage enum and fragment address, and numpy's array,
dtype and the ``codecs.encode`` its byte arrays pickle through (the RNG states).
"""

from __future__ import annotations

import codecs
import contextlib
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from steve1.errors import UserError

PICKLE_SUFFIXES = (".pt", ".pkl", ".bin")


class UnsafeCheckpointError(UserError, ValueError):
    """A checkpoint file does not load as plain data (tampered, corrupt, or of an unknown kind)."""


def allowed_globals() -> list[Any]:
    """The non-tensor types a trusted checkpoint may hold (imported lazily: DeepSpeed is optional)."""
    # the very callables numpy pickles arrays with (their module moved between numpy versions)
    reconstruct = np.zeros(1).__reduce__()[0]
    allowed: list[Any] = [reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32)), codecs.encode]
    try:
        from deepspeed.runtime.fp16.loss_scaler import LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address
    except ImportError:
        return allowed
    return allowed + [LossScaler, ZeroStageEnum, fragment_address]


def _cause(exc: BaseException) -> str:
    """The reason in a few words (torch's own text suggests allow-listing whatever was refused)."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text) or re.search(r"but got (<[^>]+>)", text)
    if found:
        return f"it references {found.group(1)}, which is not an allowed type"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _refusal(path: Path, checkpoint: Path, exc: BaseException) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"{path}: refused to load this resume checkpoint file: it does not load as plain weights and data "
        f"({_cause(exc)}); it may have been tampered with or damaged. Delete {checkpoint} to train from "
        f"scratch, or restore it from a trusted copy")


@contextlib.contextmanager
def _only_allowed() -> Iterator[None]:
    """Exactly our allow-list for the block (whatever a library added before)."""
    before = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(allowed_globals())
    try:
        yield
    finally:
        torch.serialization.clear_safe_globals()
        if before:
            torch.serialization.add_safe_globals(before)


def verify_checkpoint(checkpoint: str | Path) -> int:
    """Weights-only load of every ``.pt``/``.pkl``/``.bin`` under ``checkpoint``; return how many.

    Tensors are memory-mapped where the file format allows, so only the pickles are read.
    """
    checkpoint = Path(checkpoint)
    files = sorted(p for p in checkpoint.rglob("*") if p.suffix in PICKLE_SUFFIXES and p.is_file())
    for path in files:
        try:
            with _only_allowed():
                torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except Exception as exc:
            raise _refusal(path, checkpoint, exc) from None
    return len(files)


@contextlib.contextmanager
def weights_only_loads(checkpoint: str | Path) -> Iterator[None]:
    """Inside the block, every ``torch.load`` is weights-only with the allow-list.

    A refused file is raised after the block even where a library caught the error (Accelerate
    logs a failed random-states load and carries on).
    """
    checkpoint = Path(checkpoint)
    original = torch.load
    refused: list[UnsafeCheckpointError] = []

    def load(f, map_location=None, **kwargs):
        kwargs["weights_only"] = True
        kwargs.pop("pickle_module", None)  # weights-only loading uses its own unpickler
        try:
            with _only_allowed():
                return original(f, map_location=map_location, **kwargs)
        except Exception as exc:
            refused.append(_refusal(Path(f) if isinstance(f, (str, Path)) else Path(str(f)), checkpoint, exc))
            raise refused[-1] from None

    torch.load = load
    try:
        yield
    except Exception:
        if refused:  # whatever the library made of our error, report the file
            raise refused[0] from None
        raise
    finally:
        torch.load = original
    if refused:
        raise refused[0]
