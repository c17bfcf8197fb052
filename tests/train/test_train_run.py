"""Whole runs at toy size: DeepSpeed ZeRO-2 through Accelerate on CPU, SIGKILL + resume bit-exact,
two processes equal one process with the doubled batch, a NaN stops the run and keeps the checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from steve1.models.checkpoints import load_policy_weights
from fixtures.policy import build_policy_from_preset
from steve1.params import TrainParams
from steve1.train.trainer import build_start_policy
from toy_world import make_world

REPO = Path(__file__).resolve().parents[2]
# 4 batches x 2 calls of 8 frames x batch 2 = 8 optimizer steps; checkpoints at 0, 4, 8
RUN = {"deepspeed": "zero2", "n_frames": 128, "checkpoint_every_steps": 4, "log_every_steps": 2,
       "val_freq": 4, "val_freq_begin": 4}


def _env():
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests' / 'train'}", OMP_NUM_THREADS="1")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _stage(params: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.train", "--params", str(params)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted single-process ZeRO-2 run; its run folder."""
    params = make_world(tmp_path_factory.mktemp("reference"), RUN)
    proc = _stage(params)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return params.parent / "models" / "toy"


def test_deepspeed_run_writes_weights_metrics_and_checkpoint(reference):
    policy = build_policy_from_preset("tiny")
    init = {k: v.clone() for k, v in policy.state_dict().items()}
    for name in ("latest.weights", "best.weights"):
        assert load_policy_weights(policy, reference / name, allow_vpt=False) == []  # strict, official keys
    assert list(_weights(reference / "latest.weights")) == list(policy.state_dict())  # official key order
    assert any(not torch.equal(init[k], v) for k, v in policy.state_dict().items())
    metrics = json.loads((reference / "dvclive" / "metrics.json").read_text())
    for key in ("loss", "val_loss", "lr", "grad_norm", "frames_per_s", "data_wait_share", "peak_memory_mb"):
        assert key in metrics and metrics[key] == metrics[key], key  # present and not NaN
    assert metrics["step"] == 8 and metrics["frames"] == 128
    assert (reference / "dvclive" / "plots" / "metrics" / "loss.tsv").is_file()
    state = json.loads((reference / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 8 and state["frames"] == 128 and state["loader"]["step"] + state["loader"]["epoch"] >= 1
    config = json.loads((reference / "config.json").read_text())
    assert config["deepspeed"]["zero_optimization"]["stage"] == 2 and config["world_size"] == 1
    best = json.loads((reference / "best.json").read_text())
    assert best["val_loss"] == pytest.approx(min(_column(reference, "val_loss")))
    assert (reference / "snapshots").is_dir()


def _column(run: Path, name: str) -> list[float]:
    rows = (run / "dvclive" / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()[1:]
    return [float(r.split("\t")[-1]) for r in rows]


def _steps(run: Path, name: str) -> list[int]:
    rows = (run / "dvclive" / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()
    col = rows[0].split("\t").index("step")
    return [int(r.split("\t")[col]) for r in rows[1:]]


KILLER = textwrap.dedent("""
    import os, signal, sys
    from steve1.params import load_params
    from steve1.train.trainer import train

    def hook(counters):
        if counters["step"] >= 6:  # after the step-4 checkpoint, before the end: work since then is lost
            os.kill(os.getpid(), signal.SIGKILL)

    train(load_params(sys.argv[1]), on_step=hook)
""")


def test_sigkill_then_rerun_ends_bitwise_equal(reference, tmp_path):
    params = make_world(tmp_path, RUN)
    run = tmp_path / "models" / "toy"
    killed = subprocess.run([sys.executable, "-c", KILLER, str(params)], cwd=REPO, env=_env(), capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert json.loads((run / "checkpoint" / "trainer_state.json").read_text())["step"] == 4
    assert max(_steps(run, "loss")) == 6  # logged past the checkpoint, then killed
    for gone in ("dvclive", "latest.weights", "config.json"):   # what `dvc repro` deletes before rerunning
        path = run / gone
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    resumed = _stage(params)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed" in resumed.stderr
    for name in ("latest.weights", "best.weights"):
        ref, got = _weights(reference / name), _weights(run / name)
        assert list(ref) == list(got)
        for key in ref:
            assert torch.equal(ref[key], got[key]), f"{name}: {key} differs after resume"
    assert _steps(run, "loss") == _steps(reference, "loss")  # rows after the checkpoint were replaced
    assert _column(run, "loss") == _column(reference, "loss")  # bit-equal losses, step by step
    assert _column(run, "val_loss") == _column(reference, "val_loss")

    # a finished run re-entered (`dvc repro -f train`, or a kill right after the last checkpoint): DVC has
    # deleted the non-persistent outputs; they come back as they were, curves and final metrics included
    metrics = (run / "dvclive" / "metrics.json").read_text()
    for gone in ("dvclive", "latest.weights", "config.json"):
        path = run / gone
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    again = _stage(params)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "8 steps" in again.stdout and "already finished" in again.stderr
    assert all(torch.equal(v, _weights(run / "latest.weights")[k]) for k, v in _weights(reference / "latest.weights").items())
    assert json.loads((run / "dvclive" / "metrics.json").read_text()) == json.loads(metrics)
    assert _column(run, "loss") == _column(reference, "loss") and (run / "config.json").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(params: Path) -> Path:
    """``accelerate launch`` of the train stage with 2 processes; its run folder, checked to be one world of 2."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "configs" / "accelerate" / "multi_gpu.yaml"), "--num_processes", "2",
           "--main_process_port", str(_free_port()), "-m", "stages.train", "--params", str(params)]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = params.parent / "models" / "toy"
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    return run


def _assert_matches_one_process(run: Path, reference: Path) -> None:
    ref, got = _weights(reference / "latest.weights"), _weights(run / "latest.weights")
    init = build_start_policy(TrainParams(seed=0)).state_dict()
    # Same data in the same order; only the all-reduce's float rounding differs, which Adam's
    # g/sqrt(v) amplifies for near-zero gradients: bound it against how far training moved.
    moved = sum(((ref[k] - init[k]).double() ** 2).sum() for k in ref) ** 0.5
    apart = sum(((got[k] - ref[k]).double() ** 2).sum() for k in ref) ** 0.5
    assert moved > 0 and apart / moved < 1e-2, f"2 processes are {apart / moved:.2%} of the update away from 1"
    # the first steps see the same gradients
    assert _column(run, "grad_norm")[:2] == pytest.approx(_column(reference, "grad_norm")[:2], rel=1e-5)


@pytest.mark.slow
def test_two_processes_without_deepspeed_train_as_one_world(tmp_path):
    """``train.deepspeed: none`` under ``accelerate launch`` on CPU: the two processes form one world (DDP
    over gloo) and match one process with the doubled batch; each used to train alone as world size 1."""
    one = make_world(tmp_path / "one", {**RUN, "deepspeed": "none"})
    assert _stage(one).returncode == 0
    run = _two_processes(make_world(tmp_path / "two", {**RUN, "deepspeed": "none", "batch_size": 1}))
    _assert_matches_one_process(run, one.parent / "models" / "toy")


def test_two_processes_match_one_process_with_the_doubled_batch(reference, tmp_path):
    run = _two_processes(make_world(tmp_path, {**RUN, "batch_size": 1}))
    _assert_matches_one_process(run, reference)
    # the logged loss is the mean over both processes' rows
    assert _column(run, "loss")[0] == pytest.approx(_column(reference, "loss")[0], rel=1e-6)


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    import stages.train
    import steve1.train.trainer as trainer

    params = make_world(tmp_path, {"n_frames": 96, "checkpoint_every_steps": 2, "log_every_steps": 4})
    calls = {"n": 0}
    real_loss = trainer.behavioural_cloning_loss

    def loss_with_nan(*args, **kwargs):
        calls["n"] += torch.is_grad_enabled()  # training calls only, not validation
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 5 else loss  # the 5th training call (step 5)

    monkeypatch.setattr(trainer, "behavioural_cloning_loss", loss_with_nan)
    assert stages.train.main(["--params", str(params)]) == 1
    err = capsys.readouterr().err
    checkpoint = tmp_path / "models" / "toy" / "checkpoint"
    assert "non-finite training loss" in err and "now step 6" in err  # found at the step-6 checkpoint
    assert f"last good checkpoint is {checkpoint} (step 4, 64 frames)" in err
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["step"] == 4  # nothing after the bad step was saved
    weights = _weights(tmp_path / "models" / "toy" / "latest.weights")
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


@pytest.mark.slow      # two more whole runs; ZeRO-2 is the default tier's
@pytest.mark.parametrize("stage", ["zero1", "zero3"])
def test_other_zero_stages_and_checkpointing_train_the_same_model(reference, tmp_path, stage):
    # ZeRO-1 also switches activation checkpointing on: recomputation must not change a bit
    params = make_world(tmp_path, {**RUN, "deepspeed": stage, "gradient_checkpointing": stage == "zero1"})
    proc = _stage(params)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref, got = _weights(reference / "latest.weights"), _weights(tmp_path / "models" / "toy" / "latest.weights")
    assert list(got) == list(ref)
    if stage == "zero1":  # same flat fp32 partitions as ZeRO-2 on one process, same maths: identical
        assert all(torch.equal(got[k], ref[k]) for k in ref)
    else:  # ZeRO-3 keeps per-parameter shards: same maths, different float order
        init = build_start_policy(TrainParams(seed=0)).state_dict()
        moved = sum(((ref[k] - init[k]).double() ** 2).sum() for k in ref) ** 0.5
        apart = sum(((got[k] - ref[k]).double() ** 2).sum() for k in ref) ** 0.5
        assert apart / moved < 1e-2


def test_gradient_accumulation_counts_optimizer_steps(tmp_path, caplog):
    from steve1.params import load_params
    from steve1.train.trainer import train

    params = make_world(tmp_path, {"n_frames": 64, "grad_accum": 2, "checkpoint_every_steps": 1,
                                   "grad_norm_range": [0.5, 5.0]})
    summary = train(load_params(params))
    assert summary["step"] == 2 and summary["frames"] == 64  # 4 calls of 16 frames, 2 per optimizer step
    state = json.loads((tmp_path / "models" / "toy" / "checkpoint" / "trainer_state.json").read_text())
    assert state["micro"] == 4 and state["step"] == 2
    # from scratch, the summed-over-steps loss has gradient norms above the guide's per-step range: flagged
    assert "is outside the expected [0.5, 5] (train.grad_norm_range)" in caplog.text


def test_expected_gradient_norm_follows_the_loss_reduction():
    # the guide's 0.5-5 is for a per-step mean loss; the official loss sums trunc_t steps per call
    assert TrainParams(loss_reduction="mean").grad_norm_bounds == (0.5, 5.0)
    assert TrainParams(loss_reduction="official", trunc_t=64).grad_norm_bounds == (32.0, 320.0)
    assert TrainParams(grad_norm_range=(1.0, 2.0)).grad_norm_bounds == (1.0, 2.0)


LONG = {**RUN, "deepspeed": "none", "n_frames": 10**7}   # runs until stopped


def _wait_for(predicate, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _holder(run: Path) -> str:
    lock = run / ".lock"
    return lock.read_text().strip() if lock.is_file() else ""


def test_a_second_trainer_on_the_same_run_folder_fails_naming_the_first(tmp_path):
    params = make_world(tmp_path, LONG)
    run = tmp_path / "models" / "toy"
    first = subprocess.Popen([sys.executable, "-m", "stages.train", "--params", str(params)], cwd=REPO, env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: _holder(run) == str(first.pid) and (run / "checkpoint").is_dir(), "the first trainer")
        second = _stage(params, timeout=120)
        assert second.returncode == 1
        assert f"in use by another trainer (PID {first.pid})" in second.stderr
        assert first.poll() is None   # the first one is untouched
    finally:
        first.kill()
        first.wait()
    # the kernel released the dead trainer's lock: the folder is usable again at once
    from steve1.train.process import RunFolderLock
    RunFolderLock(run).release()


def test_trainer_exits_when_its_launcher_dies(tmp_path):
    """dvc -> sh -c "python -m stages.train": killing the launcher stops the trainer too."""
    params = make_world(tmp_path, LONG)
    run = tmp_path / "models" / "toy"
    launcher = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time; subprocess.Popen(['sh', '-c', sys.argv[1] + ' -m stages.train --params ' + "
        "sys.argv[2] + '; echo done']); time.sleep(600)"), sys.executable, str(params)],
        cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: _holder(run) != "" and (run / "checkpoint").is_dir(), "the trainer")
        trainer = int(_holder(run))
        launcher.kill()
        launcher.wait()
        _wait_for(lambda: not _alive(trainer), "the trainer to exit after its launcher died", timeout=30)
    finally:
        if launcher.poll() is None:
            launcher.kill()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"
