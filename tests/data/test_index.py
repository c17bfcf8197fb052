"""Index loading, URL resolution and episode selection (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steve1.data.index import IndexFileError, join_url, load_index, load_indices, parse_index, select_entries

REAL_10XX = "assets/index/all_10xx_Jun_29.json"
BLOB = "https://openaipublic.blob.core.windows.net/minecraft-rl/"


@pytest.fixture(scope="module")
def index10(repo_root: Path):
    return load_index(repo_root / REAL_10XX)


def _index(relpaths, basedir=BLOB, url="https://example.org/idx/index.json"):
    return parse_index(json.dumps({"basedir": basedir, "relpaths": relpaths}).encode(), "test-index", url)


def test_real_index_ids_versions_and_urls(index10):
    assert len(index10.entries) == 5661
    assert index10.versions == ["10.0"]
    first = index10.entries[0]
    assert first.episode_id == "cheeky-cornflower-setter-02e496ce4abb-20220421-092639"
    assert first.version == "10.0"
    assert first.mp4_url == BLOB + "data/10.0/cheeky-cornflower-setter-02e496ce4abb-20220421-092639.mp4"
    assert first.jsonl_url == first.mp4_url[:-4] + ".jsonl"
    assert len(index10.episode_ids) == 5661


def test_select_first(index10):
    picked = select_entries(index10, "first", 3)
    assert [e.episode_id for e in picked] == [e.episode_id for e in index10.entries[:3]]
    assert len(select_entries(index10, "first", None)) == 5661
    assert len(select_entries(index10, "first", 10_000)) == 5661  # more than available: all of them


def test_select_sample_is_seeded_and_in_index_order(index10):
    a = select_entries(index10, "sample", 20, seed=7)
    b = select_entries(index10, "sample", 20, seed=7)
    c = select_entries(index10, "sample", 20, seed=8)
    assert [e.episode_id for e in a] == [e.episode_id for e in b]
    assert {e.episode_id for e in a} != {e.episode_id for e in c}
    assert len({e.episode_id for e in a}) == 20
    pos = {e.episode_id: i for i, e in enumerate(index10.entries)}
    assert [pos[e.episode_id] for e in a] == sorted(pos[e.episode_id] for e in a)
    assert [e.episode_id for e in a] != [e.episode_id for e in index10.entries[:20]]


def test_select_list(index10):
    want = [index10.entries[100].episode_id, index10.entries[5].episode_id]
    picked = select_entries(index10, "list", episodes=want)
    assert [e.episode_id for e in picked] == [want[1], want[0]]  # index order


def test_select_list_unknown_id_is_named(index10):
    with pytest.raises(IndexFileError, match="no-such-episode"):
        select_entries(index10, "list", episodes=[index10.entries[0].episode_id, "no-such-episode"])
    with pytest.raises(IndexFileError, match="no episode ids"):
        select_entries(index10, "list", episodes=[])


def test_versions_filter_and_unknown_version(index10):
    assert len(select_entries(index10, "first", None, versions=["10.0"])) == 5661
    with pytest.raises(IndexFileError, match=r"'6\.13'.*holds 10\.0"):
        select_entries(index10, "first", 5, versions=["6.13"])


def test_duplicate_ids_keep_first_listing_after_the_version_filter():
    idx = _index(["data/8.0/a.mp4", "data/8.2/a.mp4", "data/8.2/b.mp4", "data/8.2/b.mp4", "data/8.0/c.mp4"])
    assert idx.versions == ["8.0", "8.2"]
    assert [(e.episode_id, e.version) for e in select_entries(idx)] == [("a", "8.0"), ("b", "8.2"), ("c", "8.0")]
    assert [(e.episode_id, e.version) for e in select_entries(idx, versions=["8.2"])] == [("a", "8.2"), ("b", "8.2")]
    with pytest.raises(IndexFileError, match=r"not in the index with versions \['8.2'\]: c$"):
        select_entries(idx, "list", episodes=["b", "c"], versions=["8.2"])


def test_relative_basedir_resolves_against_the_index_location(tmp_path, monkeypatch):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "index.json").write_text(json.dumps({"basedir": ".", "relpaths": ["recordings/x.mp4"]}))
    by_path = load_index(tmp_path / "src" / "index.json")
    by_url = load_index((tmp_path / "src" / "index.json").as_uri())
    monkeypatch.chdir(tmp_path)
    by_relpath = load_index("src/index.json")
    expected = (tmp_path / "src" / "recordings" / "x.mp4").as_uri()
    for idx in (by_path, by_url, by_relpath):
        assert idx.entries[0].mp4_url == expected
        assert idx.entries[0].version is None
    assert by_relpath.location == "src/index.json"


def test_basedir_forms():
    assert _index(["data/1.0/a.mp4"], basedir="..").basedir == "https://example.org/"
    assert _index(["data/1.0/a.mp4"], basedir="/srv/vpt").entries[0].mp4_url == "file:///srv/vpt/data/1.0/a.mp4"
    assert _index(["a b.mp4"], basedir=BLOB[:-1]).entries[0].mp4_url == BLOB + "a%20b.mp4"
    assert join_url("file:///srv/", "http://other/x.mp4") == "http://other/x.mp4"


@pytest.mark.parametrize(
    "content, match",
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "expected an object"),
        (b'{"relpaths": ["a.mp4"]}', "missing key.*basedir"),
        (b'{"basedir": ".", "relpaths": []}', "non-empty list"),
        (b'{"basedir": 3, "relpaths": ["a.mp4"]}', "'basedir' must be"),
        (b'{"basedir": ".", "relpaths": ["data/1.0/a.jsonl"]}', r"relpaths\[0\]"),
        (b'{"basedir": ".", "relpaths": ["data/1.0/a.mp4", "data/1.0/.tmp-a.mp4"]}',
         r"relpaths\[1\] = 'data/1.0/.tmp-a.mp4': an episode id may not start with '.tmp-'"),
    ],
)
def test_malformed_index_errors_name_the_problem(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(IndexFileError, match=match):
        load_index(path)


def test_missing_index_file(tmp_path):
    with pytest.raises(IndexFileError, match="cannot read the index"):
        load_index(tmp_path / "nope.json")


def test_several_indices_concatenate_in_order(repo_root):
    names = ["all_9xx_Jun_29.json", "all_10xx_Jun_29.json"]
    parts = [load_index(repo_root / "assets" / "index" / n) for n in names]
    merged = load_indices([repo_root / "assets" / "index" / n for n in names])
    assert merged.entries == parts[0].entries + parts[1].entries
    assert merged.versions == parts[0].versions + [v for v in parts[1].versions if v not in parts[0].versions]
    assert load_indices(str(repo_root / "assets" / "index" / names[0])).entries == parts[0].entries
    with pytest.raises(IndexFileError, match="empty list"):
        load_indices([])
