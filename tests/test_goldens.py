"""tests/goldens, the official code's goldens inside the repository, cannot rot silently: every file
PROVENANCE.md lists exists with its sha256 (a gzipped one also decompresses to its original's),
nothing else is there (so every file a test reads is listed), and the list is sync.py's."""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

GOLDENS = Path(__file__).resolve().parent / "goldens"

ROW = re.compile(r"^\| `(?P<name>[^`]+)` \| `(?P<source>[^`]+)` \| `(?P<sha>[0-9a-f]{64})` \| (?P<how>.+) \|$")
OWN = {"README.md", "PROVENANCE.md", "sync.py"}


def _rows() -> list[dict[str, str]]:
    rows = [m.groupdict() for line in (GOLDENS / "PROVENANCE.md").read_text().splitlines() if (m := ROW.match(line))]
    assert rows, "PROVENANCE.md lists no file"
    return rows


def test_every_listed_golden_exists_with_its_sha256():
    for row in _rows():
        data = (GOLDENS / row["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha"], f"tests/goldens/{row['name']}: sha256 differs"
        if row["name"].endswith(".gz"):
            original = re.search(r"sha256 ([0-9a-f]{64})", row["how"]).group(1)
            assert hashlib.sha256(gzip.decompress(data)).hexdigest() == original, row["name"]


def test_nothing_unlisted_in_the_goldens():
    on_disk = {p.relative_to(GOLDENS).as_posix() for p in GOLDENS.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert on_disk - OWN == {row["name"] for row in _rows()}


def test_provenance_lists_what_sync_copies():
    from goldens.sync import FILES, stored_name

    assert [row["name"] for row in _rows()] == [stored_name(f) for f in FILES]
    assert [row["source"] for row in _rows()] == list(FILES)


def test_each_folder_keeps_its_readme_and_the_licences():
    readme = (GOLDENS / "README.md").read_text()
    assert "MIT" in readme and "MineFIA" in readme
    for folder in {Path(row["name"]).parts[0] for row in _rows()}:
        assert (GOLDENS / folder / "README.md").is_file(), folder
