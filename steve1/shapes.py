"""What shapes each stage's outputs, declared once: the params keys it reads and the params that name
files it reads.

From this one table come ``dvc.yaml``'s ``params:`` (a section stands for its keys, each listed, the
schema's speed-only keys left out, so changing them reruns nothing) and the file ``deps:`` a param
names (``train.in_weights``, ``evaluate.baseline_weights``, ...; a null or empty param gives none);
the training fingerprint; and the configs stages record (``models/<run>/config.json``, rollout's
``results.json``). ``tests/test_declared_reads.py`` runs stage bodies under a params object that
records every key read and fails on one that is not declared here.

This module imports the schema only (no library code): the pipeline generator and every stage use it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Mapping, Optional, Sequence

from pydantic import BaseModel

from steve1.params import Params, Section


@dataclass(frozen=True)
class Shapes:
    """One stage's declaration."""

    params: tuple[str, ...]         # params keys read; a section stands for all its keys but the speed-only ones
    files: tuple[str, ...] = ()     # params keys whose value names a file or folder read (a list/dict: each value)


# Keys the train stage declares that change no trained weight: outside the resume fingerprint (they stay
# DVC params where they change an output: val_freq chooses best.weights' candidates, log_every_steps the
# curves). Where the run and its sampling live is no part of what is trained: the fingerprint holds the
# sampling's content instead, so a moved workspace (absolute paths) still resumes.
NOT_FINGERPRINTED = frozenset({"paths.models", "sample.name", "train.run", "train.log_every_steps", "train.val_freq", "train.val_freq_begin",
                               "train.val_freq_switch_steps", "train.val_every_nth", "train.checkpoint_every_steps",
                               "train.snapshot_every_frames", "train.grad_norm_range", "train.tensorboard"})

_POLICY = ("train.preset", "train.in_model", "train.mineclip_embed_dim")

STAGES: dict[str, Shapes] = {
    "make-source": Shapes(("source", "paths.source")),
    "weights": Shapes(("weights",)),
    "download": Shapes(("download", "paths.raw"), files=("download.index",)),
    "decode": Shapes(("decode", "paths.raw", "paths.episodes"), files=("decode.cursor_png",)),
    "embed": Shapes(("embed", "decode.cursor_png", "paths.embeds"), files=("embed.weights", "decode.cursor_png")),
    "import-set": Shapes(("custom.${key}", "decode")),
    "embed-set": Shapes(("embed", "decode.cursor_png", "custom.${key}"), files=("embed.weights", "decode.cursor_png")),
    "generate": Shapes(("generate", "decode.frame_codec", "decode.codec_level", "decode.frame_quality",
                        "decode.chunk_frames", "paths.generated"),
                       files=("generate.agents.model", "generate.agents.weights")),
    "embed-generated": Shapes(("embed", "paths.generated"), files=("embed.weights",)),
    "sample": Shapes(("sample", "paths.episodes", "paths.embeds", "paths.samplings", "paths.custom"),
                     files=("sample.val_from",)),
    "report": Shapes(("report", "sample.name", "paths.reports"), files=("report.reference_sampling",)),
    "prior": Shapes(("prior", "embed.weights", "embed.preset", "embed.seed", "embed.device", "paths.embeds", "paths.models"),
                    files=("prior.data", "prior.annotations_file", "prior.baseline", "embed.weights")),
    "train": Shapes(("learning_rate", "train", "sample.name", "sample.T", "paths.models"),
                    files=("train.in_weights", "train.in_model", "train.deepspeed")),
    "evaluate": Shapes(("evaluate", "train.run", *_POLICY, "train.trunc_t", "train.gap_dist",
                        "train.official_goal_lag", "sample.name", "paths.eval"),
                       files=("evaluate.weights", "evaluate.baseline_weights", "train.in_model")),
    "rollout": Shapes(("rollout", "train.run", *_POLICY, "embed.weights", "embed.preset", "embed.seed",
                       "paths.eval", "paths.models"),
                      files=("rollout.prior", "rollout.policy_model", "rollout.policy_weights", "rollout.visual_prompts",
                             "rollout.visual_prompts_from", "embed.weights", "train.in_model")),
}


# ----------------------------------------------------------------------------- keys

def is_speed_only(model: type[BaseModel], name: str) -> bool:
    """A key marked in the schema as changing only how fast a stage runs (tests show equal bytes)."""
    extra = model.model_fields[name].json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("speed_only"))


def _section_of(key: str) -> Optional[type[BaseModel]]:
    """The schema model a dotted key names, or None when it names a leaf (or a templated key)."""
    model: Any = Params
    for part in key.split("."):
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        model = model.model_fields[part].annotation
    return model if isinstance(model, type) and issubclass(model, Section) else None


def _leaves(model: type[BaseModel], prefix: str) -> Iterator[str]:
    for name, field in model.model_fields.items():
        if is_speed_only(model, name):
            continue
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, Section):
            yield from _leaves(ann, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def param_keys(stage: str) -> list[str]:
    """The DVC params of ``stage``: its declared keys, each section expanded to its keys, speed-only ones
    left out (a templated key like ``custom.${key}`` stays as written)."""
    keys: list[str] = []
    for key in STAGES[stage].params:
        section = _section_of(key)
        keys.extend(_leaves(section, key + ".") if section is not None else [key])
    return list(dict.fromkeys(keys))


# ----------------------------------------------------------------------------- values

def _lookup(params: Any, key: str) -> tuple[bool, Any]:
    """(present, JSON value) of a dotted key; a key its section leaves out of dumps is absent."""
    *parents, name = key.split(".")
    obj = params
    for part in parents:
        obj = getattr(obj, part)
    dumped = obj.model_dump(mode="json", include={name})
    return (name in dumped, dumped.get(name))


def declared_values(params: Params, stage: str, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    """``{key: value}`` of the keys ``stage`` declares (what its recorded config holds)."""
    out = {}
    for key in param_keys(stage):
        if key in exclude or "${" in key:
            continue
        present, value = _lookup(params, key)
        if present:
            out[key] = value
    return out


def nested(values: Mapping[str, Any], base: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """``{"a.b": v}`` as ``{"a": {"b": v}}``: how recorded configs hold the declared values. With
    ``base``, a deep copy of it with the dotted keys set (what ``dvc exp run -S`` does to params.yaml)."""
    out: dict[str, Any] = copy.deepcopy(dict(base)) if base is not None else {}
    for key, value in values.items():
        *parents, name = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[name] = value
    return out


def _values(obj: Any, parts: Sequence[str]) -> Iterator[Any]:
    """Every value at ``parts`` below ``obj``, stepping into lists and dicts."""
    if isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _values(item, parts)
        return
    if isinstance(obj, Mapping) and not parts:
        yield from obj.values()
        return
    if not parts:
        yield obj
        return
    nxt = obj.get(parts[0]) if isinstance(obj, Mapping) else getattr(obj, parts[0], None)
    if nxt is not None:
        yield from _values(nxt, parts[1:])


def named_files(params: Params, stage: str) -> list[str]:
    """Local files and folders the params of ``stage`` name (URLs, nulls and empty values give none; a
    bare file name of ``generate.agents`` lives in ``weights.dir``; ``train.deepspeed`` names a file only
    when it ends in ``.json``), in declaration order."""
    found: list[str] = []
    for key in STAGES[stage].files:
        for value in _values(params, key.split(".")):
            if not isinstance(value, str) or not value or "://" in value:
                continue
            if key == "train.deepspeed" and not value.endswith(".json"):
                continue
            if key.startswith("generate.agents.") and "/" not in value:
                value = str(PurePosixPath(params.weights.dir) / value)
            found.append(value)
    return list(dict.fromkeys(found))


def _inside(path: str, folder: str) -> bool:
    p, f = PurePosixPath(Path(path).as_posix()), PurePosixPath(Path(folder).as_posix())
    return p == f or f in p.parents


def file_deps(params: Params, stage: str, folders: Sequence[str] = ()) -> list[str]:
    """The named files that are not already inside one of the stage's folder deps (``folders``)."""
    return [f for f in named_files(params, stage) if not any(_inside(f, d) for d in folders)]
