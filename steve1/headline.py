"""Each stage's headline figures: what its DVC metrics file holds, so ``dvc metrics show`` stays short.

The detail goes to JSON reports beside them (``eval/offline.json``, ``reports/data/summary.json``,
``models/prior_report.json``, a rollout's ``results.json``) and to DVC plots. One function per
stage picks the figures from the full record the stage already computes; values are rounded to
four significant digits (they are read by people; the reports keep full precision).

| stage | metrics file | keys |
|---|---|---|
| train | ``<models>/<run>/metrics.json`` | ``loss`` (last logged), ``val_loss`` (best), ``frames_per_s`` (last logged); ``<set>_val_loss`` (at the best step) when two or more sampling sets have val chunks |
| evaluate | ``<eval>/metrics.json`` | ``nll``, ``acc`` (joint top-1), ``goal_kl`` (KL true vs another episode's goal), ``best_scale`` (guidance scale of the lowest guided NLL); ``delta_nll`` with a baseline |
| report | ``<reports>/summary.json`` | ``drift`` (detected in any comparison), ``drift_share`` (train vs val); ``reference_drift_share`` with a reference sampling |
| prior | ``<models>/prior_metrics.json`` | ``val_loss`` (best); ``baseline_val_loss`` when ``prior.baseline`` (the official prior) is scored beside it |
| rollout | ``<eval>/rollouts/<name>/metrics.json`` | ``<env>.<prompt>``: mean of the prompt's target metric (``steve1.play.rollout``) |
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence


def rounded(x: Any, digits: int = 4) -> Optional[float]:
    """``x`` to ``digits`` significant digits; None for missing or non-finite values."""
    if x is None:
        return None
    x = float(x)
    if not math.isfinite(x):
        return None
    if x == 0.0:
        return 0.0
    return round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


def train(dvclive_summary: Mapping[str, Any], best: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """From dvclive's summary (the last logged value of each scalar) and ``best.json``."""
    per_set = (best or {}).get("val_losses") or {}
    return {"loss": rounded(dvclive_summary.get("loss")),
            "val_loss": rounded((best or {}).get("val_loss")),
            "frames_per_s": rounded(dvclive_summary.get("frames_per_s")),
            **{f"{name}_val_loss": rounded(loss) for name, loss in per_set.items()}}


def evaluate(metrics: Mapping[str, Any], sweep: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """From the offline evaluation's full metrics (``steve1.eval.offline``) and its guidance sweep
    ``[(cond_scale, guided nll), ...]``."""
    out = {"nll": rounded(metrics["nll"]), "acc": rounded(metrics["acc_joint"])}
    if "kl_other_goal" in metrics:
        out["goal_kl"] = rounded(metrics["kl_other_goal"])
    if sweep:
        out["best_scale"] = float(min(sweep, key=lambda s: s[1])[0])
    if "delta" in metrics:
        out["delta_nll"] = rounded(metrics["delta"]["nll"])
    for name, entry in (metrics.get("sets") or {}).items():   # a mixed sampling: forgetting and gain per set
        out[f"{name}_nll"] = rounded(entry["nll"])
        if "delta_nll" in entry:
            out[f"{name}_delta_nll"] = rounded(entry["delta_nll"])
    return out


def report(summary: Mapping[str, Any]) -> dict[str, Any]:
    """From the data report's summary (``steve1.eval.drift``)."""
    comps = summary["comparisons"]
    out: dict[str, Any] = {"drift": bool(summary["drift_detected"]),
                           "drift_share": rounded(comps["train_vs_val"].get("drift_share"))}
    if "reference_vs_current" in comps:
        out["reference_drift_share"] = rounded(comps["reference_vs_current"].get("drift_share"))
    return out


def prior(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """From the prior's training record (``steve1.train.prior``)."""
    out = {"val_loss": rounded(metrics["best_val_loss"])}
    if metrics.get("official") is not None:
        out["baseline_val_loss"] = rounded(metrics["official"]["val_loss"])
    return out
