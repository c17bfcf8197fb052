"""steve1/devices.py: the one reading of a device param, on a machine with or without GPUs."""

from __future__ import annotations

import pytest
import torch

from steve1.devices import DeviceError, resolve_device
from steve1.errors import UserError


def _gpus(monkeypatch, n: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


def test_without_gpus_auto_is_the_cpu_and_cuda_is_refused_naming_the_param(monkeypatch):
    _gpus(monkeypatch, 0)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu", "embed.device", local_rank=3) == torch.device("cpu")
    for name in ("cuda", "cuda:1"):
        with pytest.raises(DeviceError, match=rf"^rollout.device is '{name}' but no CUDA device is available; "
                                              r"use 'auto' or 'cpu'$"):
            resolve_device(name, "rollout.device")
    assert issubclass(DeviceError, UserError) and issubclass(DeviceError, ValueError)


def test_with_gpus_cuda_is_the_current_gpu_or_the_ranks_and_cuda_n_is_gpu_n(monkeypatch):
    _gpus(monkeypatch, 2)
    assert resolve_device("auto") == torch.device("cuda")             # no index: recorded as "cuda", as before
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=3) == torch.device("cuda", 1)    # ranks beyond the node's GPUs wrap
    assert resolve_device("cuda:1", local_rank=0) == torch.device("cuda", 1)
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"^evaluate.device is 'cuda:2' but this machine has 2 CUDA device\(s\)"):
        resolve_device("cuda:2", "evaluate.device")
