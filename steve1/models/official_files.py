"""The official checkpoint files: where they come from, how to check them, how to fetch them.

Direct links (OpenAI's blob store) are fetched with the resumable fetcher (``steve1.fetch``).
Google-Drive files (MineCLIP, STEVE-1, the prior) need a manual download: the stage stops
with the exact link and destination instead of scraping Drive's confirmation pages.

Checksums: MineCLIP's md5 is published by its authors (and checked by STEVE-1's loader). For
the other files no digest is published; the first verified fetch records its sha256 in
``<dir>/manifest.json`` and later runs check the file against it (trust on first use), so a
file that changes underneath a run is caught.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from steve1.errors import UserError
from steve1.fetch import FetchError, RetryPolicy, fetch_file
from steve1.io import file_digest, sha256_file, write_json_atomic

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class OfficialFile:
    name: str                       # the file name on disk
    url: str
    manual: bool                    # True: cannot be fetched unattended (Google Drive)
    md5: Optional[str] = None       # published digest, when one exists
    what: str = ""


OPENAI = "https://openaipublic.blob.core.windows.net/minecraft-rl/models/"
GDRIVE = "https://drive.google.com/uc?id="

OFFICIAL_FILES: dict[str, OfficialFile] = {f.name: f for f in (
    OfficialFile("2x.model", OPENAI + "2x.model", False, what="VPT 2x architecture (pickle of kwargs)"),
    OfficialFile("rl-from-foundation-2x.weights", OPENAI + "rl-from-foundation-2x.weights", False,
                 what="VPT 2x weights STEVE-1 starts from"),
    OfficialFile("foundation-model-2x.weights", OPENAI + "foundation-model-2x.weights", False,
                 what="VPT 2x foundation weights"),
    OfficialFile("attn.pth", GDRIVE + "1uaZM1ZLBz2dZWcn85rZmjP7LV6Sg5PZW", True,
                 md5="b5ece9198337cfd117a3bfbd921e56da", what="MineCLIP (attn.d2.nh8.glusw) checkpoint"),
    OfficialFile("steve1.weights", GDRIVE + "1E3fd_-H1rRZqMkUKHfiMhx-ppLLehQPI", True,
                 what="STEVE-1 policy weights"),
    OfficialFile("steve1_prior.pt", GDRIVE + "1OdX5wiybK8jALVfP5_dEo0CWm9BQbDES", True,
                 what="STEVE-1 text-to-goal prior"),
    OfficialFile("data.pkl", GDRIVE + "18JKzIwHmFBrAjfiRNobtwkN7zhwQc7IO", True,
                 what="STEVE-1 prior training pairs"),
    OfficialFile("visual_prompt_embeds.zip", GDRIVE + "1K--DOHMDKjtklTK6SbpH11wrI2j_61mu", True,
                 what="STEVE-1 visual prompt goals (visual_prompt_embeds/<name>.pkl; rollout.visual_prompts_from "
                      "reads the zip as it is)"),
)}


class WeightsError(UserError, RuntimeError):
    """An official file is missing, needs a manual download, or fails its checksum."""


def _read_manifest(directory: Path) -> dict:
    import json

    path = directory / MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text()).get("files", {})
    except (ValueError, AttributeError) as exc:
        raise WeightsError(f"{path}: not a valid weights manifest ({exc}); delete it to start over") from None


def _check(spec: OfficialFile, path: Path, recorded: Optional[dict]) -> dict:
    digest = sha256_file(path)
    if spec.md5 is not None and file_digest(path, "md5") != spec.md5:
        raise WeightsError(f"{path}: md5 differs from the published {spec.md5}: a different or damaged "
                           f"file; download it again from {spec.url}")
    if recorded and recorded.get("sha256") not in (None, digest):
        raise WeightsError(f"{path}: sha256 {digest} differs from the {recorded['sha256']} recorded when it "
                           f"was first fetched; delete it (and its manifest entry) to fetch it again")
    return {"sha256": digest, "bytes": path.stat().st_size, "url": spec.url, "md5": spec.md5}


def ensure_official_files(names: Iterable[str], directory: str | Path,
                          policy: RetryPolicy = RetryPolicy()) -> dict[str, dict]:
    """Make sure each named official file is in ``directory`` and verified; return manifest rows.

    Fetches direct links; for manual ones raises :class:`WeightsError` with instructions
    (after checking everything else, so one message lists all that is missing).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    recorded = _read_manifest(directory)
    rows: dict[str, dict] = {}
    manual_missing = []
    for name in names:
        if name not in OFFICIAL_FILES:
            raise WeightsError(f"unknown official file {name!r}; known: {', '.join(OFFICIAL_FILES)}")
        spec = OFFICIAL_FILES[name]
        path = directory / name
        if not path.is_file():
            if spec.manual:
                manual_missing.append(spec)
                continue
            log.info("fetching %s from %s", name, spec.url)
            try:
                fetch_file(spec.url, path, policy)
            except FetchError as exc:
                raise WeightsError(f"{name}: {exc}") from None
        rows[name] = _check(spec, path, recorded.get(name))
    write_json_atomic(directory / MANIFEST, {"format_version": 1, "files": {**recorded, **rows}})
    if manual_missing:
        lines = [f"  {s.name} ({s.what}): download {s.url} (e.g. `gdown '{s.url}'`) and save it as "
                 f"{directory / s.name}" for s in manual_missing]
        raise WeightsError("these official files must be downloaded by hand (Google Drive):\n" + "\n".join(lines))
    return rows
