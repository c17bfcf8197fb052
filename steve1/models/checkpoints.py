"""Safe loading and saving of policy files.

* ``.model`` (official VPT architecture pickles): read with :class:`RestrictedUnpickler`, which imports
  nothing. Plain containers and numbers are opcodes; the only globals accepted are a few builtin
  containers and the three ``gym3.types`` classes the files reference (under ``extra_args``), which
  become inert :class:`PickledObject` records. Anything else is refused before it can run.
* ``.weights`` (official VPT / STEVE-1 state dicts, and ours): ``torch.load(weights_only=True)``,
  ``module.policy.`` prefix (STEVE-1 DDP saves) stripped, strict key and shape checking.
* :func:`save_policy_weights` writes a plain state_dict with the official key names (atomic), which the
  official loaders accept; the trainer writes every ``.weights`` file it makes with it.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from steve1.errors import UserError
from steve1.io import atomic_path

STEVE1_PREFIX = "module.policy."
GOAL_KEYS = ("net.mineclip_embed_linear.weight", "net.mineclip_embed_linear.bias")

_SAFE_BUILTINS = {"set": set, "frozenset": frozenset, "complex": complex}
_INERT_CLASSES = {("gym3.types", "DictType"), ("gym3.types", "TensorType"), ("gym3.types", "Discrete")}


class ModelFileError(UserError, ValueError):
    """A ``.model`` or ``.weights`` file is damaged, foreign, or does not fit the model; the message names it."""


class UnsafePickleError(ModelFileError, pickle.UnpicklingError):
    """A pickle asked for a global this loader does not allow (a UserError: stages print it as one line)."""


class CheckpointMismatchError(ModelFileError):
    """A state dict's keys or shapes do not match the model."""


class PickledObject:
    """Inert record of an allowed non-builtin object: its class name, constructor args and BUILD state."""

    pickle_class = ""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state = args, kwargs, None
        return obj

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"PickledObject({self.pickle_class}, state={self.state!r})"


_placeholders: dict[str, type] = {}


def _placeholder(qualname: str) -> type:
    if qualname not in _placeholders:
        _placeholders[qualname] = type(qualname.rsplit(".", 1)[-1], (PickledObject,), {"pickle_class": qualname})
    return _placeholders[qualname]


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` never imports: allowed names map to builtins or inert records."""

    def __init__(self, file, source: str = "<pickle>"):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        if module == "builtins" and name in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[name]
        if (module, name) in _INERT_CLASSES:
            return _placeholder(f"{module}.{name}")
        raise UnsafePickleError(f"{self.source}: refusing to load global {module}.{name}; only plain "
                                f"containers, numbers and gym3.types.{{DictType,TensorType,Discrete}} are allowed")

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.source}: persistent ids are not allowed (got {pid!r})")


def load_model_file(path: str | Path) -> Any:
    """Decode an official ``.model`` pickle without importing or executing anything."""
    path = Path(path)
    with path.open("rb") as f:
        try:
            return RestrictedUnpickler(f, source=str(path)).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
                AttributeError, MemoryError) as exc:     # what a damaged or foreign pickle raises
            raise ModelFileError(f"{path}: not a readable VPT .model pickle ({type(exc).__name__}: {exc})") from None


def to_plain(obj: Any) -> Any:
    """JSON-like view: tuples -> lists, records -> {"__pickle_class__", "__state__"} (as the reference JSON)."""
    if isinstance(obj, PickledObject):
        return {"__pickle_class__": obj.pickle_class, "__state__": to_plain(obj.state)}
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def read_policy_kwargs(path: str | Path) -> tuple[dict, dict]:
    """``(policy_kwargs, pi_head_kwargs)`` from ``["model"]["args"]["net"]["args"]`` and ``[...]["pi_head_opts"]``."""
    data = load_model_file(path)
    try:
        args = data["model"]["args"]
        net_args, pi_opts = args["net"]["args"], args["pi_head_opts"]
    except (KeyError, TypeError) as exc:
        raise ModelFileError(f"{path}: not a VPT .model file; missing key {exc} under ['model']['args']") from exc
    if not isinstance(net_args, dict) or not isinstance(pi_opts, dict):
        raise ModelFileError(f"{path}: ['model']['args']['net']['args'] and ['pi_head_opts'] must be dicts")
    return to_plain(net_args), to_plain(pi_opts)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A ``.weights`` file as a plain dict of tensors (weights_only, CPU), ``module.policy.`` stripped."""
    path = Path(path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelFileError(f"{path}: not a plain tensor state dict loadable with weights_only=True ({exc})") from exc
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelFileError(f"{path}: expected a dict of tensors, got {type(sd).__name__}")
    return strip_prefix(sd)


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str = STEVE1_PREFIX) -> dict[str, torch.Tensor]:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in sd.items()}


def check_state_dict(model: nn.Module, sd: Mapping[str, torch.Tensor], allow_missing: tuple[str, ...] = (),
                     source: str = "state dict") -> list[str]:
    """Raise :class:`CheckpointMismatchError` listing every missing/unexpected/mismatched key (with shapes).

    Keys in ``allow_missing`` may be absent; the ones that are absent are returned.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in sd and k not in allow_missing]
    unexpected = [k for k in sd if k not in own]
    mismatched = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        lines = [f"{source} does not match the model:"]
        lines += [f"  missing    {k} {tuple(own[k].shape)}" for k in missing]
        lines += [f"  unexpected {k} {tuple(sd[k].shape)}" for k in unexpected]
        lines += [f"  mismatched {k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched]
        raise CheckpointMismatchError("\n".join(lines))
    return [k for k in allow_missing if k in own and k not in sd]


def load_policy_weights(policy: nn.Module, weights: str | Path | Mapping[str, torch.Tensor], *,
                        allow_vpt: bool = True, goal_init: str = "default") -> list[str]:
    """Load official VPT, official STEVE-1 or our own weights into ``policy``, strictly.

    With ``allow_vpt`` a goal-conditioned policy accepts a VPT file, whose only gap is
    ``net.mineclip_embed_linear``; that layer is then initialised by ``goal_init``:
    ``"default"`` keeps PyTorch's ``nn.Linear`` init (what STEVE-1 training does: it loads the VPT
    weights with ``strict=False`` into a freshly built model; seed torch for a reproducible init),
    ``"zeros"`` makes the policy output exactly the VPT policy's. Returns the keys initialised
    rather than loaded.
    """
    if goal_init not in ("default", "zeros"):
        raise ValueError(f"goal_init must be 'default' or 'zeros', got {goal_init!r}")
    source = str(weights) if isinstance(weights, (str, Path)) else "state dict"
    sd = load_state_dict_file(weights) if isinstance(weights, (str, Path)) else strip_prefix(weights)
    initialised = check_state_dict(policy, sd, GOAL_KEYS if allow_vpt else (), source)
    policy.load_state_dict(sd, strict=not initialised)
    if initialised and goal_init == "zeros":
        with torch.no_grad():
            for key in initialised:
                policy.get_parameter(key).zero_()
    return initialised


def save_policy_weights(weights: nn.Module | Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """Write a plain state_dict (official key names, CPU tensors) atomically; returns ``path``.

    A module's tensors are copied off it; a state dict's are written as they are, moved to the CPU
    when elsewhere (the trainer passes its gathered fp32 CPU copies and needs no second copy).
    """
    if isinstance(weights, nn.Module):
        sd = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in weights.state_dict().items()}
    else:
        sd = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    with atomic_path(path) as tmp:
        torch.save(sd, tmp)
    return Path(path)
