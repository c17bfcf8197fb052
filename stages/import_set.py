"""Stage ``import-set@<name>``: the recordings of ``custom.<name>.source`` -> the set's episodes
(``<paths.custom>/<name>/episodes``: ``<id>.h5`` + manifest) and companion videos (``raw/``).

Same code as ``steve1 import-recordings``; bad recordings are skipped with a reason, a rerun keeps
the episodes whose sources and settings did not change.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

from stages._common import StageError, run_set_stage
from steve1.data.custom import import_all
from steve1.engine import open_executor
from steve1.layout import Layout
from steve1.params import Params

log = logging.getLogger("stages.import_set")


def _body(params: Params, name: str) -> None:
    spec, where = params.custom[name], Layout.from_params(params).custom_set(name)
    with open_executor(params) as executor:
        report = import_all(spec.source, where.episodes, params.decode, spec.format, where.raw, spec.fps,
                            executor=executor)
    for eid, reason in sorted(report.skipped.items()):
        log.warning("skipped %s: %s", eid, reason)
    log.info(report.summary())
    if report.n_ok == 0:
        raise StageError(f"no episode could be imported from {spec.source} (see {report.manifest_path})")


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_set_stage("import_set", _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
