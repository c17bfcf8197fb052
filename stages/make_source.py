"""Stage ``make-source``: the embedded default recordings -> ``${paths.source}/recordings`` + index.json.

Offline and deterministic: ``source.n_synthetic`` synthetic contractor recordings plus, when
``source.include_real``, the real pair shipped in ``assets/recordings`` (with its PROVENANCE.json).
``index.json`` is in the VPT index format; its relative basedir resolves against its own folder.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from tqdm import tqdm

from stages._common import StageError, run_stage
from steve1.data import formats
from steve1.data.synthetic import write_synthetic_recording
from steve1.io import atomic_path, remove_stale_temps, write_json_atomic
from steve1.params import Params

log = logging.getLogger("stages.make_source")

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "recordings"
RECORDINGS = "recordings"
PROVENANCE = "PROVENANCE.json"


def _body(params: Params) -> None:
    src = params.source
    root = Path(params.paths.source)
    rec_dir = root / RECORDINGS
    rec_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(rec_dir)
    ids = [f"synthetic-{src.seed}-{k}" for k in range(src.n_synthetic)]
    for k, eid in enumerate(tqdm(ids, desc="make-source", unit="rec")):
        write_synthetic_recording(rec_dir, eid, src.synthetic_steps, seed=(src.seed, k))
    if src.include_real:
        pairs = sorted(p.stem for p in ASSETS.glob(f"*{formats.RAW_VIDEO_SUFFIX}"))
        if not pairs:
            raise StageError(f"source.include_real is true but {ASSETS} holds no .mp4 recording")
        for stem in pairs:
            for suffix in (formats.RAW_VIDEO_SUFFIX, formats.RAW_ACTIONS_SUFFIX):
                with atomic_path(rec_dir / f"{stem}{suffix}") as tmp:
                    shutil.copyfile(ASSETS / f"{stem}{suffix}", tmp)
        with atomic_path(root / PROVENANCE) as tmp:
            shutil.copyfile(ASSETS / PROVENANCE, tmp)
        ids += pairs
    wanted = {f"{i}{s}" for i in ids for s in (formats.RAW_VIDEO_SUFFIX, formats.RAW_ACTIONS_SUFFIX)}
    for p in rec_dir.iterdir():   # recordings of earlier params
        if p.name not in wanted:
            p.unlink()
    if not src.include_real:
        (root / PROVENANCE).unlink(missing_ok=True)
    write_json_atomic(root / "index.json",
                      {"basedir": ".", "relpaths": [f"{RECORDINGS}/{i}{formats.RAW_VIDEO_SUFFIX}" for i in ids]})
    log.info("%d recording(s) in %s", len(ids), rec_dir)


def main(argv=None) -> int:
    return run_stage("make_source", _body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
