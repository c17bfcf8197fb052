"""The one body of the three embed stages (main set, custom sets, generated set).

Its own module, not ``_common``: every stage imports ``_common``, and DVC's code deps follow imports,
so embedding code there would make every stage rerun when embedding changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from steve1.data.embedding import run_embed
from steve1.engine import open_executor
from steve1.params import Params


def embed_folders(params: Params, episodes: str | Path, raw: str | Path, embeds: str | Path, *,
                  cursor_png: Optional[str]) -> None:
    """Embed ``episodes`` (frames from ``raw``) into ``embeds`` on the params' engine with the ``embed`` params."""
    with open_executor(params) as executor:
        run_embed(params.embed, episodes, raw, embeds, cursor_png=cursor_png, executor=executor)
