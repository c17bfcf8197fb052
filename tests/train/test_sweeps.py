"""Learning-rate sweeps through DVC's experiment queue, at toy size, in a fresh copy of the project.

The upstream stages run once (``make repro``'s ``dvc repro``, here up to train), their state is
committed (dvc.lock: the README's recipe); the queued experiments then reuse them from the cache
and only retrain, with a custom recording set mixed in (its import/embed outputs must be in the
queue's workspace: they are DVC outputs).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from fixtures.project import commit, copy_project, project_env, run as _run

RATES = ("1e-4", "3e-4")


def _toy_params(root: Path) -> None:
    from fixtures.recordings import write_png_recording

    for i in range(2):
        write_png_recording(root / "recordings", f"own-{i}", 80, seed=i)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["source"].update(n_synthetic=2, synthetic_steps=200, include_real=False)
    params["custom"] = {"mine": {"source": "recordings"}}
    params["sample"].update(T=32, val_frames=64, train_frames=256,
                            mix=[{"name": "mine", "train_frames": 64, "val_frames": 32}])
    params["train"].update(deepspeed="none", n_frames=64, warmup_frames=16, trunc_t=32, checkpoint_every_steps=2)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _learning_rates(shown: list[dict]) -> dict[str, float]:
    """experiment name -> its learning_rate, from ``dvc exp show --json``'s experiments of the baseline."""
    out = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs", []):
                data = rev.get("data") or {}
                lr = (data.get("params", {}).get("params.yaml", {}).get("data", {})).get("learning_rate")
                if lr is not None:
                    out[rev.get("name") or rev.get("rev")] = lr
    return out


@pytest.mark.slow
def test_queued_learning_rate_sweep_shows_both_experiments(tmp_path):
    root = tmp_path / "steve1"
    copy_project(root)
    _toy_params(root)
    env = {**project_env("sweep"), "OMP_NUM_THREADS": "1"}
    _run(["git", "init", "-q"], root, env)
    _run(["dvc", "add", "recordings"], root, env)   # as the README says: else queued runs lack the source
    commit(root, env, "project")    # dvclive reads HEAD during the train stage
    _run(["dvc", "repro", "train"], root, env)
    commit(root, env, "baseline")   # with dvc.lock, as the README says
    tracked = _run(["git", "ls-files"], root, env).split()
    assert "recordings.dvc" in tracked and not [n for n in tracked if n.startswith("recordings/")]  # DVC holds them

    for lr in RATES:
        _run(["dvc", "exp", "run", "--queue", "-S", f"learning_rate={lr}"], root, env)
    _run(["dvc", "queue", "start", "--jobs", "1"], root, env)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = _run(["dvc", "queue", "status"], root, env)
        if not any(word in status for word in ("Queued", "Running")):
            break
        time.sleep(5)
    assert status.count("Success") == len(RATES) and "Failed" not in status, status

    shown = subprocess.run(["dvc", "exp", "show", "--json"], cwd=root, env=env, capture_output=True, text=True,
                           check=True).stdout
    rates = _learning_rates(json.loads(shown))
    assert sorted(rates.values()) == [1e-4, 3e-4], (rates, status)
    # the uncached metrics files reach the experiment commits (.gitignore lets them through)
    metrics_file = f"models/{yaml.safe_load((root / 'params.yaml').read_text())['train']['run']}/metrics.json"
    train_metrics = {rev.get("name"): ((rev.get("data") or {}).get("metrics", {}).get(metrics_file, {}).get("data") or {})
                     for baseline in json.loads(shown) for exp in baseline.get("experiments") or []
                     for rev in exp.get("revs", [])}
    assert all("loss" in m for m in train_metrics.values()) and len(train_metrics) == len(RATES), train_metrics
