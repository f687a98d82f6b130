"""Merging trajectory stores: which episodes, in what order, linked or copied, resumable, and refused mixes."""

from __future__ import annotations

import errno
import os
import shutil

import numpy as np
import pytest

from dws_gym.data import TrajectoryStore, describe_policies, split_episodes
from dws_gym.data.merge import MergeArgs, main, merge_stores, parse_source
from test_store import add_coded, coded_episode


def _store(path, episodes: int, T: int, base: int, **kw) -> TrajectoryStore:
    store = TrajectoryStore(path, create=True, durable=False)
    for _ in range(episodes):
        add_coded(store, T, base=base, **kw)
    return store


def _origins(store: TrajectoryStore) -> list[tuple[str, int]]:
    return [(m["store"], m["episode_id"]) for m in (store.meta(i).extra["merged_from"] for i in store.episode_ids())]


def test_parse_source(tmp_path):
    assert parse_source("data/a") == ("data/a", None)
    assert parse_source("data/a:2000") == ("data/a", 2000)
    assert parse_source("data/a:200_000") == ("data/a", 200_000)
    assert parse_source("data/a:b") == ("data/a:b", None)
    odd = tmp_path / "runs:5000"
    odd.mkdir()
    assert parse_source(str(odd)) == (str(odd), None)  # an existing folder is a path, whatever its name
    for bad in ("data/a:0", "data/a:-5"):
        with pytest.raises(ValueError, match="positive"):
            parse_source(bad)


def test_merge_leaves_held_out_out_interleaves_and_links(tmp_path):
    a = _store(tmp_path / "a", 10, T=5, base=0)
    b = _store(tmp_path / "b", 20, T=3, base=100)
    result = merge_stores(MergeArgs(out=str(tmp_path / "m"), sources=[str(a.root), str(b.root)]))
    merged = TrajectoryStore(tmp_path / "m")
    a_train, a_held = split_episodes(a, 0.1)
    b_train, b_held = split_episodes(b, 0.1)
    assert (result.added, result.kept) == (len(a_train) + len(b_train), 0) == (27, 0)
    assert result.steps_by_source == {str(a.root): 9 * 5, str(b.root): 18 * 3}
    origins = _origins(merged)
    a_root, b_root = str(a.root.resolve()), str(b.root.resolve())
    assert sorted(i for s, i in origins if s == a_root) == a_train
    assert sorted(i for s, i in origins if s == b_root) == b_train
    assert not {i for s, i in origins if s == a_root} & set(a_held)
    # Interleaved: the merged store's own held-out tail has both sources, each in source order.
    _, tail = split_episodes(merged, 0.1)
    assert {origins[merged.episode_ids().index(i)][0] for i in tail} == {a_root, b_root}
    assert [i for s, i in origins if s == b_root] == b_train
    # Same frames, steps and metadata as the source; the files are links, not copies.
    for new_id, (src_root, src_id) in zip(merged.episode_ids(), origins):
        src = a if src_root == a_root else b
        np.testing.assert_array_equal(merged.obs(new_id), src.obs(src_id))
        for key, value in src.steps(src_id).items():
            np.testing.assert_array_equal(merged.steps(new_id)[key], value)
        assert merged.meta(new_id).policy == src.meta(src_id).policy
        assert merged.meta(new_id).env_id == "Test-v0"
        folder = merged.root / "episodes" / f"ep_{new_id:09d}"
        src_folder = src.root / "episodes" / f"ep_{src_id:09d}"
        assert (folder / "obs.npy").stat().st_ino == (src_folder / "obs.npy").stat().st_ino
    assert len(merged.clips(2, 2)) > 0


def test_merge_step_budget_copy_and_all_episodes(tmp_path):
    a = _store(tmp_path / "a", 6, T=4, base=0)
    b = _store(tmp_path / "b", 6, T=4, base=50)
    result = merge_stores(MergeArgs(out=str(tmp_path / "m"), sources=[f"{a.root}:9", str(b.root)],
                                    exclude_held_out=0.0, link=False))
    # whole episodes until the budget is reached: 4 + 4 < 9, so a third one
    assert result.steps_by_source == {str(a.root): 12, str(b.root): 24}
    merged = TrajectoryStore(tmp_path / "m")
    assert len(merged) == 3 + 6
    first = merged.episode_ids()[0]
    src_root, src_id = _origins(merged)[0]
    src = a if src_root == str(a.root.resolve()) else b
    copied = merged.root / "episodes" / f"ep_{first:09d}" / "obs.npy"
    assert copied.stat().st_ino != (src.root / "episodes" / f"ep_{src_id:09d}" / "obs.npy").stat().st_ino
    np.testing.assert_array_equal(merged.obs(first), src.obs(src_id))


def test_interrupted_merge_resumes_without_duplicates(tmp_path, monkeypatch):
    a = _store(tmp_path / "a", 8, T=3, base=0)
    b = _store(tmp_path / "b", 8, T=3, base=30)
    args = MergeArgs(out=str(tmp_path / "m"), sources=[str(a.root), str(b.root)])
    real = TrajectoryStore._publish
    calls = {"n": 0}

    def killed_at_the_sixth(self, tmp):
        if calls["n"] == 5:  # the files of the sixth episode are written, its publish never happens
            assert sorted(p.name for p in tmp.iterdir()) == ["meta.json", "obs.npy", "steps.npy"]
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(self, tmp)

    monkeypatch.setattr(TrajectoryStore, "_publish", killed_at_the_sixth)
    with pytest.raises(KeyboardInterrupt):
        merge_stores(args)
    monkeypatch.setattr(TrajectoryStore, "_publish", real)
    assert len(TrajectoryStore(tmp_path / "m")) == 5
    assert not list((tmp_path / "m" / "tmp").iterdir())  # the half-written one is gone
    result = merge_stores(args)
    assert (result.added, result.kept) == (14 - 5, 5)
    once = TrajectoryStore(tmp_path / "m")
    fresh = merge_stores(MergeArgs(out=str(tmp_path / "fresh"), sources=args.sources))
    assert fresh.added == 14 and _origins(once) == _origins(TrajectoryStore(tmp_path / "fresh"))
    again = merge_stores(args)
    assert (again.added, again.kept) == (0, 14)


def test_resume_refuses_other_flags_other_data_and_rewritten_sources(tmp_path):
    a = _store(tmp_path / "a", 10, T=3, base=0)
    b = _store(tmp_path / "b", 10, T=3, base=30)
    merge_stores(MergeArgs(out=str(tmp_path / "m"), sources=[str(a.root), str(b.root)], exclude_held_out=0.0))
    # the default flags would leave the sources' held-out episodes out: the store holds them, so it is refused
    with pytest.raises(ValueError, match="would not have written"):
        merge_stores(MergeArgs(out=str(tmp_path / "m"), sources=[str(a.root), str(b.root)]))
    with pytest.raises(ValueError, match="would not have written"):
        merge_stores(MergeArgs(out=str(tmp_path / "m"), sources=[f"{a.root}:6", str(b.root)],
                               exclude_held_out=0.0))
    # a store of other data
    c = _store(tmp_path / "c", 2, T=3, base=0)
    with pytest.raises(ValueError, match="not merged"):
        merge_stores(MergeArgs(out=str(c.root), sources=[str(a.root)]))
    # a source collected again at the same path: same ids, other episodes
    shutil.rmtree(a.root)
    _store(tmp_path / "a", 10, T=4, base=0)
    with pytest.raises(ValueError, match="changed since"):
        merge_stores(MergeArgs(out=str(tmp_path / "m"), sources=[str(a.root), str(b.root)], exclude_held_out=0.0))
    assert len(TrajectoryStore(tmp_path / "m")) == 20 and len(TrajectoryStore(c.root)) == 2  # nothing added


def test_links_fall_back_to_copies(tmp_path, monkeypatch):
    a = _store(tmp_path / "a", 2, T=3, base=0)
    out = TrajectoryStore(tmp_path / "m", create=True, durable=False)

    def no_links(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    new_id = out.add_episode_from(a, 0, extra={"note": 1})
    np.testing.assert_array_equal(out.obs(new_id), a.obs(0))
    assert out.meta(new_id).extra["note"] == 1

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "link", disk_full)
    with pytest.raises(OSError, match="No space"):
        out.add_episode_from(a, 1)
    with pytest.raises(ValueError, match="JSON"):
        out.add_episode_from(a, 1, extra={"x": float("nan")})
    assert len(out) == 1 and not list((tmp_path / "m" / "tmp").iterdir())


def test_merge_refuses_bad_mixes(tmp_path):
    a = _store(tmp_path / "a", 4, T=3, base=0)
    fewer_actions = TrajectoryStore(tmp_path / "c", create=True, durable=False)
    bigger_frames = TrajectoryStore(tmp_path / "d", create=True, durable=False)
    for _ in range(4):
        obs, act, rew, term, trunc = coded_episode(3)
        fewer_actions.add_episode(obs, act % 4, rew, term, trunc, env_id="Test-v0",
                                  action_space={"type": "discrete", "n": 4})
        big = np.zeros((4, 8, 8, 3), np.uint8)
        bigger_frames.add_episode(big, act, rew, term, trunc, env_id="Test-v0",
                                  action_space={"type": "discrete", "n": 256})
    with pytest.raises(ValueError, match=r"actions \{'n': 4"):
        merge_stores(MergeArgs(out=str(tmp_path / "m"), sources=[str(a.root), str(fewer_actions.root)]))
    with pytest.raises(ValueError, match=r"frames \(8, 8, 3\)"):
        merge_stores(MergeArgs(out=str(tmp_path / "m"), sources=[str(a.root), str(bigger_frames.root)]))
    with pytest.raises(ValueError, match="also a source"):
        merge_stores(MergeArgs(out=str(a.root), sources=[str(a.root), str(fewer_actions.root)]))
    with pytest.raises(ValueError, match="named twice"):
        merge_stores(MergeArgs(out=str(tmp_path / "m"), sources=[str(a.root), str(a.root) + "/"]))
    with pytest.raises(ValueError, match="no Other-v0 episodes"):
        merge_stores(MergeArgs(out=str(tmp_path / "m"), sources=[str(a.root)], env_id="Other-v0"))
    with pytest.raises(SystemExit, match="does not exist"):
        main(["--out", str(tmp_path / "m"), "--sources", str(tmp_path / "missing")])
    with pytest.raises(ValueError, match="to itself"):
        a.add_episode_from(a, a.episode_ids()[0])
    assert len(a) == 4 and not (tmp_path / "m").exists()  # refusals come before anything is written


def test_describe_policies_names_each_behaviour_of_a_merged_store(tmp_path):
    a = _store(tmp_path / "a", 10, T=5, base=0, policy="runner")
    b = _store(tmp_path / "b", 20, T=3, base=100, policy="random")
    assert describe_policies(a) == "runner" and describe_policies(b, b.episode_ids()[:2]) == "random"
    merge_stores(MergeArgs(out=str(tmp_path / "m"), sources=[str(a.root), str(b.root)]))
    merged = TrajectoryStore(tmp_path / "m")
    # 18 episodes x 3 steps of random play against 9 x 5 of the runner: the larger share first
    assert describe_policies(merged) == "random 54 steps (55%), runner 45 steps (45%)"
    assert describe_policies(merged, []) == "none"
