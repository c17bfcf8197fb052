"""Training dataset: STEVE-1 hindsight relabeling, null goals, determinism, sharding, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steve1.data import formats
from steve1.data.dataset import (ChunkBatchSampler, ChunkDataset, DatasetError, LoaderConfig, draw_gaps,
                                 goal_times_from_gaps, make_dataloader, process_threads, step_goal_times)
from steve1.data.episodes import EpisodeFormatError, EpisodeReader, episode_path
from steve1.data.sampling import Sampling, make_sampling
from fixtures.episodes import episode_factory  # noqa: F401  (fixture)

T, MIN, MAX = 20, 15, 30


# ------------------------------------------------- slow reference: STEVE-1's per-step Python loops

def ref_goal_times(gaps, n, min_btwn_goals):
    """STEVE-1's while loop, consuming pre-drawn gaps in order."""
    it, goals, cur = iter(gaps), [], 0
    while cur < n - 1:
        cur += int(next(it))
        if (n - cur) < min_btwn_goals:
            cur = n - 1
        goals.append(cur)
    return goals


def ref_step_goals(goals, n, official_goal_lag):
    """Per-step goal. With the lag: STEVE-1's loop (advance after step g+1); else next goal >= t."""
    out, k = [], 0
    for t in range(n):
        if official_goal_lag:
            out.append(goals[k])
            if t == goals[k] + 1:
                k += 1
        else:
            while goals[k] < t:
                k += 1
            out.append(goals[k])
    return out


@pytest.mark.parametrize("gap_dist", ["uniform", "geometric"])
def test_vectorised_relabeling_equals_the_reference_loops(gap_dist):
    rng = np.random.default_rng(0)
    for trial in range(300):
        mn = int(rng.choice([1, 2, 15, 40]))
        mx = mn + int(rng.integers(1, 300))
        n = int(rng.integers(1, 2000))
        gaps = draw_gaps(rng, n, mn, mx, gap_dist)
        goals = goal_times_from_gaps(gaps, n, mn)
        assert goals.tolist() == ref_goal_times(gaps, n, mn), (n, mn, mx)
        if n > 1 and mn >= 2:
            for lag in (False, True):
                assert step_goal_times(goals, 0, n, lag).tolist() == ref_step_goals(goals.tolist(), n, lag)
            s = int(rng.integers(0, n))
            e = int(rng.integers(s, n)) + 1
            assert step_goal_times(goals, s, e).tolist() == ref_step_goals(goals.tolist(), n, False)[s:e]


def test_geometric_gaps_have_the_uniform_mean_and_respect_the_minimum():
    rng = np.random.default_rng(1)
    g = np.concatenate([draw_gaps(rng, 100_000, MIN, 200, "geometric") for _ in range(3)])
    u = np.concatenate([draw_gaps(rng, 100_000, MIN, 200, "uniform") for _ in range(3)])
    assert g.min() >= MIN and u.min() >= MIN and u.max() < 200
    assert abs(g.mean() - (MIN + 200 - 1) / 2) < 2.0 and abs(u.mean() - (MIN + 200 - 1) / 2) < 2.0
    assert g.max() > 200  # unbounded tail, as documented


# ------------------------------------------------- on-disk dataset

@pytest.fixture
def world(episode_factory):
    """Three episodes of different lengths and a sampling over them (all train)."""
    lengths = {"ep-a": 60, "ep-b": 95, "ep-c": 130}
    for eid, n in lengths.items():
        episode_factory(eid, n)
    return episode_factory, _sampling(lengths)


def _dataset(world, **kw):
    fac, sampling = world
    args = dict(seed=0, min_btwn_goals=MIN, max_btwn_goals=MAX, p_uncond=0.0, lengths=sampling.lengths)
    return ChunkDataset(sampling.train_chunks, fac.episodes_dir, fac.embeds_dir,
                        **{**args, **kw})


def test_samples_hold_the_right_frames_actions_and_goals(world):
    fac, _ = world
    ds = _dataset(world)
    for epoch in range(3):
        for i, (eid, s, e) in enumerate(ds.chunks):
            x = ds.sample(i, epoch)
            n, tag = ds.lengths[eid], fac.tags[eid]
            assert x["frames"].shape == (T, 128, 128, 3) and x["frames"].dtype == np.uint8
            with EpisodeReader(episode_path(fac.episodes_dir, eid)) as r:
                np.testing.assert_array_equal(x["frames"], r.frames(s, e))
            np.testing.assert_array_equal(x["buttons"], (np.arange(s, e) * 13 + tag) % 8641)
            np.testing.assert_array_equal(x["camera"], (np.arange(s, e) * 7 + tag) % 121)
            assert x["buttons"].dtype == np.int64 and x["camera"].dtype == np.int64
            assert x["firsts"].tolist() == [True] + [False] * (T - 1)
            g = x["goal_times"]
            # invariants: index >= 15, goal at or after the step, inside the episode, gaps in bounds
            assert (g >= formats.NONE_EMBED_OFFSET).all() and (g >= np.arange(s, e)).all() and (g <= n - 1).all()
            d = np.diff(np.unique(g[g < n - 1]))
            assert ((d >= MIN) & (d < MAX)).all()
            # the goal embedding is row g of this very episode (no leakage, no off-by-one)
            assert x["goal_embeds"].dtype == np.float32 and x["goal_embeds"].shape == (T, 512)
            np.testing.assert_array_equal(x["goal_embeds"][:, 0], g)
            np.testing.assert_array_equal(x["goal_embeds"][:, 1], tag)


def test_goal_times_are_drawn_over_the_whole_episode(world):
    """Chunks of one episode in one epoch are not the same draw (the index seeds it), but each
    sample's goals equal the full-episode reference restricted to its chunk."""
    ds = _dataset(world)
    for i, (eid, s, e) in enumerate(ds.chunks):
        n = ds.lengths[eid]
        rng = np.random.default_rng([0, 4, i])
        goals = ref_goal_times(draw_gaps(rng, n, MIN, MAX), n, MIN)
        assert ds.sample(i, 4)["goal_times"].tolist() == ref_step_goals(goals, n, False)[s:e]


def test_official_goal_lag_reproduces_steve1(world):
    ds = _dataset(world, official_goal_lag=True)
    i = len(ds) - 1
    eid, s, e = ds.chunks[i]
    goals, _ = ds.draw(2, i, ds.lengths[eid])
    assert ds.sample(i, 2)["goal_times"].tolist() == ref_step_goals(goals.tolist(), ds.lengths[eid], True)[s:e]


def test_p_uncond_rate_and_zeroed_chunks(world):
    ds = _dataset(world, p_uncond=0.3)
    n = 4000
    hits = sum(ds.draw(0, i, 130)[1] for i in range(n))
    sd = (n * 0.3 * 0.7) ** 0.5
    assert abs(hits - 0.3 * n) < 4 * sd  # fixed seeds: deterministic, cannot flake
    batch = ds.batch(0, list(range(len(ds))) * 4)
    for b in range(len(batch["index"])):
        zero = not batch["goal_embeds"][b].any()
        assert zero == bool(batch["uncond"][b])
    assert batch["uncond"].any() and not batch["uncond"].all()
    always = _dataset(world, p_uncond=1.0).sample(0)
    assert not always["goal_embeds"].any() and (always["goal_times"] >= 15).all()


def test_samples_are_reproducible_per_seed_epoch_index(world):
    a, b = _dataset(world), _dataset(world)
    i = len(a) - 1
    x, y = a.sample(i, 5), b.sample(i, 5)
    for k in x:
        np.testing.assert_array_equal(x[k], y[k])
    eid = a.chunks[i][0]
    goals = a.draw(5, i, a.lengths[eid])[0]
    np.testing.assert_array_equal(goals, b.draw(5, i, a.lengths[eid])[0])
    assert not np.array_equal(a.draw(6, i, a.lengths[eid])[0], goals)  # another epoch: another draw
    assert not np.array_equal(_dataset(world, seed=1).draw(5, i, a.lengths[eid])[0], goals)


def test_min_btwn_goals_below_15_is_refused(world):
    with pytest.raises(DatasetError, match="min_btwn_goals=14 must be >= 15"):
        _dataset(world, min_btwn_goals=14)


def _sampling(lengths):
    """A sampling of ``lengths`` (all train) recording the goal gaps, as the sample stage writes it."""
    body = make_sampling(lengths, train_frames=10**6, val_frames=0, seed=0, T=T, min_btwn_goals=MIN)
    return Sampling.from_body(body, {"T": T, "min_btwn_goals": MIN, "max_btwn_goals": MAX})


def _loader(sampling, fac=None, *, epoch=0, start_step=0, **config):
    """``make_dataloader`` over the train split, the main set's folders those of ``fac`` (else the JSON's)."""
    dirs = sampling.set_dirs(fac.episodes_dir, fac.embeds_dir) if fac is not None else None
    return make_dataloader(sampling, "train", LoaderConfig(**config), dirs, epoch=epoch, start_step=start_step)


# ------------------------------------------------- sampler, loader, resume

@pytest.mark.parametrize("n,world_size", [(30, 3), (31, 3), (8, 1)])
def test_sharding_is_disjoint_complete_and_reshuffled(n, world_size):
    samplers = [ChunkBatchSampler(n, 2, seed=0, rank=r, world_size=world_size, drop_last=False)
                for r in range(world_size)]
    parts = [s.rank_indices(0) for s in samplers]
    flat = np.concatenate(parts)
    assert len(set(flat.tolist())) == len(flat) == n - n % world_size
    assert len({len(p) for p in parts}) == 1
    assert not np.array_equal(samplers[0].rank_indices(0), samplers[0].rank_indices(1))
    again = ChunkBatchSampler(n, 2, seed=0, rank=0, world_size=world_size, drop_last=False)
    np.testing.assert_array_equal(again.rank_indices(3), samplers[0].rank_indices(3))
    batches = [b for _, b in samplers[0]]
    assert sum(batches, []) == parts[0].tolist()


def _run(loader, steps):
    out = []
    while len(out) < steps:
        for batch in loader:
            out.append(batch)
            if len(out) == steps:
                break
    return out


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("store", ["world", "jpeg_world"])   # lzf frames, and jpeg frames decoded on threads
def test_resume_continues_with_the_same_batches(request, store, workers):
    fac, sampling = request.getfixturevalue(store)
    mk = lambda **kw: _loader(sampling, fac, batch_size=2, seed=3,  # noqa: E731
                                      T=T, p_uncond=0.5, num_workers=workers, **kw)
    full = _run(mk(), 7)  # 9 chunks -> 4 steps an epoch: crosses an epoch boundary
    first = mk()
    head = _run(first, 2)
    state = first.state_dict()
    assert state["epoch"] == 0 and state["step"] == 2
    resumed = mk()
    resumed.load_state_dict(state)
    tail = _run(resumed, 5)
    by_arg = _run(mk(epoch=0, start_step=2), 5)
    for got in (head + tail, full[:2] + by_arg):
        for a, b in zip(full, got, strict=True):
            for k in a:
                torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert resumed.state_dict()["epoch"] == 1
    assert full[0]["frames"].dtype == torch.uint8 and full[0]["frames"].shape == (2, T, 128, 128, 3)


def test_workers_give_the_same_batches_and_the_parent_opens_no_file(world):
    fac, sampling = world
    args = dict(batch_size=3, seed=1, p_uncond=0.2)
    ref = _run(_loader(sampling, fac, **args), 4)
    loader = _loader(sampling, fac, num_workers=2, **args)
    got = _run(loader, 4)
    assert not loader.dataset._open  # HDF5 handles live only in the workers
    for a, b in zip(ref, got, strict=True):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    with pytest.raises(DatasetError, match="T=21 but the sampling's chunks have T=20"):
        _loader(sampling, fac, T=21, **args)


@pytest.fixture
def jpeg_world(episode_factory):
    """The world's episodes stored as JPEG frames."""
    lengths = {"ep-a": 60, "ep-b": 95, "ep-c": 130}
    for eid, n in lengths.items():
        episode_factory(eid, n, codec="jpeg")
    return episode_factory, _sampling(lengths)


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def _plain_jpeg_frames(path, start, end):
    """Frames [start, end) decoded one by one from the file's bytes, outside the loader's code path."""
    import h5py
    import simplejpeg

    with h5py.File(path, "r") as f:
        data, offsets = f[formats.FRAME_BYTES][:].tobytes(), f[formats.FRAME_OFFSETS][:]
    return np.stack([simplejpeg.decode_jpeg(data[offsets[t]:offsets[t + 1]], colorspace="RGB")
                     for t in range(start, end)])


def test_jpeg_batches_are_the_same_with_any_workers_and_threads(jpeg_world):
    fac, sampling = jpeg_world
    mk = lambda **kw: _loader(sampling, fac, batch_size=3,  # noqa: E731
                                      seed=2, p_uncond=0.2, **kw)
    ref = _run(mk(decode_threads=1), 5)
    for batch in ref:  # each row holds its chunk's frames, as plain simplejpeg decodes the stored bytes
        for b, i in enumerate(batch["index"].tolist()):
            eid, start, end = sampling.train_chunks[i]
            with EpisodeReader(episode_path(fac.episodes_dir, eid)) as r:
                assert r.frame_codec == "jpeg"
            np.testing.assert_array_equal(batch["frames"][b].numpy(),
                                          _plain_jpeg_frames(episode_path(fac.episodes_dir, eid), start, end))
    for kw in (dict(decode_threads=2), dict(decode_threads=3), dict(num_workers=1), dict(num_workers=2),
               dict(num_workers=2, decode_threads=2)):
        for a, b in zip(ref, _run(mk(**kw), 5), strict=True):
            _same(a, b)


def test_workers_reuse_their_slots_and_never_overwrite_a_held_batch(jpeg_world):
    """A consumer that drops each batch gets them from a fixed set of shared buffers (no
    allocation per batch); one that keeps every batch sees each intact (workers send fresh
    buffers while their slots are held)."""
    fac, sampling = jpeg_world
    mk = lambda: _loader(sampling, fac, batch_size=2, seed=4,  # noqa: E731
                                 p_uncond=0.2, num_workers=2, prefetch_factor=2)
    ref = _run(_loader(sampling, fac, batch_size=2, seed=4,
                               p_uncond=0.2), 12)
    loader, addrs, n = mk(), set(), 0
    while n < 12:
        for batch in loader:
            _same(batch, ref[n])
            addrs.add(batch["frames"].data_ptr())
            n += 1
            if n == 12:
                break
    slots = 2 * (2 + 2)
    assert len(addrs) <= slots and len(loader._views) <= slots, (len(addrs), len(loader._views))
    assert not loader._lent - {k for k in loader._views}  # every lent slot is a known mapping
    kept = _run(mk(), 12)  # holds all 12: more than the 8 slots
    for a, b in zip(ref, kept, strict=True):
        _same(a, b)
    assert len({b["frames"].data_ptr() for b in kept}) == 12


def test_decode_threads_are_the_cores_shared_by_the_loading_processes(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert [process_threads(w, cores=2) for w in (0, 1, 2, 3)] == [2, 2, 1, 1]
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert [process_threads(w, cores=16) for w in (0, 2, 16)] == [8, 4, 1]
    assert process_threads(0) >= 1


def test_batch_buffers_are_reused_only_once_released(world):
    ds = _dataset(world)
    addr = lambda a: a.__array_interface__["data"][0]  # noqa: E731
    kept = ds.batch(0, [0, 1])
    snapshot = kept["frames"].copy()
    other = ds.batch(0, [2, 3])
    assert not np.shares_memory(kept["frames"], other["frames"])
    view, other_addr = other["frames"][1, 3:5], addr(other["frames"])
    del other
    again = ds.batch(0, [4, 5])  # a live view still pins the buffer it came from
    assert not np.shares_memory(again["frames"], view) and not np.shares_memory(again["frames"], kept["frames"])
    np.testing.assert_array_equal(kept["frames"], snapshot)  # a held batch is never overwritten
    del view
    assert addr(ds.batch(0, [6, 7])["frames"]) == other_addr  # released: reused, no new allocation


# ------------------------------------------------- mixed samplings

@pytest.fixture
def mixed(episode_factory, tmp_path):
    """A main set and a 'custom' set sharing the ids ep-a and ep-b (other lengths and tags)."""
    from fixtures.episodes import EpisodeFactory
    from steve1.data.sampling import run_sampling
    from steve1.params import SampleParams

    custom = EpisodeFactory(tmp_path / "custom")
    for eid, n in {"ep-a": 100, "ep-b": 75, "ep-c": 120, "ep-d": 95}.items():
        episode_factory(eid, n)
    for i, (eid, n) in enumerate({"ep-a": 60, "ep-b": 115}.items()):
        custom(eid, n, tag=50 + i)
    p = SampleParams(name="mix", train_frames=360, val_frames=0, T=T, min_btwn_goals=MIN, max_btwn_goals=MAX,
                     mix=[dict(name="custom", train_frames=80)])
    out = run_sampling(p, episode_factory.episodes_dir, episode_factory.embeds_dir, tmp_path / "samplings" / "mix.json",
                       {"custom": (custom.episodes_dir, custom.embeds_dir)})
    return episode_factory, custom, out


def test_mixed_chunks_are_read_from_their_own_set(mixed):
    from steve1.data.sampling import split_key

    main, custom, out = mixed
    doc = Sampling.load(out).to_dict()
    keys = {c[0] for c in doc["chunks"]["train"]}
    assert {"ep-a", "ep-b"} <= keys and {"custom/ep-a", "custom/ep-b"} & keys  # a collision is exercised
    loader = _loader(Sampling.load(out), main, batch_size=4, seed=0, p_uncond=0.0)
    ds = loader.dataset
    for i, (key, s, e) in enumerate(ds.chunks):
        name, eid = split_key(key)
        fac = main if name == "main" else custom
        x = ds.sample(i, 1)
        tag, n = fac.tags[eid], doc["lengths"][key]
        with EpisodeReader(episode_path(fac.episodes_dir, eid)) as r:
            assert r.n_frames == n
            np.testing.assert_array_equal(x["frames"], r.frames(s, e))
        assert (x["frames"][:, 0, 0, 2] == tag).all()  # the marker pixel: this set's file
        np.testing.assert_array_equal(x["buttons"], (np.arange(s, e) * 13 + tag) % 8641)
        np.testing.assert_array_equal(x["goal_embeds"][:, 1], tag)  # goals from this set's embeds, same episode
        np.testing.assert_array_equal(x["goal_embeds"][:, 0], x["goal_times"])
        assert (x["goal_times"] <= n - 1).all()
    # folders from the JSON when none are given; a set without folders is refused
    again = _loader(Sampling.load(out), batch_size=4, seed=0, p_uncond=0.0)
    assert again.dataset.dirs == ds.dirs
    with pytest.raises(DatasetError, match=r"set\(s\) \['custom'\]"):
        ChunkDataset(ds.chunks, main.episodes_dir, main.embeds_dir, seed=0, min_btwn_goals=MIN, max_btwn_goals=MAX)


def test_mixed_batches_mix_the_sets_in_their_share(mixed):

    _, _, out = mixed
    doc = Sampling.load(out).to_dict()
    share = doc["sets"]["custom"]["totals"]["train"]["share"]
    assert share == round(80 / 440, 6)  # 4 custom chunks beside all 18 main ones
    loader = _loader(Sampling.load(out), batch_size=2, seed=0, p_uncond=0.0)
    is_custom = np.array([k.startswith("custom/") for k, _, _ in loader.dataset.chunks])
    seen, mixed_batches = [], 0
    for _ in range(6):  # 6 epochs of 11 batches, index only: no file is read
        for _, idx in loader.sampler:
            seen += idx
            mixed_batches += 0 < is_custom[idx].sum() < len(idx)
        loader.sampler.epoch += 1
    assert abs(is_custom[seen].mean() - share) < 1e-6  # every chunk once per epoch (22 chunks, no remainder)
    assert mixed_batches >= 6  # the sets are shuffled together, not served one after the other
    batch = next(iter(loader))
    assert set(batch) >= {"frames", "goal_embeds", "buttons", "camera", "firsts"}


def test_goal_width_comes_from_the_embeds(tmp_path):
    """Another CLIP (e.g. 768-d) flows through unchanged; mixing widths in one batch is refused."""
    from steve1.data.episodes import write_embeds
    from fixtures.episodes import EpisodeFactory, make_embeds

    factory = EpisodeFactory(tmp_path)
    for eid in ("wide-a", "wide-b"):
        factory(eid, 60, embeds=False)
        e, v = make_embeds(60, factory.tags[eid], dim=768)
        write_embeds(episode_path(factory.embeds_dir, eid), eid, e, v, weights="fixture-768")
    chunks = [("wide-a", 15, 31), ("wide-b", 15, 31)]
    ds = ChunkDataset(chunks, factory.episodes_dir, factory.embeds_dir, seed=0, p_uncond=0.0)
    batch = ds.batch(0, [0, 1])
    assert batch["goal_embeds"].shape == (2, 16, 768)
    np.testing.assert_array_equal(batch["goal_embeds"][0, :, 1], factory.tags["wide-a"])   # [g,1] = tag

    e, v = make_embeds(60, 9, dim=512)
    write_embeds(episode_path(factory.embeds_dir, "wide-b"), "wide-b", e, v, weights="fixture")
    ds = ChunkDataset(chunks, factory.episodes_dir, factory.embeds_dir, seed=0, p_uncond=0.0)
    with pytest.raises(EpisodeFormatError, match="512-d embeddings in a batch of 768-d"):
        ds.batch(0, [0, 1])


def test_a_damaged_chunk_is_named_with_the_file_and_frames_read(episode_factory):
    from fixtures.episodes import damage_chunk
    from steve1.data.episodes import StoreError

    episode_factory("ep", 100)  # frames stored in chunks of 64 rows
    path = episode_path(episode_factory.episodes_dir, "ep")
    damage_chunk(path, formats.FRAMES, index=0)
    ds = ChunkDataset([("ep", 64, 64 + T), ("ep", 15, 15 + T)], episode_factory.episodes_dir,
                      episode_factory.embeds_dir, seed=0, min_btwn_goals=MIN, max_btwn_goals=MAX, p_uncond=0.0)
    ds.sample(0)  # the intact chunk still reads
    with pytest.raises(StoreError, match=rf"{path}: cannot read frames \[15, {15 + T}\) of this episode file \(.+\); "
                                         r"it is damaged or truncated: delete it and run the decode stage again"):
        ds.sample(1)


def test_an_unreadable_embeds_file_is_named_when_the_loader_opens_it(episode_factory):
    from steve1.data.episodes import StoreError

    episode_factory("ep", 100)
    path = episode_path(episode_factory.embeds_dir, "ep")
    path.write_bytes(path.read_bytes()[:1000])
    ds = ChunkDataset([("ep", 15, 15 + T)], episode_factory.episodes_dir, episode_factory.embeds_dir, seed=0,
                      min_btwn_goals=MIN, max_btwn_goals=MAX)
    with pytest.raises(StoreError, match=rf"{path}: cannot open this embeds file .* run the embed stage again"):
        ds.sample(0)


def test_a_damaged_jpeg_frame_is_named_when_threads_decode_it(episode_factory):
    """Per-frame codecs decode on the pool while the next chunk is read; a bad frame still names its file."""
    import h5py
    from steve1.data.episodes import StoreError

    episode_factory("ep", 100, codec="jpeg")
    path = episode_path(episode_factory.episodes_dir, "ep")
    with h5py.File(path, "r") as f:
        where = f[formats.FRAME_BYTES].id.get_offset() + int(f[formats.FRAME_OFFSETS][20])
    with open(path, "r+b") as fh:
        fh.seek(where)
        fh.write(b"\x00" * 16)
    ds = ChunkDataset([("ep", 64, 64 + T), ("ep", 15, 15 + T)], episode_factory.episodes_dir,
                      episode_factory.embeds_dir, seed=0, min_btwn_goals=MIN, max_btwn_goals=MAX, p_uncond=0.0,
                      threads=2)
    ds.sample(0)
    with pytest.raises(StoreError, match=rf"{path}: cannot decode frames \[15, {15 + T}\) of this episode file"):
        ds.batch(0, [0, 1, 0])
