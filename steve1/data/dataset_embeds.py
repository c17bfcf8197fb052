"""``embed-set`` without MineCLIP: a set imported from a STEVE-1 dataset keeps the dataset's own embeddings.

``import-set`` left each episode's pickled vectors in ``<set>/raw/<id>.embeds.npy``
(:mod:`steve1.data.steve1_format`); here they become the set's embeds files, byte for byte the
vectors (in ``embed.store_dtype``), valid from row :data:`~steve1.data.formats.NONE_EMBED_OFFSET`.
Their ``weights`` attribute is ``dataset:<W>``: W the MineCLIP the user declares made them
(``custom.<name>.dataset_mineclip``), else ``unverified@custom.<name>``; the sampling mixes sets
only within one MineCLIP space (:func:`steve1.data.formats.mineclip_space`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from steve1.data import formats
from steve1.data.embedding import is_up_to_date, source_id
from steve1.data.episodes import EpisodeFormatError, EpisodeReader, episode_path, list_episode_ids, write_embeds
from steve1.errors import MissingInputError
from steve1.io import check_writable, remove_stale_temps, write_json_atomic
from steve1.layout import MANIFEST


def dataset_weights_id(set_name: str, declared_mineclip: Optional[str]) -> str:
    """The ``weights`` attribute of embeddings reused from a dataset."""
    return formats.DATASET_WEIGHTS_PREFIX + (declared_mineclip or f"{formats.UNVERIFIED_SPACE}custom.{set_name}")


def carries_embeddings(episodes_dir: str | Path) -> tuple[list[str], list[str]]:
    """``(ids that came with embeddings, ids that did not)`` of a set's episodes."""
    with_, without = [], []
    for eid in list_episode_ids(episodes_dir):
        with EpisodeReader(episode_path(episodes_dir, eid)) as ep:
            (with_ if str(ep.attrs.get(formats.A_RECORDER_VERSION, "")) == formats.STEVE1_RECORDER else without).append(eid)
    return with_, without


def reuse_dataset_embeds(episodes_dir: str | Path, raw_dir: str | Path, embeds_dir: str | Path, weights_id: str,
                         store_dtype: str = "float32") -> dict[str, Any]:
    """Every episode's embeds file from its ``<raw>/<id>.embeds.npy`` (no MineCLIP), then the manifest.

    A file already made from the same episode with the same ``weights_id`` and dtype is kept.
    """
    episodes_dir, raw_dir, embeds_dir = Path(episodes_dir), Path(raw_dir), Path(embeds_dir)
    check_writable(embeds_dir)
    embeds_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(embeds_dir)
    entries = {}
    for eid in list_episode_ids(episodes_dir):
        with EpisodeReader(episode_path(episodes_dir, eid)) as ep:
            n, attrs = ep.n_frames, ep.attrs
        if str(attrs.get(formats.A_RECORDER_VERSION, "")) != formats.STEVE1_RECORDER:
            raise EpisodeFormatError(f"{episode_path(episodes_dir, eid)}: not imported from a STEVE-1 dataset, so it has no "
                                     f"embeddings to reuse; set embeddings: mineclip (or auto) for this set")
        source = source_id(attrs, None)
        out = episode_path(embeds_dir, eid)
        entries[eid] = {"n_frames": n, "n_valid": max(0, n - formats.NONE_EMBED_OFFSET)}
        if is_up_to_date(out, weights_id, n, store_dtype, source):
            continue
        companion = Path(raw_dir) / f"{eid}{formats.DATASET_EMBEDS_SUFFIX}"
        if not companion.is_file():
            raise MissingInputError(f"{companion}: the dataset's embeddings of episode {eid} are missing "
                                    f"(rerun import-set)")
        try:
            vectors = np.load(companion, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:     # not an .npy, cut, or an object array
            raise EpisodeFormatError(f"{companion}: not a readable .npy of embeddings ({type(exc).__name__}: {exc}); "
                                     f"rerun import-set") from None
        if vectors.shape != (n, formats.STEVE1_EMBED_DIM) or vectors.dtype != np.float32:
            raise EpisodeFormatError(f"{companion}: {vectors.dtype} {list(vectors.shape)}, expected float32 "
                                     f"[{n},{formats.STEVE1_EMBED_DIM}] like its episode (rerun import-set)")
        valid = np.arange(n) >= formats.NONE_EMBED_OFFSET
        write_embeds(out, eid, vectors, valid, weights=weights_id, store_dtype=store_dtype,
                     extra_attrs={formats.A_SOURCE_ID: source, "embeddings_source": "dataset"})
    manifest = {"format_version": formats.EMBED_FORMAT_VERSION, "weights": weights_id,
                "weights_info": {"source": "dataset", "mineclip_space": formats.mineclip_space(weights_id)},
                "mineclip_config": None, "embed_dim": formats.STEVE1_EMBED_DIM, "window": formats.WINDOW,
                "first_valid": formats.NONE_EMBED_OFFSET, "store_dtype": store_dtype, "episodes": entries}
    write_json_atomic(embeds_dir / MANIFEST, manifest)
    return manifest
