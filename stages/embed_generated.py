"""Embed-generated stage: MineCLIP embeddings of the generate stage's episodes -> ``Layout.generated_embeds``.

The embed stage's code on the generated set (episodes from ``Layout.generated_episodes``, frames from
their companion videos in ``Layout.generated_videos``), with the same ``embed`` params, so both sets
come from one MineCLIP and ``sample.mix`` can draw them side by side.
"""

from __future__ import annotations

from typing import Optional, Sequence

from stages._common import run_stage
from stages._embed import embed_folders
from steve1.layout import Layout
from steve1.params import Params


def _body(params: Params) -> None:
    layout = Layout.from_params(params)
    # generated episodes never open the GUI (gui_open all false): no cursor to draw, none in their source id
    embed_folders(params, layout.generated_episodes, layout.generated_videos, layout.generated_embeds,
                  cursor_png=None)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_stage("embed_generated", _body, argv, where="generated set: ")


if __name__ == "__main__":
    raise SystemExit(main())
