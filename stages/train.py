"""Train stage: STEVE-1 behavioural cloning -> ``<paths.models>/<train.run>/`` (latest/best weights,
snapshots, ``checkpoint/`` for exact resume, ``dvclive/`` curves, ``metrics.json``: the headline loss,
val loss and frames/s).

Run it again after an interruption (or ``dvc repro``; the checkpoint is ``persist: true``) and it
continues from the last checkpoint when the train params are unchanged. Multi-process:
``accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m stages.train``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import json
import os

from stages._common import run_stage
from steve1 import headline
from steve1.io import write_json_atomic
from steve1.layout import Layout
from steve1.params import Params, describe_invalid
from steve1.train.freeze import FreezeError, check_freeze_names
from steve1.train.process import exit_with_launcher
from steve1.train.trainer import train


def check(params: Params) -> None:
    try:
        check_freeze_names(params.train.freeze)
    except FreezeError as exc:
        raise ValueError(describe_invalid("train.freeze", params.train.freeze, str(exc))) from None
    start, run_dir = params.train.in_weights, Layout.from_params(params).run.dir
    if start and Path(start).resolve().is_relative_to(run_dir.resolve()):
        raise ValueError(describe_invalid(
            "train.in_weights", start, f"is inside this run's own folder {run_dir}, which training overwrites (its "
            f"before/after deltas would be zero): copy the file elsewhere first (e.g. data/weights/start.weights, "
            f"`dvc add` it to track it) or train under another train.run"))


def _body(params: Params) -> None:
    exit_with_launcher()   # no orphan trainer keeps writing when dvc (or accelerate's launcher) dies
    summary = train(params)
    if int(os.environ.get("RANK", "0")) == 0:   # one writer under accelerate launch
        run = Layout.from_params(params).run
        best = json.loads(run.best_json.read_text()) if run.best_json.is_file() else None
        write_json_atomic(run.metrics, headline.train(json.loads(run.dvclive_summary.read_text()), best))
    best = summary["best_val_loss"]
    best_text = "n/a (no val split)" if best is None else f"{best:.4f} at step {summary['best_step']}"
    on = "" if params.train.best_on == "all" else f" of set {params.train.best_on!r}"
    print(f"train: {summary['step']} steps, {summary['frames']} frames, best val loss{on} {best_text}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_stage("train", _body, argv, check)


if __name__ == "__main__":
    raise SystemExit(main())
