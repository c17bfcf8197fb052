"""``steve1 tune``: an Optuna study whose trials are DVC experiments.

The study is declared in params.yaml's ``tune`` section (``steve1.params.TuneParams``): the searched
params (``space``: ranges with ``log``/``step``, or ``choices``), the ``objective`` (a headline
metric by ``steve1 compare``'s name, or a weighted sum of them, always minimised), ``n_trials``,
``sampler`` and ``seed``, ``jobs`` and the pruner.

Each trial is a real experiment: ``dvc exp run --queue --name <study>-t<N> -S key=value ...``, run by
DVC's queue workers (``dvc queue start --jobs <jobs>``), so ``dvc exp show``/``steve1 compare`` list
it and ``dvc exp apply <study>-t<N>`` keeps it. While a trial trains, its validation curve (the
trainer's dvclive files ``<run>/dvclive/plots/metrics/val_loss.tsv`` and ``val/<set>/loss.tsv``, in
the queue's working copy) is reported to Optuna at each logged step, and the pruner stops a trial
whose curve is worse than the median of the finished ones (``dvc queue kill``). Its final value is
read from the experiment's metrics (DVC's record).

The study lives in SQLite (Optuna's RDB storage) at ``tune.storage`` in the workspace, so a search
that is killed resumes where it stopped: trials already asked keep their number, params and
experiment (a queued or running one is watched again, one never queued is queued now), and only
the remaining trials are asked. ``optuna-dashboard sqlite:///tune/optuna.db`` opens it.

Proposals are reproducible: the sampler is seeded with (``seed``, trial number) before each ask, so
the same study config, seed and history propose the same trials, killed and resumed or not.

Bad input is refused before any trial runs, naming the key: a space entry that names no param of
the schema (or a whole section), a value the schema refuses, a range on a non-number, an unknown
objective metric. A trial that fails (DVC reports it failed, or its metrics lack the objective) is
recorded as failed with its reason and the study goes on.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

from steve1.errors import UserError
from steve1.params import Params, ParamsError, TuneParams, validate_params
from steve1.shapes import nested

log = logging.getLogger(__name__)

EXPERIMENT = "experiment"        # trial user attrs
QUEUED = "queued"
REASON = "fail_reason"
MISSING_POLLS = 3                # a queued trial absent from DVC's records this many looks in a row has vanished


class TuneError(UserError, ValueError):
    """The tune section cannot run: one line naming the key and what was expected."""


class DvcCommandError(UserError, RuntimeError):
    """A dvc command the study runs failed (not a DVC repository, a dirty queue...): its output's tail."""


# ------------------------------------------------------------------ the study's config


def experiment_name(study: str, number: int) -> str:
    return f"{study}-t{number}"


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _without_tune(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if k != "tune"}


def distributions(cfg: TuneParams, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Optuna distributions of ``cfg.space``, checked against the schema: every key names a param, every
    choice and both ends of every range are values the schema takes. Raises TuneError naming the key."""
    import optuna.distributions as D

    if not cfg.space:
        raise TuneError("tune.space is empty: name the params to search, e.g. "
                        "learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}")
    base = _without_tune(raw)
    try:
        validated = validate_params(base)
    except ParamsError as exc:
        raise TuneError(str(exc)) from None
    defaults = _flat(validated.model_dump(mode="json"))
    defaults.update({k: v for k, v in _schema_values(validated).items() if k not in defaults})
    out: dict[str, Any] = {}
    for key, spec in cfg.space.items():
        where = f"tune.space.{key}"
        if key == "tune" or key.startswith("tune."):
            raise TuneError(f"{where}: the tune section is the search's own config, not a param to search")
        if key not in defaults:
            if any(k.startswith(key + ".") for k in defaults):
                raise TuneError(f"{where}: '{key}' is a whole section; name one of its params "
                                f"(e.g. {next(k for k in defaults if k.startswith(key + '.'))})")
            raise TuneError(f"{where}: '{key}' is not a param of params.yaml's schema (steve1/params.py); "
                            f"check the spelling (dotted keys, e.g. train.weight_decay)")
        current = defaults[key]

        def check(value: Any, what: str) -> None:
            try:
                validate_params(nested({key: value}, base))
            except ParamsError as exc:
                detail = str(exc).split("\n", 1)[-1].strip()
                raise TuneError(f"{where}: {what} {value!r} is refused by the schema: {detail}") from None

        if spec.choices is not None:
            for c in spec.choices:
                check(c, "choice")
            encoded = [_encode(c) for c in spec.choices]
            if len(set(map(json.dumps, encoded))) != len(encoded):
                raise TuneError(f"{where}: choices {spec.choices!r} repeat a value")
            out[key] = D.CategoricalDistribution(encoded)
            continue
        if isinstance(current, bool) or not isinstance(current, (int, float)) and current is not None:
            raise TuneError(f"{where}: '{key}' is {type(current).__name__} ({current!r}), not a number: "
                            f"search it with choices: [...] instead of low/high")
        integer = isinstance(current, int) and all(isinstance(v, int) for v in (spec.low, spec.high))
        if isinstance(current, int) and not integer:
            raise TuneError(f"{where}: '{key}' is an integer param; low ({spec.low!r}) and high ({spec.high!r}) "
                            f"must be integers")
        check(spec.low, "low")
        check(spec.high, "high")
        if integer:
            out[key] = D.IntDistribution(int(spec.low), int(spec.high), log=spec.log,
                                         step=int(spec.step) if spec.step is not None else 1)
        else:
            out[key] = D.FloatDistribution(float(spec.low), float(spec.high), log=spec.log,
                                           step=float(spec.step) if spec.step is not None else None)
    return out


def _schema_values(model: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf key of the schema with its value, including keys a section leaves out of its dump
    when they hold their default (``train.best_on``)."""
    from pydantic import BaseModel

    out: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            out.update(_schema_values(value, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = value
    return out


def _encode(choice: Any) -> Any:
    """Optuna's categorical values are scalars: lists and mappings are stored as their JSON text."""
    return choice if choice is None or isinstance(choice, (bool, int, float, str)) else json.dumps(choice)


def decode(dists: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's Optuna params as params.yaml values (JSON-encoded choices decoded)."""
    import optuna.distributions as D

    out = {}
    for key, value in params.items():
        spec = dists.get(key)
        if isinstance(spec, D.CategoricalDistribution) and isinstance(value, str) and value[:1] in "[{":
            value = json.loads(value)
        out[key] = value
    return out


def objective_terms(cfg: TuneParams) -> dict[str, float]:
    return {cfg.objective: 1.0} if isinstance(cfg.objective, str) else dict(cfg.objective)


def _val_sets(params: Params) -> list[str]:
    s = params.sample
    sets = {"main": s.val_frames, **{m.name: m.val_frames for m in s.mix}}
    return [name for name, frames in sets.items() if frames > 0 or s.val_from]


def check_named_files(cfg: TuneParams, raw: Mapping[str, Any], root: str | Path = ".") -> None:
    """Refuse, before any trial, params or a choice that name a file ``root``'s dvc.yaml does not list
    as a dep: under ``dvc exp run`` the stage that reads it would refuse every such trial (DVC would not
    rerun it when the file changed; stages/_common.py)."""
    from steve1.pipeline import unlisted_file_deps

    base = _without_tune(raw)

    def unlisted(values: Mapping[str, Any]) -> list[str]:
        return sorted({f for files in unlisted_file_deps(validate_params(values), Path(root)).values() for f in files})

    missing = unlisted(base)
    if missing:
        raise TuneError(f"params.yaml names {', '.join(missing)}, which dvc.yaml does not list as a dep: run "
                        "`make dvc-yaml` and commit before the study")
    for key, spec in cfg.space.items():
        for choice in spec.choices or ():
            missing = unlisted(nested({key: choice}, base))
            if missing:
                raise TuneError(
                    f"tune.space.{key}: choice {choice!r} names {', '.join(missing)}, which dvc.yaml does not list "
                    "as a dep, so its trials' stages would refuse it. Search files inside a folder the stage "
                    "depends on (weights.dir for weights), or fix the value and run `make dvc-yaml`")


def check_objective(cfg: TuneParams, params: Params) -> None:
    """Every objective term is a headline metric these params can produce (``steve1.headline``)."""
    sets = ["main", *(m.name for m in params.sample.mix)]
    known = ["val_loss", "loss", *(f"{s}_val_loss" for s in sets), "nll", "acc", "goal_kl", "best_scale", "delta_nll",
             *(f"{s}_nll" for s in sets), *(f"{s}_delta_nll" for s in sets)]
    env = params.rollout.env
    terms = objective_terms(cfg)
    if not terms:
        raise TuneError("tune.objective is empty: name a metric such as val_loss, or {metric: weight, ...}")
    for name, weight in terms.items():
        if not math.isfinite(weight):
            raise TuneError(f"tune.objective.{name}: weight {weight!r} must be a finite number")
        if name.startswith(f"{env}."):
            continue
        if name not in known:
            raise TuneError(f"tune.objective: {name!r} is not a headline metric of these params; expected one of "
                            f"{', '.join(known)} or {env}.<prompt> (steve1 compare shows them)")
        if name.endswith("_val_loss") and len(_val_sets(params)) < 2:
            raise TuneError(f"tune.objective: {name!r} exists only when two or more sampling sets have val chunks "
                            f"(sample.val_frames, sample.mix[].val_frames); use val_loss")


def curves_of(cfg: TuneParams, params: Params) -> Optional[dict[str, str]]:
    """The dvclive curve (a path relative to the repository) of every objective term, or None when
    some term has none (then no pruning: only val losses are logged while training)."""
    from steve1.layout import Layout

    run = Layout.from_params(params).run
    out = {}
    for name in objective_terms(cfg):
        if name == "val_loss":
            out[name] = run.curve("val_loss").as_posix()
        elif name.endswith("_val_loss"):
            out[name] = run.curve(f"val/{name[: -len('_val_loss')]}/loss").as_posix()
        else:
            return None
    return out


def objective_value(cfg: TuneParams, metrics: Mapping[str, float]) -> tuple[Optional[float], list[str]]:
    """The weighted sum of the objective's metrics, or (None, the missing names)."""
    terms = objective_terms(cfg)
    missing = [n for n in terms if metrics.get(n) is None or not math.isfinite(metrics[n])]
    if missing:
        return None, missing
    return sum(w * metrics[n] for n, w in terms.items()), []


def combine_curves(cfg: TuneParams, curves: Mapping[str, Sequence[tuple[int, float]]]) -> list[tuple[int, float]]:
    """The objective along training: the weighted sum at each step every term's curve has."""
    terms = objective_terms(cfg)
    by_name = {n: dict(curves.get(n) or []) for n in terms}
    steps = sorted(set.intersection(*(set(v) for v in by_name.values()))) if by_name else []
    return [(s, sum(w * by_name[n][s] for n, w in terms.items())) for s in steps]


def parse_tsv(text: str, column: Optional[str] = None) -> list[tuple[int, float]]:
    """dvclive's ``step<TAB>value`` history."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    head = lines[0].split("\t")
    if "step" not in head:
        return []
    si = head.index("step")
    vi = head.index(column) if column in head else next(i for i, h in enumerate(head) if h not in ("step", "timestamp"))
    out = []
    for line in lines[1:]:
        cells = line.split("\t")
        try:
            out.append((int(cells[si]), float(cells[vi])))
        except (ValueError, IndexError):
            continue
    return out


# ------------------------------------------------------------------ running trials


@dataclass
class TrialStatus:
    state: str                                   # queued | running | done | failed
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)   # flattened params.yaml of the experiment
    error: Optional[str] = None
    root: Optional[str] = None                   # a running trial's working copy
    rev: Optional[str] = None


class Runner(Protocol):
    """Where trials run: DVC's experiment queue (:class:`DvcQueueRunner`), or a stub in tests."""

    def submit(self, name: str, overrides: Mapping[str, Any]) -> None: ...
    def start(self, jobs: int) -> None: ...
    def poll(self) -> dict[str, TrialStatus]: ...
    def curve(self, name: str, status: TrialStatus, path: str) -> list[tuple[int, float]]: ...
    def stop(self, name: str) -> None: ...
    def reason(self, name: str, status: TrialStatus) -> str: ...
    def baseline(self) -> dict[str, Any]: ...


def yaml_value(value: Any) -> str:
    """A value as ``-S key=<text>`` must spell it: YAML that reads back as the same value
    (``1e-05`` would be read as a string; ``1.0e-05`` is a float)."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            mant, exp = text.split("e")
            text = f"{mant}.0e{exp}"
        return text
    if isinstance(value, (int, str)):
        return json.dumps(value) if isinstance(value, str) else str(value)
    return json.dumps(value)


class DvcQueueRunner:
    """Trials as queued DVC experiments of the repository at ``repo`` (the running Python's DVC)."""

    def __init__(self, repo: str | Path = "."):
        self.repo = Path(repo)
        self._shown: list[dict[str, Any]] = []
        self._stale_texts: dict[str, set[str]] = {}

    def _dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=self.repo, capture_output=True, text=True)
        if check and out.returncode != 0:
            raise DvcCommandError(f"dvc {' '.join(args)} failed: {(out.stderr or out.stdout).strip()[-1500:]}")
        return out

    def submit(self, name: str, overrides: Mapping[str, Any]) -> None:
        sets = [a for k, v in overrides.items() for a in ("-S", f"{k}={yaml_value(v)}")]
        self._dvc("exp", "run", "--queue", "--name", name, *sets)

    def start(self, jobs: int) -> None:
        # the workers it spawns inherit its stdout/stderr: a pipe would keep this call waiting until they
        # exit, so its output goes to a file
        with tempfile.TemporaryFile("w+") as out:
            rc = subprocess.run([sys.executable, "-m", "dvc", "queue", "start", "--jobs", str(jobs)], cwd=self.repo,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
            if rc != 0:
                out.seek(0)
                raise DvcCommandError(f"dvc queue start --jobs {jobs} failed: {out.read().strip()[-1500:]}")

    def poll(self) -> dict[str, TrialStatus]:
        from steve1 import experiments as X

        for attempt in range(3):   # exp show fails now and then while a finished run's temp folder is removed
            try:
                self._shown = X.exp_show(self.repo)
                break
            except X.ExperimentsError:
                if attempt == 2:
                    raise
                time.sleep(1.0)
        return {r.name: TrialStatus(state=r.state, metrics=r.metrics, params=r.params, error=r.error, root=r.root,
                                    rev=r.rev)
                for r in X.experiments(self._shown) if r.kind == "experiment"}

    def baseline(self) -> dict[str, Any]:
        from steve1 import experiments as X

        rows = [r for r in X.experiments(self._shown or X.exp_show(self.repo)) if r.kind == "baseline"]
        return rows[0].params if rows else {}

    def curve(self, name: str, status: TrialStatus, path: str) -> list[tuple[int, float]]:
        text = ""
        if status.state == "running" and status.root:
            f = Path(status.root) / path
            text = f.read_text() if f.is_file() else ""
            if text in self._stale(path):   # the copy's checkout of the baseline's curve, before training writes
                text = ""
        elif status.state == "done" and status.rev:   # dvclive's files are in the experiment's commit
            out = subprocess.run(["git", "show", f"{status.rev}:{path}"], cwd=self.repo, capture_output=True, text=True)
            text = out.stdout if out.returncode == 0 else ""
        return parse_tsv(text)

    def _stale(self, path: str) -> set[str]:
        """The curve a queued run starts with (git carries dvclive's files): HEAD's and the workspace's."""
        if path not in self._stale_texts:
            head = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=self.repo, capture_output=True, text=True)
            here = self.repo / path
            self._stale_texts[path] = {t for t in (head.stdout if head.returncode == 0 else "",
                                                   here.read_text() if here.is_file() else "") if t}
        return self._stale_texts[path]

    def stop(self, name: str) -> None:
        self._dvc("queue", "kill", name, check=False)

    def reason(self, name: str, status: TrialStatus) -> str:
        out = self._dvc("queue", "logs", name, check=False)
        lines = [line.strip() for line in (out.stdout or "").splitlines() if line.strip()]
        first = next((i for i, line in enumerate(lines) if line.startswith("ERROR")), None)
        # the stage's own last words, then DVC's error line
        if first is not None:
            return " | ".join(lines[max(0, first - 2): first + 1])
        if lines:   # a run that was killed (dvc queue kill, a lost worker) logs no error
            return f"stopped without an error in its log (killed?); the log ends: {lines[-1]}"
        return status.error or "the experiment failed"


# ------------------------------------------------------------------ the study


@dataclass
class Summary:
    study: str
    storage: str
    trials: list[dict[str, Any]]
    best: Optional[dict[str, Any]]          # number, value, experiment, diff {key: [baseline, best]}

    def lines(self) -> list[str]:
        out = [f"study {self.study!r} in {self.storage}:"]
        for t in self.trials:
            value = "-" if t["value"] is None else f"{t['value']:.6g}"
            params = ", ".join(f"{k}={json.dumps(v)}" for k, v in t["params"].items())
            why = f"  ({t['reason']})" if t.get("reason") else ""
            out.append(f"  #{t['number']:<3} {t['state']:<8} {value:>10}  {t['experiment'] or '-'}  {params}{why}")
        if self.best is None:
            out.append("no finished trial yet")
            return out
        b = self.best
        out.append(f"best: trial #{b['number']} = {b['value']:.6g}, experiment {b['experiment']}; its params "
                   f"against the baseline:")
        out += [f"  {k}: {json.dumps(old)} -> {json.dumps(new)}" for k, (old, new) in b["diff"].items()] or \
            ["  (none: the baseline's params)"]
        out.append(f"keep it: dvc exp apply {b['experiment']}")
        return out


def trial_seed(seed: int, number: int) -> int:
    """The sampler's seed for trial ``number``: a function of both (``seed + number`` would make study
    seed 1 propose study seed 0's trials shifted by one)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def _sampler(cfg: TuneParams, seed: int):
    import optuna

    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(cfg: TuneParams):
    import optuna

    if cfg.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=cfg.prune_after_trials, n_warmup_steps=cfg.prune_warmup_steps)


def _config_fingerprint(cfg: TuneParams, dists: Mapping[str, Any]) -> str:
    import optuna.distributions as D

    return json.dumps({"space": {k: D.distribution_to_json(d) for k, d in dists.items()},
                       "objective": objective_terms(cfg), "sampler": cfg.sampler, "seed": cfg.seed}, sort_keys=True)


def storage_url(cfg: TuneParams, root: str | Path = ".") -> str:
    path = (Path(root) / cfg.storage).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def open_study(cfg: TuneParams, dists: Mapping[str, Any], root: str | Path = "."):
    """The study in ``tune.storage`` (created, or loaded to resume); refuses one made with another
    space, objective, sampler or seed (its trials would not be this config's)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=cfg.study, storage=storage_url(cfg, root), direction="minimize",
                                load_if_exists=True, sampler=_sampler(cfg, cfg.seed), pruner=_pruner(cfg))
    fingerprint = _config_fingerprint(cfg, dists)
    stored = study.user_attrs.get("config")
    if stored is None:
        study.set_user_attr("config", fingerprint)
    elif stored != fingerprint:
        raise TuneError(f"tune.study {cfg.study!r} in {cfg.storage} was made with another space, objective, sampler "
                        f"or seed; name a new tune.study (or delete {cfg.storage}) to start another search")
    return study


def run_study(cfg: TuneParams, params: Params, raw: Mapping[str, Any], runner: Runner, root: str | Path = ".",
              sleep: Callable[[float], None] = time.sleep, echo: Callable[[str], None] = print,
              max_polls: Optional[int] = None) -> Summary:
    """Run (or resume) the study until ``cfg.n_trials`` trials have finished; return its summary.

    ``max_polls`` stops after that many looks at the runner (tests simulate a killed search)."""
    import optuna
    from optuna.trial import TrialState

    dists = distributions(cfg, raw)
    check_named_files(cfg, raw, root)
    check_objective(cfg, params)
    curve_paths = curves_of(cfg, params) if cfg.pruner != "none" else None
    study = open_study(cfg, dists, root)
    live: dict[int, optuna.trial.Trial] = {}
    reported: dict[int, int] = {}
    absent: dict[int, int] = {}

    def fail(number: int, reason: str) -> None:
        live[number].set_user_attr(REASON, reason)
        study.tell(number, state=TrialState.FAIL)
        echo(f"trial #{number} ({experiment_name(cfg.study, number)}) failed: {reason}")
        live.pop(number)

    def submit(trial: optuna.trial.Trial, values: Mapping[str, Any]) -> None:
        name = experiment_name(cfg.study, trial.number)
        try:
            runner.submit(name, values)
        except Exception as exc:   # DVC refused to queue it: the trial failed, the study goes on
            fail(trial.number, f"could not queue {name}: {exc}")
            return
        trial.set_user_attr(QUEUED, True)
        echo(f"trial #{trial.number}: queued {name} " + " ".join(f"-S {k}={yaml_value(v)}" for k, v in values.items()))

    # a resumed search: the trials it had asked are watched again (queued once, never twice)
    statuses = runner.poll()
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial = optuna.trial.Trial(study, frozen._trial_id)
        live[frozen.number] = trial
        reported[frozen.number] = max(frozen.intermediate_values, default=-1)
        name = experiment_name(cfg.study, frozen.number)
        if name not in statuses and not frozen.user_attrs.get(QUEUED):
            submit(trial, decode(dists, frozen.params))
        else:
            echo(f"trial #{frozen.number}: resumed, watching {name}")

    polls, started_at = 0, -1
    while True:
        asked = len(study.trials)
        while len(live) < cfg.jobs and asked < cfg.n_trials:
            study.sampler = _sampler(cfg, trial_seed(cfg.seed, asked))   # per trial: resume proposes the same
            trial = study.ask(dict(dists))
            trial.set_user_attr(EXPERIMENT, experiment_name(cfg.study, trial.number))
            live[trial.number] = trial
            reported[trial.number] = -1
            submit(trial, decode(dists, trial.params))
            asked = len(study.trials)
        if not live:
            break
        if len(study.trials) != started_at:   # workers stop when the queue is empty: start them for new trials
            runner.start(cfg.jobs)
            started_at = len(study.trials)
        if max_polls is not None and polls >= max_polls:
            break
        sleep(cfg.poll_s)
        polls += 1
        statuses = runner.poll()
        for number in list(live):
            trial = live[number]
            name = experiment_name(cfg.study, number)
            st = statuses.get(name)
            if st is None:
                absent[number] = absent.get(number, 0) + 1
                if absent[number] >= MISSING_POLLS:
                    fail(number, f"experiment {name} is not in dvc exp show (removed from the queue?)")
                continue
            absent.pop(number, None)
            if curve_paths and st.state in ("running", "done"):
                curves = {n: runner.curve(name, st, p) for n, p in curve_paths.items()}
                for step, value in combine_curves(cfg, curves):
                    if step > reported[number] and math.isfinite(value):
                        trial.report(value, step)
                        reported[number] = step
                if st.state == "running" and reported[number] >= 0 and trial.should_prune():
                    runner.stop(name)
                    trial.set_user_attr(REASON, f"pruned at step {reported[number]}: worse than the median")
                    study.tell(number, state=TrialState.PRUNED)
                    echo(f"trial #{number} ({name}) pruned at step {reported[number]}")
                    live.pop(number)
                    continue
            if st.state == "done":
                value, missing = objective_value(cfg, st.metrics)
                if value is None:
                    fail(number, f"{name} has no {', '.join(missing)} in its metrics "
                                 f"(it has {', '.join(sorted(st.metrics)) or 'none'})")
                    continue
                study.tell(number, value)
                echo(f"trial #{number} ({name}) = {value:.6g}")
                live.pop(number)
            elif st.state == "failed":
                fail(number, runner.reason(name, st))
    return summarize(study, dists, runner, cfg)


def summarize(study, dists: Mapping[str, Any], runner: Optional[Runner], cfg: TuneParams) -> Summary:
    """Every trial with its state, value, params and experiment; the best as a params diff against the baseline."""
    from optuna.trial import TrialState

    trials = []
    for t in study.get_trials(deepcopy=False):
        trials.append({"number": t.number, "state": t.state.name.lower(), "value": t.value,
                       "params": decode(dists, t.params), "experiment": t.user_attrs.get(EXPERIMENT),
                       "reason": t.user_attrs.get(REASON)})
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    best = None
    if done:
        b = min(done, key=lambda t: t.value)
        name = b.user_attrs.get(EXPERIMENT) or experiment_name(cfg.study, b.number)
        statuses = runner.poll() if runner is not None else {}
        base = runner.baseline() if runner is not None else {}
        ran = statuses.get(name)
        if ran is not None and ran.params:
            diff = {k: [base.get(k), v] for k, v in ran.params.items() if base.get(k) != v}
        else:
            new = decode(dists, b.params)
            diff = {k: [base.get(k), v] for k, v in new.items() if base.get(k) != v}
        best = {"number": b.number, "value": b.value, "experiment": name, "diff": diff}
    return Summary(study=cfg.study, storage=cfg.storage, trials=trials, best=best)


def load_tune(params_path: str | Path) -> tuple[TuneParams, Params, dict[str, Any]]:
    """params.yaml's tune section, the validated params and the raw mapping (``-S`` overrides apply to it)."""
    import yaml

    from steve1.params import load_params

    params = load_params(params_path)
    raw = yaml.safe_load(Path(params_path).read_text()) or {}
    return params.tune, params, raw
