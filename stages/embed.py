"""Embed stage: MineCLIP embedding of every frame's 16-frame window -> <paths.embeds>/<id>.h5 + manifest.json.

Without ``embed.weights`` a seeded random MineCLIP (``embed.preset``) is used, and its id
(``random-tiny:seed=0``) is recorded in every output. Multi-GPU: ``accelerate launch -m stages.embed``.
Run under ``env MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 MALLOC_TOP_PAD_=1000000000``
on CPU (as dvc.yaml does): glibc otherwise maps and unmaps the large activations on every call.
"""

from __future__ import annotations

from typing import Optional, Sequence

from stages._common import run_stage
from stages._embed import embed_folders
from steve1.params import Params


def _body(params: Params) -> None:
    embed_folders(params, params.paths.episodes, params.paths.raw, params.paths.embeds,
                  cursor_png=params.decode.cursor_png)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_stage("embed", _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
