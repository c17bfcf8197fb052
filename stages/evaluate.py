"""Evaluate stage: offline metrics of the trained policy on the val chunks -> ``<paths.eval>/metrics.json``
(DVC metrics), ``<paths.eval>/plots/custom/{cond_scale_sweep,chunk_nll}.json`` (dvclive plots) and
``<paths.eval>/offline.json`` (what was scored: weights hashes, sampling, settings).

With ``evaluate.baseline_weights`` the baseline is scored on the same chunks and ``baseline.*`` and
``delta.*`` (model - baseline) are added to the metrics.
"""

from __future__ import annotations

from typing import Optional, Sequence

from stages._common import run_stage
from steve1.eval.offline import run_offline_eval
from steve1.params import Params


def _body(params: Params) -> None:
    m = run_offline_eval(params)
    line = (f"evaluate: {m['n_chunks']} chunks, {m['n_steps']} steps: nll {m['nll']:.4f}, "
            f"acc_joint {m['acc_joint']:.3f}, kl_null_goal {m['kl_null_goal']:.4g}")
    if "delta" in m:
        line += f"; vs baseline: delta nll {m['delta']['nll']:+.4f}"
    print(line)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_stage("evaluate", _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
