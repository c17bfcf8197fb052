"""Stage ``decode``: ``${paths.raw}`` recordings -> ``${paths.episodes}/<id>.h5`` + manifest.json."""

from __future__ import annotations

import logging

from stages._common import StageError, run_stage
from steve1.data.decode import decode_all
from steve1.engine import open_executor
from steve1.params import Params

log = logging.getLogger("stages.decode")


def _body(params: Params) -> None:
    with open_executor(params) as executor:
        report = decode_all(params.paths.raw, params.paths.episodes, params.decode, executor=executor)
    log.info(report.summary())
    for eid, reason in report.skipped.items():
        log.warning("skipped %s: %s", eid, reason)
    if report.n_ok == 0:
        raise StageError(f"no episode could be decoded from {params.paths.raw} (see {report.manifest_path})")


def main(argv=None) -> int:
    return run_stage("decode", _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
