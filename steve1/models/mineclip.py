"""MineCLIP (video + text towers), weight-compatible with the official ``attn.pth``.

The official model (MineDojo/MineCLIP, config ``attn`` as used by STEVE-1) is:

- a CLIP ViT-B/16 image tower at 160x256 (10x16 patch grid, positional embedding already
  resized from 14x14 in the checkpoint) giving one 512-d feature per frame;
- temporal pooling ``attn.d2.nh8.glusw``: an x-transformers 0.27.1 encoder of depth 2 (attn, ff,
  attn, ff; pre-norm; 8 heads of 64; SwiGLU feed-forward) over the 16 frame features, then the
  mean over time -- that is ``encode_video``;
- a residual-gated 2-layer MLP ``video_adapter`` used only for video/text similarity;
- a 12-layer causal CLIP text transformer pooled at the first end-of-text token.

Parameter names equal the official *canonical* names (334 tensors for the full model). The
official ``state_dict`` repeats the vision and text towers under alias paths (788 keys);
:mod:`steve1.models.mineclip_files` reads and writes that file format.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from steve1.errors import UserError
from steve1.models.tokenizer import tokenize as clip_tokenize

# Minecraft frame statistics of MineCLIP (R, G, B), not the OpenAI CLIP constants.
MC_IMAGE_MEAN = (0.3331, 0.3245, 0.3051)
MC_IMAGE_STD = (0.2439, 0.2493, 0.2873)
LN_EPS = 1e-5


class MineCLIPConfigError(UserError, ValueError):
    """A MineCLIP preset or config that this implementation does not build."""


@dataclass(frozen=True)
class MineCLIPConfig:
    """Sizes of a MineCLIP. The defaults are the official ``attn`` model used by STEVE-1."""

    resolution: tuple[int, int] = (160, 256)   # frame (H, W); multiples of the patch size
    embed_dim: int = 512                       # image/video/text feature size (hidden_dim)
    vision_width: int = 768
    vision_layers: int = 12
    vision_patch_size: int = 16
    image_resolution: int = 224                # square grid the positional table was made for
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    context_length: int = 77
    vocab_size: int = 49408
    pool_depth: int = 2                        # attn.d<depth>
    pool_heads: int = 8                        # attn.<...>.nh<heads>
    pool_dim_head: int = 64
    pool_ff_mult: int = 4
    pool_max_frames: int = 32                  # rows of the temporal position table
    adapter_layers: int = 2                    # v0-<n>

    @property
    def vision_heads(self) -> int:
        return self.vision_width // 64        # the official rule

    @property
    def grid(self) -> tuple[int, int]:
        return self.resolution[0] // self.vision_patch_size, self.resolution[1] // self.vision_patch_size

    def __post_init__(self) -> None:
        h, w = self.resolution
        if h % self.vision_patch_size or w % self.vision_patch_size:
            raise MineCLIPConfigError(f"MineCLIP resolution {self.resolution} must be divisible by the patch size "
                                      f"{self.vision_patch_size}")
        if self.vision_width % 64:
            raise MineCLIPConfigError(f"MineCLIP vision_width {self.vision_width} must be a multiple of 64 (heads of 64)")
        if self.text_width % self.text_heads:
            raise MineCLIPConfigError(f"MineCLIP text_width {self.text_width} is not divisible by text_heads {self.text_heads}")


PRESETS: dict[str, MineCLIPConfig] = {
    # The official model of attn.pth (158,537,730 parameters).
    "full": MineCLIPConfig(),
    # Embedded default without attn.pth: STEVE-1 shapes (160x256 frames in, 512-d embeddings out,
    # the full attn.d2.nh8.glusw pooling at 512) with a small image tower and text tower.
    "tiny": MineCLIPConfig(vision_width=128, vision_layers=2, text_width=64, text_layers=2, text_heads=2),
}


def config_from_official(mineclip_kwargs: Mapping[str, Any], clip_config: Optional[Mapping[str, Any]] = None) -> MineCLIPConfig:
    """Config from the official ``MineCLIP(**kwargs)`` arguments plus an optional ``clip_config``
    override (the layout of ``tiny_config.json``)."""
    kw = dict(mineclip_kwargs)
    if not str(kw.get("arch", "vit_base_p16")).startswith("vit_base_p16"):
        raise MineCLIPConfigError(f"MineCLIP arch {kw.get('arch')!r} is not supported (only vit_base_p16*)")
    if kw.get("hidden_dim", 512) != kw.get("image_feature_dim", 512):
        raise MineCLIPConfigError(f"MineCLIP hidden_dim {kw.get('hidden_dim')} must equal image_feature_dim "
                                  f"{kw.get('image_feature_dim')}")
    pool = re.fullmatch(r"attn\.d(\d+)\.nh(\d+)\.glusw", kw.get("pool_type", "attn.d2.nh8.glusw"))
    if pool is None:
        raise MineCLIPConfigError(f"MineCLIP pool_type {kw.get('pool_type')!r} is not supported (only attn.d<N>.nh<N>.glusw)")
    adapter = re.fullmatch(r"v0-(\d+)\.t0", kw.get("mlp_adapter_spec", "v0-2.t0"))
    if adapter is None:
        raise MineCLIPConfigError(f"MineCLIP mlp_adapter_spec {kw.get('mlp_adapter_spec')!r} is not supported (only v0-<N>.t0)")
    cfg = MineCLIPConfig(
        resolution=tuple(kw.get("resolution", (160, 256))),
        embed_dim=int(kw.get("image_feature_dim", 512)),
        pool_depth=int(pool.group(1)),
        pool_heads=int(pool.group(2)),
        adapter_layers=int(adapter.group(1)),
    )
    if clip_config:
        c = clip_config
        cfg = replace(cfg, embed_dim=c["embed_dim"], vision_width=c["vision_width"], vision_layers=c["vision_layers"],
                      vision_patch_size=c["vision_patch_size"], image_resolution=c["image_resolution"],
                      text_width=c["text_width"], text_layers=c["text_layers"], text_heads=c["text_heads"],
                      context_length=c["context_length"], vocab_size=c["vocab_size"])
    return cfg


def resolve_config(config: Union[str, MineCLIPConfig, Mapping[str, Any]]) -> MineCLIPConfig:
    """A preset name, a :class:`MineCLIPConfig`, a ``tiny_config.json``-style dict
    (``mineclip_kwargs`` + ``clip_config_override``) or a dict of :class:`MineCLIPConfig` fields."""
    if isinstance(config, MineCLIPConfig):
        return config
    if isinstance(config, str):
        if config not in PRESETS:
            raise MineCLIPConfigError(f"unknown MineCLIP preset {config!r}; expected one of {sorted(PRESETS)}")
        return PRESETS[config]
    if "mineclip_kwargs" in config:
        return config_from_official(config["mineclip_kwargs"], config.get("clip_config_override"))
    names = {f.name for f in fields(MineCLIPConfig)}
    unknown = sorted(set(config) - names)
    if unknown:
        raise MineCLIPConfigError(f"unknown MineCLIP config keys {unknown}; expected some of {sorted(names)}")
    values = dict(config)
    if "resolution" in values:
        values["resolution"] = tuple(values["resolution"])
    return MineCLIPConfig(**values)


# ----------------------------------------------------------------------------------------------
# Building blocks


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """``nn.MultiheadAttention``'s parameters (q, k, v stacked in ``in_proj_weight``) computed with SDPA."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        b, n, c = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)               # [B,L,3C]
        qkv = qkv.view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # [3,B,h,L,d]
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=causal)  # [B,h,L,d]
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class ResidualBlock(nn.Module):
    """CLIP pre-LN block: x += attn(ln_1 x); x += mlp(ln_2 x)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = SelfAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp = nn.Sequential(OrderedDict(
            c_fc=nn.Linear(width, 4 * width), gelu=QuickGELU(), c_proj=nn.Linear(4 * width, width)))
        self.ln_2 = nn.LayerNorm(width, eps=LN_EPS)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=causal)
        return x + self.mlp(self.ln_2(x))


class VisionTransformer(nn.Module):
    """CLIP ViT: patches + CLS + positions -> blocks -> ln_post(CLS) @ projection."""

    def __init__(self, cfg: MineCLIPConfig):
        super().__init__()
        width, gh, gw = cfg.vision_width, *cfg.grid
        self.cls_token = nn.Parameter(torch.empty(width))
        self.pos_embed = nn.Parameter(torch.empty(1 + gh * gw, width))
        self.projection = nn.Parameter(torch.empty(width, cfg.embed_dim))
        self.conv1 = nn.Conv2d(3, width, cfg.vision_patch_size, stride=cfg.vision_patch_size, bias=False)
        self.ln_pre = nn.LayerNorm(width, eps=LN_EPS)
        self.blocks = nn.ModuleList(ResidualBlock(width, cfg.vision_heads) for _ in range(cfg.vision_layers))
        self.ln_post = nn.LayerNorm(width, eps=LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised frames [N,3,H,W] -> features [N,E]."""
        x = self.conv1(x)                                     # [N,C,gh,gw]
        x = x.flatten(2).transpose(1, 2)                      # [N,gh*gw,C], row-major grid
        cls = self.cls_token.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed.to(x.dtype)  # [N,1+gh*gw,C]
        x = self.ln_pre(x)
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x[:, 0]) @ self.projection.to(x.dtype)   # [N,E]


class TextTransformer(nn.Module):
    """CLIP text GPT: causal blocks, pooled at the first end-of-text token (argmax of the ids)."""

    def __init__(self, cfg: MineCLIPConfig):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.empty(cfg.context_length, cfg.text_width))
        self.projection = nn.Parameter(torch.empty(cfg.text_width, cfg.embed_dim))
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.blocks = nn.ModuleList(ResidualBlock(cfg.text_width, cfg.text_heads) for _ in range(cfg.text_layers))
        self.ln_final = nn.LayerNorm(cfg.text_width, eps=LN_EPS)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [B,77] -> features [B,E]."""
        if ids.shape[-1] != self.pos_embed.shape[0]:
            raise ValueError(f"text ids have length {ids.shape[-1]}, expected {self.pos_embed.shape[0]}")
        x = self.token_embedding(ids) + self.pos_embed            # [B,77,W]
        for block in self.blocks:
            x = block(x, causal=True)
        x = self.ln_final(x)
        eot = x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)]   # [B,W]
        return eot @ self.projection.to(eot.dtype)                   # [B,E]


class PoolAttention(nn.Module):
    """x-transformers attention: bias-free q/k/v/out, ``heads x dim_head`` inner size, no mask."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.heads, -1).transpose(1, 2) for p in (self.to_q, self.to_k, self.to_v))  # [B,h,T,d]
        out = F.scaled_dot_product_attention(q, k, v)             # [B,h,T,d]
        return self.to_out(out.transpose(1, 2).reshape(b, t, -1))


class GLUProject(nn.Module):
    """Linear to 2x inner, then value * SiLU(gate); the first half is the value."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.silu(gate)


class PoolFeedForward(nn.Module):
    def __init__(self, dim: int, mult: int):
        super().__init__()
        # Index layout of x-transformers' FeedForward: 0 GLU, 1 (no norm), 2 dropout(0), 3 out.
        self.net = nn.Sequential(GLUProject(dim, dim * mult), nn.Identity(), nn.Identity(), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AbsolutePositions(nn.Module):
    def __init__(self, dim: int, rows: int):
        super().__init__()
        self.emb = nn.Embedding(rows, dim)


class PoolTransformer(nn.Module):
    """x-transformers 0.27.1 ``ContinuousTransformerWrapper(Encoder)`` with the same key layout:
    ``attn_layers.layers.<i>.<0: [norm] | 1: block | 2: residual (no parameters)>``."""

    def __init__(self, cfg: MineCLIPConfig):
        super().__init__()
        dim = cfg.embed_dim
        self.scale = dim ** -0.5                       # AbsolutePositionalEmbedding's table scale
        self.pos_emb = AbsolutePositions(dim, cfg.pool_max_frames)
        layers = []
        for _ in range(cfg.pool_depth):
            for block in (PoolAttention(dim, cfg.pool_heads, cfg.pool_dim_head), PoolFeedForward(dim, cfg.pool_ff_mult)):
                layers.append(nn.ModuleList([nn.ModuleList([nn.LayerNorm(dim, eps=LN_EPS)]), block, nn.Identity()]))
        self.attn_layers = nn.Module()
        self.attn_layers.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Frame features [B,T,E] -> tokens [B,T,E] (before the mean over time)."""
        t = x.shape[1]
        if t > self.pos_emb.emb.num_embeddings:
            raise ValueError(f"{t} frames per window exceed the temporal position table "
                             f"({self.pos_emb.emb.num_embeddings} rows)")
        x = x + self.pos_emb.emb.weight[:t].to(x.dtype) * self.scale
        for norms, block, _residual in self.attn_layers.layers:
            x = x + block(norms[0](x))
        return self.norm(x)


class TemporalEncoder(nn.Module):
    def __init__(self, cfg: MineCLIPConfig):
        super().__init__()
        self.attn = nn.Module()
        self.attn.model = PoolTransformer(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B,T,E] -> [B,E]: transformer, then the mean over time."""
        return self.attn.model(x).mean(dim=1)


class ClipHead(nn.Module):
    def __init__(self, cfg: MineCLIPConfig):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.empty(()))
        self.text_model = TextTransformer(cfg)


class RewardHead(nn.Module):
    """Residual-gated video adapter (v0-N) and the text tower (t0: no text adapter)."""

    def __init__(self, cfg: MineCLIPConfig):
        super().__init__()
        self.video_residual_weight = nn.Parameter(torch.empty(()))
        self.clip_model = ClipHead(cfg)
        mods: list[nn.Module] = []
        for i in range(cfg.adapter_layers):
            mods.append(nn.Linear(cfg.embed_dim, cfg.embed_dim))
            if i < cfg.adapter_layers - 1:
                mods += [nn.Identity(), nn.ReLU()]       # index layout: Linear, (no norm), ReLU, Linear
        self.video_adapter = nn.Sequential(*mods)

    def adapt_video(self, video: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.video_residual_weight)
        return gate * video + (1.0 - gate) * self.video_adapter(video)


# ----------------------------------------------------------------------------------------------
# The model


class MineCLIP(nn.Module):
    """MineCLIP video and text towers. Frames are RGB, 0..255 (uint8 or float), [..., 3, H, W]."""

    def __init__(self, cfg: MineCLIPConfig):
        super().__init__()
        self.config = cfg
        self.image_encoder = VisionTransformer(cfg)
        self.temporal_encoder = TemporalEncoder(cfg)
        self.reward_head = RewardHead(cfg)
        self.register_buffer("mean", torch.tensor(MC_IMAGE_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(MC_IMAGE_STD).view(3, 1, 1), persistent=False)

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """[..., 3, H, W] 0..255 -> float32 [N, 3, H, W]: /255, then Minecraft mean/std per RGB channel."""
        x = frames.reshape(-1, *frames.shape[-3:]).float() / 255.0
        return (x - self.mean) / self.std

    def encode_image_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Per-frame image features: [..., 3, H, W] -> [..., E]. Each frame is independent."""
        lead = frames.shape[:-3]
        return self.image_encoder(self.preprocess(frames)).reshape(*lead, -1)

    def pool_windows(self, features: torch.Tensor) -> torch.Tensor:
        """Temporal pooling of windows of frame features: [B, T, E] -> [B, E]."""
        return self.temporal_encoder(features)

    def encode_video(self, videos: torch.Tensor) -> torch.Tensor:
        """Official ``encode_video``: [B, T, 3, H, W] -> [B, E] (no video adapter)."""
        return self.pool_windows(self.encode_image_frames(videos))

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        return self.encode_video(videos)

    def tokenize(self, texts: Union[str, Sequence[str]]) -> torch.Tensor:
        """int64 [B, 77] token rows of the official tokenizer."""
        return clip_tokenize(texts, self.config.context_length)

    def encode_text(self, texts: Union[str, Sequence[str], torch.Tensor]) -> torch.Tensor:
        """Strings or token ids [B, 77] -> text features [B, E]."""
        if isinstance(texts, torch.Tensor):
            ids = texts
        else:
            ids = self.tokenize(texts)
        return self.reward_head.clip_model.text_model(ids.to(self.reward_head.clip_model.logit_scale.device))

    def adapt_video(self, video_features: torch.Tensor) -> torch.Tensor:
        """σ(w)·v + (1−σ(w))·MLP(v): the video side of the similarity."""
        return self.reward_head.adapt_video(video_features)

    def logits(self, video_features: torch.Tensor, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits_per_video [B,P], logits_per_text [P,B])`` from video and text features."""
        v = F.normalize(self.adapt_video(video_features), dim=-1)
        t = F.normalize(text_features, dim=-1)
        per_video = self.reward_head.clip_model.logit_scale.exp() * v @ t.t()
        return per_video, per_video.t()


# ----------------------------------------------------------------------------------------------
# Initialisation


def resize_pos_embed_grid(grid: torch.Tensor, in_grid: Sequence[int], out_grid: Sequence[int]) -> torch.Tensor:
    """Bicubic resize (align_corners=False) of a row-major grid table [gh*gw, C] -> [oh*ow, C]."""
    c = grid.shape[-1]
    x = grid.reshape(1, in_grid[0], in_grid[1], c).permute(0, 3, 1, 2)           # [1,C,gh,gw]
    x = F.interpolate(x, size=tuple(out_grid), mode="bicubic", align_corners=False)  # [1,C,oh,ow]
    return x.permute(0, 2, 3, 1).reshape(-1, c)


@torch.no_grad()
def init_random_(model: MineCLIP, seed: int) -> MineCLIP:
    """Deterministic seeded init (CPU generator, parameters in ``named_parameters`` order).

    Matrices ~ N(0,1)/sqrt(fan_in); embeddings ~ 0.02 N(0,1); CLS ~ N(0,1)/sqrt(width);
    LayerNorm gains 1 and biases 0; other biases 0; residual gate logit 4; logit scale log(1/0.07).
    """
    gen = torch.Generator().manual_seed(seed)
    norms = {f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, nn.LayerNorm) for p in ("weight", "bias")}
    for name, p in model.named_parameters():
        if name in norms:
            val = torch.ones(p.shape) if name.endswith("weight") else torch.zeros(p.shape)
        elif name.endswith("video_residual_weight"):
            val = torch.full(p.shape, 4.0)
        elif name.endswith("logit_scale"):
            val = torch.full(p.shape, math.log(1 / 0.07))
        elif name.endswith("cls_token"):
            val = torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[0])
        elif name.endswith(("pos_embed", "token_embedding.weight", "pos_emb.emb.weight")):
            val = 0.02 * torch.randn(p.shape, generator=gen)
        elif name.endswith("projection"):                          # [in, out] matrices
            val = torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[0])
        elif p.dim() >= 2:                                         # [out, in, ...] weights
            val = torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel())
        else:
            val = torch.zeros(p.shape)
        p.copy_(val)
    return model


def build_mineclip(config: Union[str, MineCLIPConfig, Mapping[str, Any]] = "tiny", seed: Optional[int] = 0,
                   device: Union[str, torch.device] = "cpu") -> MineCLIP:
    """A MineCLIP in eval mode: ``config`` is a preset name (``"full"``, ``"tiny"``), a
    :class:`MineCLIPConfig` or a ``tiny_config.json``-style dict; weights come from
    :func:`init_random_` with ``seed`` (skipped on the ``meta`` device or when seed is None)."""
    cfg = resolve_config(config)
    with torch.device("meta"):
        model = MineCLIP(cfg)
    device = torch.device(device)
    if device.type != "meta":
        model = model.to_empty(device="cpu")
        model.mean.copy_(torch.tensor(MC_IMAGE_MEAN).view(3, 1, 1))
        model.std.copy_(torch.tensor(MC_IMAGE_STD).view(3, 1, 1))
        if seed is not None:
            init_random_(model, seed)
        model = model.to(device)
    return model.eval()
