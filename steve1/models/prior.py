"""The STEVE-1 text-to-goal prior: a conditional VAE from a MineCLIP text embedding to a
MineCLIP *visual* goal embedding.

Text and video embeddings of MineCLIP live in different regions of the shared space; the policy
was trained only on visual goals, so a text prompt is first translated by this CVAE. The module
keeps the official ``TranslatorVAE`` layout (two ``nn.Sequential`` MLPs with LayerNorm + ReLU,
indices 0/1/3/4/6), so ``state_dict`` keys match ``steve1_prior.pt`` exactly and a file we
write loads in the official code and vice versa. Sampling noise is an argument, never drawn
inside ``forward``: inference code owns the randomness.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from steve1.errors import MissingInputError, UserError


class PriorWeightsError(UserError, ValueError):
    """A prior weights file is not a STEVE-1 prior state dict."""


@dataclass(frozen=True)
class PriorConfig:
    """Sizes of the CVAE; the official prior is 512/512/512 (``steve1/config.py: PRIOR_INFO``)."""

    embed_dim: int = 512     # MineCLIP embedding size (text and visual)
    hidden_dim: int = 512
    latent_dim: int = 512


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    # indices 0 Linear, 1 LayerNorm, 2 ReLU, 3 Linear, 4 LayerNorm, 5 ReLU, 6 Linear: the official key layout
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.ReLU(),
        nn.Linear(hidden, out_dim),
    )


class PriorCVAE(nn.Module):
    """Conditional VAE: q(z | visual, text) and p(visual | z, text), with p(z) = N(0, I)."""

    def __init__(self, cfg: PriorConfig = PriorConfig()):
        super().__init__()
        self.cfg = cfg
        d, h, z = cfg.embed_dim, cfg.hidden_dim, cfg.latent_dim
        self.encoder = _mlp(2 * d, h, 2 * z)   # cat(visual, text) -> cat(mu, logvar)
        self.decoder = _mlp(z + d, h, d)       # cat(z, text) -> visual

    def encode(self, visual: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters ``(mu, logvar)``, each [B, latent]. Input order is (visual, text), as official."""
        h = self.encoder(torch.cat([visual, text], dim=1))   # [B, 2*latent]
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Visual goal embedding [B, embed] from a latent [B, latent] and a text embedding [B, embed]."""
        return self.decoder(torch.cat([z, text], dim=1))

    def forward(self, text: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Goal embedding from the prior: ``z`` drawn from N(0, I) by the caller; ``None`` = its mean (zeros)."""
        if z is None:
            z = text.new_zeros(text.shape[0], self.cfg.latent_dim)
        return self.decode(z, text)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + eps * sigma, with the noise ``eps`` supplied so callers control the seed."""
    return mu + eps * torch.exp(0.5 * logvar)


def config_from_state_dict(state_dict: dict[str, torch.Tensor]) -> PriorConfig:
    """Read the sizes back from weight shapes, so any official-layout prior file loads."""
    try:
        w_in = state_dict["encoder.0.weight"]      # [hidden, 2*embed]
        w_out = state_dict["encoder.6.weight"]     # [2*latent, hidden]
    except KeyError as exc:
        raise PriorWeightsError(f"not a STEVE-1 prior state_dict: missing key {exc.args[0]!r}") from None
    return PriorConfig(embed_dim=w_in.shape[1] // 2, hidden_dim=w_in.shape[0], latent_dim=w_out.shape[0] // 2)


def load_prior(path: str | Path, map_location: str | torch.device = "cpu") -> PriorCVAE:
    """Load an official ``steve1_prior.pt`` or one of ours (same keys) with ``strict=True``, in eval mode.

    ``weights_only=True``: the file is a plain state_dict, so nothing but tensors is unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: prior weights not found (run the prior stage or download steve1_prior.pt)")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict):
        raise PriorWeightsError(f"{path}: expected a state_dict (mapping of tensors), got {type(state).__name__}")
    model = PriorCVAE(config_from_state_dict(state))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise PriorWeightsError(f"{path}: does not match the STEVE-1 prior layout: {exc}") from None
    return model.eval()


@torch.no_grad()
def sample_goal(prior: PriorCVAE, text_embed: torch.Tensor, seed: Optional[int] = 0,
                deterministic: bool = False) -> torch.Tensor:
    """Goal embeddings [B, embed] for text embeddings [B, embed].

    ``deterministic`` decodes the prior mean z = 0; otherwise z ~ N(0, I) from a CPU generator
    seeded with ``seed`` (``None`` = unseeded), so the same seed gives the same goal on any device.
    """
    text_embed = text_embed.float()
    if deterministic:
        return prior(text_embed)
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    z = torch.randn(text_embed.shape[0], prior.cfg.latent_dim, generator=gen)   # [B, latent]
    return prior(text_embed, z.to(text_embed.device))
