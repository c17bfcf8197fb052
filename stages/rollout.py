"""Rollout stage: the trained agent plays every prompt -> ``Layout.rollouts`` (results.json, videos/,
metrics.json with each targeted prompt's mean, plots/<metric>.json).

``rollout.env: minerl`` plays MineRL's HumanSurvival: with MineRL, JDK 8 or a display missing the
stage stops before any work, saying what to install. ``rollout.env: standin`` (the embedded
default) plays the deterministic stand-in world, and every output says so. ``engine: ray`` plays the
episodes in Ray actors, each holding one env and the policy (``ray.rollout``); the files are the same bytes.
"""

from __future__ import annotations

from typing import Optional, Sequence

from stages._common import run_stage
from steve1.engine import open_executor
from steve1.eval.programmatic import METRICS
from steve1.params import Params, describe_invalid
from steve1.play.rollout import rollouts_from_params


def check(params: Params) -> None:
    unknown = sorted(set(params.rollout.targets.values()) - set(METRICS))
    if unknown:
        raise ValueError(describe_invalid("rollout.targets", params.rollout.targets,
                                          f"unknown metric(s) {unknown}; expected some of {list(METRICS)}"))


def run(params: Params, out_dir: Optional[str] = None, device: Optional[str] = None) -> dict:
    """The stage's work, shared with ``steve1 rollout`` (which may override the folder and device)."""
    with open_executor(params) as executor:
        res = rollouts_from_params(params, out_dir, device=device, executor=executor)
    print(f"rollout ({res['env']['label']}): {len(res['prompts'])} prompts, {len(res['episodes'])} episodes, "
          f"{res['n_failed']} failed, {len(res['crashes'])} env crashes")
    return res


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_stage("rollout", run, argv, check)


if __name__ == "__main__":
    raise SystemExit(main())
