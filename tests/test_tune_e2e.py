"""`steve1 tune` on the embedded default, from a fresh copy: `dvc repro`, commit, then a seeded study of
two queued experiments of the real pipeline (train, evaluate, rollout rerun: about 8 minutes each on 2
CPU cores), read with `steve1 compare`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fixtures.project import commit, copy_project, init_git, project_env, run as _run


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_a_seeded_study_of_the_embedded_default(tmp_path: Path):
    root = tmp_path / "steve1"
    copy_project(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["source"].update(n_synthetic=3, synthetic_steps=300, include_real=False)  # toy size
    params["tune"].update(n_trials=2, poll_s=2.0)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = project_env("tune-e2e")
    init_git(root, env, "tune-e2e")
    _run(["dvc", "repro"], root, env, timeout=1800)
    commit(root, env, "baseline")
    try:
        out = subprocess.run([sys.executable, "-m", "steve1.cli", "tune", "--json"], cwd=root, env=env,
                             capture_output=True, text=True, timeout=3000)
        assert out.returncode == 0, out.stderr[-4000:]
        summary = json.loads(out.stdout)
        shown = _run([sys.executable, "-m", "steve1.cli", "compare", "--sort", "val_loss"], root, env)
    finally:
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=root, env=env, capture_output=True)
    trials = summary["trials"]
    assert [t["experiment"] for t in trials] == ["default-t0", "default-t1"], out.stderr[-4000:]
    assert all(t["state"] in ("complete", "pruned") for t in trials), trials
    assert all(1e-5 <= t["params"]["learning_rate"] <= 1e-3 for t in trials)
    best = summary["best"]
    assert best["experiment"] in {t["experiment"] for t in trials if t["state"] == "complete"}
    assert best["diff"]["learning_rate"][0] == params["learning_rate"]
    lines = shown.splitlines()
    assert max(map(len, lines)) <= 120, shown
    assert best["experiment"] in shown and "learning_rate" in lines[0] and "val_loss" in lines[0], shown
