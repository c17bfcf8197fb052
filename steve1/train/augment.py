"""Frame augmentation on the device: colour jitter and random grayscale of uint8 [B,T,H,W,3] batches.

Off by default (STEVE-1 trains without it). It runs after the loader, on whatever device the batch
is on, with torch ops only (torchvision is not a dependency). Random parameters are drawn per
sequence from a CPU ``torch.Generator`` seeded by ``(seed, step)``: a resumed run draws the same
parameters at the same step, and one sequence keeps one set for all its frames (a jitter that
flickered between frames would be a signal the policy could learn from), while sequences of a
batch differ. The ops follow torchvision's ``ColorJitter`` formulas in a fixed order
(brightness, contrast, saturation, hue), then grayscale; an op with a zero range is skipped, so
it leaves the image bit for bit unchanged.
"""

from __future__ import annotations

import numpy as np
import torch

from steve1.params import AugmentParams

LUMA = (0.2989, 0.587, 0.114)          # ITU-R 601 weights, as torchvision's rgb_to_grayscale
_N_DRAWS = 5                           # brightness, contrast, saturation, hue, grayscale


def augment_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator for one training step; independent streams for every (seed, step)."""
    state = np.random.SeedSequence([int(seed), int(step)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device="cpu").manual_seed(int(state) & ((1 << 63) - 1))


def sample_params(batch: int, cfg: AugmentParams, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-sequence parameters, each float32 [B] (``gray``: bool [B]); always the same number of draws."""
    u = torch.rand(batch, _N_DRAWS, generator=generator)                  # [B,5] in [0, 1)
    return {
        "brightness": 1.0 + cfg.brightness * (2.0 * u[:, 0] - 1.0),
        "contrast": 1.0 + cfg.contrast * (2.0 * u[:, 1] - 1.0),
        "saturation": 1.0 + cfg.saturation * (2.0 * u[:, 2] - 1.0),
        "hue": cfg.hue * (2.0 * u[:, 3] - 1.0),
        "gray": u[:, 4] < cfg.grayscale_p,
    }


def augment_frames(frames: torch.Tensor, cfg: AugmentParams, seed: int, step: int) -> torch.Tensor:
    """Augmented copy of uint8 ``frames`` [B,T,H,W,3] (RGB) on their device; ``frames`` itself when disabled."""
    if not cfg.enabled:
        return frames
    if frames.dtype != torch.uint8 or frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"augment_frames expects uint8 [B,T,H,W,3] RGB frames, got {frames.dtype} {list(frames.shape)}")
    params = sample_params(frames.shape[0], cfg, augment_generator(seed, step))
    p = {k: v.to(frames.device, non_blocking=True).view(-1, 1, 1, 1, 1) for k, v in params.items()}   # [B,1,1,1,1]
    x = frames.float().div_(255.0)                                        # [B,T,H,W,3] in [0, 1]
    if cfg.brightness > 0:
        x = x.mul_(p["brightness"]).clamp_(0.0, 1.0)
    if cfg.contrast > 0:
        mean = _gray(x).mean(dim=(2, 3), keepdim=True)                    # [B,T,1,1,1]: per frame, as torchvision
        x = _blend(x, mean, p["contrast"])
    if cfg.saturation > 0:
        x = _blend(x, _gray(x), p["saturation"])
    if cfg.hue > 0:
        x = _shift_hue(x, p["hue"])
    if cfg.grayscale_p > 0:
        x = torch.where(p["gray"], _gray(x).expand_as(x), x)
    return x.mul_(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma [..., 1] of RGB [..., 3]."""
    return (x[..., 0:1] * LUMA[0]).add_(x[..., 1:2], alpha=LUMA[1]).add_(x[..., 2:3], alpha=LUMA[2])


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``factor * x + (1 - factor) * other``, clipped to [0, 1] (torchvision's _blend)."""
    return x.mul_(factor).add_(other * (1.0 - factor)).clamp_(0.0, 1.0)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """RGB -> HSV, hue += shift (mod 1), -> RGB; torchvision's adjust_hue on channels-last tensors."""
    r, g, b = x.unbind(-1)
    maxc, minc = x.amax(-1), x.amin(-1)
    eqc = maxc == minc
    cr = maxc - minc
    s = cr / torch.where(eqc, torch.ones_like(maxc), maxc)
    crd = torch.where(eqc, torch.ones_like(cr), cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.remainder((hr + hg + hb) / 6.0 + 1.0 + shift.squeeze(-1), 1.0)   # [B,T,H,W]
    # HSV -> RGB without per-sector branches: channel n in (R, G, B) = v - v*s*clip(min(k, 4 - k), 0, 1)
    # with k = (n0 + 6h) mod 6, n0 = (5, 3, 1); equal to torchvision's sector table
    k = torch.remainder(torch.tensor((5.0, 3.0, 1.0), device=x.device) + (h * 6.0).unsqueeze(-1), 6.0)  # [B,T,H,W,3]
    return maxc.unsqueeze(-1) * (1.0 - s.unsqueeze(-1) * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0))
