"""Safe loading and saving of policy files.

* ``.model`` (official VPT architecture pickles): read by the one restricted unpickler
  (:mod:`steve1.unpickle`, allow-list ``VPT_MODEL``), which imports nothing: plain containers and
  numbers, a few builtin containers, and the three ``gym3.types`` classes the files reference (under
  ``extra_args``) as inert :class:`~steve1.unpickle.PickledObject` records. Anything else is refused
  (:class:`~steve1.unpickle.UnsafePickleError`) before it can run.
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

from steve1.errors import MissingInputError, UserError
from steve1.io import atomic_path
from steve1.unpickle import VPT_MODEL, PickledObject, UnsafePickleError, restricted_load, to_plain  # noqa: F401 (re-exported)

STEVE1_PREFIX = "module.policy."
GOAL_KEYS = ("net.mineclip_embed_linear.weight", "net.mineclip_embed_linear.bias")


class CheckpointMismatchError(UserError, ValueError):
    """A state dict's keys or shapes do not match the model."""


class PolicyFileError(UserError, ValueError):
    """A ``.model`` or ``.weights`` file is not what its name says."""


def _open_policy_file(path: Path, what: str):
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise MissingInputError(f"{path}: {what} not found") from None


def load_model_file(path: str | Path) -> Any:
    """Decode an official ``.model`` pickle without importing or executing anything
    (:data:`steve1.unpickle.VPT_MODEL`: gym3 types become inert records)."""
    path = Path(path)
    with _open_policy_file(path, "VPT .model file") as f:
        return restricted_load(f, VPT_MODEL, str(path))


def read_policy_kwargs(path: str | Path) -> tuple[dict, dict]:
    """``(policy_kwargs, pi_head_kwargs)`` from ``["model"]["args"]["net"]["args"]`` and ``[...]["pi_head_opts"]``."""
    data = load_model_file(path)
    try:
        args = data["model"]["args"]
        net_args, pi_opts = args["net"]["args"], args["pi_head_opts"]
    except (KeyError, TypeError) as exc:
        raise PolicyFileError(f"{path}: not a VPT .model file; missing key {exc} under ['model']['args']") from exc
    if not isinstance(net_args, dict) or not isinstance(pi_opts, dict):
        raise PolicyFileError(f"{path}: ['model']['args']['net']['args'] and ['pi_head_opts'] must be dicts")
    return to_plain(net_args), to_plain(pi_opts)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A ``.weights`` file as a plain dict of tensors (weights_only, CPU), ``module.policy.`` stripped."""
    path = Path(path)
    with _open_policy_file(path, "weights file") as f:
        try:
            sd = torch.load(f, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:    # a foreign, damaged or cut file
            raise PolicyFileError(f"{path}: not a plain tensor state dict loadable with weights_only=True "
                                  f"({type(exc).__name__}: {(str(exc).splitlines() or [''])[0].split('. ')[0]})") from None
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise PolicyFileError(f"{path}: expected a dict of tensors, got {type(sd).__name__}")
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
