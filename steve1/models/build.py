"""The one builder of a train run's policy architecture, shared by training and evaluation.

Training and offline evaluation must build the same shapes from the same ``train`` params, or a
run's weights would not load where they are scored; this is the only place that reads
``in_model``/``preset``/``mineclip_embed_dim`` to make an (untrained) policy.
"""

from __future__ import annotations

import copy
from typing import Optional

from steve1.models.checkpoints import read_policy_kwargs
from steve1.models.vpt import PRESETS, AgentPolicy, PolicyConfigError, build_policy


def policy_kwargs_for_params(tp) -> tuple[dict, dict]:
    """``(policy_kwargs, pi_head_kwargs)`` of ``train.in_model`` (or ``train.preset``) with the goal width set.

    A ``.model`` file that itself names a ``mineclip_embed_dim`` different from
    ``train.mineclip_embed_dim`` is refused: one of the two is a mistake.
    """
    if tp.in_model:
        policy_kwargs, pi_head_kwargs = read_policy_kwargs(tp.in_model)
        stored = policy_kwargs.get("mineclip_embed_dim")
        if stored is not None and stored != tp.mineclip_embed_dim:
            raise PolicyConfigError(f"{tp.in_model} has mineclip_embed_dim {stored} but train.mineclip_embed_dim is "
                                    f"{tp.mineclip_embed_dim}; make them agree")
    else:
        preset = copy.deepcopy(PRESETS[tp.preset])
        policy_kwargs, pi_head_kwargs = preset["policy_kwargs"], preset["pi_head_kwargs"]
    return {**policy_kwargs, "mineclip_embed_dim": tp.mineclip_embed_dim}, pi_head_kwargs


def build_policy_for_params(tp, gradient_checkpointing: Optional[bool] = None) -> AgentPolicy:
    """An untrained policy with ``tp``'s (``TrainParams``) architecture and gradient checkpointing setting
    (``gradient_checkpointing`` overrides it: inference never recomputes, so it does not read the key).

    Initialisation draws from torch's global RNG: seed it first for a reproducible init.
    """
    policy_kwargs, pi_head_kwargs = policy_kwargs_for_params(tp)
    if gradient_checkpointing is None:
        gradient_checkpointing = tp.gradient_checkpointing
    return build_policy(policy_kwargs, pi_head_kwargs, gradient_checkpointing=gradient_checkpointing)
