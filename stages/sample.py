"""Sample stage: train/val split by frame budgets and chunk index -> ``Layout.sampling``.

With ``sample.mix`` the split also draws from custom sets (``custom.<name>``, made by the
import-set/embed-set stages; see ``steve1.data.sampling``).
"""

from __future__ import annotations

from typing import Optional, Sequence

from stages._common import run_stage
from steve1.data.sampling import run_sampling
from steve1.layout import Layout
from steve1.params import Params


def _body(params: Params) -> None:
    layout = Layout.from_params(params)
    run_sampling(params.sample, layout.episodes, layout.embeds, layout.sampling,
                 layout.mix_dirs(m.name for m in params.sample.mix))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_stage("sample", _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
