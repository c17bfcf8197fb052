"""Sampling: validity, STEVE-1 chunking, budgeted deterministic splits, val_from, the stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from steve1.data import formats
from steve1.data.episodes import episode_path
from steve1.data.formats import SAMPLING_FORMAT_VERSION
from steve1.data.sampling import (Sampling, SamplingError, SetSpec, episode_chunks, make_mixed_sampling,
                                  make_sampling, min_episode_frames, run_sampling, scan_episodes,
                                  split_key)
from steve1.params import Params, ParamsError, SampleParams, validate_params
from fixtures.episodes import episode_factory  # noqa: F401  (fixture)


def test_chunks_start_at_15_step_T_and_the_short_last_one_is_shifted_back():
    T = 20
    assert episode_chunks("e", 15 + 2 * T, T) == [("e", 15, 35), ("e", 35, 55)]
    n = 15 + 2 * T + 7
    assert episode_chunks("e", n, T) == [("e", 15, 35), ("e", 35, 55), ("e", n - T, n)]
    assert episode_chunks("e", 15 + T, T) == [("e", 15, 35)]
    for n in range(15 + T, 200):
        ch = episode_chunks("e", n, T)
        assert all(e - s == T and s >= 15 and e <= n for _, s, e in ch)
        assert ch[-1][2] == n  # the last chunk always ends at the episode's end
        covered = np.zeros(n, bool)
        for _, s, e in ch:
            covered[s:e] = True
        assert covered[15:].all() and not covered[:15].any()
    with pytest.raises(SamplingError, match="too short"):
        episode_chunks("e", 15 + T - 1, T)


def test_min_episode_frames_is_steve1_rule():
    assert min_episode_frames(640, 15) == 655
    assert min_episode_frames(10, 100) == 115


def test_scan_lists_each_invalid_episode_with_its_reason(episode_factory):
    T, mn = 20, 15
    need = min_episode_frames(T, mn)
    episode_factory("good", need)
    episode_factory("short", need - 1)
    episode_factory("no-embeds", need + 5, embeds=False)
    episode_factory("no-episode", need + 5, episode=False)
    episode_factory("mismatch", need + 5, embeds_frames=need + 4)
    scan = scan_episodes(episode_factory.episodes_dir, episode_factory.embeds_dir, T, mn)
    assert scan.lengths == {"good": need}
    assert "too short: 34 frames < 35" in scan.invalid["short"]
    assert "no embeds file" in scan.invalid["no-embeds"]
    assert "no episode file" in scan.invalid["no-episode"]
    assert "39 rows but the episode has 40" in scan.invalid["mismatch"]


def _lengths(k=30, seed=0):
    rng = np.random.default_rng(seed)
    return {f"ep-{i:03d}": int(n) for i, n in enumerate(rng.integers(40, 200, k))}


def _split(lengths, **kw):
    args = dict(train_frames=1500, val_frames=400, seed=0, T=20, min_btwn_goals=15)
    return make_sampling(lengths, **{**args, **kw})


def test_split_meets_budgets_is_disjoint_and_deterministic():
    lengths = _lengths()
    a, b = _split(lengths), _split(lengths)
    assert a == b
    assert set(a["train"]).isdisjoint(a["val"])
    t = a["totals"]
    assert t["train"]["frames"] >= 1500 and t["train"]["frames"] - lengths[a["train"][-1]] < 1500
    assert t["val"]["frames"] >= 400 and t["val"]["frames"] - lengths[a["val"][-1]] < 400
    assert not a["warnings"]
    for split in ("train", "val"):
        chunks = a["chunks"][split]
        assert {c[0] for c in chunks} == set(a[split])
        assert chunks == [list(c) for e in a[split] for c in episode_chunks(e, lengths[e], 20)]
        assert t[split]["chunks"] == len(chunks) and t[split]["chunk_frames"] == 20 * len(chunks)
    c = _split(lengths, seed=1)
    assert (c["train"], c["val"]) != (a["train"], a["val"])


def test_budgets_beyond_the_data_take_everything_and_warn():
    lengths = _lengths(k=4)
    s = _split(lengths, train_frames=10**6, val_frames=10**6)
    assert sorted(s["train"] + s["val"]) == sorted(lengths)
    assert len(s["train"]) == 1 and len(s["val"]) == 3  # val never takes the last episode
    assert len(s["warnings"]) == 1 and "took everything" in s["warnings"][0]


def test_empty_val_only_when_val_frames_is_zero():
    lengths = {"only": 100}
    s = _split(lengths, val_frames=0)
    assert s["val"] == [] and s["chunks"]["val"] == [] and s["train"] == ["only"]
    msg = r"val split is empty but val_frames=400: only 1 valid episode\(s\) \(100 frames\)"
    with pytest.raises(SamplingError, match=msg):
        _split(lengths)


def test_val_from_reuses_val_and_excludes_it_from_train():
    lengths = _lengths()
    first = _split(lengths)
    again = _split(lengths, seed=7, val_episodes=first["val"])
    assert again["val"] == first["val"]
    assert set(again["train"]).isdisjoint(first["val"])
    with pytest.raises(SamplingError, match="not valid here"):
        _split(lengths, val_episodes=["ghost"])


def test_run_sampling_writes_a_deterministic_json(episode_factory, tmp_path):
    for i in range(6):
        episode_factory(f"ep-{i}", 40 + 10 * i)
    episode_factory("tiny", 20)
    p = SampleParams(name="s", train_frames=150, val_frames=60, seed=3, T=20, min_btwn_goals=15, max_btwn_goals=30)
    out = run_sampling(p, episode_factory.episodes_dir, episode_factory.embeds_dir, tmp_path / "samplings" / "s.json")
    first = out.read_bytes()
    run_sampling(p, episode_factory.episodes_dir, episode_factory.embeds_dir, tmp_path / "samplings" / "s.json")
    assert out.read_bytes() == first and out.name == "s.json"
    doc = Sampling.load(out).to_dict()
    assert doc["format_version"] == formats.SAMPLING_FORMAT_VERSION
    assert doc["params"] == p.model_dump(mode="json")
    assert doc["invalid"][0]["episode_id"] == "tiny" and "too short" in doc["invalid"][0]["reason"]
    assert Sampling.load(out).chunks("train")[0] == (doc["train"][0], 15, 35)
    assert Sampling.load(out).write(tmp_path / "again.json").read_bytes() == first  # typed round trip: same bytes
    # val_from, through the params
    p2 = p.model_copy(update={"name": "s2", "seed": 9, "val_from": str(out)})
    doc2 = json.loads(run_sampling(p2, episode_factory.episodes_dir, episode_factory.embeds_dir,
                                   tmp_path / "samplings" / "s2.json").read_text())
    assert doc2["val"] == doc["val"] and set(doc2["train"]).isdisjoint(doc["val"])


def _params_file(tmp_path, root, **sample):
    raw = Params().model_dump(mode="json")
    raw["paths"].update(episodes=str(root / "episodes"), embeds=str(root / "embeds"),
                        samplings=str(tmp_path / "samplings"))
    raw["sample"].update(sample)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_stage_writes_the_json_and_reports_errors(episode_factory, tmp_path, capsys):
    from stages.sample import main

    for i in range(3):
        episode_factory(f"ep-{i}", 80)
    # T a multiple of 64: params.yaml checks that train.trunc_t (64) divides sample.T
    ok = _params_file(tmp_path, episode_factory.root, T=64, train_frames=80, val_frames=80)
    assert main(["--params", str(ok)]) == 0
    assert Sampling.load(tmp_path / "samplings" / "default.json").to_dict()["totals"]["train"]["episodes"] >= 1
    bad = _params_file(tmp_path, episode_factory.root, T=128)  # every episode too short
    assert main(["--params", str(bad)]) == 1
    assert "no valid episodes" in capsys.readouterr().err


# ------------------------------------------------- mixed samplings (sample.mix)

def _mixed(main, custom, seed=0, custom_budget=(400, 100)):
    specs = [SetSpec("main", main, 1500, 400), SetSpec("custom", custom, *custom_budget)]
    return make_mixed_sampling(specs, seed=seed, T=20)


def test_mixed_sampling_meets_each_budget_within_one_chunk_and_keys_by_set():
    main, custom = _lengths(30), _lengths(12, seed=1)  # same ids "ep-000".. in both sets, other lengths
    a = _mixed(main, custom)
    assert a == _mixed(main, custom) and a != _mixed(main, custom, seed=1)
    want = {"main": (1500, 400), "custom": (400, 100)}
    for name, entry in a["sets"].items():
        for split, requested in zip(("train", "val"), want[name]):
            got = entry["totals"][split]
            assert requested <= got["chunk_frames"] < requested + 20  # within one chunk
            assert got["share"] == round(got["chunk_frames"] / a["totals"][split]["chunk_frames"], 6)
    assert abs(a["sets"]["custom"]["totals"]["train"]["share"] - 400 / 1900) < 20 / 1900
    for split in ("train", "val"):
        keys = [c[0] for c in a["chunks"][split]]
        assert {k for k in keys if "/" not in k} <= set(main)
        assert {k.split("/", 1)[0] for k in keys if "/" in k} == {"custom"}
        assert {k for k in keys} == set(a[split])
        for key, s, e in a["chunks"][split]:  # every chunk is one of its own episode's chunks
            name, eid = split_key(key)
            n = (main if name == "main" else custom)[eid]
            assert a["lengths"][key] == n and (key, s, e) in episode_chunks(key, n, 20)
    assert set(a["train"]).isdisjoint(a["val"])
    collided = [e for e in a["train"] + a["val"] if e.startswith("custom/") and e.split("/")[1] in a["lengths"]]
    assert collided, "the fixture should put one id in both sets"
    assert any(a["lengths"][e] != a["lengths"][e.split("/")[1]] for e in collided)
    # the main set's shuffle does not depend on the other sets
    alone = make_mixed_sampling([SetSpec("main", main, 1500, 400)], seed=0, T=20)
    assert [e for e in a["train"] if "/" not in e] == alone["train"]


def test_mixed_sampling_warns_when_a_set_is_short_and_refuses_an_empty_train():
    main, custom = _lengths(30), {"only": 100}
    s = _mixed(main, custom, custom_budget=(10**6, 0))
    assert s["sets"]["custom"]["totals"]["train"]["chunks"] == len(episode_chunks("only", 100, 20))
    assert len(s["warnings"]) == 1 and "set 'custom'" in s["warnings"][0] and "took everything" in s["warnings"][0]
    with pytest.raises(SamplingError, match="set 'custom'.*val split is empty but val_frames=50"):
        _mixed(main, custom, custom_budget=(100, 50))  # val never takes a set's last episode
    val_only = _mixed(main, custom, custom_budget=(0, 50))
    assert val_only["sets"]["custom"]["totals"]["train"]["chunks"] == 0 and "custom/only" in val_only["val"]


def test_mix_params_are_validated_and_an_empty_mix_is_not_dumped():
    ok = dict(name="custom", train_frames=20)
    assert "mix" not in SampleParams().model_dump(mode="json")
    assert SampleParams(mix=[ok]).model_dump(mode="json")["mix"][0]["val_frames"] == 0
    for mix, msg in (([ok, ok], "unique"), ([{**ok, "name": "main"}], "reserved"),
                     ([{**ok, "train_frames": 0}], "adds nothing"), ([{**ok, "train_frames": -1}], "greater than"),
                     ([{**ok, "name": "a/b"}], "a name that becomes a file or folder"),
                     ([{**ok, "episodes": "data/x"}], "episodes")):   # folders come from the layout now
        with pytest.raises(ValueError, match=msg):
            SampleParams(mix=mix)
    # a mix set must be a custom set
    with pytest.raises(ParamsError, match=r"sample.mix names \['custom'\], which are not custom sets"):
        validate_params({"sample": {"mix": [ok]}})
    assert validate_params({"sample": {"mix": [ok]}, "custom": {"custom": {"source": "recs"}}}).sample.mix[0].name == "custom"


def test_run_sampling_mixed_records_each_set_once_and_reuses_val(episode_factory, tmp_path):
    from fixtures.episodes import EpisodeFactory

    custom = EpisodeFactory(tmp_path / "custom")
    for i in range(5):
        episode_factory(f"ep-{i}", 60 + 10 * i)
    for i, n in enumerate((50, 70, 90)):
        custom(f"ep-{i}", n, tag=100 + i)  # ep-0..ep-2 exist in both sets
    custom("tiny", 20, tag=110)
    mix = dict(name="custom", train_frames=60, val_frames=20)
    p = SampleParams(name="m", train_frames=100, val_frames=40, seed=3, T=20, max_btwn_goals=30, mix=[mix])
    dirs = {"custom": (custom.episodes_dir, custom.embeds_dir)}

    def run(p, dirs=dirs):
        return run_sampling(p, episode_factory.episodes_dir, episode_factory.embeds_dir, tmp_path / "s" / f"{p.name}.json",
                            dirs)
    out = run(p)
    first = out.read_bytes()
    assert run(p).read_bytes() == first
    doc = Sampling.load(out).to_dict()
    assert Sampling.load(out).write(tmp_path / "again.json").read_bytes() == out.read_bytes()
    assert doc["params"] == p.model_dump(mode="json")
    assert doc["sets"]["main"]["episodes"] == str(episode_factory.episodes_dir)
    assert doc["sets"]["custom"]["embeds"] == str(custom.embeds_dir)
    assert doc["invalid"] == [{"episode_id": "custom/tiny", "reason": doc["invalid"][0]["reason"]}]
    t = doc["sets"]["custom"]["totals"]
    assert (t["train"]["chunk_frames"], t["val"]["chunk_frames"]) == (60, 20)
    # val_from a mixed sampling: both sets keep their val episodes
    again = Sampling.load(run(p.model_copy(update={"name": "m2", "seed": 9, "val_from": str(out)}))).to_dict()
    assert again["val"] == doc["val"] and set(again["train"]).isdisjoint(doc["val"])
    # a single-set sampling may reuse the main set's val of a mixed one
    single = Sampling.load(run(p.model_copy(update={"name": "m3", "mix": [], "val_from": str(out)}))).to_dict()
    assert single["val"] == [e for e in doc["val"] if "/" not in e] and "sets" not in single
    with pytest.raises(SamplingError, match="both read episodes from"):
        run(p, {"custom": (episode_factory.episodes_dir, custom.embeds_dir)})


def test_stage_mixes_custom_sets_from_the_layout_and_names_an_empty_one(episode_factory, tmp_path, capsys):
    from fixtures.episodes import EpisodeFactory
    from stages.sample import main

    for i in range(3):
        episode_factory(f"ep-{i}", 150)
    sets = tmp_path / "sets"
    raw = yaml.safe_load(_params_file(tmp_path, episode_factory.root, T=64, train_frames=64, val_frames=0,
                                      mix=[dict(name="mine", train_frames=64)]).read_text())
    raw["paths"]["custom"] = str(sets)
    raw["custom"] = {"mine": {"source": str(tmp_path / "recordings")}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert main(["--params", str(tmp_path / "params.yaml")]) == 1
    assert f"set 'mine': no valid episodes in {sets / 'mine' / 'episodes'}" in capsys.readouterr().err
    mine = EpisodeFactory(sets / "mine")
    mine("own-0", 100)
    assert main(["--params", str(tmp_path / "params.yaml")]) == 0
    doc = Sampling.load(tmp_path / "samplings" / "default.json").to_dict()
    assert doc["sets"]["mine"]["episodes"] == str(sets / "mine" / "episodes")
    assert any(c[0] == "mine/own-0" for c in doc["chunks"]["train"])


def test_a_mixed_sampling_reports_each_rejected_episode_once(episode_factory, tmp_path, caplog):
    from fixtures.episodes import EpisodeFactory

    for i in range(3):
        episode_factory(f"ep-{i}", 150)
    episode_factory("short", 30)
    mine = EpisodeFactory(tmp_path / "mine")
    mine("own-0", 150)
    p = SampleParams(T=64, train_frames=64, val_frames=0, mix=[dict(name="mine", train_frames=64)])
    with caplog.at_level("INFO", logger="steve1"):
        run_sampling(p, episode_factory.episodes_dir, episode_factory.embeds_dir, tmp_path / "s.json",
                     {"mine": (mine.episodes_dir, mine.embeds_dir)})
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]
    assert len(skipped) == 1 and "short" in skipped[0] and "too short" in skipped[0], skipped


def test_sets_embedded_by_different_mineclips_are_refused_naming_both(episode_factory, tmp_path):
    from fixtures.episodes import EpisodeFactory

    for i in range(3):
        episode_factory(f"ep-{i}", 150)
    other = EpisodeFactory(tmp_path / "other", weights="attn.pth:md5=0123")
    other("own-0", 150)
    p = SampleParams(T=64, train_frames=64, val_frames=0, mix=[dict(name="mine", train_frames=64)])
    with pytest.raises(SamplingError, match=r"different MineCLIP weights: 'fixture' in set 'main'.*'attn.pth:md5=0123' "
                                            r"in set 'mine'"):
        run_sampling(p, episode_factory.episodes_dir, episode_factory.embeds_dir, tmp_path / "s.json",
                     {"mine": (other.episodes_dir, other.embeds_dir)})


def test_too_short_episodes_say_how_to_fix_it(episode_factory, tmp_path):
    episode_factory("short", 60)
    with pytest.raises(SamplingError, match=r"needs >= 79 frames = max\(T=64.*lower sample.T .*`steve1 fit-t` picks .*longer recordings"):
        run_sampling(SampleParams(T=64), episode_factory.episodes_dir, episode_factory.embeds_dir, tmp_path / "s.json")


def test_sample_rejects_damaged_stores_naming_them(episode_factory, tmp_path):
    from fixtures.episodes import damage_chunk

    for eid in ("good-1", "good-2", "bad-chunk", "cut-episode", "cut-embeds"):
        episode_factory(eid, 100)  # frames in chunks of 64 rows: [0, 64) and [64, 100)
    ep_dir, em_dir = episode_factory.episodes_dir, episode_factory.embeds_dir
    damage_chunk(episode_path(ep_dir, "bad-chunk"), formats.FRAMES, index=-1)
    for path in (episode_path(ep_dir, "cut-episode"), episode_path(em_dir, "cut-embeds")):
        path.write_bytes(path.read_bytes()[: path.stat().st_size * 3 // 5])
    p = SampleParams(name="s", train_frames=100, val_frames=50, seed=0, T=20, min_btwn_goals=15, max_btwn_goals=30)
    doc = Sampling.load(run_sampling(p, ep_dir, em_dir, tmp_path / "samplings" / "s.json")).to_dict()
    assert sorted(doc["train"] + doc["val"]) == ["good-1", "good-2"]
    reasons = {r["episode_id"]: r["reason"] for r in doc["invalid"]}
    assert f"{episode_path(ep_dir, 'bad-chunk')}: cannot read frames rows [64, 100)" in reasons["bad-chunk"]
    assert f"{episode_path(ep_dir, 'cut-episode')}: cannot open this episode file" in reasons["cut-episode"]
    assert f"{episode_path(em_dir, 'cut-embeds')}: cannot open this embeds file" in reasons["cut-embeds"]


def test_sample_checks_its_output_folder_before_scanning(episode_factory, tmp_path, monkeypatch):
    """A folder under a regular file cannot be created, even by root (who ignores permission bits)."""
    from steve1.data import sampling
    from steve1.io import NotWritableError

    (tmp_path / "a-file").write_text("")
    monkeypatch.setattr(sampling, "scan_episodes", lambda *a, **k: pytest.fail("scanned before the check"))
    with pytest.raises(NotWritableError, match=r"a-file/samplings: output folder is not writable"):
        run_sampling(SampleParams(name="s"), episode_factory.episodes_dir, episode_factory.embeds_dir,
                     tmp_path / "a-file" / "samplings" / "s.json")


def test_non_finite_embeddings_are_refused_naming_file_and_row(episode_factory, tmp_path):
    """NaN (or infinite) rows among the valid ones: the episode is rejected with the file and row; the
    NaN rows before the first valid one (marked invalid) are fine."""
    import h5py

    for eid in ("good", "nan", "inf"):
        episode_factory(eid, 60)
    em_dir = episode_factory.embeds_dir
    for eid, row, value in (("nan", 40, np.nan), ("inf", 17, np.inf)):
        with h5py.File(episode_path(em_dir, eid), "r+") as f:
            f[formats.EMBEDS][row, 3] = value
    scan = scan_episodes(episode_factory.episodes_dir, em_dir, 20, 15)
    assert list(scan.lengths) == ["good"]
    assert scan.invalid == {
        "nan": f"{episode_path(em_dir, 'nan')}: embedding row 40 is not finite (NaN or infinity); the file is "
               f"damaged: run the embed stage again",
        "inf": f"{episode_path(em_dir, 'inf')}: embedding row 17 is not finite (NaN or infinity); the file is "
               f"damaged: run the embed stage again"}


@pytest.mark.parametrize("edit, msg", [
    (lambda d: d.pop("chunks"), r"s\.json: key 'chunks' is missing"),
    (lambda d: d.update(format_version=7), r"s\.json: sampling format_version 7, expected 1"),
    (lambda d: d["chunks"]["train"].append(["ep", "15", 35]), r"s\.json: key 'chunks\.train\[2\]' is \['ep', '15', 35\]"),
    (lambda d: d.update(val="ep"), r"s\.json: key 'val' is 'ep', expected a list of episode keys"),
    (lambda d: d.update(sets={"main": {"episodes": 3}}), r"s\.json: key 'sets\.main\.episodes' is 3"),
])
def test_a_damaged_sampling_json_is_one_error_naming_file_and_key(tmp_path, edit, msg):
    doc = {"format_version": SAMPLING_FORMAT_VERSION, "params": {"T": 20}, "invalid": [],
           **make_sampling({"ep": 40}, train_frames=40, val_frames=0, seed=0, T=20, min_btwn_goals=15)}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc))
    assert Sampling.load(path).chunks("train") == [("ep", 15, 35), ("ep", 20, 40)]
    edit(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(SamplingError, match=msg):
        Sampling.load(path)
    path.write_text("{not json")
    with pytest.raises(SamplingError, match=r"s\.json: not valid JSON"):
        Sampling.load(path)
    with pytest.raises(SamplingError, match=r"nope\.json: sampling JSON not found \(run the sample stage\)"):
        Sampling.load(tmp_path / "nope.json")
