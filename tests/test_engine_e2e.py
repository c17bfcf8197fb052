"""`engine` through DVC: switching it stales nothing, and the data stages run again from nothing on
Ray leave the same dvc.lock (the same md5 of every output) as the local engine did.

The copy is the project's files in a new git repo with the project's environment on PATH (as in
tests/test_pipeline_e2e.py); each Ray stage starts its own local Ray (RAY_ADDRESS unset).
"""

from __future__ import annotations

import shutil

import pytest
import yaml

from fixtures.project import commit, copy_project, init_git, project_env, run

DATA_OUTS = ("data/raw", "data/episodes", "data/embeds")


@pytest.mark.slow
def test_engine_ray_stales_nothing_and_writes_the_same_dvc_lock(tmp_path):
    root = tmp_path / "steve1"
    copy_project(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["source"].update(n_synthetic=2, synthetic_steps=120, include_real=False)      # toy size
    params["ray"]["local_num_cpus"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = project_env("engine-e2e")
    env.pop("RAY_ADDRESS", None)
    init_git(root, env, "engine e2e")

    run(["dvc", "repro", "embed"], root, env)
    local_lock = (root / "dvc.lock").read_text()
    commit(root, env, "local run")

    params["engine"] = "ray"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "up to date" in run(["dvc", "status", "embed"], root, env)  # the switch stales no stage
    for out in DATA_OUTS:                                              # then everything again, on Ray
        shutil.rmtree(root / out)
    out = run(["dvc", "repro", "embed"], root, env)
    assert all(f"Running stage '{s}'" in out for s in ("download", "decode", "embed")), out[-3000:]
    assert "Started a local Ray instance" in out, out[-3000:]
    assert (root / "dvc.lock").read_text() == local_lock

    run(["git", "checkout", "params.yaml"], root, env)
    run(["dvc", "exp", "run", "-S", "engine=ray", "embed"], root, env)  # accepted; nothing is stale
    assert (root / "dvc.lock").read_text() == local_lock
