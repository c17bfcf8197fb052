"""The VPT policy (and its STEVE-1 goal-conditioned variant), weight-compatible with the official files.

State-dict keys, order and shapes equal the official ``MinecraftAgentPolicy``: ``net.*`` (image
branch, transformer trunk, ``lastlayer``, ``final_ln`` and, for STEVE-1, ``mineclip_embed_linear``),
``value_head.*``, then ``pi_head.camera.*`` and ``pi_head.buttons.*``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from steve1.actions import N_BUTTONS, N_CAMERA
from steve1.errors import UserError
from steve1.models.impala import FanInLinear, ImgObsProcess
from steve1.models.transformer import BlockState, ResidualRecurrentBlocks

# Keys of the official MinecraftPolicy signature that this implementation reads or knowingly ignores
# (``active_reward_monitors`` and friends are accepted and unused, as in the official code).
_IGNORED_KWARGS = {"active_reward_monitors", "single_output", "scale_input_img", "obs_processing_width",
                   "input_shape"}
# Official options whose non-default value selects a code path this implementation does not have.
_REQUIRED_VALUES = {
    "recurrence_type": "transformer",
    "attention_mask_style": "clipped_causal",
    "use_pre_lstm_ln": False,
    "diff_mlp_embedding": False,
    "only_img_input": True,
    "use_pointwise_layer": True,
    "pointwise_use_activation": False,
    "recurrence_is_residual": True,
    "init_norm_kwargs": {"batch_norm": False, "group_norm_groups": 1},
    "impala_kwargs": {"post_pool_groups": 1},
}


class PolicyConfigError(UserError, ValueError):
    """policy/pi-head kwargs (from a .model file or the params) that this implementation cannot build."""


@dataclass(frozen=True)
class PolicyConfig:
    """Architecture sizes of the VPT/STEVE-1 policy (the official ``policy_kwargs`` + pi-head temperature)."""

    hidsize: int = 2048
    attention_heads: int = 16
    attention_memory_size: int = 256
    timesteps: int = 128
    n_recurrence_layers: int = 4
    impala_width: int = 8
    impala_chans: tuple[int, ...] = (16, 32, 32)
    img_shape: tuple[int, int, int] = (128, 128, 3)
    pointwise_ratio: int = 4
    mineclip_embed_dim: int | None = 512  # None: plain VPT (no goal input)
    temperature: float = 2.0
    extra: dict = field(default_factory=dict, compare=False)  # the accepted, unused official kwargs

    @property
    def maxlen(self) -> int:
        """Frames of memory each query reads (including itself): attention_memory_size - timesteps."""
        return self.attention_memory_size - self.timesteps

    @classmethod
    def from_official(cls, policy_kwargs: Mapping[str, Any], pi_head_kwargs: Mapping[str, Any] | None = None
                      ) -> "PolicyConfig":
        """Validate the official kwargs dicts (as stored in a ``.model`` file) and keep what matters."""
        own = {f.name for f in fields(cls)} - {"temperature", "extra"}
        values, extra = {}, {}
        for key, value in policy_kwargs.items():
            if key in own:
                values[key] = tuple(value) if isinstance(value, list) else value
            elif key in _REQUIRED_VALUES:
                if value != _REQUIRED_VALUES[key]:
                    raise PolicyConfigError(f"policy_kwargs[{key!r}] = {value!r} is not supported; this implementation "
                                            f"only has {key} = {_REQUIRED_VALUES[key]!r}")
            elif key in _IGNORED_KWARGS:
                extra[key] = value
            else:
                raise PolicyConfigError(f"unknown policy_kwargs key {key!r} (value {value!r}); known keys: "
                                        f"{sorted(own | set(_REQUIRED_VALUES) | _IGNORED_KWARGS)}")
        pi = dict(pi_head_kwargs or {})
        if set(pi) - {"temperature"}:
            raise PolicyConfigError(f"unknown pi_head_kwargs keys {sorted(set(pi) - {'temperature'})}; only 'temperature'")
        cfg = cls(**values, temperature=float(pi.get("temperature", 1.0)), extra=extra)
        if cfg.maxlen <= 0:
            raise PolicyConfigError(f"attention_memory_size ({cfg.attention_memory_size}) must exceed timesteps "
                                    f"({cfg.timesteps})")
        if cfg.hidsize % cfg.attention_heads:
            raise PolicyConfigError(f"hidsize {cfg.hidsize} is not divisible by attention_heads {cfg.attention_heads}")
        return cfg


def _official(hidsize: int, heads: int, width: int, temperature: float, **changes) -> dict:
    policy_kwargs = {
        "attention_heads": heads, "attention_mask_style": "clipped_causal", "attention_memory_size": 256,
        "diff_mlp_embedding": False, "hidsize": hidsize, "img_shape": [128, 128, 3],
        "impala_chans": [16, 32, 32], "impala_kwargs": {"post_pool_groups": 1}, "impala_width": width,
        "init_norm_kwargs": {"batch_norm": False, "group_norm_groups": 1}, "n_recurrence_layers": 4,
        "only_img_input": True, "pointwise_ratio": 4, "pointwise_use_activation": False,
        "recurrence_is_residual": True, "recurrence_type": "transformer", "timesteps": 128,
        "use_pointwise_layer": True, "use_pre_lstm_ln": False, "mineclip_embed_dim": 512,
    }
    policy_kwargs.update(changes)
    return {"policy_kwargs": policy_kwargs, "pi_head_kwargs": {"temperature": temperature}}


# Official sizes: 1x/3x from foundation-model-{1x,3x}.model, 2x from VPT agent.py (STEVE-1's base);
# tiny is the golden-test config (reference/vpt/tiny_policy_kwargs.json).
PRESETS: dict[str, dict] = {
    "tiny": _official(64, 4, 1, 2.0, impala_chans=[8, 16, 16], attention_memory_size=16, timesteps=8,
                      n_recurrence_layers=2),
    "1x": _official(1024, 8, 4, 1.0),
    "2x": _official(2048, 16, 8, 2.0),
    "3x": _official(3072, 24, 12, 3.0),
}


class MinecraftPolicy(nn.Module):
    """The trunk (``net``): frames (+ goal embedding) and memory -> latent [B,T,hidsize]."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        chans = [int(cfg.impala_width * c) for c in cfg.impala_chans]
        self.img_process = ImgObsProcess(tuple(cfg.img_shape), chans, cfg.hidsize)
        self.recurrent_layer = ResidualRecurrentBlocks(cfg.hidsize, cfg.attention_heads, cfg.maxlen,
                                                       cfg.n_recurrence_layers, cfg.pointwise_ratio)
        self.lastlayer = FanInLinear(cfg.hidsize, cfg.hidsize, norm=True)
        self.final_ln = nn.LayerNorm(cfg.hidsize)
        # registered last, as in STEVE-1, so its keys follow net.final_ln.*; default nn.Linear init
        self.mineclip_embed_linear = (nn.Linear(cfg.mineclip_embed_dim, cfg.hidsize)
                                      if cfg.mineclip_embed_dim else None)

    def forward(self, obs: Mapping[str, torch.Tensor], first: torch.Tensor, state: list[BlockState]):
        x = self.img_process(obs["img"])  # [B,T,128,128,3] -> [B,T,H]
        if self.mineclip_embed_linear is not None:
            if "mineclip_embed" not in obs:
                raise KeyError("obs has no 'mineclip_embed', which this goal-conditioned (STEVE-1) policy needs")
            x = x + self.mineclip_embed_linear(obs["mineclip_embed"])  # [B,T,D] -> [B,T,H], added after the image ReLU
        x, new_state = self.recurrent_layer(x, first.bool(), state)  # [B,T,H]
        x = self.lastlayer(F.relu(x))
        return self.final_ln(x), new_state


class CategoricalHead(nn.Module):
    """Linear -> [.., 1, N] -> / temperature -> log_softmax."""

    def __init__(self, insize: int, n: int, temperature: float):
        super().__init__()
        self.linear_layer = nn.Linear(insize, n)
        self.temperature = temperature
        if not self.linear_layer.weight.is_meta:
            nn.init.orthogonal_(self.linear_layer.weight, gain=0.01)
            nn.init.zeros_(self.linear_layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear_layer(x).unsqueeze(-2)  # [B,T,H] -> [B,T,1,N]
        return F.log_softmax(logits / self.temperature, dim=-1)


class ValueNormalizer(nn.Module):
    """EWMA return normaliser state (non-trainable Parameters, so they are in the state_dict)."""

    def __init__(self):
        super().__init__()
        self.running_mean = nn.Parameter(torch.zeros(1), requires_grad=False)
        self.running_mean_sq = nn.Parameter(torch.zeros(1), requires_grad=False)
        self.debiasing_term = nn.Parameter(torch.zeros(()), requires_grad=False)

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        debias = self.debiasing_term.clamp(min=1e-5)
        mean = self.running_mean / debias
        var = (self.running_mean_sq / debias - mean ** 2).clamp(min=1e-2)
        return mean, var

    def denormalize(self, v: torch.Tensor) -> torch.Tensor:
        mean, var = self.mean_var()
        return v * var.sqrt() + mean

    def normalize(self, v: torch.Tensor) -> torch.Tensor:
        mean, var = self.mean_var()
        return (v - mean) / var.sqrt()


class ValueHead(nn.Module):
    def __init__(self, insize: int):
        super().__init__()
        self.linear = nn.Linear(insize, 1)
        self.normalizer = ValueNormalizer()
        if not self.linear.weight.is_meta:
            nn.init.orthogonal_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)  # [B,T,H] -> [B,T,1], normalised value


class AgentPolicy(nn.Module):
    """VPT / STEVE-1 policy.

    ``forward(obs, first, state) -> (pd, vpred, new_state)``:
      * ``obs["img"]``: uint8 [B,T,128,128,3] RGB; ``obs["mineclip_embed"]``: float [B,T,D] goal
        (STEVE-1 only; zeros = the unconditional goal);
      * ``first``: bool [B,T], True at an episode's first frame; only ``first[:, 0]`` resets memory;
      * ``state``: ``initial_state(B)`` or the previous call's ``new_state``: a list (one per block)
        of ``(state_mask bool [B,1,maxlen] | None, (K [B,maxlen,H], V [B,maxlen,H]))``;
      * ``pd``: log-probabilities ``{"camera": [B,T,1,121], "buttons": [B,T,1,8641]}``
        (log_softmax of logits / temperature);
      * ``vpred``: [B,T,1] normalised value; :meth:`denormalize_value` maps it to returns.
    """

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.cfg = cfg
        self.net = MinecraftPolicy(cfg)
        self.value_head = ValueHead(cfg.hidsize)
        self.pi_head = nn.ModuleDict({  # camera first: the official order of the action space
            "camera": CategoricalHead(cfg.hidsize, N_CAMERA, cfg.temperature),
            "buttons": CategoricalHead(cfg.hidsize, N_BUTTONS, cfg.temperature),
        })

    @property
    def is_goal_conditioned(self) -> bool:
        return self.net.mineclip_embed_linear is not None

    def initial_state(self, batch_size: int, device=None, dtype=None) -> list[BlockState]:
        return self.net.recurrent_layer.initial_state(batch_size, device, dtype)

    def set_gradient_checkpointing(self, enabled: bool = True) -> "AgentPolicy":
        """Recompute each transformer block and each Impala stack's parts in backward (non-reentrant)."""
        self.net.recurrent_layer.gradient_checkpointing = enabled
        self.net.img_process.cnn.set_gradient_checkpointing(enabled)
        return self

    def denormalize_value(self, vpred: torch.Tensor) -> torch.Tensor:
        return self.value_head.normalizer.denormalize(vpred)

    def forward(self, obs: Mapping[str, torch.Tensor], first: torch.Tensor, state: list[BlockState]):
        latent, new_state = self.net(obs, first, state)  # [B,T,H]
        pd = {name: head(latent) for name, head in self.pi_head.items()}  # [B,T,1,N] each
        return pd, self.value_head(latent), new_state


def build_policy(policy_kwargs: Mapping[str, Any], pi_head_kwargs: Mapping[str, Any] | None = None, *,
                 gradient_checkpointing: bool = False, device: torch.device | str | None = None) -> AgentPolicy:
    """Build the policy from the official kwargs dicts (``.model`` file ``net.args`` and ``pi_head_opts``).

    ``policy_kwargs["mineclip_embed_dim"]`` sets the goal width; it is absent in VPT ``.model`` files and
    then defaults to 512 (STEVE-1 builds its policy from the VPT file the same way); pass ``None`` for
    plain VPT. ``device="meta"`` builds shapes only. See :class:`AgentPolicy` for the
    forward signature and state format.
    """
    cfg = PolicyConfig.from_official(policy_kwargs, pi_head_kwargs)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        policy = AgentPolicy(cfg)
    return policy.set_gradient_checkpointing(gradient_checkpointing)
