"""The one place Accelerate (and through it DeepSpeed) is constructed.

``train.deepspeed`` picks the engine: ``none`` is plain Accelerate (one process, or DDP under
``accelerate launch``); ``zero1``/``zero2``/``zero3`` load ``configs/deepspeed/<name>.json``; any
other value is a DeepSpeed JSON path. ``"auto"`` entries are filled here from the train params
(micro batch, accumulation, clipping, bf16), so the engine never guesses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from steve1.errors import UserError
from steve1.io import read_json
from steve1.params import TrainParams

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "deepspeed"


class AcceleratorConfigError(UserError, ValueError):
    """The DeepSpeed choice or its JSON cannot be used."""


def mixed_precision(tp: TrainParams) -> str:
    """``bf16`` on GPU (auto) or when asked; fp32 (``no``) on CPU.

    Plain Accelerate applies it itself (autocast); under DeepSpeed the training module autocasts
    (``BCModule(autocast=True)``) and the engine keeps fp32 weights, so the uint8 frames the
    policy scales to fp32 never meet bf16 weights.
    """
    if tp.mixed_precision == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    return tp.mixed_precision


def deepspeed_config(tp: TrainParams) -> dict[str, Any]:
    """The chosen DeepSpeed JSON with every ``"auto"`` resolved from ``tp``."""
    path = CONFIGS / f"{tp.deepspeed}.json" if tp.deepspeed in ("zero1", "zero2", "zero3") else Path(tp.deepspeed)
    cfg = read_json(path, AcceleratorConfigError, "train.deepspeed: use none, zero1, zero2, zero3 or a JSON path")
    fill = {"train_micro_batch_size_per_gpu": tp.batch_size, "gradient_accumulation_steps": tp.grad_accum,
            "gradient_clipping": tp.max_grad_norm}
    for key, value in fill.items():
        if cfg.get(key, "auto") == "auto":
            cfg[key] = value
        elif cfg[key] != value:
            raise AcceleratorConfigError(f"{path}: {key} is {cfg[key]!r} but train params say {value!r}; "
                                         f"set it to \"auto\" in the JSON")
    cfg["bf16"] = {**cfg.get("bf16", {}), "enabled": False}  # bf16 is autocast in the module (see build_accelerator)
    cfg["fp16"] = {"enabled": False}
    zero = cfg.setdefault("zero_optimization", {"stage": 0})
    if (not torch.cuda.is_available() and zero.get("stage") in (1, 2)
            and not (zero.get("contiguous_gradients") or zero.get("reduce_scatter"))):
        # DeepSpeed's CPU path silently skips the gradient all-reduce for ZeRO-1/2 unless one is on.
        raise AcceleratorConfigError(f"{path}: ZeRO-{zero['stage']} on CPU needs zero_optimization.contiguous_gradients "
                                     f"or reduce_scatter set to true (otherwise gradients are not averaged)")
    return cfg


def _single_process_env() -> None:
    """DeepSpeed always initialises torch.distributed: give a lone process a world of one.

    Its rendezvous is an in-process store, not a TCP port: a port picked free and released could be
    taken by another process (a Ray cluster, another training) before torch binds it (EADDRINUSE).
    DeepSpeed and Accelerate use a process group that is already initialised as it is."""
    global _OWN_WORLD
    if "LOCAL_RANK" in os.environ and not _OWN_WORLD:     # launched (accelerate launch, deepspeed): its world
        return
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"})
    _OWN_WORLD = True
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                             store=torch.distributed.HashStore(), rank=0, world_size=1)


_OWN_WORLD = False      # this process made its world of one (the variables above are its own)


def build_accelerator(tp: TrainParams) -> Accelerator:
    """Accelerate with or without DeepSpeed, fp32 on CPU and bf16 on GPU, ``grad_accum`` steps."""
    precision = mixed_precision(tp)
    if tp.deepspeed == "none":
        # Without a GPU, Accelerate counts N launched processes as one world only when told it runs
        # on the CPU (then DDP over gloo); otherwise each process trains alone, unaveraged.
        return Accelerator(gradient_accumulation_steps=tp.grad_accum, mixed_precision=precision,
                           cpu=not torch.cuda.is_available())
    from accelerate.utils import DeepSpeedPlugin, InitProcessGroupKwargs

    cfg = deepspeed_config(tp)
    _single_process_env()
    if not torch.cuda.is_available():
        # The shared-memory collective kernel is JIT-compiled on first use (minutes); gloo does the job.
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    plugin = DeepSpeedPlugin(hf_ds_config=cfg, gradient_accumulation_steps=tp.grad_accum,
                             gradient_clipping=tp.max_grad_norm)
    handlers = []
    if not torch.cuda.is_available():
        # Without a GPU, Accelerate finds no backend and would count one process while DeepSpeed
        # runs N; naming gloo makes both agree on the world.
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    # bf16 runs as autocast inside the training module (fp32 weights and optimizer state), so the
    # engine itself stays fp32 here.
    return Accelerator(deepspeed_plugin=plugin, mixed_precision="no", gradient_accumulation_steps=tp.grad_accum,
                       kwargs_handlers=handlers)
