"""MineRL's pip requirements for a rollout environment (docker/Dockerfile with WITH_ROLLOUT=1).

MineRL 1.0.x is not on PyPI: pyproject.toml's ``rollout`` extra names its repository tag. pip
cannot install that extra next to the lock, because MineRL declares ``numpy<1.24`` while the
lock's scipy and scikit-learn need numpy 1.26.4. So MineRL goes in with ``--no-deps`` and then
its own requirements, less those met another way (:data:`SKIPPED`), with the lock as constraints:

    python docker/minerl_requirements.py reference pyproject.toml   # the extra's MineRL line
    python docker/minerl_requirements.py version pyproject.toml     # the tag's version, e.g. 1.0.2
    python docker/minerl_requirements.py deps                       # installed MineRL's requirements

Standard library and ``packaging`` only (``packaging`` is in the lock).
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

EXTRA = "rollout"
REPOSITORY = "https://github.com/minerllabs/minerl"
TAG = re.compile(r"v(\d+(?:\.\d+)*)")

# MineRL's requirements that are not installed, and why.
SKIPPED = {
    "numpy": "the lock's numpy 1.26.4 is kept: MineRL's cap <1.24 guards against the aliases "
             "(np.bool, np.int, ...) numpy 1.24 removed, which MineRL 1.0.2's package code does not use",
    "typing": "a backport of a standard-library module",
    "opencv-python": "the lock's opencv-python-headless provides cv2; a second cv2 build would "
                     "overwrite it and need libGL",
}


class RequirementsError(Exception):
    """A message for the user: what is wrong and what to do."""


def rollout_reference(pyproject: Path) -> Requirement:
    """The ``rollout`` extra's one requirement: MineRL from a ``vX.Y.Z`` tag of its repository."""
    try:
        extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
        lines = extras[EXTRA]
    except (OSError, tomllib.TOMLDecodeError, KeyError) as exc:
        raise RequirementsError(f"{pyproject}: cannot read [project.optional-dependencies] {EXTRA} ({exc!r})") from None
    if len(lines) != 1:
        raise RequirementsError(f"{pyproject}: the {EXTRA} extra should hold only MineRL, it holds {lines}")
    try:
        req = Requirement(lines[0])
    except InvalidRequirement as exc:
        raise RequirementsError(f"{pyproject}: {EXTRA} extra {lines[0]!r} is not a requirement: {exc}") from None
    if canonicalize_name(req.name) != "minerl" or not (req.url or "").startswith(f"git+{REPOSITORY}@"):
        raise RequirementsError(f"{pyproject}: the {EXTRA} extra is {lines[0]!r}; expected "
                                f"'minerl @ git+{REPOSITORY}@vX.Y.Z' (MineRL 1.0.x is not on PyPI)")
    tag_version(req)
    return req


def tag_version(req: Requirement) -> str:
    """``1.0.2`` for ``...@v1.0.2``: MineRL's setup.py stamps 1.0.0 unless MINERL_BUILD_VERSION says otherwise."""
    ref = (req.url or "").rsplit("@", 1)[-1]
    match = TAG.fullmatch(ref)
    if match is None:
        raise RequirementsError(f"MineRL reference {req.url!r} does not end in a release tag such as @v1.0.2")
    return match.group(1)


def runtime_requirements(requires: list[str]) -> list[str]:
    """MineRL's requirement strings less :data:`SKIPPED` (markers are left for pip to evaluate)."""
    return [r for r in requires if canonicalize_name(Requirement(r).name) not in SKIPPED]


def installed_requirements() -> list[str]:
    try:
        return metadata.requires("minerl") or []
    except metadata.PackageNotFoundError:
        raise RequirementsError("MineRL is not installed in this environment; install it first with "
                                "pip install --no-deps \"$(python docker/minerl_requirements.py reference "
                                "pyproject.toml)\" (JDK 8 on PATH)") from None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        if len(args) == 2 and args[0] in ("reference", "version"):
            req = rollout_reference(Path(args[1]))
            print(f"{req.name} @ {req.url}" if args[0] == "reference" else tag_version(req))
        elif args == ["deps"]:
            print("\n".join(runtime_requirements(installed_requirements())))
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except RequirementsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
