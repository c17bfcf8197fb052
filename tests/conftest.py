"""Shared fixtures. ``reference`` points at tests/goldens (goldens made by the official code, copied
from ../shared/reference with their provenance); STEVE1_REFERENCE points it elsewhere. A missing
reference is an error, never a skip: a green run has checked every golden."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDENS = REPO / "tests" / "goldens"
REFERENCE = Path(os.environ.get("STEVE1_REFERENCE", GOLDENS))
# the DEV pair's recording: tests/goldens leaves its jsonl out, the same bytes ship here
ASSET_RECORDINGS = REPO / "assets" / "recordings"


@pytest.fixture(scope="session")
def reference() -> Path:
    if not (REFERENCE / "vpt").is_dir():
        raise FileNotFoundError(f"reference fixtures not found at {REFERENCE}: tests/goldens is part of the "
                                "repository (a partial checkout?), or STEVE1_REFERENCE names a missing folder")
    return REFERENCE


@pytest.fixture(scope="session")
def real_inputs(reference, tmp_path_factory) -> Path:
    """A folder of the 9 real DEV jsonl recordings (reference/real/inputs): the reference's own
    files where it holds them, else tests/goldens' gzipped ones decompressed plus assets/recordings'."""
    inputs = reference / "real" / "inputs"
    if not list(inputs.glob("*.gz")):
        return inputs
    out = tmp_path_factory.mktemp("real_inputs")
    for gz in inputs.glob("*.jsonl.gz"):
        (out / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
    for jsonl in ASSET_RECORDINGS.glob("*.jsonl"):
        shutil.copyfile(jsonl, out / jsonl.name)
    return out


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shipped_params_file(tmp_path_factory) -> Path:
    """The project's params.yaml as shipped (the embedded default), whatever the user's workspace holds
    (custom sets of the fine-tuning recipe, a profile): see fixtures.project.shipped_params."""
    from fixtures.project import shipped_params

    path = tmp_path_factory.mktemp("shipped") / "params.yaml"
    path.write_text(shipped_params())
    return path


@pytest.fixture
def mounted(tmp_path):
    """Mount a tmpfs of the given options at a fresh folder (needs root with CAP_SYS_ADMIN: skipped otherwise)."""
    mounts = []

    def mount(options: str) -> Path:
        where = tmp_path / f"mnt{len(mounts)}"
        where.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no mount command here")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()})")
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        subprocess.run(["umount", str(where)], check=False)


# ---------------------------------------------------------------------------------------------- Ray
# One Ray per test session, started on first use: the local 2-CPU Ray (`ray_local`), or a simulated
# two-node cluster (`ray_two_nodes`, slow tests) that replaces it while those tests run. Small object
# stores and no dashboard: the machines running the suite are small and shared.
RAY_OBJECT_STORE = 200 << 20


def pytest_configure(config) -> None:
    """A Ray token of this session's own, set before anything imports Ray (which reads it once): Ray
    2.60 turns token authentication on and otherwise keeps the token in ~/.ray/auth_token, which other
    Ray users of the machine may rewrite between a cluster's start and a driver joining it. Drivers
    started by the tests inherit it."""
    import secrets

    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RaySession:
    def __init__(self) -> None:
        self.kind: str | None = None
        self.cluster = None

    def local(self, dashboard: bool = False):
        """The local Ray; with ``dashboard``, one whose dashboard serves Ray's state API (ray.util.state)."""
        import ray

        kind = "local+dashboard" if dashboard else "local"
        if self.kind != kind:
            self.stop()
            # address="local": a new Ray of our own, never a cluster another user started on this machine
            extra = dict(dashboard_port=_free_port()) if dashboard else {}
            ray.init(address="local", num_cpus=2, object_store_memory=RAY_OBJECT_STORE, include_dashboard=dashboard,
                     **extra)
            self.kind = kind
        return ray

    def two_nodes(self, worker_gpus: int = 0):
        """A head and a worker node of one CPU each, in this machine's processes; ``worker_gpus``
        (declared, not real) on the worker node only."""
        import ray
        from ray.cluster_utils import Cluster

        self.stop()
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "object_store_memory": RAY_OBJECT_STORE // 2, "include_dashboard": False})
        self.cluster.add_node(num_cpus=1, num_gpus=worker_gpus, object_store_memory=RAY_OBJECT_STORE // 2)
        ray.init(address=self.cluster.address)
        self.kind = "cluster"
        return self.cluster

    def stop(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if self.cluster is not None:
            self.cluster.shutdown()
            self.cluster = None
        self.kind = None


@pytest.fixture(scope="session")
def ray_session():
    session = RaySession()
    yield session
    session.stop()


@pytest.fixture
def ray_local(ray_session):
    """The session's local Ray (num_cpus=2), started on first use."""
    return ray_session.local()


@pytest.fixture
def ray_state_api(ray_session):
    """The session's local Ray with its dashboard (for ray.util.state), started on first use (slow tests)."""
    return ray_session.local(dashboard=True)


@pytest.fixture
def ray_two_nodes(ray_session):
    """A simulated two-node cluster (ray.cluster_utils.Cluster) for the test's life."""
    cluster = ray_session.two_nodes()
    yield cluster
    ray_session.stop()


@pytest.fixture
def ray_gpu_node(ray_session):
    """As ``ray_two_nodes``, the worker node alone having a (declared) GPU."""
    cluster = ray_session.two_nodes(worker_gpus=1)
    yield cluster
    ray_session.stop()
