"""The environments agents play in: MineRL's ``HumanSurvival`` or the deterministic stand-in.

``rollout.env`` and ``generate.env`` name one of :data:`ENV_KINDS`. Both give the same API (``seed``
before ``reset``, ``step`` with the 24-key MineRL action dict, ``close``) and the same observation
keys, so the rollout and generate loops do not know which one runs:

- ``minerl``: ``HumanSurvival`` with VPT's settings (:data:`ENV_KWARGS`). MineRL 1.0.2 installs from
  its repository tag with JDK 8 and renders with OpenGL (a display, or ``xvfb-run``); see docs/rollouts.md,
  "Rollouts in MineRL". :func:`check_minerl` finds what is missing before any work is done, and
  :func:`start_env` turns a failure to start into one message saying what to install.
- ``standin``: :class:`steve1.play.standin.StandInEnv`, a small deterministic world with MineRL's
  observation and action spaces. The embedded default runs it, and every output made with it says
  so (:data:`ENV_LABELS`), as embeddings made by the random MineCLIP say ``random-tiny``.

MineRL dies unpredictably, mostly on repeated env creation. :class:`EnvSlot` holds one live env,
makes it on demand and throws it away after a crash, so callers can retry on a fresh one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import subprocess
from typing import Any, Callable, Iterator, Optional

from steve1.errors import UserError

# VPT's ENV_KWARGS (official steve1/VPT/agent.py); frameskip is not a HumanSurvival argument
ENV_KWARGS: dict[str, Any] = dict(
    fov_range=[70, 70],
    gamma_range=[2, 2],
    guiscale_range=[1, 1],
    resolution=[640, 360],
    cursor_size_range=[16.0, 16.0],
)
ENV_KINDS = ("standin", "minerl")
ENV_LABELS = {"standin": "stand-in env", "minerl": "MineRL HumanSurvival"}
MINERL_INSTALL = (
    "install MineRL 1.0.2 from its v1.0.2 tag with JDK 8 (java -version must say 1.8) and xvfb, as docs/rollouts.md's "
    "'Rollouts in MineRL' says (or use the Docker image built with WITH_ROLLOUT=1), and on a headless node run "
    "under a virtual display: xvfb-run -a -s \"-screen 0 1024x768x24\" <command>"
)

EnvFactory = Callable[[], Any]


class EnvError(UserError, RuntimeError):
    """An environment cannot be made: MineRL or its system requirements are missing, or it fails to start."""


def env_label(kind: str) -> str:
    if kind not in ENV_LABELS:
        raise ValueError(f"unknown env {kind!r}; expected one of {', '.join(ENV_KINDS)}")
    return ENV_LABELS[kind]


# ---------------------------------------------------------------- MineRL

def _java_version() -> Optional[str]:
    """``java -version``'s version string, or None without a java on PATH."""
    java = shutil.which("java")
    if java is None:
        return None
    try:
        proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    m = re.search(r'version "([^"]+)"', proc.stderr + proc.stdout)
    return m.group(1) if m else "unknown"


def check_minerl() -> list[str]:
    """What stops MineRL from starting here (empty when nothing is known to): the package, JDK 8, a display."""
    problems = []
    if importlib.util.find_spec("minerl") is None:
        problems.append("the minerl package is not installed")
    version = _java_version()
    if version is None:
        problems.append("no java on PATH (MineRL 1.0.2 runs Minecraft on JDK 8)")
    elif not version.startswith("1.8"):
        problems.append(f"java is version {version}, MineRL 1.0.2 needs JDK 8 (1.8)")
    if not os.environ.get("DISPLAY"):
        problems.append("no X display (DISPLAY is unset): run under xvfb-run (apt: xvfb)")
    return problems


def minerl_error(problems: list[str]) -> EnvError:
    return EnvError(f"MineRL cannot start ({'; '.join(problems)}): {MINERL_INSTALL}; "
                    f"or set rollout.env / generate.env to standin")


def make_minerl_env() -> Any:
    """A fresh ``HumanSurvival`` env with VPT's settings; MineRL is imported only here."""
    try:
        from minerl.herobraine.env_specs.human_survival_specs import HumanSurvival
    except ImportError as exc:
        raise minerl_error([f"MineRL is not installed ({exc})"]) from exc
    return HumanSurvival(**ENV_KWARGS).make()


# ---------------------------------------------------------------- either kind

def env_factory(kind: str, **standin_kwargs: Any) -> EnvFactory:
    """A maker of fresh envs of ``kind``; ``standin_kwargs`` go to :class:`StandInEnv` (scripted crashes, trees)."""
    env_label(kind)
    if kind == "minerl":
        return make_minerl_env

    def make() -> Any:
        from steve1.play.standin import StandInEnv

        return StandInEnv(resolution=tuple(ENV_KWARGS["resolution"]), **standin_kwargs)

    return make


def start_env(kind: str, factory: Optional[EnvFactory] = None) -> Any:
    """The first env, made before any other work: for ``minerl`` the checks of :func:`check_minerl`
    run first, and a failure to start becomes one :class:`EnvError` naming what to install."""
    factory = factory or env_factory(kind)
    if kind == "minerl" and factory is make_minerl_env:
        problems = check_minerl()
        if problems:
            raise minerl_error(problems)
        try:
            return factory()
        except EnvError:
            raise
        except Exception as exc:   # MineRL's launcher raises all sorts
            raise minerl_error([f"making HumanSurvival failed: {exc!r}"]) from exc
    return factory()


class EnvCrash(Exception):
    """An env call raised: the env is thrown away and the work retried on a new one."""

    def __init__(self, phase: str, step: Optional[int], exc: BaseException):
        super().__init__(f"{phase} failed at step {step}: {exc!r}")
        self.phase, self.step, self.exc = phase, step, exc


class EnvSlot:
    """Holds the live env; makes one on demand (or takes ``first``, already made) and throws it away after a crash."""

    def __init__(self, factory: EnvFactory, first: Any = None):
        self.factory = factory
        self.env: Any = first
        self.created = 0 if first is None else 1

    def get(self) -> Any:
        if self.env is None:
            try:
                self.env = self.factory()
            except EnvError:
                raise
            except Exception as exc:
                raise EnvCrash("make", None, exc) from exc
            self.created += 1
        return self.env

    def discard(self) -> None:
        if self.env is not None:
            with contextlib.suppress(Exception):      # a dead MineRL often fails to close too
                self.env.close()
            self.env = None


@contextlib.contextmanager
def closed_on_error(env: Any) -> Iterator[None]:
    """Close ``env`` (when there is one) if the block raises, then re-raise: an env made before other
    set-up work must not outlive that work's failure (a MineRL env holds a Java process)."""
    try:
        yield
    except BaseException:
        if env is not None:
            with contextlib.suppress(Exception):      # a dead MineRL often fails to close too
                env.close()
        raise


def env_call(phase: str, step: Optional[int], fn: Callable[..., Any], *args: Any) -> Any:
    """Call an env method; any exception becomes an :class:`EnvCrash` (agent errors are never wrapped)."""
    try:
        return fn(*args)
    except Exception as exc:
        raise EnvCrash(phase, step, exc) from exc
