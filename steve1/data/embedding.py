"""MineCLIP goal embeddings of every frame's 16-frame window, as STEVE-1 stores them.

STEVE-1 runs ``encode_video`` on the window ``frames[t-15 : t+1]`` for every ``t >= 15``, so each
frame passes through the image tower 16 times. Image features do not depend on the other frames
of a window, so here the image tower runs once per frame and only the cheap temporal pooling
runs per window: the same embeddings (to float32 rounding, tested at 1e-5) for ~1/16 of the work.

Rows ``t < 15`` have no full window: they are zeros with ``valid = False``
(:data:`steve1.data.formats.NONE_EMBED_OFFSET`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import h5py
import numpy as np
import torch
from tqdm import tqdm

from steve1.data import formats
from steve1.data.episodes import EpisodeFormatError, EpisodeReader, episode_path, list_episode_ids, write_embeds
from steve1.devices import resolve_device
from steve1.engine import Executor, LocalExecutor, Lost
from steve1.errors import MissingInputError, UserError
from steve1.io import check_writable, remove_stale_temps, write_json_atomic
from steve1.layout import MANIFEST
from steve1.models.mineclip import MineCLIP, build_mineclip
from steve1.models.mineclip_files import WeightsInfo, load_attn_pth, random_weights_info
from steve1.numerics import require_reproducible_blas

log = logging.getLogger(__name__)

POOL_BATCH = 256                       # windows per temporal-pooling call
_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


class EmbedError(UserError, RuntimeError):
    """Embedding cannot run as configured, or some episodes could not be embedded."""


@dataclass
class Embedder:
    """A MineCLIP ready to embed: where it runs, in which precision, and where its weights came from."""

    model: MineCLIP
    weights: WeightsInfo
    device: torch.device
    autocast_dtype: Optional[torch.dtype] = None      # None: plain float32 (always on CPU)
    batch_size: int = 64

    @property
    def frame_size(self) -> tuple[int, int]:
        """(W, H) of the frames the model takes, as cv2 wants it: (256, 160) for MineCLIP."""
        h, w = self.model.config.resolution
        return w, h

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None or self.device.type == "cpu":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def make_embedder(weights: Optional[str], preset: str = "tiny", seed: int = 0, batch_size: int = 64,
                  device: str = "auto", compute_dtype: str = "float32", local_rank: int = 0) -> Embedder:
    """The official MineCLIP from ``weights`` (attn.pth), else a seeded random ``preset`` model."""
    require_reproducible_blas()
    dev = resolve_device(device, "embed.device", local_rank)      # on multi-GPU nodes each rank takes its local GPU
    if weights:
        model, info = load_attn_pth(weights, "full", device=dev)
    else:
        model, info = build_mineclip(preset, seed=seed, device=dev), random_weights_info(preset, seed)
    autocast_dtype = None if dev.type == "cpu" else _DTYPES[compute_dtype]
    return Embedder(model=model.eval(), weights=info, device=dev, autocast_dtype=autocast_dtype, batch_size=batch_size)


@torch.no_grad()
def frame_features(embedder: Embedder, batches: Iterable[np.ndarray]) -> torch.Tensor:
    """Image-tower features of every frame: uint8 RGB batches [b,H,W,3] -> float32 [N,E] on CPU."""
    out = []
    for batch in batches:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(embedder.device).permute(0, 3, 1, 2)  # [b,3,H,W]
        with embedder.autocast():
            out.append(embedder.model.encode_image_frames(x).float().cpu())                        # [b,E]
    if not out:
        return torch.zeros(0, embedder.model.embed_dim)
    return torch.cat(out)


@torch.no_grad()
def window_embeddings(embedder: Embedder, features: torch.Tensor, window: int = formats.WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """Temporal pooling of each window ending at t: features [N,E] -> (embeds [N,E] float32, valid [N])."""
    n, dim = features.shape
    embeds = np.zeros((n, dim), np.float32)
    valid = np.zeros(n, bool)
    if n < window:
        return embeds, valid
    windows = features.unfold(0, window, 1).permute(0, 2, 1)                  # [N-15,16,E] (a view)
    for start in range(0, len(windows), POOL_BATCH):
        chunk = windows[start:start + POOL_BATCH].to(embedder.device)         # [w,16,E]
        with embedder.autocast():
            pooled = embedder.model.pool_windows(chunk).float().cpu().numpy()  # [w,E]
        embeds[window - 1 + start: window - 1 + start + len(pooled)] = pooled
    valid[window - 1:] = True
    return embeds, valid


def _batches(frames: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    for start in range(0, len(frames), batch):
        yield frames[start:start + batch]


def embed_frames(embedder: Embedder, frames: np.ndarray | Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of an episode's frames (uint8 [N,H,W,3], or an iterable of such batches)."""
    if isinstance(frames, np.ndarray):
        frames = _batches(frames, embedder.batch_size)
    return window_embeddings(embedder, frame_features(embedder, frames))


# ---------------------------------------------------------------------------------------------- episodes


def shard(items: Sequence[str], rank: int, world_size: int) -> list[str]:
    """This process's share of the episodes (round robin over the sorted ids)."""
    return list(items[rank::world_size])


def source_id(episode_attrs: dict[str, Any], cursor_png: Optional[str]) -> str:
    """Digest of what an episode's frames were made from (source hashes, conversion settings, cursor)."""
    keys = (formats.A_VIDEO_SHA256, formats.A_JSONL_SHA256, formats.A_CONVERSION)
    ident = {k: str(episode_attrs.get(k)) for k in keys}
    ident["cursor_png"] = str(cursor_png)
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def is_up_to_date(path: Path, weights_id: str, n_frames: int, store_dtype: Optional[str] = None,
                  source: Optional[str] = None) -> bool:
    """An embeds file made by the same weights from the same episode (resume)."""
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return (f.attrs.get(formats.A_FORMAT_VERSION) == formats.EMBED_FORMAT_VERSION
                    and str(f.attrs.get(formats.A_WEIGHTS)) == weights_id
                    and (source is None or str(f.attrs.get(formats.A_SOURCE_ID)) == source)
                    and int(f.attrs.get(formats.A_N_FRAMES, -1)) == n_frames
                    and (store_dtype is None or f[formats.EMBEDS].dtype == np.dtype(store_dtype)))
    except (OSError, KeyError):
        return False


def embed_episode(embedder: Embedder, episode_file: Path, video_file: Path, out_file: Path,
                  store_dtype: str = "float32", cursor_png: Optional[str] = None,
                  progress: bool = True) -> dict[str, Any]:
    """Embed one decoded episode from its raw video; skip it when ``out_file`` is up to date."""
    from steve1.data.video import iter_processed_frames

    with EpisodeReader(episode_file) as ep:
        episode_id, n = ep.episode_id, ep.n_frames
        source_step, gui_open, cursor = ep.array(formats.SOURCE_STEP), ep.array(formats.GUI_OPEN), ep.array(formats.GUI_CURSOR)
        source = source_id(ep.attrs, cursor_png)
    entry = {"n_frames": n, "n_valid": max(0, n - formats.NONE_EMBED_OFFSET)}
    if is_up_to_date(out_file, embedder.weights.weights_id, n, store_dtype, source):
        return {**entry, "status": "skipped"}
    if not video_file.is_file():
        raise MissingInputError(f"{video_file}: raw video of episode {episode_id} not found (run the download stage)")
    batches = iter_processed_frames(video_file, source_step, gui_open, cursor, size=embedder.frame_size,
                                    batch=embedder.batch_size, cursor_png=cursor_png)
    features = frame_features(embedder, tqdm(batches, total=-(-n // embedder.batch_size), unit="batch",
                                             desc=episode_id[:40], leave=False, disable=not progress))
    if len(features) != n:
        raise EpisodeFormatError(f"{video_file}: {len(features)} frames decoded but {episode_file} has n_frames={n}")
    embeds, valid = window_embeddings(embedder, features)
    write_embeds(out_file, episode_id, embeds, valid, weights=embedder.weights.weights_id, store_dtype=store_dtype,
                 extra_attrs={formats.A_SOURCE_ID: source, "weights_info": embedder.weights.as_attrs(),
                              "mineclip_config": asdict(embedder.model.config)})
    return {**entry, "status": "written"}


def model_identity(embedder: Embedder) -> dict[str, Any]:
    """What the manifest says about the MineCLIP that made the embeddings."""
    return {"weights": embedder.weights.weights_id, "weights_info": embedder.weights.as_attrs(),
            "mineclip_config": asdict(embedder.model.config), "embed_dim": embedder.model.embed_dim}


def embed_one(embedder: Embedder, episode_id: str, episodes_dir: Path, raw_dir: Path, embeds_dir: Path,
              store_dtype: str = "float32", cursor_png: Optional[str] = None,
              progress: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """One episode's embeds file (or the up-to-date one kept) and the model's identity: the one
    per-episode function of every engine (``embedder`` is the worker's MineCLIP)."""
    entry = embed_episode(embedder, episode_path(episodes_dir, episode_id), Path(raw_dir) / f"{episode_id}.mp4",
                          episode_path(embeds_dir, episode_id), store_dtype, cursor_png, progress)
    return entry, model_identity(embedder)


def _given(embedder: Embedder) -> Embedder:
    return embedder


def _embed_episodes(embedder: Embedder | Callable[[], Embedder], episodes_dir: Path, raw_dir: Path, embeds_dir: Path,
                    store_dtype: str, cursor_png: Optional[str], rank: int, world_size: int,
                    executor: Optional[Executor]) -> tuple[dict[str, dict[str, Any]], Optional[dict[str, Any]]]:
    """This rank's episodes through ``executor``: ``({episode_id: entry}, model identity or None)``."""
    check_writable(embeds_dir)
    embeds_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        remove_stale_temps(embeds_dir)
    ids = shard(list_episode_ids(episodes_dir), rank, world_size)
    setup = functools.partial(_given, embedder) if isinstance(embedder, Embedder) else embedder
    executor = executor or LocalExecutor()
    work = functools.partial(embed_one, episodes_dir=episodes_dir, raw_dir=raw_dir, embeds_dir=embeds_dir,
                             store_dtype=store_dtype, cursor_png=cursor_png, progress=executor.shows_progress)
    done: dict[str, dict[str, Any]] = {}
    lost: dict[str, str] = {}
    identity = None
    for eid, result in tqdm(executor.map(work, ids, task="embed", setup=setup), total=len(ids), unit="episode",
                            desc=f"embed rank {rank}/{world_size}"):
        if isinstance(result, Lost):
            lost[eid] = result.reason
            continue
        done[eid], identity = result
        log.info("%s: %s (%d frames)", eid, done[eid]["status"], done[eid]["n_frames"])
    if world_size == 1:
        remove_stale_temps(embeds_dir)     # temps of workers that died (other ranks may still be writing theirs)
    if lost:   # the embeds manifest has no failed rows (sample needs every episode): the stage fails
        listing = "\n".join(f"  {eid}: {why}" for eid, why in sorted(lost.items()))
        raise EmbedError(f"{len(lost)} episode(s) could not be embedded (the other {len(done)} are written; a "
                         f"rerun keeps them and retries these):\n{listing}")
    return dict(sorted(done.items())), identity


def embed_all(embedder: Embedder | Callable[[], Embedder], episodes_dir: Path, raw_dir: Path, embeds_dir: Path,
              store_dtype: str = "float32", cursor_png: Optional[str] = None, rank: int = 0, world_size: int = 1,
              executor: Optional[Executor] = None) -> dict[str, dict[str, Any]]:
    """Embed this rank's share of the decoded episodes; return ``{episode_id: entry}`` for that share.

    ``embedder`` is a MineCLIP, or a function building one (each Ray actor calls it once).
    """
    return _embed_episodes(embedder, Path(episodes_dir), Path(raw_dir), Path(embeds_dir), store_dtype, cursor_png,
                           rank, world_size, executor)[0]


def write_manifest(model: Embedder | dict[str, Any], episodes_dir: Path, embeds_dir: Path,
                   store_dtype: str) -> dict[str, Any]:
    """``<embeds>/manifest.json``: the weights, config and every episode's frames (same inputs, same bytes).

    ``model`` is the MineCLIP, or its :func:`model_identity` (a Ray driver holds no MineCLIP).
    """
    identity = model_identity(model) if isinstance(model, Embedder) else model
    episodes = {}
    for eid in list_episode_ids(episodes_dir):
        with EpisodeReader(episode_path(episodes_dir, eid)) as ep:
            n = ep.n_frames
        if not is_up_to_date(episode_path(embeds_dir, eid), identity["weights"], n, store_dtype):
            raise EmbedError(f"{episode_path(embeds_dir, eid)}: missing or stale after embedding; rerun the stage")
        episodes[eid] = {"n_frames": n, "n_valid": max(0, n - formats.NONE_EMBED_OFFSET)}
    manifest = {"format_version": formats.EMBED_FORMAT_VERSION, "weights": identity["weights"],
                "weights_info": identity["weights_info"], "mineclip_config": identity["mineclip_config"],
                "embed_dim": identity["embed_dim"], "window": formats.WINDOW, "first_valid": formats.NONE_EMBED_OFFSET,
                "store_dtype": store_dtype, "episodes": episodes}
    write_json_atomic(Path(embeds_dir) / MANIFEST, manifest)
    return manifest


def run_embed(embed: Any, episodes_dir: str | Path, raw_dir: str | Path, embeds_dir: str | Path,
              cursor_png: Optional[str] = None, executor: Optional[Executor] = None) -> dict[str, Any]:
    """The embed stage: this process's share of the episodes, then (main process) the manifest.

    ``embed`` is the params ``embed`` section. Under ``accelerate launch``/torchrun (WORLD_SIZE > 1)
    episodes are split by rank and each rank uses its local GPU; the main process writes the
    manifest once every rank is done. With a Ray ``executor`` the MineCLIPs live in its actors (one
    each), and this process builds none.
    """
    check_writable(embeds_dir)  # before MineCLIP is built
    executor = executor or LocalExecutor()
    episodes_dir, raw_dir, embeds_dir = Path(episodes_dir), Path(raw_dir), Path(embeds_dir)
    ranks = executor.ranks("embed")
    build = functools.partial(make_embedder, embed.weights, embed.preset, embed.seed, embed.batch_size,
                              executor.worker_device("embed", embed.device, "embed.device"), embed.compute_dtype,
                              ranks.local_rank)
    embedder: Embedder | Callable[[], Embedder] = build
    if executor.runs_here:            # elsewhere (Ray) the MineCLIPs live in the workers, one each
        embedder = build()
        log.info("MineCLIP %s on %s (%s), rank %d/%d", embedder.weights.weights_id, embedder.device,
                 embedder.autocast_dtype or "float32", ranks.rank, ranks.world_size)
    _, identity = _embed_episodes(embedder, episodes_dir, raw_dir, embeds_dir, embed.store_dtype, cursor_png,
                                  ranks.rank, ranks.world_size, executor)
    ranks.wait()
    if ranks.rank != 0:
        return {}
    if identity is None:        # no episode to embed: the manifest still names the model
        identity = model_identity(embedder if isinstance(embedder, Embedder) else build())
    return write_manifest(identity, episodes_dir, embeds_dir, embed.store_dtype)
