"""The data stages on Ray (``engine: ray``) write the bytes ``engine: local`` writes, and survive
workers killed mid-episode, a node lost mid-episode and a killed driver.

Every stage runs through its own ``main`` (or ``python -m stages.<name>``), so the engine switch,
the drivers and the per-episode functions are the ones ``dvc repro`` runs. The local Ray is the
session's (``ray.init(num_cpus=2)``); the slow tests use a simulated two-node cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fixtures.ray_kill import Killer, NodeLoss
from fixtures.recordings import write_png_recording
from stages import decode as decode_stage
from stages import download as download_stage
from stages import embed as embed_stage
from stages import embed_set as embed_set_stage
from stages import import_set as import_set_stage
from stages import make_source as make_source_stage
from steve1.io import TEMP_PREFIX
from steve1.layout import MANIFEST

REPO = Path(__file__).resolve().parents[2]
REAL = "trimmed_lovely-persimmon-angora-a39257c803d3-20220422-051333"
DATA_FOLDERS = ("raw", "episodes", "embeds", "custom")


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """Inputs both engines read: a source (index + recordings) with the real pair, and a custom PNG set."""
    root = tmp_path_factory.mktemp("shared")
    params = {"paths": {"source": str(root / "source")},
              "source": {"n_synthetic": 2, "synthetic_steps": 80, "include_real": True, "seed": 0}}
    (root / "source.yaml").write_text(yaml.safe_dump(params))
    assert make_source_stage.main(["--params", str(root / "source.yaml")]) == 0
    for k in range(2):
        write_png_recording(root / "mine", f"png-{k}", n_frames=24 + 4 * k, seed=k)
    return root


SYNTHETIC = ["synthetic-0-0", "synthetic-0-1"]


def _params(root: Path, shared: Path, engine: str, episodes: list[str] | None = None, **ray) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    params = {
        "engine": engine,
        "ray": {"max_retries": 2, **ray},
        "paths": {"source": str(shared / "source"), "raw": str(root / "raw"), "episodes": str(root / "episodes"),
                  "embeds": str(root / "embeds"), "custom": str(root / "custom")},
        "custom": {"mine": {"source": str(shared / "mine")}},
        "download": {"index": str(shared / "source" / "index.json"),
                     **({"select": "list", "episodes": episodes} if episodes else {})},
        "embed": {"batch_size": 16, "device": "cpu"},
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _workspace(shared: Path) -> Path:
    """The one output folder every run writes (manifests name their folders: both engines must see the
    same paths, as on a cluster's shared filesystem); emptied first."""
    root = shared / "ws"
    shutil.rmtree(root, ignore_errors=True)
    return root


def _run(stages: list[str], params: Path) -> None:
    mains = {"download": download_stage.main, "decode": decode_stage.main, "embed": embed_stage.main,
             "import-set": lambda argv: import_set_stage.main(["mine", *argv]),
             "embed-set": lambda argv: embed_set_stage.main(["mine", *argv])}
    for name in stages:
        assert mains[name](["--params", str(params)]) == 0, name


def _files(root: Path) -> dict[str, bytes]:
    """Every file the data stages wrote under ``root``, by relative path (params.yaml aside)."""
    out = {}
    for folder in DATA_FOLDERS:
        for path in sorted((root / folder).rglob("*")) if (root / folder).is_dir() else []:
            if path.is_file():
                out[str(path.relative_to(root))] = path.read_bytes()
    return out


def _assert_same_outputs(local: Path, ray: Path) -> None:
    _same_as(local, ray)
    b = _files(ray)
    assert not [k for k in b if Path(k).name.startswith(TEMP_PREFIX)]       # no temp of any dead worker
    assert not (ray / "raw.partial").exists()


def _reference(shared: Path, name: str, stages: list[str], episodes: list[str] | None) -> Path:
    root = _workspace(shared)
    _run(stages, _params(root, shared, "local", episodes))
    return Path(shutil.copytree(root, shared / name))


@pytest.fixture(scope="module")
def local_all(shared) -> Path:
    """Every data stage with engine: local, on the synthetic recordings and the custom set."""
    return _reference(shared, "local-all", ["download", "decode", "embed", "import-set", "embed-set"], SYNTHETIC)


@pytest.fixture(scope="module")
def local_decoded(shared) -> Path:
    """download and decode with engine: local, the real recording (1056 frames) included."""
    return _reference(shared, "local-decoded", ["download", "decode"], None)


def _same_as(reference: Path, root: Path) -> None:
    a = {k: v for k, v in _files(reference).items()}
    b = _files(root)
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []


# every data stage on Ray: minutes (smaller Ray-equals-local checks: test_generate, test_steve1_dataset); CI runs it
@pytest.mark.slow
@pytest.mark.ci
def test_ray_engine_writes_the_bytes_the_local_engine_writes(ray_local, shared, local_all):
    root = _workspace(shared)
    _run(["download", "decode", "embed", "import-set", "embed-set"], _params(root, shared, "ray", SYNTHETIC))
    _assert_same_outputs(local_all, root)
    rows = json.loads((root / "episodes" / MANIFEST).read_text())["episodes"]
    assert {r["status"] for r in rows.values()} == {"ok"} and len(rows) == 2


@pytest.mark.slow
def test_ray_engine_writes_the_local_bytes_with_the_machine_under_load(ray_local, shared, local_all):
    """A CPU hog per core beside the stages (workers slow, timeouts and scheduling stretched): the same
    bytes, the custom PNG set's short episodes included (their embeddings split MKL's products by
    thread unless steve1.numerics holds them)."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        root = _workspace(shared)
        _run(["download", "decode", "embed", "import-set", "embed-set"], _params(root, shared, "ray", SYNTHETIC))
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    _assert_same_outputs(local_all, root)


# ------------------------------------------------------------------------------------------ killing


def test_a_worker_killed_mid_episode_leaves_no_partial_file_and_the_episode_is_retried(
        ray_local, shared, local_decoded):
    root = _workspace(shared)
    params = _params(root, shared, "ray")
    _run(["download"], params)
    killer = Killer(f"decode:{REAL}")
    killer.start()
    _run(["decode"], params)
    killer.stop.set()
    assert len(killer.killed) == 1, "the decode task of the real recording was never seen running"
    _assert_same_outputs(local_decoded, root)


def test_a_mineclip_actor_killed_mid_episode_is_restarted_and_the_episode_retried(ray_local, shared, local_all):
    root = _workspace(shared)
    _run(["download", "decode", "import-set", "embed-set"], _params(root, shared, "local", SYNTHETIC))
    params = _params(root, shared, "ray", SYNTHETIC, embed={"num_cpus": 1, "num_gpus": 0, "workers": 1})
    killer = Killer(f"embed:{SYNTHETIC[1]}")
    killer.start()
    _run(["embed"], params)
    killer.stop.set()
    assert len(killer.killed) == 1, "the embed call of the episode was never seen running"
    _assert_same_outputs(local_all, root)


def test_an_episode_whose_worker_always_dies_is_recorded_as_failed_with_the_reason(ray_local, shared):
    root = _workspace(shared)
    params = _params(root, shared, "ray", max_retries=1)
    _run(["download"], params)
    killer = Killer(f"decode:{REAL}", times=2)     # the first try and its one retry
    killer.start()
    _run(["decode"], params)
    killer.stop.set()
    assert len(killer.killed) == 2
    rows = json.loads((root / "episodes" / MANIFEST).read_text())["episodes"]
    assert rows[REAL]["status"] == "skipped"
    assert rows[REAL]["reason"].startswith("its Ray worker died on each of 2 tries")
    assert [r["status"] for k, r in sorted(rows.items()) if k != REAL] == ["ok", "ok"]
    assert sorted(p.name for p in (root / "episodes").iterdir()) == sorted(
        [f"{k}.h5" for k in rows if k != REAL] + [MANIFEST])


def _stage(name: str, params: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", f"stages.{name}", "--params", str(params)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_a_killed_driver_rerun_keeps_the_finished_episodes(ray_local, shared, local_decoded):
    """The stage runs as its own process against the session's Ray (RAY_ADDRESS); it is killed
    (SIGKILL) once some episodes are written, then run again."""
    root = _workspace(shared)
    params = _params(root, shared, "ray", decode={"num_cpus": 1, "workers": 1})     # one episode at a time
    _run(["download"], params)
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address,
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    driver = _stage("decode", params, env)
    deadline = time.monotonic() + 120
    while not list((root / "episodes").glob("*.h5")):
        assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()[0][-3000:]
        time.sleep(0.01)
    driver.send_signal(signal.SIGKILL)
    driver.communicate()
    assert not (root / "episodes" / MANIFEST).exists()
    done_before = {p.name: p.stat().st_mtime_ns for p in (root / "episodes").glob("*.h5")}
    assert 0 < len(done_before) < 3
    rerun = _stage("decode", params, env)
    out = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, out[-3000:]
    assert f"({len(done_before)} kept from an earlier run)" in out, out[-3000:]
    for name, mtime in done_before.items():      # reused, not rewritten
        assert (root / "episodes" / name).stat().st_mtime_ns == mtime
    _assert_same_outputs(local_decoded, root)


def _alive_actors(ray, address: str) -> list:
    from ray.util.state import list_actors

    return list_actors(address=address, filters=[("state", "!=", "DEAD")])


@pytest.mark.slow
def test_a_driver_killed_mid_embed_leaves_no_actor_holding_the_cluster_and_a_rerun_gives_the_bytes(
        ray_state_api, shared, local_all):
    """The embed stage runs as its own process against a running Ray (RAY_ADDRESS) and is killed
    (SIGKILL) while its MineCLIP actor embeds an episode: its actor goes, the cluster's CPUs are all free
    again (Ray's state API), and a rerun writes the local bytes."""
    ray = ray_state_api
    address = ray.get_runtime_context().gcs_address
    assert _alive_actors(ray, address) == []
    root = _workspace(shared)
    _run(["download", "decode", "import-set", "embed-set"], _params(root, shared, "local", SYNTHETIC))
    params = _params(root, shared, "ray", SYNTHETIC, embed={"num_cpus": 1, "num_gpus": 0, "workers": 1})
    env = {**os.environ, "RAY_ADDRESS": address, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    killer = Killer("embed:", action=lambda: None)       # only notes the moment an episode is being embedded
    killer.start()
    driver = _stage("embed", params, env)
    deadline = time.monotonic() + 300
    while not killer.killed:
        assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()[0][-3000:]
        time.sleep(0.01)
    assert [a.class_name for a in _alive_actors(ray, address)] == ["_Holder"]
    driver.send_signal(signal.SIGKILL)
    driver.communicate()
    total = ray.cluster_resources()["CPU"]
    while _alive_actors(ray, address) or ray.available_resources().get("CPU", 0) < total:
        assert time.monotonic() < deadline, (_alive_actors(ray, address), ray.available_resources())
        time.sleep(0.2)
    assert not (root / "embeds" / MANIFEST).exists()
    _run(["embed"], params)
    _assert_same_outputs(local_all, root)


# ------------------------------------------------------------------------------------------ two nodes


@pytest.mark.slow
def test_on_two_nodes_every_stage_writes_the_local_bytes(ray_two_nodes, shared, local_all):
    root = _workspace(shared)
    _run(["download", "decode", "embed", "import-set", "embed-set"], _params(root, shared, "ray", SYNTHETIC))
    _assert_same_outputs(local_all, root)


@pytest.mark.slow
def test_a_node_lost_mid_decode_has_its_episode_retried_on_the_other(ray_two_nodes, shared, local_decoded, caplog):
    """A task stage: the node decoding the real recording (1056 frames) is lost; the head decodes it."""
    caplog.set_level("INFO", logger="steve1.engine")
    root = _workspace(shared)
    params = _params(root, shared, "ray")
    _run(["download"], params)
    with NodeLoss(ray_two_nodes, f"decode:{REAL}", shared) as loss:
        _run(["decode"], params)
    assert len(loss.killed) == 1, "the real recording was not decoded on the worker node"
    _assert_same_outputs(local_decoded, root)
    assert f"decode: {REAL}: its worker was lost" in caplog.text and "decode: 1 retry after a lost worker" in caplog.text


@pytest.mark.slow
def test_a_node_lost_mid_embed_has_its_actor_replaced_and_the_episode_embedded_on_the_other(
        ray_two_nodes, shared, local_all, caplog):
    """An actor stage: the node whose MineCLIP actor embeds an episode is lost; a new actor on the head
    embeds it (before, every retry went to the dead node's actor and the stage failed)."""
    caplog.set_level("INFO", logger="steve1.engine")
    root = _workspace(shared)
    _run(["download", "decode", "import-set", "embed-set"], _params(root, shared, "local", SYNTHETIC))
    params = _params(root, shared, "ray", SYNTHETIC, embed={"num_cpus": 1, "num_gpus": 0, "workers": 1})
    with NodeLoss(ray_two_nodes, "embed:", shared) as loss:
        _run(["embed"], params)
    assert len(loss.killed) == 1, "no episode was embedded on the worker node"
    _assert_same_outputs(local_all, root)
    assert "embed: 1 actor(s) lost, 1 replaced, 1 retry of an episode" in caplog.text
