"""MineCLIP's file format: the official ``attn.pth`` (load, save, alias keys, md5) and weights provenance.

``attn.pth`` is ``{"state_dict": {"model.<key>": tensor}}`` with 788 keys: the 334 canonical
tensors of :class:`~steve1.models.mineclip.MineCLIP` plus the vision and text towers repeated
under alias paths (:data:`ALIAS_TO_CANONICAL`). :func:`load_attn_pth` checks every key and that
aliases equal their canonical tensors, then loads each tensor once; :func:`save_attn_pth` writes
the same layout. The architecture itself lives in :mod:`steve1.models.mineclip`.
"""

from __future__ import annotations

import logging
import pickle
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import torch

from steve1.errors import MissingInputError, UserError
from steve1.io import atomic_path, file_digest
from steve1.models.mineclip import MC_IMAGE_MEAN, MC_IMAGE_STD, MineCLIP, MineCLIPConfig, build_mineclip

log = logging.getLogger(__name__)

ATTN_PTH_MD5 = "b5ece9198337cfd117a3bfbd921e56da"
CHECKPOINT_PREFIX = "model."

# Official alias path prefix -> canonical prefix (our parameter names).
ALIAS_TO_CANONICAL = {
    "clip_model.vision_model.": "image_encoder.",
    "reward_head.clip_model.vision_model.": "image_encoder.",
    "clip_model.text_model.": "reward_head.clip_model.text_model.",
    "clip_model.logit_scale": "reward_head.clip_model.logit_scale",
}


class MineCLIPWeightsError(UserError, ValueError):
    """A MineCLIP weights file that is not an attn checkpoint of the configured model."""


def canonical_key(official_key: str) -> str:
    """Our parameter name for an official ``state_dict`` key (aliases map to canonical names)."""
    for alias, canon in ALIAS_TO_CANONICAL.items():
        if official_key.startswith(alias):
            return canon + official_key[len(alias):]
    return official_key


def official_keys(canonical: Iterable[str]) -> list[str]:
    """All official ``state_dict`` keys (canonical + aliases), in the official module order."""
    canonical = list(canonical)
    vision = [k for k in canonical if k.startswith("image_encoder.")]
    text = [k for k in canonical if k.startswith("reward_head.clip_model.text_model.")]
    out: list[str] = []
    for k in canonical:
        if k.startswith("reward_head.clip_model.text_model.") and not any(
                o.startswith("reward_head.clip_model.vision_model.") for o in out):
            out += ["reward_head.clip_model.vision_model." + v[len("image_encoder."):] for v in vision]
        out.append(k)
    out.append("clip_model.logit_scale")
    out += ["clip_model.vision_model." + v[len("image_encoder."):] for v in vision]
    out += ["clip_model.text_model." + t[len("reward_head.clip_model.text_model."):] for t in text]
    return out


def _listing(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(sorted(names)[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def canonical_state_dict(official: Mapping[str, torch.Tensor], expected: Sequence[str], where: str) -> dict[str, torch.Tensor]:
    """Official (788-key, prefix stripped) -> canonical (334-key) state dict.

    Every expected official key must be present and nothing else; alias values must equal
    their canonical tensor. Errors list what is missing, extra or disagreeing.
    """
    expected_set = set(expected)
    missing = [k for k in expected if k not in official]
    extra = [k for k in official if k not in expected_set]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {_listing(missing)}")
        if extra:
            parts.append(f"unexpected {len(extra)} keys: {_listing(extra)}")
        raise MineCLIPWeightsError(f"{where}: not a MineCLIP attn checkpoint of this config ({'; '.join(parts)})")
    canonical: dict[str, torch.Tensor] = {}
    disagree = []
    for key in expected:
        canon = canonical_key(key)
        value = official[key]
        if canon == key:
            canonical[key] = value
    for key in expected:
        canon = canonical_key(key)
        if canon != key:
            ref, value = canonical[canon], official[key]
            same = value.data_ptr() == ref.data_ptr() and value.shape == ref.shape and value.stride() == ref.stride()
            if not same and not torch.equal(value, ref):
                disagree.append(f"{key} != {canon}")
    if disagree:
        raise MineCLIPWeightsError(f"{where}: alias tensors differ from their canonical tensors: {_listing(disagree)}")
    return canonical


@dataclass(frozen=True)
class WeightsInfo:
    """Where a MineCLIP's weights came from; ``weights_id`` is recorded in every output."""

    weights_id: str
    path: Optional[str] = None
    md5: Optional[str] = None
    md5_matches_official: Optional[bool] = None

    def as_attrs(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def random_weights_info(preset: str, seed: int) -> WeightsInfo:
    return WeightsInfo(weights_id=f"random-{preset}:seed={seed}")


def load_attn_pth(path: str | Path, config: Union[str, MineCLIPConfig, Mapping[str, Any]] = "full",
                  device: Union[str, torch.device] = "cpu", expected_md5: str = ATTN_PTH_MD5) -> tuple[MineCLIP, WeightsInfo]:
    """Load an official ``attn.pth`` (``{"state_dict": {"model.<key>": tensor}}``, 788 keys).

    Each tensor is loaded once under its canonical name after checking the aliases agree; a
    missing or extra key fails with a listing. An md5 other than the official one is a warning
    (fine-tuned or re-saved files are legitimate) and is recorded in the returned info.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: MineCLIP weights file not found (set embed.weights or download attn.pth)")
    md5 = file_digest(path, "md5")
    if md5 != expected_md5:
        msg = f"{path}: md5 {md5} differs from the official attn.pth ({expected_md5}); using it anyway"
        warnings.warn(msg, stacklevel=2)
        log.warning(msg)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:                      # files in the legacy (pre-zip) format cannot be mapped
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:   # damaged, cut, or not plain tensors
            first = (str(exc).splitlines() or [""])[0].split(". ")[0]
            raise MineCLIPWeightsError(f"{path}: not a torch checkpoint loadable with weights_only=True "
                                       f"({type(exc).__name__}: {first})") from None
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("state_dict"), Mapping):
        raise MineCLIPWeightsError(f"{path}: expected a dict with a 'state_dict' entry (the official attn.pth layout)")
    official = {k[len(CHECKPOINT_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(CHECKPOINT_PREFIX)}
    model = build_mineclip(config, device="meta")
    canonical = canonical_state_dict(official, official_keys(model.state_dict().keys()), str(path))
    model.load_state_dict({k: v.float() for k, v in canonical.items()}, strict=True, assign=True)
    model.mean = torch.tensor(MC_IMAGE_MEAN).view(3, 1, 1)
    model.std = torch.tensor(MC_IMAGE_STD).view(3, 1, 1)
    model = model.to(device).eval()
    info = WeightsInfo(weights_id=f"attn.pth:md5={md5}", path=str(path), md5=md5, md5_matches_official=md5 == expected_md5)
    return model, info


def save_attn_pth(model: MineCLIP, path: str | Path) -> Path:
    """Write ``model`` in the official layout: ``{"state_dict": {"model.<key>": tensor}}`` with all
    aliases (each alias is the same tensor, so the file stores every tensor once). Atomic."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out = {CHECKPOINT_PREFIX + k: state[canonical_key(k)] for k in official_keys(state.keys())}
    path = Path(path)
    with atomic_path(path, suffix=".pth") as tmp:
        torch.save({"state_dict": out}, tmp)
    return path
