"""Embed-generated stage: MineCLIP embeddings of the generate stage's episodes -> ``Layout.generated_embeds``.

The embed stage's code on the generated set (episodes from ``Layout.generated_episodes``, frames from
their companion videos in ``Layout.generated_videos``), with the same ``embed`` params, so both sets
come from one MineCLIP and ``sample.mix`` can draw them side by side.
"""

from __future__ import annotations

from typing import Optional, Sequence

from stages._common import StageError, run_stage
from steve1.data.embedding import run_embed
from steve1.data.episodes import EpisodeFormatError
from steve1.layout import Layout
from steve1.params import Params


def _body(params: Params) -> None:
    layout = Layout.from_params(params)
    try:
        run_embed(params.embed, layout.generated_episodes, layout.generated_videos, layout.generated_embeds)
    except (FileNotFoundError, ValueError, RuntimeError, EpisodeFormatError) as exc:
        raise StageError(str(exc)) from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_stage("embed_generated", _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
