"""STEVE-1 inference and likelihood helpers around :class:`steve1.models.vpt.AgentPolicy`.

Classifier-free guidance lives here, not in ``forward``: :func:`act` runs the conditional and the
zero-goal (unconditional) rows in one doubled batch and mixes their log-probs as the official
``policy.act`` does: ``(1 + s)·logp_cond − s·logp_uncond``, not renormalised.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import torch

from steve1.actions import agent_to_env
from steve1.models.transformer import BlockState
from steve1.models.vpt import AgentPolicy, PolicyConfigError

ACTION_KEYS = ("camera", "buttons")  # the pi_head order


def log_prob(pd: Mapping[str, torch.Tensor], action: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Sum over heads of the log-probability of the taken joint actions.

    ``pd[k]``: [..., 1, N] log-probs (as the policy returns them); ``action[k]``: int [...] indices.
    Returns [...] (e.g. [B,T]).
    """
    total = 0
    for key in ACTION_KEYS:
        a = action[key].long()
        logp = pd[key][..., 0, :]  # [...,1,N] -> [...,N]
        if a.shape != logp.shape[:-1]:
            raise ValueError(f"action[{key!r}] has shape {tuple(a.shape)} but pd[{key!r}] needs {tuple(logp.shape[:-1])}")
        total = total + logp.gather(-1, a.unsqueeze(-1)).squeeze(-1)  # -> [...]
    return total


def behavioural_cloning_loss(pd: Mapping[str, torch.Tensor], action: Mapping[str, torch.Tensor],
                             mask: torch.Tensor | None = None, reduction: str = "official") -> torch.Tensor:
    """Negative log-likelihood of the taken actions; pd/action over [B,T].

    ``reduction``: ``"official"`` (STEVE-1 training: −mean over B of the sum over T), ``"mean"`` (over
    the unmasked B·T steps), ``"sum"``, or ``"none"`` ([B,T]). ``mask`` (bool/float [B,T]) drops steps.
    """
    nll = -log_prob(pd, action)  # [B,T]
    if mask is not None:
        nll = nll * mask.to(nll.dtype)
    if reduction == "official":
        return nll.sum(dim=1).mean()
    if reduction == "mean":
        return nll.sum() / (mask.to(nll.dtype).sum().clamp(min=1) if mask is not None else nll.numel())
    if reduction == "sum":
        return nll.sum()
    if reduction == "none":
        return nll
    raise ValueError(f"reduction must be 'official', 'mean', 'sum' or 'none', got {reduction!r}")


def guide(pd_cond: Mapping[str, torch.Tensor], pd_uncond: Mapping[str, torch.Tensor], scale: float
          ) -> dict[str, torch.Tensor]:
    """Classifier-free guidance on log-probs: (1 + s)·cond − s·uncond (not renormalised)."""
    return {k: (1 + scale) * pd_cond[k] - scale * pd_uncond[k] for k in pd_cond}


def sample(pd: Mapping[str, torch.Tensor], deterministic: bool = False,
           generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Argmax, or Gumbel-max (u ~ U[0,1), u == 1 replaced by 0.999, as official). [...,1,N] -> [...]."""
    out = {}
    for key in ACTION_KEYS:
        logits = pd[key][..., 0, :]  # [...,N]
        if not deterministic:
            u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
            u = torch.where(u == 1, torch.full_like(u, 0.999), u)
            logits = logits - torch.log(-torch.log(u))
        out[key] = logits.argmax(dim=-1)
    return out


class ActResult(NamedTuple):
    action: dict[str, torch.Tensor]  # {"buttons": [B], "camera": [B]} agent indices
    state: list[BlockState]  # batch 2B with guidance ([cond rows; uncond rows]), else B
    log_prob: torch.Tensor  # [B], read from the (guided) log-probs
    pd: dict[str, torch.Tensor]  # [B,1,N] (guided) log-probs
    vpred: torch.Tensor  # [2B,1] with guidance (both rows), else [B,1]; denormalised


@torch.no_grad()
def act(policy: AgentPolicy, obs: Mapping[str, torch.Tensor], state: list[BlockState], *,
        first: torch.Tensor | None = None, cond_scale: float | None = None, deterministic: bool = False,
        generator: torch.Generator | None = None) -> ActResult:
    """One environment step: obs ``{"img": uint8 [B,128,128,3], "mineclip_embed": [B,D]}`` (no time axis).

    With ``cond_scale`` the state must be ``policy.initial_state(2 * B)``: rows ``B..2B-1`` run the same
    frames with a zero goal. ``first`` (bool [B]) defaults to False, as the official agent passes.
    """
    img = obs["img"]
    b = img.shape[0]
    first = torch.zeros(b, dtype=torch.bool, device=img.device) if first is None else first.bool()
    batch = {k: v.unsqueeze(1) for k, v in obs.items()}  # [B,...] -> [B,1,...]
    if cond_scale is not None:
        if not policy.is_goal_conditioned:
            raise PolicyConfigError("cond_scale needs a goal-conditioned (STEVE-1) policy; this one has no mineclip_embed_linear")
        embed = batch["mineclip_embed"]
        batch = {**{k: torch.cat([v, v]) for k, v in batch.items()},
                 "mineclip_embed": torch.cat([embed, torch.zeros_like(embed)])}  # -> [2B,1,...]
        first = torch.cat([first, first])
    if state[0][1][0].shape[0] != first.shape[0]:
        raise ValueError(f"state has batch {state[0][1][0].shape[0]} but act needs {first.shape[0]} "
                         f"(policy.initial_state({first.shape[0]}){' for guidance' if cond_scale is not None else ''})")
    pd, vpred, new_state = policy(batch, first[:, None], state)  # pd [B',1,1,N], vpred [B',1,1]
    pd = {k: v[:, 0] for k, v in pd.items()}  # -> [B',1,N]
    if cond_scale is not None:
        pd = guide({k: v[:b] for k, v in pd.items()}, {k: v[b:] for k, v in pd.items()}, cond_scale)
    action = sample(pd, deterministic, generator)  # [B]
    return ActResult(action, new_state, log_prob(pd, action), pd, policy.denormalize_value(vpred[:, 0]))


def to_env_actions(action: Mapping[str, torch.Tensor]) -> list[dict[str, object]]:
    """Agent indices {buttons [B], camera [B]} -> one MineRL env action dict per batch row."""
    buttons = action["buttons"].reshape(-1).tolist()
    camera = action["camera"].reshape(-1).tolist()
    return [agent_to_env(b, c) for b, c in zip(buttons, camera)]
