"""Stage ``embed-set@<name>``: MineCLIP embeddings of a custom set's episodes -> ``<paths.custom>/<name>/embeds``.

The same code and ``embed`` params as the main set's embed stage, so every set is embedded by one
MineCLIP (``sample`` refuses a mix whose sets were not). A set imported from a STEVE-1 dataset
brought its own embeddings: ``custom.<name>.embeddings`` reuses them (``dataset``; ``auto`` when
every episode brought them) instead of running MineCLIP, recorded as coming from the dataset (see
``steve1.data.steve1_format`` and the mixing rule in ``steve1.data.formats``), or recomputes them
(``mineclip``).
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

from stages._common import StageError, run_set_stage
from stages._embed import embed_folders
from steve1.data.dataset_embeds import carries_embeddings, dataset_weights_id, reuse_dataset_embeds
from steve1.layout import Layout
from steve1.params import Params

log = logging.getLogger("stages.embed_set")


def _body(params: Params, name: str) -> None:
    spec, where = params.custom[name], Layout.from_params(params).custom_set(name)
    reuse = False
    if spec.embeddings != "mineclip":
        brought, not_brought = carries_embeddings(where.episodes)
        if spec.embeddings == "dataset" and not_brought:
            raise StageError(f"embeddings: dataset, but {len(not_brought)} episode(s) brought no "
                             f"embeddings (e.g. {not_brought[0]}: not a STEVE-1 dataset episode); use "
                             f"embeddings: mineclip or auto")
        reuse = bool(brought) and not not_brought
    if not reuse:
        embed_folders(params, where.episodes, where.raw, where.embeds, cursor_png=params.decode.cursor_png)
        return
    weights = dataset_weights_id(name, spec.dataset_mineclip)
    log.info("custom.%s: reusing the dataset's embeddings (weights %r), MineCLIP not run", name, weights)
    reuse_dataset_embeds(where.episodes, where.raw, where.embeds, weights, params.embed.store_dtype)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_set_stage("embed_set", _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
