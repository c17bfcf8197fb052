"""Frozen-layer fine-tuning: ``train.freeze`` names module groups whose parameters do not train.

A name is an alias of :data:`GROUPS` or a module path prefix of the policy's own keys (e.g.
``net.recurrent_layer.blocks.0``). Freezing only sets ``requires_grad=False``: the optimizer is
then built from the trainable parameters alone (:func:`steve1.train.optim.make_optimizer`), so
frozen weights keep their exact values, and saved weights still hold every key in the official
format. The guide's recipe ``freeze: [cnn, transformer]`` trains only the goal fusion
(``goal``) and the action heads (``heads``).
"""

from __future__ import annotations

import re

from torch import nn

from steve1.errors import UserError

GROUPS: dict[str, tuple[str, ...]] = {
    "cnn": ("net.img_process",),                                         # Impala CNN + its dense layer
    "transformer": ("net.recurrent_layer", "net.lastlayer", "net.final_ln"),
    "goal": ("net.mineclip_embed_linear",),                              # MineCLIP goal -> hidden fusion
    "heads": ("pi_head",),                                               # camera + buttons action heads
}
# A module path under the trained part of the policy (the value head never trains anyway).
PATH_PATTERN = re.compile(r"^(net|pi_head)(\.[A-Za-z0-9_]+)*$")


class FreezeError(UserError, ValueError):
    """``train.freeze`` names no known group or module, or freezes everything."""


def check_freeze_names(names: list[str]) -> None:
    """Raise ``ValueError`` naming every entry that is neither an alias nor a module path."""
    bad = [n for n in names if n not in GROUPS and not PATH_PATTERN.match(n)]
    if bad:
        raise FreezeError(f"unknown freeze entries {bad}; use the groups {sorted(GROUPS)} or a module path "
                          f"prefix under net. or pi_head. (e.g. net.recurrent_layer.blocks.0)")


def freeze_prefixes(names: list[str]) -> tuple[str, ...]:
    """The module path prefixes that ``names`` stand for, aliases expanded, in order."""
    check_freeze_names(names)
    out: list[str] = []
    for name in names:
        out.extend(GROUPS.get(name, (name,)))
    return tuple(dict.fromkeys(out))


def _under(param_name: str, prefix: str) -> bool:
    return param_name == prefix or param_name.startswith(prefix + ".")


def apply_freeze(model: nn.Module, names: list[str]) -> list[str]:
    """Set ``requires_grad=False`` on every parameter under ``names``; return the frozen parameter names.

    A prefix that matches no parameter is an error (a typo would otherwise silently train
    everything), as is freezing every trainable parameter (nothing would learn).
    """
    prefixes = freeze_prefixes(names)
    params = dict(model.named_parameters())
    unmatched = [p for p in prefixes if not any(_under(n, p) for n in params)]
    if unmatched:
        tops = sorted({n.rsplit(".", 1)[0] for n in params})
        raise FreezeError(f"train.freeze: {unmatched} match no parameter of the policy; module paths include "
                          f"{tops[:12]}{' ...' if len(tops) > 12 else ''}")
    frozen = [n for n, p in params.items() if any(_under(n, pre) for pre in prefixes)]
    for n in frozen:
        params[n].requires_grad_(False)
    if not any(p.requires_grad for p in params.values()):
        raise FreezeError(f"train.freeze {names} freezes every trained parameter; nothing would learn")
    return frozen
