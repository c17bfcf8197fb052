"""Report stage: dataset summaries and Evidently drift between train and val (and an earlier sampling).

Writes ``Layout.report_summary`` (DVC metrics: drift detected and its share), ``Layout.report_data``
(drift HTML/JSON, per-split tables, the full summary) and ``Layout.report_plot`` (per-column drift
scores, a DVC plot). Detected drift is a warning, or with ``report.on_drift: fail`` a non-zero exit
after the reports are written, so the evidence is on disk either way.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

from stages._common import StageError, run_stage
from steve1.eval.drift import build_report
from steve1.layout import Layout
from steve1.params import Params

log = logging.getLogger("stages.report")


def _body(params: Params) -> None:
    rp, layout = params.report, Layout.from_params(params)
    summary = build_report(
        episodes_dir=layout.episodes, embeds_dir=layout.embeds, sampling_path=layout.sampling,
        summary_path=layout.report_summary, data_dir=layout.report_data, reference_sampling=rp.reference_sampling,
        drift_share_threshold=rp.drift_share_threshold, column_threshold=rp.column_threshold,
        max_steps_per_split=rp.max_steps_per_split, n_components=rp.n_components, seed=rp.seed,
        details_path=layout.report_details, plot_path=layout.report_plot,
    )
    for name, c in summary["comparisons"].items():
        if c["skipped"]:
            continue
        log.info("%s: %d of %d columns drifted (share %.3f, threshold %.3f)", name, c["n_drifted_columns"],
                 c["n_columns"], c["drift_share"], rp.drift_share_threshold)
    drifted = [f"{name} ({c['drift_share']:.3f}: {', '.join(c['drifted_columns'])})"
               for name, c in summary["comparisons"].items() if c["drift_detected"]]
    where = layout.report_data
    if drifted and rp.on_drift == "fail":
        raise StageError(f"drift above report.drift_share_threshold={rp.drift_share_threshold} in "
                         f"{'; '.join(drifted)}; see {where}/drift*.html (set report.on_drift: warn to continue)")
    if drifted:
        log.warning("drift detected in %s; see %s/drift*.html", "; ".join(drifted), where)
    log.info("wrote %s and %s", layout.report_summary, where)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_stage("report", _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
