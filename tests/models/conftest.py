"""Tiny-policy goldens (reference/vpt, made by the official STEVE-1 code; recipe in its README §2)."""

from __future__ import annotations

import json

import pytest
import torch

from steve1.models.vpt import build_policy


@pytest.fixture(scope="session")
def tiny_kwargs(reference) -> dict:
    return json.loads((reference / "vpt" / "tiny_policy_kwargs.json").read_text())


@pytest.fixture(scope="session")
def tiny_state_dict(reference) -> dict[str, torch.Tensor]:
    return torch.load(reference / "vpt" / "tiny_state_dict.pt", weights_only=True)


@pytest.fixture(scope="session")
def tiny_io(reference) -> dict[str, torch.Tensor]:
    return torch.load(reference / "vpt" / "tiny_io.pt", weights_only=True)


@pytest.fixture
def tiny_policy(tiny_kwargs, tiny_state_dict):
    """The golden tiny STEVE-1 policy, official weights loaded strictly, eval mode."""
    policy = build_policy(tiny_kwargs["policy_kwargs"], tiny_kwargs["pi_head_kwargs"])
    policy.load_state_dict(tiny_state_dict, strict=True)
    return policy.eval()
