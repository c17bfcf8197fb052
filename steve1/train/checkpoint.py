"""Resumable training state under ``<run>/checkpoint/``.

A checkpoint is written whole into ``checkpoint.partial/`` and then swapped in, so a process
killed at any moment leaves either the previous complete checkpoint or the new one:

* ``accelerate/``: ``Accelerator.save_state`` (model, optimizer, RNG states of every process;
  under DeepSpeed the engine's own ZeRO-partitioned files);
* ``recurrent_rank<r>.pt``: each process's detached transformer memory carried to the next batch;
* ``trainer_state.json`` (written last; its presence marks a complete checkpoint): step, frames
  and batch counters, the loader position, best val loss, next snapshot, the config fingerprint.
  The learning-rate schedule is a pure function of the frame counter, so it needs no state.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from steve1.io import disk_full_errors, write_json_atomic
from steve1.train.safe_load import verify_checkpoint, weights_only_loads

STATE_FILE = "trainer_state.json"


def _complete(path: Path) -> bool:
    return (path / STATE_FILE).is_file()


def find_checkpoint(run_dir: Path) -> Optional[Path]:
    """The complete checkpoint of a run: ``checkpoint/``, or ``checkpoint.old/`` if a swap was cut short."""
    for name in ("checkpoint", "checkpoint.old"):
        if _complete(run_dir / name):
            return run_dir / name
    return None


def save_checkpoint(accelerator, run_dir: Path, trainer_state: dict[str, Any], recurrent_state) -> Path:
    """Write a checkpoint from every process (a collective call) and swap it in; returns its path."""
    run_dir = Path(run_dir)
    partial, final, old = run_dir / "checkpoint.partial", run_dir / "checkpoint", run_dir / "checkpoint.old"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    try:
        with disk_full_errors(partial):  # torch's writer says only "basic_ios::clear: iostream error"
            accelerator.save_state(str(partial / "accelerate"))
            cpu_state = [(None if m is None else m.cpu(), (k.cpu(), v.cpu())) for m, (k, v) in recurrent_state]
            torch.save(cpu_state, partial / f"recurrent_rank{accelerator.process_index}.pt")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # the previous checkpoint stays whole
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(partial / STATE_FILE, trainer_state)
        if final.exists():
            if old.exists():
                shutil.rmtree(old)
            final.rename(old)
        partial.rename(final)
        if old.exists():
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_trainer_state(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / STATE_FILE).read_text())


def load_checkpoint(accelerator, path: Path, device) -> tuple[dict[str, Any], list]:
    """Restore model/optimizer/RNG into the prepared objects; return (trainer_state, recurrent state).

    Every file is loaded as data only (:mod:`steve1.train.safe_load`); a refused one stops the run.
    """
    path = Path(path)
    verify_checkpoint(path)
    with weights_only_loads(path):
        accelerator.load_state(str(path / "accelerate"))
    rec = path / f"recurrent_rank{accelerator.process_index}.pt"
    if not rec.is_file():
        raise FileNotFoundError(f"{rec}: missing; the checkpoint was written by a different number of processes")
    state = torch.load(rec, map_location="cpu", weights_only=True)
    state = [(None if m is None else m.to(device), (k.to(device), v.to(device))) for m, (k, v) in state]
    return load_trainer_state(path), state
