"""Generate stage: two VPT agents take turns playing -> ``Layout.generated_episodes`` (episode files and
the manifest) and ``Layout.generated_videos`` (lossless companion videos for the embed step).

``generate.env: minerl`` plays MineRL (stops before any work when MineRL cannot start, saying what to
install); ``standin`` plays the deterministic stand-in world. ``generate.n_episodes: 0`` writes empty
folders and an empty manifest. ``engine: ray`` plays the episodes in Ray actors, each holding one env and
the two agents (``ray.generate``); the files are the same bytes.
"""

from __future__ import annotations

from typing import Optional, Sequence

from stages._common import StageError, run_stage
from steve1.engine import open_executor
from steve1.params import Params, describe_invalid
from steve1.play.generate import generate_from_params


def check(params: Params) -> None:
    """Agent files named without a folder are the weights stage's: they must be listed in weights.files."""
    for k, spec in enumerate(params.generate.agents):
        for what in ("model", "weights"):
            name = getattr(spec, what)
            if name and "/" not in name and name not in params.weights.files:
                raise ValueError(describe_invalid(f"generate.agents.{k}.{what}", name,
                                                  f"a file of weights.dir that weights.files does not list "
                                                  f"({params.weights.files}); add it there so the weights stage "
                                                  f"fetches and checks it, or give a path"))


def _body(params: Params) -> None:
    g = params.generate
    with open_executor(params) as executor:
        report = generate_from_params(params, executor)
    print(f"generate ({g.env}): {report.summary()}; manifest {report.manifest}")
    if g.n_episodes and report.n_ok == 0:
        raise StageError(f"no episode reached generate.min_steps ({g.min_steps}); reasons in {report.manifest}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_stage("generate", _body, argv, check)


if __name__ == "__main__":
    raise SystemExit(main())
