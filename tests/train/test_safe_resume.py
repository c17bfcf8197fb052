"""Resume loads checkpoints as data only: a tampered DeepSpeed model-states, optimizer-states or
random-states file stops the run with its name and never runs its code; untampered checkpoints of
ZeRO-1/2/3 and plain Accelerate pass the check and resume bit-exactly."""

from __future__ import annotations

import builtins
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from steve1.train.safe_load import UnsafeCheckpointError, verify_checkpoint
from test_train_run import KILLER, RUN, _column, _env, _stage, _steps, _weights
from toy_world import make_world

REPO = Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling this runs ``exec``: it writes ``marker``. What an attacker would plant."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def _plant(path: Path, marker: Path) -> None:
    torch.save({"module": _Payload(marker), "step": 4}, path)


def _killed_run(root: Path, overrides: dict) -> Path:
    """A run killed after its step-4 checkpoint; returns its params path."""
    params = make_world(root, {**RUN, **overrides})
    killed = subprocess.run([sys.executable, "-c", KILLER, str(params)], cwd=REPO, env=_env(), capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    return params


@pytest.fixture(scope="module")
def killed_zero2(tmp_path_factory) -> Path:
    return _killed_run(tmp_path_factory.mktemp("killed"), {}).parent


def test_the_planted_pickle_runs_code_when_loaded_unsafely(tmp_path):
    marker = tmp_path / "marker"
    _plant(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)  # what DeepSpeed does with its states files
    assert marker.read_text() == "code ran"  # so the tests below would see it if it ran


# one tensor file and the pickle in the default tier; the optimizer shard is the same loader (slow tier)
@pytest.mark.parametrize("name", ["pytorch_model/mp_rank_00_model_states.pt",
                                  pytest.param("pytorch_model/zero_pp_rank_0_mp_rank_00_optim_states.pt",
                                               marks=pytest.mark.slow),
                                  "random_states_0.pkl"])
def test_tampered_checkpoint_file_stops_the_run_without_running_code(killed_zero2, tmp_path, name):
    root = tmp_path / "world"
    shutil.copytree(killed_zero2, root)
    params = make_world(root, RUN)  # same world, params now point into the copy
    target = root / "models" / "toy" / "checkpoint" / "accelerate" / name
    assert target.is_file(), sorted(p.name for p in target.parent.iterdir())
    marker = tmp_path / "marker"
    _plant(target, marker)

    proc = _stage(params)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert not marker.exists()
    assert str(target) in proc.stderr and "Traceback" not in proc.stderr
    assert f"Delete {root / 'models' / 'toy' / 'checkpoint'} " in proc.stderr and "trusted copy" in proc.stderr


def test_refusal_inside_the_library_load_is_raised_even_if_the_library_catches_it(killed_zero2, tmp_path):
    """Accelerate logs a failed random-states load and goes on; our guard raises it afterwards."""
    from steve1.train.safe_load import weights_only_loads

    marker = tmp_path / "marker"
    _plant(tmp_path / "random_states_0.pkl", marker)
    with pytest.raises(UnsafeCheckpointError, match="random_states_0.pkl"):
        with weights_only_loads(tmp_path):
            try:
                torch.load(tmp_path / "random_states_0.pkl", weights_only=False)
            except Exception:
                pass  # as accelerate.checkpointing.load_accelerator_state does
    assert not marker.exists()


# ZeRO-2's resume is test_train_run's SIGKILL test; the other ZeRO stages are whole runs (slow tier)
@pytest.mark.parametrize("stage", [pytest.param("zero1", marks=pytest.mark.slow),
                                   pytest.param("zero3", marks=pytest.mark.slow), "none"])
def test_untampered_checkpoints_resume_bit_exactly(tmp_path, stage):
    """Kill after the step-4 checkpoint and resume; the same weights and losses as a run never killed."""
    overrides = {"deepspeed": stage}
    reference = make_world(tmp_path / "reference", {**RUN, **overrides})
    assert _stage(reference).returncode == 0
    params = _killed_run(tmp_path / "resumed", overrides)
    assert verify_checkpoint(params.parent / "models" / "toy" / "checkpoint") >= 3
    proc = _stage(params)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed" in proc.stderr
    ref = _weights(reference.parent / "models" / "toy" / "latest.weights")
    got = _weights(params.parent / "models" / "toy" / "latest.weights")
    assert list(ref) == list(got) and all(torch.equal(ref[k], got[k]) for k in ref)
    ref_run, run = reference.parent / "models" / "toy", params.parent / "models" / "toy"
    assert _steps(run, "loss") == _steps(ref_run, "loss") and _column(run, "loss") == _column(ref_run, "loss")
    assert json.loads((params.parent / "models" / "toy" / "checkpoint" / "trainer_state.json").read_text())["step"] == 8
