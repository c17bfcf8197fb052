"""Training data and loop of the text-to-goal prior (:mod:`steve1.models.prior`).

Pairs of (MineCLIP text embedding, MineCLIP visual embedding) come either from the official
``data.pkl`` layout (a pickle dict with ``text_embeddings`` and ``visual_embeddings``) or from
annotations ``{text, episode_id, t}`` that point at row ``t`` of ``data/embeds/<id>.h5``.
The loop follows the official ``train_vae.py``: AdamW, loss = beta * KL + MSE with the KL
*summed* over batch and latent dims and the MSE *averaged*, the best-validation weights kept;
we add a seeded split, seeded shuffling and noise, and early stopping on validation loss.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch

from steve1.data.episodes import read_embeds
from steve1.data.formats import EPISODE_SUFFIX
from steve1.devices import resolve_device
from steve1.errors import UserError
from steve1.io import read_json
from steve1.models.prior import PriorConfig, PriorCVAE, load_prior, reparameterize
from steve1.params import PriorParams
from steve1.unpickle import UnsafePickleError, load_numpy_pickle

log = logging.getLogger(__name__)

TextEncoder = Callable[[list[str]], Any]   # list of strings -> [B, 512] numpy or torch

# Prompt strings of the toy default: the embedded episodes carry no human annotations, so each
# episode's valid range is cut into windows that are paired with these in turn. The result only
# exercises the pipeline; it is labelled ``toy`` in the metrics and is no model of language.
TOY_PROMPTS = (
    "chop a tree",
    "dig as far as possible",
    "go explore",
    "look at the sky",
)


class PriorDataError(UserError, ValueError):
    """Prior training data is missing, malformed or unsafe to load."""


@dataclass
class PriorPairs:
    """Aligned embedding pairs; ``texts`` holds the prompt strings when known (annotations)."""

    text: np.ndarray                 # float32 [N, D]
    visual: np.ndarray               # float32 [N, D]
    texts: list[str] = field(default_factory=list)
    source: str = ""

    def __post_init__(self) -> None:
        if self.text.ndim != 2 or self.text.shape != self.visual.shape:
            raise PriorDataError(f"{self.source or 'prior pairs'}: text {list(self.text.shape)} and visual "
                                 f"{list(self.visual.shape)} embeddings must both be [N, D] with the same shape")

    def __len__(self) -> int:
        return len(self.text)


# ---------------------------------------------------------------- official data.pkl / .npz

def load_pairs_file(path: str | Path) -> PriorPairs:
    """Pairs from an official-layout ``data.pkl`` (restricted unpickler) or an ``.npz`` with the same keys."""
    path = Path(path)
    if not path.is_file():
        raise PriorDataError(f"{path}: prior data file not found")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    else:
        try:   # the official file is a pickled dict of numpy arrays (or lists of them); nothing else is allowed
            data = load_numpy_pickle(path.read_bytes(), str(path))
        except UnsafePickleError as exc:
            raise PriorDataError(str(exc)) from None
    if not isinstance(data, dict):
        raise PriorDataError(f"{path}: expected a dict with text_embeddings and visual_embeddings, got {type(data).__name__}")
    missing = [k for k in ("text_embeddings", "visual_embeddings") if k not in data]
    if missing:
        raise PriorDataError(f"{path}: missing key(s) {missing}; found {sorted(map(str, data))}")
    # the official arrays may be lists of [1, 512] arrays; flatten as train_vae.py does
    text = np.asarray(data["text_embeddings"], dtype=np.float32)
    visual = np.asarray(data["visual_embeddings"], dtype=np.float32)
    dim = text.shape[-1] if text.ndim else 0
    return PriorPairs(text.reshape(-1, dim), visual.reshape(-1, dim), source=str(path))


# ---------------------------------------------------------------- annotations -> pairs

def toy_annotations(embeds_dir: str | Path, windows_per_episode: int, samples_per_window: int,
                    prompts: Sequence[str] = TOY_PROMPTS) -> list[dict[str, Any]]:
    """The offline default: each episode's valid rows cut into windows paired with ``prompts`` in turn.

    Rows are evenly spaced inside each window, so the set depends only on the embeds files.
    """
    out: list[dict[str, Any]] = []
    paths = sorted(p for p in Path(embeds_dir).glob(f"*{EPISODE_SUFFIX}") if not p.name.startswith("."))
    k = 0
    for p in paths:
        _, valid, _ = read_embeds(p)
        rows = np.flatnonzero(valid)
        if len(rows) == 0:
            continue
        for chunk in np.array_split(rows, min(windows_per_episode, len(rows))):
            picks = chunk[np.linspace(0, len(chunk) - 1, min(samples_per_window, len(chunk))).round().astype(int)]
            for t in np.unique(picks):
                out.append({"text": prompts[k % len(prompts)], "episode_id": p.stem, "t": int(t)})
            k += 1
    return out


def read_annotations_file(path: str | Path) -> list[dict[str, Any]]:
    """A JSON list of ``{"text", "episode_id", "t"}`` objects."""
    items = read_json(path, PriorDataError, "prior.annotations_file")
    if not isinstance(items, list):
        raise PriorDataError(f"{path}: expected a JSON list of {{text, episode_id, t}} objects")
    return items


def encode_texts(text_encoder: TextEncoder, texts: Sequence[str]) -> np.ndarray:
    """Run the encoder once per unique string; float32 [len(texts), D]."""
    unique = sorted(set(texts))
    emb = text_encoder(list(unique))
    emb = emb.detach().cpu().numpy() if isinstance(emb, torch.Tensor) else np.asarray(emb)
    emb = emb.astype(np.float32).reshape(len(unique), -1)
    row = {t: i for i, t in enumerate(unique)}
    return emb[[row[t] for t in texts]]


def pairs_from_annotations(annotations: Iterable[dict[str, Any]], embeds_dir: str | Path,
                           text_encoder: TextEncoder, source: str = "annotations") -> PriorPairs:
    """Text embeddings from ``text_encoder``, visual ones from ``<embeds_dir>/<episode_id>.h5`` row ``t``."""
    annotations = list(annotations)
    if not annotations:
        raise PriorDataError(f"{source}: no annotations (need at least 2 pairs to train and validate)")
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    visual, texts = [], []
    for i, a in enumerate(annotations):
        try:
            text, ep, t = str(a["text"]), str(a["episode_id"]), int(a["t"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PriorDataError(f"{source}: annotation {i} ({a!r}) needs text, episode_id and integer t: {exc}") from None
        if ep not in cache:
            emb, valid, _ = read_embeds(Path(embeds_dir) / f"{ep}{EPISODE_SUFFIX}")
            cache[ep] = (emb, valid)
        emb, valid = cache[ep]
        if not 0 <= t < len(emb) or not valid[t]:
            raise PriorDataError(f"{source}: annotation {i}: row t={t} of episode {ep} is out of range or invalid "
                                 f"(episode has {len(emb)} rows; rows before 15 have no full 16-frame window)")
        visual.append(emb[t])
        texts.append(text)
    return PriorPairs(encode_texts(text_encoder, texts), np.stack(visual).astype(np.float32), texts=texts, source=source)


# ---------------------------------------------------------------- training

@dataclass
class PriorTrainResult:
    model: PriorCVAE              # the best-validation weights, on CPU, eval mode
    history: list[dict[str, float]]
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    n_train: int
    n_val: int


def prior_loss(model: PriorCVAE, text: torch.Tensor, visual: torch.Tensor, eps: torch.Tensor,
               beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, kl, recon) as official: KL summed over batch and latent, MSE averaged."""
    mu, logvar = model.encode(visual, text)                         # [B, latent] each
    pred = model.decode(reparameterize(mu, logvar, eps), text)     # [B, D]
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    recon = torch.nn.functional.mse_loss(pred, visual)
    return beta * kl + recon, kl, recon


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded shuffle, then the last ``ceil(n * val_fraction)`` (at least 1) rows are validation."""
    if n < 2:
        raise PriorDataError(f"need at least 2 pairs to train and validate the prior, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = min(n - 1, max(1, int(np.ceil(n * val_fraction))))
    return perm[:-n_val], perm[-n_val:]


def train_prior(pairs: PriorPairs, cfg: PriorParams, device: str | torch.device = "cpu",
                on_epoch: Optional[Callable[[dict[str, float]], None]] = None) -> PriorTrainResult:
    """Train a fresh CVAE on ``pairs``; deterministic on CPU for a fixed ``cfg.seed``.

    The schema's defaults are the official ``train_vae.py`` ones except the split."""
    torch.manual_seed(cfg.seed)
    device = torch.device(device)
    tr_idx, va_idx = split_indices(len(pairs), cfg.val_fraction, cfg.seed)
    text = torch.from_numpy(pairs.text).float()
    visual = torch.from_numpy(pairs.visual).float()
    model = PriorCVAE(PriorConfig(embed_dim=text.shape[1], hidden_dim=cfg.hidden_dim, latent_dim=cfg.latent_dim)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)        # shuffles and reparameterization noise
    val_gen_seed = cfg.seed + 1                          # same val noise every epoch: comparable val losses

    history: list[dict[str, float]] = []
    best_val, best_epoch, best_state, stale = float("inf"), -1, None, 0
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.from_numpy(tr_idx)[torch.randperm(len(tr_idx), generator=gen)]
        sums = np.zeros(3)
        n_batches = 0
        for start in range(0, len(order), cfg.batch_size):
            b = order[start:start + cfg.batch_size]
            t, v = text[b].to(device), visual[b].to(device)
            eps = torch.randn(len(b), cfg.latent_dim, generator=gen).to(device)
            loss, kl, recon = prior_loss(model, t, v, eps, cfg.beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += [loss.item(), kl.item(), recon.item()]   # host sync per batch: the data is tiny
            n_batches += 1
        val = _evaluate(model, text[va_idx], visual[va_idx], cfg, val_gen_seed, device)
        row = {"epoch": epoch, "train_loss": sums[0] / n_batches, "train_kl": sums[1] / n_batches,
               "train_recon": sums[2] / n_batches, **val}
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        log.info("epoch %d train loss %.4f val loss %.4f (recon %.4f)", epoch, row["train_loss"], val["val_loss"], val["val_recon"])
        if val["val_loss"] < best_val:
            best_val, best_epoch, stale = val["val_loss"], epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if cfg.patience and stale >= cfg.patience:
                break
    stopped_early = len(history) < cfg.epochs
    assert best_state is not None, "epochs >= 1 is validated by the params schema"
    model.load_state_dict(best_state)
    return PriorTrainResult(model.cpu().eval(), history, best_epoch, best_val, stopped_early, len(tr_idx), len(va_idx))


@torch.no_grad()
def _evaluate(model: PriorCVAE, text: torch.Tensor, visual: torch.Tensor, cfg: PriorParams,
              seed: int, device: torch.device) -> dict[str, float]:
    """Mean of per-batch losses over the validation rows, as the official loop reports them."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    sums, n = np.zeros(3), 0
    for start in range(0, len(text), cfg.batch_size):
        t, v = text[start:start + cfg.batch_size].to(device), visual[start:start + cfg.batch_size].to(device)
        eps = torch.randn(len(t), model.cfg.latent_dim, generator=gen).to(device)
        loss, kl, recon = prior_loss(model, t, v, eps, cfg.beta)
        sums += [loss.item(), kl.item(), recon.item()]
        n += 1
    return {"val_loss": sums[0] / n, "val_kl": sums[1] / n, "val_recon": sums[2] / n}


# ---------------------------------------------------------------- params -> files (the prior stage)

def save_prior(model: PriorCVAE, path: str | Path) -> Path:
    """Atomically write the plain state_dict (official ``steve1_prior.pt`` keys, float32, CPU)."""
    from steve1.io import atomic_path

    state = {k: v.detach().cpu().float().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)
    return Path(path)


def pairs_from_params(p: PriorParams, embeds_dir: str | Path,
                      make_text_encoder: Callable[[], tuple[TextEncoder, str]]) -> PriorPairs:
    """The pairs ``prior`` params ask for; ``make_text_encoder`` is only called for annotations.

    The text encoder's weights id must equal the ``weights`` attr of the embeds files: text and
    visual embeddings from two different MineCLIPs would train a meaningless prior.
    """
    if p.data:
        return load_pairs_file(p.data)
    if p.annotations:
        annotations, source = [a.model_dump() for a in p.annotations], "params.yaml prior.annotations"
    elif p.annotations_file:
        annotations, source = read_annotations_file(p.annotations_file), str(p.annotations_file)
    else:
        annotations = toy_annotations(embeds_dir, p.toy_windows_per_episode, p.toy_samples_per_window)
        source = f"toy annotations over {embeds_dir}"
        if not annotations:
            raise PriorDataError(f"{embeds_dir}: no embeds files with valid rows for the toy prior (run the embed stage)")
    encoder, weights_id = make_text_encoder()
    used = {str(a["episode_id"]) for a in annotations if isinstance(a, dict) and "episode_id" in a}
    for ep in sorted(used):
        _, _, attrs = read_embeds(Path(embeds_dir) / f"{ep}{EPISODE_SUFFIX}")
        stored = str(attrs.get("weights", ""))
        if stored and stored != weights_id:
            raise PriorDataError(f"{embeds_dir}/{ep}{EPISODE_SUFFIX}: embedded with MineCLIP {stored!r} but the text "
                                 f"encoder is {weights_id!r}; set embed.weights/preset/seed to the ones the embeds used")
    return pairs_from_annotations(annotations, embeds_dir, encoder, source=source)


def score_prior(model: PriorCVAE, pairs: PriorPairs, cfg: PriorParams,
                device: str | torch.device = "cpu") -> dict[str, float]:
    """A prior's val loss on the val pairs :func:`train_prior` holds out for ``cfg`` (same split, same noise):
    how the official ``steve1_prior.pt`` scores beside ours."""
    if model.cfg.embed_dim != pairs.text.shape[1]:
        raise PriorDataError(f"the prior to score takes {model.cfg.embed_dim}-d embeddings but the pairs are "
                             f"{pairs.text.shape[1]}-d")
    _, va_idx = split_indices(len(pairs), cfg.val_fraction, cfg.seed)
    text = torch.from_numpy(pairs.text[va_idx]).float()
    visual = torch.from_numpy(pairs.visual[va_idx]).float()
    return _evaluate(model.to(device), text, visual, cfg, cfg.seed + 1, torch.device(device))


def fit_prior(p: PriorParams, embeds_dir: str | Path, prior_path: str | Path, metrics_path: str | Path,
              make_text_encoder: Callable[[], tuple[TextEncoder, str]], report_path: Optional[str | Path] = None,
              history_path: Optional[str | Path] = None) -> dict[str, Any]:
    """Build pairs, train, write ``prior_path`` and the headline ``metrics_path`` (``Layout.prior``/
    ``prior_metrics``), the full record ``report_path`` and the per-epoch ``history_path`` (a DVC plot).
    With ``p.baseline`` that prior (e.g. the official ``steve1_prior.pt``) is scored on the same val pairs."""
    from steve1 import headline
    from steve1.io import write_json_atomic

    pairs = pairs_from_params(p, embeds_dir, make_text_encoder)
    device = resolve_device(p.device, "prior.device")
    result = train_prior(pairs, p, device)
    official = None
    if p.baseline:
        official = {"path": str(p.baseline), **score_prior(load_prior(p.baseline, map_location=device), pairs, p, device)}
        log.info("baseline prior %s: val loss %.4f (ours %.4f)", p.baseline, official["val_loss"], result.best_val_loss)
    save_prior(result.model, prior_path)
    metrics = {
        "toy": bool(p.is_toy),
        "note": ("TOY prior: prompt strings paired with windows of unannotated episodes; it exercises the "
                 "pipeline and means nothing about language") if p.is_toy else "",
        "source": pairs.source,
        "n_pairs": len(pairs), "n_train": result.n_train, "n_val": result.n_val,
        "prompts": sorted(set(pairs.texts)),
        "best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss,
        "epochs_run": len(result.history), "stopped_early": result.stopped_early,
        "final": result.history[result.best_epoch],
        "official": official,
        "history": result.history,
        "params": p.model_dump(),
    }
    if report_path is not None:
        write_json_atomic(Path(report_path), metrics)
    if history_path is not None:
        write_json_atomic(Path(history_path), result.history)
    write_json_atomic(Path(metrics_path), headline.prior(metrics))
    return metrics
