"""Each stage reads only the params it declares (steve1/shapes.py), so dvc.yaml's params, the run
fingerprint and the recorded configs cannot miss a key that shapes an output.

The stage bodies run at toy size (``python -m stages.<name>``'s ``main``, in this process) under a params
object that records every key read; a read that is neither declared, nor a ``${...}`` of the stage's
dvc.yaml entry (a dep/out path), nor speed-only, nor where work runs (``engine``, ``ray``) fails.
Covered: make-source, download, decode, embed, generate, embed-generated, sample, train, report, prior,
evaluate. Not covered: weights (needs the network), import-set/embed-set (custom sets), rollout.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import stages._common as common
from fixtures.schema import speed_only_keys
from steve1.layout import Layout
from steve1.params import Section, load_params
from steve1.shapes import STAGES

EXECUTION = ("engine", "ray")     # where per-episode work runs, never what it writes (docs/cluster.md)
_OWNER: dict[int, tuple[str, set[str]]] = {}
_KEEP: list[Any] = []
_CLASSES: dict[type, type] = {}


def _leaves(model: Section, prefix: str) -> list[str]:
    out = []
    for name in type(model).model_fields:
        value = model.__dict__[name]
        out += _leaves(value, f"{prefix}{name}.") if isinstance(value, Section) else [prefix + name]
    return out


def _recording_class(cls: type) -> type:
    if cls not in _CLASSES:
        def __getattribute__(self, name):
            value = object.__getattribute__(self, name)
            owner = _OWNER.get(id(self))
            if owner is not None and name in cls.model_fields and not isinstance(value, Section):
                owner[1].add(owner[0] + name)
            return value

        def model_dump(self, *args, **kw):
            owner = _OWNER.get(id(self))
            if owner is not None:
                exclude, include = kw.get("exclude") or (), kw.get("include")
                owner[1].update(k for k in _leaves(self, owner[0]) if (top := k[len(owner[0]):].split(".")[0])
                                not in exclude and (include is None or top in include))
            saved = dict(_OWNER)
            _OWNER.clear()          # what the dump reads is what it records above (serializers read fields too)
            try:
                return cls.model_dump(self, *args, **kw)
            finally:
                _OWNER.update(saved)

        _CLASSES[cls] = type(f"Recording{cls.__name__}", (cls,), {
            "__getattribute__": __getattribute__, "model_dump": model_dump, "__module__": __name__})
    return _CLASSES[cls]


def recording(obj: Section, log: set[str], prefix: str = "") -> Section:
    """A copy of ``obj`` (of a subclass: isinstance checks still pass) that adds every key read to ``log``."""
    values = {name: recording(v, log, f"{prefix}{name}.") if isinstance(v, Section) else v
              for name, v in obj.__dict__.items()}
    rec = _recording_class(type(obj)).model_construct(_fields_set=obj.model_fields_set, **values)
    _OWNER[id(rec)] = (prefix, log)
    _KEEP.append(rec)
    return rec


_LAYOUT_KEYS = {"source": "paths.source", "weights": "weights.dir", "raw": "paths.raw", "episodes": "paths.episodes",
                "embeds": "paths.embeds", "samplings": "paths.samplings", "models": "paths.models",
                "eval": "paths.eval", "reports": "paths.reports", "custom": "paths.custom",
                "generated": "paths.generated", "sample_name": "sample.name", "run_name": "train.run",
                "eval_checkpoint": "evaluate.checkpoint", "rollout_name": "rollout.name",
                "rollout_checkpoint": "rollout.checkpoint"}


class RecordingLayout(Layout):
    """Layout.from_params reads every path at once; this one records a path when it is used."""

    def __getattribute__(self, name):
        if name in _LAYOUT_KEYS:
            log = object.__getattribute__(self, "__dict__").get("_log")
            if log is not None:
                log.add(_LAYOUT_KEYS[name])
        return object.__getattribute__(self, name)


@pytest.fixture
def record(monkeypatch):
    """``record(stage_main, argv)`` -> the keys the stage read."""
    real_load, real_from_params = common.load_params, Layout.from_params.__func__

    def run(main, argv: list[str]) -> set[str]:
        log: set[str] = set()

        def load(path):
            return recording(real_load(path), log)

        def from_params(cls, params):
            saved = dict(_OWNER)
            _OWNER.clear()                                  # build from the values without recording them
            try:
                plain = real_from_params(Layout, params)
            finally:
                _OWNER.update(saved)
            lay = RecordingLayout(**{f: getattr(plain, f) for f in plain.__dataclass_fields__})
            object.__setattr__(lay, "_log", log)
            return lay

        monkeypatch.setattr(common, "load_params", load)
        monkeypatch.setattr(Layout, "from_params", classmethod(from_params))
        try:
            assert main(argv) == 0
        finally:
            monkeypatch.setattr(common, "load_params", real_load)
            monkeypatch.setattr(Layout, "from_params", classmethod(real_from_params))
        return log

    return run


def _allowed(stage: str, dvc: dict) -> tuple[list[str], set[str]]:
    entry = dvc["stages"][stage]
    entry = entry.get("do", entry)
    text = yaml.safe_dump({k: v for k, v in entry.items() if k != "params"})
    templated = set(re.findall(r"\$\{([a-z_.]+)\}", text)) - {"key"}
    return [*STAGES[stage].params, *EXECUTION], templated | set(speed_only_keys())


def _undeclared(stage: str, read: set[str], dvc: dict) -> list[str]:
    prefixes, exact = _allowed(stage, dvc)
    return sorted(k for k in read if k not in exact and not any(k == p or k.startswith(p + ".") for p in prefixes))


def test_stage_bodies_read_only_declared_params(tmp_path, repo_root, monkeypatch, record):
    from stages import (decode, download, embed, embed_generated, evaluate, generate, make_source, prior, report,
                        sample, train)
    from steve1.pipeline import render

    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    raw["source"].update(n_synthetic=2, synthetic_steps=60, include_real=False)
    raw["sample"].update(T=16, mix=[])
    raw["generate"].update(n_episodes=1, max_steps=20, min_steps=20, device="cpu")
    raw["train"].update(trunc_t=16, n_frames=32, warmup_frames=16, deepspeed="none", checkpoint_every_steps=2,
                        val_freq=2, val_freq_begin=2, log_every_steps=2)
    raw["embed"].update(device="cpu", batch_size=32)
    raw["prior"].update(epochs=1, batch_size=16, toy_windows_per_episode=2, toy_samples_per_window=4)
    raw["evaluate"].update(device="cpu", max_chunks=2, cond_scales=[0.0, 6.0])
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(yaml.safe_dump(raw))
    dvc = yaml.safe_load(render(repo_root, load_params("params.yaml")))
    argv = ["--params", "params.yaml"]
    problems, reads = {}, {}
    for stage, module in [("make-source", make_source), ("download", download), ("decode", decode),
                          ("embed", embed), ("generate", generate), ("embed-generated", embed_generated),
                          ("sample", sample), ("report", report), ("prior", prior), ("train", train),
                          ("evaluate", evaluate)]:
        reads[stage] = record(module.main, argv)
        assert reads[stage], stage
        bad = _undeclared(stage, reads[stage], dvc)
        if bad:
            problems[stage] = bad
    assert not problems, f"stages read params they do not declare in steve1/shapes.py: {problems}"
    # the recorder sees real reads: decode reads its codec, train its learning rate and start weights
    assert {"decode.frame_codec", "decode.frame_quality", "decode.workers"} <= reads["decode"]
    assert {"learning_rate", "train.in_weights", "train.num_workers", "sample.T"} <= reads["train"]
    assert "decode.frame_quality" in reads["generate"]
