"""Stage ``weights``: fetch and verify the official checkpoint files ``weights.files`` into ``weights.dir``."""

from __future__ import annotations

import logging

from stages._common import run_stage
from steve1.fetch import RetryPolicy
from steve1.models.official_files import OFFICIAL_FILES, ensure_official_files
from steve1.params import Params, describe_invalid

log = logging.getLogger("stages.weights")


def check(params: Params) -> None:
    unknown = [f for f in params.weights.files if f not in OFFICIAL_FILES]
    if unknown:
        raise ValueError(describe_invalid("weights.files", params.weights.files,
                                          f"unknown official file(s) {unknown}; expected some of {sorted(OFFICIAL_FILES)}"))


def _body(params: Params) -> None:
    w = params.weights
    rows = ensure_official_files(w.files, w.dir, RetryPolicy(retries=w.retries, timeout_s=w.timeout_s))
    for name, row in rows.items():
        log.info("%s: ok (%d bytes, sha256 %s)", name, row["bytes"], row["sha256"][:16])
    if not rows:
        log.info("no official files requested (weights.files is empty): the embedded default needs none")


def main(argv=None) -> int:
    return run_stage("weights", _body, argv, check)


if __name__ == "__main__":
    raise SystemExit(main())
