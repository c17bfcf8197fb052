"""The one reading of a ``device`` param (``auto | cpu | cuda | cuda:N``) as a ``torch.device``.

Every stage that computes (generate, rollout, offline eval, embed) resolves its device here, where
its work runs: a Ray actor resolves ``auto`` to its own GPU, and under ``accelerate launch`` each
process passes its local rank and takes that GPU of its node.
"""

from __future__ import annotations

from typing import Optional

import torch

from steve1.errors import UserError


class DeviceError(UserError, ValueError):
    """A device param names a GPU this machine does not have."""


def resolve_device(name: str | torch.device, key: str = "device", local_rank: Optional[int] = None) -> torch.device:
    """``name`` as a device: ``auto`` is CUDA when available, else the CPU; ``cuda`` is the current GPU, or
    with ``local_rank`` that GPU of the node (modulo the GPUs there); ``cuda:N`` is GPU N. ``key`` names the
    param in the error raised when CUDA, or GPU N, is not there."""
    name = str(name)
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        name = "cuda"
    dev = torch.device(name)
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise DeviceError(f"{key} is {name!r} but no CUDA device is available; use 'auto' or 'cpu'")
    count = torch.cuda.device_count()
    if dev.index is None:
        return dev if local_rank is None else torch.device("cuda", local_rank % count)
    if dev.index >= count:
        raise DeviceError(f"{key} is {name!r} but this machine has {count} CUDA device(s); use 'auto' or 'cuda'")
    return dev
