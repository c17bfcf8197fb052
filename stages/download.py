"""Stage ``download``: the recordings an index selects -> ``${paths.raw}/<id>.{mp4,jsonl}`` + manifest."""

from __future__ import annotations

import logging

from stages._common import StageError, run_stage
from steve1.data.download import run_download
from steve1.engine import open_executor
from steve1.fetch import RetryPolicy
from steve1.params import Params

log = logging.getLogger("stages.download")


def _body(params: Params) -> None:
    p = params.download
    with open_executor(params) as executor:
        report = run_download(
            params.paths.raw,
            p.index,
            select=p.select,
            n_episodes=p.n_episodes,
            episodes=p.episodes,
            versions=p.versions,
            seed=p.seed,
            policy=RetryPolicy(retries=p.retries, backoff_s=p.backoff_s, timeout_s=p.timeout_s),
            concurrency=p.concurrency,
            executor=executor,
        )
    log.info(report.summary())
    if report.failed_fraction > p.max_failed_fraction:
        raise StageError(
            f"{len(report.failed)} of {report.n_selected} episodes failed, more than "
            f"download.max_failed_fraction = {p.max_failed_fraction} (manifest written to {report.manifest_path}):\n"
            + report.failure_message()
        )
    if report.failed:
        log.warning("failed episodes (within max_failed_fraction):\n%s", report.failure_message())


def main(argv=None) -> int:
    return run_stage("download", _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
