"""Stage ``embed-set@<name>``: MineCLIP embeddings of a custom set's episodes -> ``<paths.custom>/<name>/embeds``.

The same code and ``embed`` params as the main set's embed stage, so every set is embedded by one
MineCLIP (``sample`` refuses a mix whose sets were not).
"""

from __future__ import annotations

from typing import Optional, Sequence

from stages._common import run_set_stage
from stages._embed import embed_folders
from steve1.layout import Layout
from steve1.params import Params


def _body(params: Params, name: str) -> None:
    where = Layout.from_params(params).custom_set(name)
    embed_folders(params, where.episodes, where.raw, where.embeds, cursor_png=params.decode.cursor_png,
                  where=f"custom.{name}: ")


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_set_stage("embed_set", _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
