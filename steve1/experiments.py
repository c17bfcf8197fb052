"""Experiments a person can read: DVC's own experiment records as one narrow table (``steve1 compare``).

``dvc exp show`` prints every param of params.yaml and the hash of every dependency as columns
(thousands of characters wide). This module reads the same records (``dvc exp show --json``: the
workspace, the baseline commit, its committed, running, queued and failed experiments) and keeps
one row per experiment with only the params that differ between the rows and the headline metrics
(``steve1.headline``) a comparison is about:

- ``val_loss`` and ``<set>_val_loss`` (train: best val loss, overall and per sampling set),
- ``nll``, ``delta_nll``, ``<set>_delta_nll`` (evaluate: NLL and its change against a baseline),
- ``<env>.<prompt>`` (rollout: mean of each prompt's target metric).

The baseline rows (workspace, then the commit the experiments start from) come first. A metric's
file is found from each row's own params (``steve1.layout``), so a row with another ``train.run``
still has its figures. :func:`all_metrics` gives every headline figure of those three stages by
name (the names ``steve1 tune`` objectives use).
"""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from steve1.errors import UserError

WIDTH = 120
MAX_CELL = 18          # a param value wider than this is cut with "…" in the table (never in --json/--csv)
MAX_NAME = 22

STATES = {"success": "done", None: "done"}   # DVC executor state -> what the table says


class ExperimentsError(UserError, RuntimeError):
    """DVC's experiment records could not be read."""


@dataclass
class Experiment:
    name: str                       # workspace, the baseline's branch/short rev, or the experiment's name
    rev: str
    kind: str                       # workspace | baseline | experiment
    state: str                      # workspace | baseline | done | queued | running | failed
    params: dict[str, Any]          # params.yaml, flattened to dotted keys
    metrics: dict[str, float]       # every headline figure of train, evaluate and rollout by name
    error: Optional[str] = None
    root: Optional[str] = None      # a running experiment's working folder (DVC's temp copy)
    raw_params: dict[str, Any] = field(default_factory=dict, repr=False)


# ------------------------------------------------------------------ reading DVC's records


def exp_show(repo: str | Path = ".", all_commits: bool = False) -> list[dict[str, Any]]:
    """``dvc exp show --json`` of ``repo`` (the CLI of the running Python's DVC)."""
    cmd = [sys.executable, "-m", "dvc", "exp", "show", "--json", "--no-fetch"]
    if all_commits:
        cmd.append("--all-commits")
    out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    if out.returncode != 0:
        raise ExperimentsError(f"dvc exp show failed in {repo}: {(out.stderr or out.stdout).strip()[-2000:]}")
    try:
        return json.loads(out.stdout or "[]")
    except json.JSONDecodeError as exc:
        raise ExperimentsError(f"dvc exp show --json printed no JSON ({exc}): {out.stdout[:500]!r}") from None


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"freeze": []}}`` -> ``{"train.freeze": []}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _get(raw: Mapping[str, Any], dotted: str, default: Any) -> Any:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return default if node is None else node


def metric_files(raw_params: Mapping[str, Any]) -> dict[str, str]:
    """Where train, evaluate and rollout keep their headline figures, by the params of one row
    (the same paths as ``steve1.layout``; missing keys take the schema's defaults)."""
    from steve1.layout import Layout

    models, ev = _get(raw_params, "paths.models", "models"), _get(raw_params, "paths.eval", "eval")
    unused = {k: Path(".") for k in ("source", "weights", "raw", "episodes", "embeds", "samplings", "reports")}
    layout = Layout(models=Path(models), eval=Path(ev), run_name=str(_get(raw_params, "train.run", "default")),
                    rollout_name=str(_get(raw_params, "rollout.name", "default")), **unused)
    return {"train": layout.run.metrics.as_posix(), "evaluate": layout.eval_metrics.as_posix(),
            "rollout": layout.rollouts.metrics.as_posix()}


def all_metrics(files: Mapping[str, Any], raw_params: Mapping[str, Any]) -> dict[str, float]:
    """Every headline figure of train, evaluate and rollout in one row's metrics files, by name:
    train and evaluate keys as they are (their names do not collide), rollout as ``<env>.<prompt>``."""
    where = metric_files(raw_params)

    def data(stage: str) -> Mapping[str, Any]:
        entry = files.get(where[stage]) or {}
        return entry.get("data") or {}

    out: dict[str, float] = {}
    for stage in ("train", "evaluate"):
        for k, v in data(stage).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = float(v)
    for env, prompts in data("rollout").items():
        if isinstance(prompts, Mapping):
            for prompt, v in prompts.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[f"{env}.{prompt}"] = float(v)
    return out


def is_headline(name: str) -> bool:
    """The figures a comparison shows: val losses, NLL and its deltas, rollout targets."""
    return (name in ("val_loss", "nll", "delta_nll") or name.endswith("_val_loss") or name.endswith("_delta_nll")
            or "." in name)


def _row(rec: Mapping[str, Any], name: str, kind: str, state: str, executor: Optional[Mapping[str, Any]] = None
         ) -> Experiment:
    data = rec.get("data") or {}
    raw = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
    error = rec.get("error")
    local = (executor or {}).get("local") or {}
    return Experiment(name=name, rev=str(rec.get("rev") or ""), kind=kind, state=state, params=flatten(raw),
                      metrics=all_metrics(data.get("metrics") or {}, raw),
                      error=(error.get("msg") if isinstance(error, Mapping) else error) or None,
                      root=local.get("root"), raw_params=raw)


def experiments(shown: Sequence[Mapping[str, Any]]) -> list[Experiment]:
    """The rows of ``dvc exp show --json``: the workspace, each baseline commit and its experiments."""
    rows: list[Experiment] = []
    for base in shown:
        rev = str(base.get("rev") or "")
        if rev == "workspace":
            rows.append(_row(base, "workspace", "workspace", "workspace"))
            continue
        rows.append(_row(base, str(base.get("name") or rev[:7]), "baseline", "baseline"))
        for exp in base.get("experiments") or []:
            revs = exp.get("revs") or []
            if not revs:
                continue
            executor = exp.get("executor") or {}
            state = STATES.get(executor.get("state"), executor.get("state"))
            rec = revs[0]
            name = str(exp.get("name") or rec.get("name") or str(rec.get("rev") or "")[:7])
            row = _row(rec, name, "experiment", state, executor)
            if row.error and state == "done":
                row.state = "failed"
            if row.state != "done":   # DVC shows the baseline's files for a run that has not finished
                row.metrics = {}
            rows.append(row)
    if len(rows) >= 2 and rows[0].kind == "workspace" and rows[1].kind == "baseline" and \
            rows[0].params == rows[1].params and rows[0].metrics == rows[1].metrics:
        rows.pop(0)   # the workspace is the baseline commit: one row says it
    return rows


# ------------------------------------------------------------------ the comparison


def differing_params(rows: Sequence[Experiment]) -> list[str]:
    """Param keys whose value is not the same in every row, in params.yaml's order."""
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row.params if k not in keys)
    return [k for k in keys if len({json.dumps(r.params.get(k), sort_keys=True) for r in rows}) > 1]


def headline_columns(rows: Sequence[Experiment]) -> list[str]:
    """Headline metrics present in any row, in reading order: val losses (overall first), NLL and
    deltas, rollout targets."""
    names: list[str] = []
    for row in rows:
        names.extend(k for k in row.metrics if is_headline(k) and k not in names)

    def order(n: str) -> tuple[int, str]:
        if n == "val_loss":
            return (0, "")
        if n.endswith("_val_loss"):
            return (1, n)
        if n in ("nll", "delta_nll"):
            return (2, n)
        if n.endswith("_delta_nll"):
            return (3, n)
        return (4, "")          # rollout targets keep their order

    return sorted(names, key=order)


def sort_rows(rows: Sequence[Experiment], metric: Optional[str], descending: bool = False) -> list[Experiment]:
    """Baseline rows first; the experiments by ``metric`` (rows without it last)."""
    base = [r for r in rows if r.kind != "experiment"]
    exps = [r for r in rows if r.kind == "experiment"]
    if metric:
        known = {k for r in rows for k in r.metrics}
        if known and metric not in known:
            raise ExperimentsError(f"--sort {metric!r}: no experiment has that metric; "
                                   f"the metrics are {', '.join(sorted(known))}")
        present = [r for r in exps if metric in r.metrics]
        present.sort(key=lambda r: r.metrics[metric], reverse=descending)
        exps = present + [r for r in exps if metric not in r.metrics]
    return base + exps


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":")).replace('"', "")
    return str(value)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def records(rows: Sequence[Experiment]) -> list[dict[str, Any]]:
    """The comparison for scripts: every row with its differing params and headline metrics."""
    params, metrics = differing_params(rows), headline_columns(rows)
    return [{"experiment": r.name, "rev": r.rev, "state": r.state,
             "params": {k: r.params.get(k) for k in params},
             "metrics": {k: r.metrics.get(k) for k in metrics}, "error": r.error} for r in rows]


def to_json(rows: Sequence[Experiment]) -> str:
    return json.dumps(records(rows), indent=2)


def to_csv(rows: Sequence[Experiment]) -> str:
    params, metrics = differing_params(rows), headline_columns(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["experiment", "rev", "state", *params, *metrics])
    for r in rows:
        w.writerow([r.name, r.rev, r.state, *(_csv_value(r.params.get(k)) for k in params),
                    *("" if r.metrics.get(k) is None else r.metrics[k] for k in metrics)])
    return buf.getvalue()


def _csv_value(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, (list, dict, bool)) or v is None else v


def short_names(keys: Sequence[str], every_key: Sequence[str]) -> dict[str, str]:
    """Each dotted key by its shortest tail of two or more components that no other key ends with
    (``train.augment.enabled`` -> ``augment.enabled``; ``train.freeze`` and ``learning_rate`` stay)."""
    every = set(every_key)
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(min(2, len(parts)), len(parts) + 1):
            tail = ".".join(parts[-n:])
            if not any(other != key and (other == tail or other.endswith("." + tail)) for other in every):
                out[key] = tail
                break
        else:
            out[key] = key
    return out


def _metric_priority(name: str) -> int:
    """Which metric columns give way first when the table is too wide (higher goes first); the
    differing params (20 + their index) give way after the per-set val losses' peers."""
    if name == "val_loss":
        return 10
    if name.endswith("_val_loss"):
        return 30
    if name == "delta_nll":
        return 35
    if name.endswith("_delta_nll"):
        return 38
    if name == "nll":
        return 45
    return 50


def table(rows: Sequence[Experiment], width: int = WIDTH) -> str:
    """The comparison as a text table no wider than ``width``: experiment, state, the differing params,
    the headline metrics. A param's header is the shortest unambiguous tail of its key (``--json``
    and ``--csv`` give whole keys). Columns that do not fit are left out (rollout targets first, then
    NLL, deltas, per-set val losses, params from the last), and a last line names them."""
    if not rows:
        return "no experiments (dvc exp show lists none)"
    params, metrics = differing_params(rows), headline_columns(rows)
    cols: list[tuple[str, list[str], int]] = []   # header, cells, priority (lower stays longer)
    cols.append(("experiment", [_cut(r.name, MAX_NAME) for r in rows], 0))
    cols.append(("state", [r.state for r in rows], 0))
    names = short_names(params, [k for r in rows for k in r.params])
    for i, k in enumerate(params):
        cols.append((_cut(names[k], MAX_CELL), [_cut(_cell(r.params.get(k)), MAX_CELL) for r in rows], 20 + i))
    for k in metrics:
        cols.append((k, [_cell(r.metrics.get(k)) for r in rows], _metric_priority(k)))

    def widths(cs):
        return [max(len(h), *(len(c) for c in cells)) for h, cells, _ in cs]

    left_out: list[str] = []
    while sum(widths(cols)) + 2 * (len(cols) - 1) > width and len(cols) > 2:
        drop = max(range(len(cols)), key=lambda i: (cols[i][2], i))
        left_out.append(cols.pop(drop)[0])
    ws = widths(cols)
    numeric = [i >= 2 and h in metrics for i, (h, _, _) in enumerate(cols)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, ws, numeric)).rstrip()

    out = [line([h for h, _, _ in cols]), line(["-" * w for w in ws])]
    out += [line([cells[i] for _, cells, _ in cols]) for i in range(len(rows))]
    if left_out:
        note = f"(left out to fit {width} columns: {', '.join(reversed(left_out))}; --json or --csv has all)"
        out += textwrap.wrap(note, width, break_on_hyphens=False)
    return "\n".join(out)
