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
from steve1.play.rollout import check_targets, rollout_stage


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_stage("rollout", rollout_stage, argv, check_targets)


if __name__ == "__main__":
    raise SystemExit(main())
