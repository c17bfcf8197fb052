"""steve1.train.checkpoint and the trainer's storage checks: a full disk while checkpointing is named
and keeps the previous checkpoint whole; an unwritable run folder fails before any work."""

from __future__ import annotations

import json

import pytest

from steve1.train.run_state import RunState

import steve1.io
from steve1.io import DiskFullError, NotWritableError
from steve1.train import checkpoint as ckpt


class _FullDiskAccelerator:
    """What ``save_checkpoint`` uses of Accelerate, with torch's C++ writer failing on a full disk."""

    is_main_process, process_index = True, 0

    def wait_for_everyone(self) -> None:
        pass

    def save_state(self, path: str) -> None:
        from pathlib import Path

        Path(path).mkdir(parents=True)
        (Path(path) / "pytorch_model.bin").write_bytes(b"half a file")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0\nbasic_ios::clear: "
                           "iostream error")


def test_a_full_disk_while_checkpointing_is_named_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "checkpoint" / ckpt.STATE_FILE).write_text(json.dumps(RunState("f", step=4).to_dict()))
    monkeypatch.setattr(steve1.io, "free_bytes", lambda path: 0)
    with pytest.raises(DiskFullError, match=rf"^disk full at {run / 'checkpoint.partial'} \(\[enforce fail"):
        ckpt.save_checkpoint(_FullDiskAccelerator(), run / "checkpoint", RunState("f", step=8), [])
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint"]  # no partial checkpoint left
    assert ckpt.load_trainer_state(ckpt.find_checkpoint(run / "checkpoint")).step == 4


def test_an_unwritable_run_folder_fails_before_the_accelerator_is_built(tmp_path, monkeypatch):
    from steve1.params import Params
    from steve1.train import trainer

    (tmp_path / "a-file").write_text("")
    params = Params().model_copy(update={"paths": Params().paths.model_copy(update={"models": str(tmp_path / "a-file")})})
    monkeypatch.setattr(trainer, "build_accelerator", lambda tp: pytest.fail("accelerator built before the check"))
    monkeypatch.setattr(trainer.Sampling, "load", classmethod(lambda cls, path: pytest.fail("sampling read before the check")))
    with pytest.raises(NotWritableError, match=rf"{tmp_path / 'a-file' / params.train.run}: output folder is not "
                                               r"writable \(Not a directory\)"):
        trainer.train(params)
