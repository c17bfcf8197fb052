"""Text prompt -> goal embedding: MineCLIP text tower, then the CVAE prior.

:func:`mineclip_text_encoder` is the one place that wires the prompt and prior code to
:mod:`steve1.models.mineclip`; everything else takes a plain ``text_encoder`` callable
(list of strings -> [B, 512]) so tests and other encoders plug in without MineCLIP.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from steve1.models.prior import PriorCVAE, sample_goal

TextEncoder = Callable[[list[str]], Any]


def mineclip_text_encoder(weights: Optional[str], preset: str = "tiny", seed: int = 0,
                          device: str | torch.device = "cpu") -> tuple[TextEncoder, str]:
    """``(encode, weights_id)``: the official ``attn.pth`` when ``weights`` is set, else the seeded
    random MineCLIP of that preset -- the same choice the embed stage makes, so text embeddings
    and the stored visual embeddings come from one model. ``weights_id`` matches the embeds files' attr."""
    from steve1.models.mineclip import build_mineclip
    from steve1.models.mineclip_files import load_attn_pth, random_weights_info

    if weights:
        model, info = load_attn_pth(weights, "full", device=device)
    else:
        model, info = build_mineclip(preset, seed=seed, device=device), random_weights_info(preset, seed)

    @torch.no_grad()
    def encode(texts: list[str]) -> torch.Tensor:
        return model.encode_text(list(texts)).float().cpu()   # [B, 512]

    return encode, info.weights_id


def text_embeddings(text_encoder: TextEncoder, texts: Sequence[str]) -> torch.Tensor:
    """float32 [B, D] on CPU, whatever the encoder returns (numpy or torch)."""
    emb = text_encoder(list(texts))
    emb = emb.detach().cpu() if isinstance(emb, torch.Tensor) else torch.from_numpy(np.asarray(emb))
    return emb.float().reshape(len(texts), -1)


def prompt_to_goal(texts: Sequence[str], text_encoder: TextEncoder, prior: PriorCVAE,
                   seed: Optional[int] = 0, deterministic: bool = False) -> np.ndarray:
    """Goal embeddings float32 [B, 512] for text prompts: MineCLIP text embedding, then a prior
    sample (seeded) or, with ``deterministic``, the prior mean."""
    goals = sample_goal(prior, text_embeddings(text_encoder, texts), seed=seed, deterministic=deterministic)
    return goals.cpu().numpy().astype(np.float32)
