"""Models: the VPT/STEVE-1 policy, MineCLIP and the prior, weight-compatible with the official files."""

from steve1.models.vpt import PRESETS, AgentPolicy, build_policy, build_policy_from_preset
from steve1.models.mineclip import MineCLIP, build_mineclip
from steve1.models.mineclip_files import load_attn_pth

__all__ = ["PRESETS", "AgentPolicy", "build_policy", "build_policy_from_preset", "MineCLIP", "build_mineclip", "load_attn_pth"]
