"""Copy the reference fixtures the tests read into tests/goldens and write PROVENANCE.md.

New reference data arrives in ../shared/reference (made by the official code); this copies the files
in :data:`FILES` from there, verbatim, except the real contractor jsonl inputs, which are stored
gzipped (``gzip -n``: no name or time, same bytes every run) and decompressed by the tests. The
DEV pair's jsonl is not copied: the same bytes ship in assets/recordings. PROVENANCE.md lists
each file's source and sha256 (of the stored file, and of the original where it is gzipped);
tests/test_goldens.py checks them.

    python tests/goldens/sync.py [REFERENCE_DIR]     # default ../shared/reference
"""

from __future__ import annotations

import gzip
import hashlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "reference"

REAL_INPUTS = (   # the DEV jsonl files but the pair's (assets/recordings holds that one)
    "trimmed_cheeky-cornflower-setter-f153ac423f61-20220417-102048",
    "trimmed_gimpy-jade-panda-f153ac423f61-20220417-084844",
    "trimmed_lovely-persimmon-angora-03ea7a071963-20220420-001633",
    "trimmed_lovely-persimmon-angora-49d1202850a7-20220421-110810",
    "trimmed_lovely-persimmon-angora-93ba749bfcef-20220417-192215",
    "trimmed_lovely-persimmon-angora-e7d3ea0daba5-20220416-192002",
    "trimmed_shabby-viridian-beaver-13888bb8bc74-20220421-021021",
    "trimmed_shabby-viridian-beaver-69981936957f-20220420-165513",
)
STEVE1_EPISODES = ("trimmed_gimpy-jade-panda-f153ac423f61-20220417-084844",
                   "trimmed_lovely-persimmon-angora-a39257c803d3-20220422-051333")
# Every file a test reads (found by tracing the file opens of the tests that use the `reference`
# fixture), plus each folder's README and the recordings' provenance manifest.
FILES = (
    "vpt/README.md",
    "vpt/action_mapping_goldens.json",
    "vpt/tiny_policy_kwargs.json",
    "vpt/tiny_state_dict.pt",
    "vpt/tiny_io.pt",
    "vpt/steve1_2x_state_dict_manifest.json",
    "vpt/vpt_2x_state_dict_manifest.json",
    "vpt/contractor_goldens/conversion_goldens.json",
    "vpt/contractor_goldens/episode.jsonl",
    "vpt/contractor_goldens/episode.mp4",
    "vpt/contractor_goldens/steve1_frames_first40.npz",
    "mineclip/README.md",
    "mineclip/mineclip_attn_state_dict_manifest.json",
    "mineclip/preprocess_goldens.pt",
    "mineclip/tiny_config.json",
    "mineclip/tiny_io.pt",
    "mineclip/tiny_state_dict.pt",
    "mineclip/tokenizer_goldens.json",
    "real/README.md",
    "real/SHA256SUMS",
    "real/inputs_manifest.json",
    "real/actions_goldens.json",
    "real/video_goldens.json",
    "real/video_frames_first64.npz",
    "real/foundation-model-1x.model",
    "real/foundation-model-1x.model.json",
    "real/foundation-model-3x.model",
    "real/foundation-model-3x.model.json",
    *(f"real/inputs/{name}.jsonl" for name in REAL_INPUTS),
    "steve1_dataset/README.md",
    "steve1_dataset/SHA256SUMS",
    "steve1_dataset/goldens.json",
    *(f"steve1_dataset/{ep}/{f}" for ep in STEVE1_EPISODES
      for f in ("actions.pkl", "embeds_attn.pkl", "frames.mp4", "len.txt", "metadata.json")),
)
GZIPPED = tuple(f"real/inputs/{name}.jsonl" for name in REAL_INPUTS)
LEFT_OUT = """\
Left out (no test reads them): `real/index/` (the same five index files ship in `assets/index/`),
`real/inputs/*.mp4` and the DEV pair's jsonl (the same bytes ship in `assets/recordings/`),
`real/actions_stats.json`, `real/decoder_resize_crosscheck.json`, `real/model_files_report.json`,
`mineclip/facts.json` and `steve1_dataset/goldens_arrays.npz` (its arrays' sha256 are in
`goldens.json`, which the tests check against the frames and embeddings they read back)."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored_name(rel: str) -> str:
    return rel + ".gz" if rel in GZIPPED else rel


def sync(source: Path, dest: Path = HERE) -> list[tuple[str, str, str, str]]:
    rows = []
    for rel in FILES:
        data = (source / rel).read_bytes()
        out = dest / stored_name(rel)
        out.parent.mkdir(parents=True, exist_ok=True)
        if rel in GZIPPED:
            stored = gzip.compress(data, compresslevel=9, mtime=0)
            how = f"gzip -n of the original (sha256 {sha256(data)})"
        else:
            stored = data
            how = "verbatim"
        out.write_bytes(stored)
        rows.append((stored_name(rel), rel, sha256(stored), how))
    return rows


def write_provenance(rows: list[tuple[str, str, str, str]], dest: Path = HERE) -> None:
    lines = ["# Provenance of tests/goldens", "",
             "Copied by `python tests/goldens/sync.py` from `../shared/reference` (the reference fixtures",
             "made by running the official code; see README.md here for their provenance and licences).",
             "tests/test_goldens.py checks that every file below exists with this sha256.", "",
             LEFT_OUT, "",
             "| file | source in ../shared/reference | sha256 | how |", "|---|---|---|---|"]
    lines += [f"| `{name}` | `{rel}` | `{digest}` | {how} |" for name, rel, digest, how in rows]
    (dest / "PROVENANCE.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE
    rows = sync(src)
    write_provenance(rows)
    total = sum((HERE / name).stat().st_size for name, *_ in rows)
    print(f"{len(rows)} files, {total / 1e6:.1f} MB")
