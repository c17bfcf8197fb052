"""Resumable training state under ``<run>/checkpoint/``.

A checkpoint is written whole into ``checkpoint.partial/`` and then swapped in, so a process
killed at any moment leaves either the previous complete checkpoint or the new one:

* ``accelerate/``: ``Accelerator.save_state`` (model, optimizer, RNG states of every process;
  under DeepSpeed the engine's own ZeRO-partitioned files);
* ``recurrent_rank<r>.pt``: each process's detached transformer memory carried to the next batch;
* ``kept/dvclive/``: the training curves as of this step (DVC deletes the run's ``dvclive/``
  before it reruns the stage; a resume puts this copy back);
* ``trainer_state.json`` (written last; its presence marks a complete checkpoint): the
  :class:`~steve1.train.run_state.RunState` (step, frames and batch counters, the loader position,
  best val loss, next snapshot, the config fingerprint), validated when loaded.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Sequence

import torch

from steve1.errors import MissingInputError
from steve1.io import disk_full_errors, read_json, write_json_atomic
from steve1.train.run_state import RunState, RunStateError
from steve1.train.safe_load import verify_checkpoint, weights_only_loads

STATE_FILE = "trainer_state.json"
KEPT = "kept"          # copies of the folders save_checkpoint(keep=...) was given, as of the checkpoint's step


def _complete(path: Path) -> bool:
    return (path / STATE_FILE).is_file()


def _swap_names(final: Path) -> tuple[Path, Path]:
    """The checkpoint being written and the one being replaced, beside ``final`` (``RunLayout.checkpoint``)."""
    return final.with_name(final.name + ".partial"), final.with_name(final.name + ".old")


def find_checkpoint(final: Path) -> Optional[Path]:
    """The complete checkpoint of a run: ``final`` (``RunLayout.checkpoint``), or its ``.old`` twin if a
    swap was cut short."""
    final = Path(final)
    for path in (final, _swap_names(final)[1]):
        if _complete(path):
            return path
    return None


def remove_checkpoint(final: Path) -> None:
    """Delete a run's checkpoint and its swap twins (a checkpoint of another run must never be resumed)."""
    final = Path(final)
    for path in (final, *_swap_names(final)):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def save_checkpoint(accelerator, final: Path, run_state: RunState, recurrent_state, keep: Sequence[Path] = ()) -> Path:
    """Write a checkpoint from every process (a collective call) and swap it in as ``final``; returns it.

    ``keep``: folders copied into the checkpoint as they are at this step (the dvclive curves), so a
    resume restores them even when DVC deleted the originals before rerunning the stage."""
    final = Path(final)
    partial, old = _swap_names(final)
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
        for folder in map(Path, keep):
            if folder.is_dir():
                shutil.copytree(folder, partial / KEPT / folder.name)
        write_json_atomic(partial / STATE_FILE, run_state.to_dict())
        if final.exists():
            if old.exists():
                shutil.rmtree(old)
            final.rename(old)
        partial.rename(final)
        if old.exists():
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def restore_kept(checkpoint: Path, folder: Path) -> bool:
    """Replace ``folder`` by its copy in ``checkpoint`` (as of the checkpoint's step); False when none."""
    copy = Path(checkpoint) / KEPT / Path(folder).name
    if not copy.is_dir():
        return False
    if Path(folder).exists():
        shutil.rmtree(folder)
    shutil.copytree(copy, folder)
    return True


def load_trainer_state(path: Path) -> RunState:
    """The checkpoint's :class:`RunState`; a malformed file raises :class:`RunStateError` naming it."""
    file = Path(path) / STATE_FILE
    return RunState.from_dict(read_json(file, error=RunStateError), source=str(file))


def load_checkpoint(accelerator, path: Path, device) -> tuple[RunState, list]:
    """Restore model/optimizer/RNG into the prepared objects; return (run state, recurrent state).

    Every file is loaded as data only (:mod:`steve1.train.safe_load`); a refused one stops the run.
    """
    path = Path(path)
    verify_checkpoint(path)
    with weights_only_loads(path):
        accelerator.load_state(str(path / "accelerate"))
    rec = path / f"recurrent_rank{accelerator.process_index}.pt"
    if not rec.is_file():
        raise MissingInputError(f"{rec}: missing; the checkpoint was written by a different number of processes")
    state = torch.load(rec, map_location="cpu", weights_only=True)
    state = [(None if m is None else m.to(device), (k.to(device), v.to(device))) for m, (k, v) in state]
    return load_trainer_state(path), state
