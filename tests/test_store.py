"""Trajectory store: schema round trip, index convention, views, atomic writes, corruption handling, import."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from dws_gym.data import (
    ClipDataset,
    CorruptEpisodeError,
    EpisodeMeta,
    TrajectoryStore,
    TransitionDataset,
    import_arrays,
)

REPO = Path(__file__).resolve().parents[1]
HW = 4  # tiny frames keep the tests fast


def coded_episode(T: int, base: int = 0, final_known: bool = True, terminated: bool = True):
    """An episode whose frame t has every pixel = base + t and whose action t is t (n = 256)."""
    F = T + 1 if final_known else T
    obs = np.broadcast_to((base + np.arange(F, dtype=np.uint8))[:, None, None, None], (F, HW, HW, 3)).copy()
    actions = np.arange(T, dtype=np.int64) % 256
    rewards = np.arange(T, dtype=np.float32) * 0.5 - 1.0
    term = np.zeros(T, bool)
    trunc = np.zeros(T, bool)
    (term if terminated else trunc)[-1] = True
    return obs, actions, rewards, term, trunc


def add_coded(store: TrajectoryStore, T: int, base: int = 0, final_known: bool = True, terminated: bool = True, **kw):
    obs, a, r, te, tr = coded_episode(T, base, final_known, terminated)
    kw.setdefault("action_space", {"type": "discrete", "n": 256})
    return store.add_episode(obs, a, r, te, tr, env_id="Test-v0", final_frame_known=final_known, **kw)


def run_py(code: str, *args: str, **popen_kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env, cwd=REPO, **popen_kw)


def ep_folder(store: TrajectoryStore, ep_id: int) -> Path:
    return store.root / "episodes" / f"ep_{ep_id:09d}"


# ---------------------------------------------------------------------------- round trip and conventions


def test_round_trip_and_reopen(tmp_path):
    store = TrajectoryStore(tmp_path / "s", create=True)
    rng = np.random.default_rng(0)
    T = 7
    obs = rng.integers(0, 256, (T + 1, 5, 6, 3), dtype=np.uint8)
    actions = rng.integers(0, 4, T)
    rewards = rng.normal(size=T).astype(np.float64)  # stored as float32
    term = np.zeros(T, bool)
    term[-1] = True
    life = np.zeros(T, bool)
    life[3] = True
    ep = store.add_episode(
        obs, actions, rewards, term, np.zeros(T, bool), life, env_id="ALE/Breakout-v5",
        action_meanings=["NOOP", "FIRE", "RIGHT", "LEFT"], policy="ppo-123", synthetic=True,
        source_simulator="user/sim", extra={"seed": 3, "note": "x"},
    )
    assert ep == 0 and len(store) == 1 and store.num_steps == T and store.num_frames == T + 1

    reopened = TrajectoryStore(tmp_path / "s")
    got = reopened.episode(ep)
    assert isinstance(got["obs"], np.memmap) and not got["obs"].flags.writeable
    np.testing.assert_array_equal(got["obs"], obs)
    np.testing.assert_array_equal(got["actions"], actions)
    assert got["actions"].dtype == np.int64 and got["rewards"].dtype == np.float32
    np.testing.assert_allclose(got["rewards"], rewards.astype(np.float32))
    np.testing.assert_array_equal(got["terminated"], term)
    np.testing.assert_array_equal(got["life_lost"], life)
    meta = reopened.meta(ep)
    assert isinstance(meta, EpisodeMeta) and meta == got["meta"]
    assert meta.env_id == "ALE/Breakout-v5" and meta.obs_shape == (5, 6, 3)
    assert meta.action_space == {"type": "discrete", "n": 4}
    assert meta.action_meanings == ["NOOP", "FIRE", "RIGHT", "LEFT"]
    assert meta.length == T and meta.num_frames == T + 1 and meta.final_frame_known
    assert meta.episode_return == pytest.approx(float(np.sum(rewards.astype(np.float32))), rel=1e-5)
    assert meta.policy == "ppo-123" and meta.synthetic and meta.source_simulator == "user/sim"
    assert meta.extra == {"seed": 3, "note": "x"} and meta.schema_version == 1
    assert json.loads((ep_folder(reopened, ep) / "meta.json").read_text())["return"] == pytest.approx(meta.return_)


def test_continuous_actions_round_trip(tmp_path):
    store = TrajectoryStore(tmp_path, create=True)
    T = 5
    acts = np.linspace(-1, 1, T * 2).reshape(T, 2)
    obs = np.zeros((T + 1, HW, HW, 3), np.uint8)
    ep = store.add_episode(obs, acts, np.zeros(T), np.zeros(T, bool), np.eye(T, dtype=bool)[-1], env_id="Cont-v0")
    got = TrajectoryStore(tmp_path).episode(ep)
    assert got["actions"].dtype == np.float32 and got["actions"].shape == (T, 2)
    np.testing.assert_allclose(got["actions"], acts.astype(np.float32))
    assert got["meta"].action_space == {"type": "continuous", "shape": [2]}
    batch = store.transitions().get_batch([0, 4])
    assert batch["action"].shape == (2, 2)
    np.testing.assert_allclose(batch["action"], acts[[0, 4]].astype(np.float32))


def test_missing_store_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        TrajectoryStore(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(FileNotFoundError, match="create=True"):
        TrajectoryStore(tmp_path / "plain")


def test_index_convention_transitions_and_clips(tmp_path):
    store = TrajectoryStore(tmp_path, create=True)
    add_coded(store, 12)
    tr = store.transitions()
    b = tr.get_batch(np.arange(len(tr)))
    t = b["obs"][:, 0, 0, 0].astype(int)
    np.testing.assert_array_equal(t, np.arange(12))
    np.testing.assert_array_equal(b["next_obs"][:, 0, 0, 0], t + 1)  # obs[t+1] follows action[t]
    np.testing.assert_array_equal(b["action"], t)
    clips = store.clips(context=2, horizon=3)
    c = clips.get_batch(np.arange(len(clips)))
    f = c["frames"][:, :, 0, 0, 0].astype(int)
    real_steps = c["mask"][:, 1:]
    # actions[j] was taken in frames[j] and leads to frames[j + 1]
    np.testing.assert_array_equal(c["actions"][real_steps], f[:, :-1][real_steps])
    np.testing.assert_array_equal((f[:, 1:] - f[:, :-1])[real_steps], 1)
    np.testing.assert_array_equal(c["rewards"][real_steps], (f[:, :-1][real_steps] * 0.5 - 1.0).astype(np.float32))


def test_clip_windows_at_episode_boundaries(tmp_path):
    store = TrajectoryStore(tmp_path, create=True)
    e0 = add_coded(store, 6)  # 7 frames
    e1 = add_coded(store, 2, base=100)  # 3 frames: exactly context + 1 for K = 2
    e2 = add_coded(store, 1, base=200)  # 2 frames: too short for K = 2, no window
    clips = store.clips(context=2, horizon=3)
    assert isinstance(clips, ClipDataset)
    # starts s with s + K + 1 <= F: e0 -> 0..4, e1 -> 0, e2 -> none
    assert len(clips) == 5 + 1
    ids, starts = clips.locate(np.arange(len(clips)))
    assert ids.tolist() == [e0] * 5 + [e1] and starts.tolist() == [0, 1, 2, 3, 4, 0]
    assert e2 not in ids

    last = clips[4]  # e0 from frame 4: frames 4, 5, 6 real; 2 padded with frame 6
    assert last["frames"].shape == (5, HW, HW, 3) and last["frames"].dtype == np.uint8
    np.testing.assert_array_equal(last["frames"][:, 0, 0, 0], [4, 5, 6, 6, 6])
    np.testing.assert_array_equal(last["mask"], [True, True, True, False, False])
    np.testing.assert_array_equal(last["actions"], [4, 5, 0, 0])
    np.testing.assert_array_equal(last["terminated"], [False, True, False, False])  # terminal step kept
    assert last["rewards"][2:].tolist() == [0.0, 0.0]

    short = clips[-1]  # e1: 3 frames, context 2 + 1 target
    np.testing.assert_array_equal(short["frames"][:, 0, 0, 0], [100, 101, 102, 102, 102])
    np.testing.assert_array_equal(short["mask"], [True, True, True, False, False])

    strided = store.clips(context=2, horizon=1, stride=2)
    assert strided.locate(np.arange(len(strided)))[1].tolist() == [0, 2, 4, 0]  # e0: s<=4 step 2; e1: s=0


def test_unknown_final_frame(tmp_path):
    store = TrajectoryStore(tmp_path, create=True)
    known = add_coded(store, 5)
    lost = add_coded(store, 5, base=50, final_known=False, terminated=False)
    assert store.meta(lost).num_frames == 5 and not store.meta(lost).final_frame_known
    assert store.episode(lost)["obs"].shape == (5, HW, HW, 3)
    tr = store.transitions()
    assert isinstance(tr, TransitionDataset)
    assert len(tr) == 5 + 4  # the last step of `lost` has no next frame
    assert tr.episode_index.tolist() == [known] * 5 + [lost] * 4
    assert tr.step_index.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    b = tr.get_batch(np.arange(len(tr)))
    np.testing.assert_array_equal(b["next_obs"][:, 0, 0, 0].astype(int) - b["obs"][:, 0, 0, 0], 1)
    assert not b["truncated"][5:].any()  # the truncated step was the one left out
    np.testing.assert_array_equal(tr.flat_index([lost, known], [3, 4]), [8, 4])
    with pytest.raises(IndexError, match="outside its episode's transitions"):
        tr.flat_index([lost], [4])

    clips = store.clips(context=3, horizon=2, episode_ids=[lost])
    c = clips[len(clips) - 1]  # start 1: frames 1..4 real, then padding
    np.testing.assert_array_equal(c["frames"][:, 0, 0, 0], [51, 52, 53, 54, 54])
    np.testing.assert_array_equal(c["mask"], [True, True, True, True, False])
    np.testing.assert_array_equal(c["actions"], [1, 2, 3, 0])  # step 4 has no next frame: zeroed
    assert not c["truncated"].any()


def test_termination_and_truncation_preserved(tmp_path):
    store = TrajectoryStore(tmp_path, create=True)
    term_ep = add_coded(store, 3, terminated=True)
    trunc_ep = add_coded(store, 3, terminated=False)
    both = store.add_episode(
        np.zeros((3, HW, HW, 3), np.uint8), [0, 1], [0.0, 1.0], [False, True], [False, True], env_id="Test-v0"
    )
    re = TrajectoryStore(tmp_path)
    assert re.episode(term_ep)["terminated"].tolist() == [False, False, True]
    assert re.episode(term_ep)["truncated"].tolist() == [False, False, False]
    assert re.episode(trunc_ep)["truncated"].tolist() == [False, False, True]
    assert re.episode(trunc_ep)["terminated"].tolist() == [False, False, False]
    assert re.episode(both)["terminated"][-1] and re.episode(both)["truncated"][-1]
    assert re.meta(both).action_space == {"type": "discrete", "n": 2, "inferred": True}
    b = re.transitions().get_batch([2, 5])
    assert b["terminated"].tolist() == [True, False] and b["truncated"].tolist() == [False, True]


def test_frame_stack_transitions(tmp_path):
    store = TrajectoryStore(tmp_path, create=True)
    add_coded(store, 4)
    b = store.transitions(frame_stack=3).get_batch([0, 1, 3])
    assert b["obs"].shape == (3, 3, HW, HW, 3)
    assert b["obs"][:, :, 0, 0, 0].tolist() == [[0, 0, 0], [0, 0, 1], [1, 2, 3]]  # start repeats frame 0
    assert b["next_obs"][:, :, 0, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [2, 3, 4]]


def test_sampling_reproducible_and_batched(tmp_path):
    store = TrajectoryStore(tmp_path, create=True, max_open=2)
    for k in range(5):
        add_coded(store, 8 + k, base=40 * k)
    clips = store.clips(4, 2)
    a = clips.sample(64, np.random.default_rng(7))
    b = clips.sample(64, np.random.default_rng(7))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert a["frames"].shape == (64, 6, HW, HW, 3) and a["actions"].shape == (64, 5) and a["mask"].shape == (64, 6)
    # every sampled clip matches the episode it names
    for i in range(64):
        obs = store.episode(int(a["episode_id"][i]))["obs"]
        s = int(a["start"][i])
        n = int(a["mask"][i].sum())
        np.testing.assert_array_equal(a["frames"][i, :n], obs[s : s + n])
    assert len(store._maps) <= 2  # the LRU bounds open memory maps
    with pytest.raises(ValueError, match="Generator"):
        clips.sample(2, 0)
    t = store.transitions().sample(10, np.random.default_rng(1))
    assert t["obs"].shape == (10, HW, HW, 3) and t["reward"].dtype == np.float32
    # a store travels to DataLoader workers by pickling
    clone = pickle.loads(pickle.dumps(clips))
    np.testing.assert_array_equal(clone.get_batch([3])["frames"], clips.get_batch([3])["frames"])


def test_views_over_more_episodes_than_open_files(tmp_path):
    """Views index every episode without holding its frame map: a store with more episodes than the process may
    open files (a 1M-step Procgen store has ~25k) still builds its views and samples from them."""
    store = TrajectoryStore(tmp_path, create=True, durable=False)
    for k in range(120):
        add_coded(store, 3, base=k)
    code = """
        import resource, sys
        import numpy as np
        from dws_gym.data import TrajectoryStore
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        store = TrajectoryStore(sys.argv[1], max_open=8)
        t = store.transitions(frame_stack=2)
        c = store.clips(1, 2)
        b = t.sample(256, np.random.default_rng(0))
        k = c.sample(256, np.random.default_rng(0))
        # frame t of episode k holds k + t: the next frame is one brighter than the last stacked frame
        assert np.all(b["next_obs"][:, -1, 0, 0, 0] == b["obs"][:, -1, 0, 0, 0] + 1)
        assert len(store._maps) <= 8
        print(len(t), len(c), len(store._maps))
    """
    proc = run_py(code, str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    n_trans, n_clips, n_maps = map(int, out.split())
    assert n_trans == 120 * 3 and n_clips > 0 and n_maps <= 8


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda e: e.update(obs=e["obs"].astype(np.float32)), "uint8"),
        (lambda e: e.update(obs=e["obs"][:, :, :, 0]), "shape"),
        (lambda e: e.update(obs=e["obs"][:-1]), "frames"),
        (lambda e: e.update(actions=e["actions"].astype(np.float32)), "integers"),
        (lambda e: e.update(actions=e["actions"] + 10), r"\[0, 4\)"),
        (lambda e: e.update(rewards=e["rewards"][:-1]), "rewards"),
        (lambda e: e.update(rewards=np.array(["a"] * 4)), "rewards"),
        (lambda e: e.update(terminated=np.array([1.0, 0, 0, 0])), "terminated"),
        (lambda e: e.update(terminated=np.array([True, False, False, True])), "not the last step"),
        (lambda e: e.update(truncated=np.zeros(3, bool)), "truncated"),
        (lambda e: e.update(extra={"f": object()}), "JSON"),
        (lambda e: e.update(env_id=""), "env_id"),
        (lambda e: e.update(action_meanings=["a", "b"]), "action_meanings"),
    ],
)
def test_add_episode_rejects_bad_input(tmp_path, change, message):
    store = TrajectoryStore(tmp_path, create=True)
    ep = dict(
        obs=np.zeros((5, HW, HW, 3), np.uint8), actions=np.array([0, 1, 2, 3]), rewards=np.zeros(4),
        terminated=np.array([False, False, False, True]), truncated=np.zeros(4, bool),
        env_id="Test-v0", action_space={"type": "discrete", "n": 4},
    )
    change(ep)
    with pytest.raises(ValueError, match=message):
        store.add_episode(**ep)
    assert len(store) == 0 and not any((tmp_path / "episodes").iterdir()) and not any((tmp_path / "tmp").iterdir())


# ---------------------------------------------------------------------------- corruption


def _corrupt_truncate_obs(folder: Path) -> str:
    p = folder / "obs.npy"
    os.truncate(p, p.stat().st_size - 7)
    return "obs.npy"


def _corrupt_meta_json(folder: Path) -> str:
    (folder / "meta.json").write_text("{not json")
    return "meta.json"


def _corrupt_obs_shape(folder: Path) -> str:
    # a well-formed .npy that holds one frame fewer than meta.json says
    np.save(folder / "obs.npy", np.zeros((3, HW, HW, 3), np.uint8))
    return "obs.npy"


def _corrupt_missing_steps(folder: Path) -> str:
    (folder / "steps.npy").unlink()
    return "steps.npy"


def _corrupt_steps_length(folder: Path) -> str:
    steps = np.load(folder / "steps.npy")
    np.save(folder / "steps.npy", steps[:-1])
    return "steps.npy"


def _corrupt_truncate_steps(folder: Path) -> str:
    p = folder / "steps.npy"
    os.truncate(p, p.stat().st_size - 3)
    return "steps.npy"


@pytest.mark.parametrize(
    "corrupt", [_corrupt_truncate_obs, _corrupt_meta_json, _corrupt_obs_shape, _corrupt_missing_steps,
                _corrupt_steps_length, _corrupt_truncate_steps]
)
def test_corrupt_episode_raises_or_skips(tmp_path, corrupt):
    store = TrajectoryStore(tmp_path, create=True)
    good = add_coded(store, 4)
    bad = add_coded(store, 4, base=10)
    fname = corrupt(ep_folder(store, bad))
    with pytest.raises(CorruptEpisodeError, match=rf"ep_000000001.{fname}") as info:
        TrajectoryStore(tmp_path)
    assert info.value.episode_id == bad and "on_corrupt='skip'" in str(info.value)
    with pytest.warns(RuntimeWarning, match=fname):
        skipping = TrajectoryStore(tmp_path, on_corrupt="skip")
    assert skipping.episode_ids() == [good]
    np.testing.assert_array_equal(skipping.transitions().get_batch([0])["next_obs"][0, 0, 0], 1)


def test_equivalent_npy_header_is_accepted(tmp_path):
    # a valid file whose header bytes differ from what this numpy writes (format 2.0) still opens correctly
    store = TrajectoryStore(tmp_path, create=True)
    ep = add_coded(store, 4, base=30)
    path = ep_folder(store, ep) / "obs.npy"
    frames = np.load(path)
    with open(path, "wb") as f:
        np.lib.format.write_array(f, frames, version=(2, 0))
    got = TrajectoryStore(tmp_path).episode(ep)["obs"]
    np.testing.assert_array_equal(got, frames)


def test_refresh_sees_new_and_deleted_episodes(tmp_path):
    reader = TrajectoryStore(tmp_path, create=True)
    writer = TrajectoryStore(tmp_path)
    a = add_coded(writer, 3)
    b = add_coded(writer, 3, base=5)
    assert len(reader) == 0 and reader.refresh() == [a, b] and reader.num_steps == 6
    shutil.rmtree(ep_folder(reader, a))
    assert reader.refresh() == [] and reader.episode_ids() == [b]
    with pytest.raises(KeyError, match="refresh"):
        reader.meta(a)


# ---------------------------------------------------------------------------- atomicity and concurrency


def test_writer_killed_mid_write_leaves_store_readable(tmp_path):
    root = tmp_path / "s"
    store = TrajectoryStore(root, create=True)
    first = add_coded(store, 3)
    # The writer is made slow by sleeping after each fsync, so the kill lands while its temp folder exists.
    writer = run_py(
        """
        import os, sys, time, numpy as np
        from dws_gym.data import TrajectoryStore
        real_fsync = os.fsync
        def slow_fsync(fd):
            real_fsync(fd)
            time.sleep(60)
        os.fsync = slow_fsync
        store = TrajectoryStore(sys.argv[1])
        T = 300
        obs = np.full((T + 1, 64, 64, 3), 7, np.uint8)
        store.add_episode(obs, np.zeros(T, np.int64), np.zeros(T), np.zeros(T, bool), np.zeros(T, bool),
                          env_id="Big-v0")
        """,
        str(root),
    )
    try:
        deadline = time.time() + 30
        partial = []
        while time.time() < deadline and not partial:
            partial = [p for p in (root / "tmp").glob("*/obs.npy") if p.stat().st_size > 0]
            time.sleep(0.05)
        assert partial, "the writer never started writing"
        assert writer.poll() is None
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL

    reopened = TrajectoryStore(root)
    assert reopened.episode_ids() == [first]
    assert sorted(p.name for p in (root / "episodes").iterdir()) == ["ep_000000000"]
    assert len(list((root / "tmp").iterdir())) == 1  # the leftover is ignored by readers
    removed = reopened.cleanup_tmp(max_age_s=0)
    assert len(removed) == 1 and not any((root / "tmp").iterdir())
    # a second writer appends afterwards
    second = add_coded(TrajectoryStore(root), 4, base=9)
    assert second == first + 1
    assert TrajectoryStore(root).episode_ids() == [first, second]


def test_cleanup_tmp_keeps_live_writers(tmp_path):
    store = TrajectoryStore(tmp_path, create=True)
    live = tmp_path / "tmp" / f"{socket.gethostname()}-{os.getpid()}-abc"
    live.mkdir()
    assert store.cleanup_tmp(max_age_s=0) == [] and live.exists()


def test_opening_for_writing_removes_stale_tmp(tmp_path):
    """create=True sweeps temp folders of dead writers left untouched for an hour; nothing else is removed."""
    add_coded(TrajectoryStore(tmp_path, create=True), 3)
    host, dead_pid, hours_ago = socket.gethostname(), 2**30, time.time() - 7200  # no process has pid 2**30

    def leftover(name: str, age: float | None = None) -> Path:
        folder = tmp_path / "tmp" / name
        folder.mkdir()
        (folder / "obs.npy").write_bytes(b"partial")
        if age is not None:
            for p in (folder / "obs.npy", folder):
                os.utime(p, (age, age))
        return folder

    stale = [leftover(f"{host}-{dead_pid}-aaa", hours_ago), leftover("elsewhere-123-bbb", hours_ago)]
    kept = [leftover(f"{host}-{dead_pid}-ccc"),  # recent: its writer may live in another PID namespace
            leftover(f"{host}-{os.getpid()}-ddd", hours_ago)]  # its writer is alive
    TrajectoryStore(tmp_path)  # a reader removes nothing
    assert all(p.exists() for p in stale + kept)
    store = TrajectoryStore(tmp_path, create=True)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert store.episode_ids() == [0]


def test_concurrent_writers_do_not_collide(tmp_path):
    root = tmp_path / "s"
    watcher = TrajectoryStore(root, create=True)
    go = tmp_path / "go"
    code = """
        import sys, time, numpy as np
        from pathlib import Path
        from dws_gym.data import TrajectoryStore
        root, go, w = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
        store = TrajectoryStore(root)
        while not go.exists():
            time.sleep(0.005)
        for i in range(12):
            T = 3 + i % 3
            obs = np.full((T + 1, 4, 4, 3), 16 * w + i, np.uint8)
            store.add_episode(obs, np.zeros(T, np.int64), np.zeros(T), np.zeros(T, bool), np.zeros(T, bool),
                              env_id="Test-v0", extra={"writer": w, "i": i})
        """
    writers = [run_py(code, str(root), str(go), str(w)) for w in range(2)]
    time.sleep(0.3)
    go.touch()
    for p in writers:
        assert p.wait(timeout=60) == 0
    new = watcher.refresh()
    assert new == list(range(24)) and len(watcher) == 24
    seen = set()
    for ep in watcher.episode_ids():
        meta = watcher.meta(ep)
        key = (meta.extra["writer"], meta.extra["i"])
        seen.add(key)
        # every folder holds exactly the episode its metadata describes
        assert int(watcher.episode(ep)["obs"][0, 0, 0, 0]) == 16 * key[0] + key[1]
        assert meta.length == 3 + key[1] % 3
    assert seen == {(w, i) for w in range(2) for i in range(12)}
    assert not any((root / "tmp").iterdir())


# ---------------------------------------------------------------------------- import


def test_import_arrays_round_trip(tmp_path):
    store = TrajectoryStore(tmp_path, create=True)
    # three episodes back to back (lengths 3, 4, 2), the last one unfinished; frame value = 10 * episode + t
    lengths = [3, 4, 2]  # the last episode is unfinished
    obs, nxt, acts, term, trunc = [], [], [], [], []
    for e, T in enumerate(lengths):
        frames = 10 * e + np.arange(T + 1)
        obs += list(frames[:-1])
        nxt += list(frames[1:])
        acts += list(range(T))
        term += [False] * (T - 1) + [e == 0]
        trunc += [False] * (T - 1) + [e == 1]
    tile = lambda v: np.broadcast_to(np.asarray(v, np.uint8)[:, None, None, None], (len(v), HW, HW, 3)).copy()
    obs, nxt = tile(obs), tile(nxt)
    acts, rew = np.asarray(acts), np.arange(len(acts), dtype=np.float32)
    term, trunc = np.asarray(term), np.asarray(trunc)

    ids = import_arrays(store, obs, acts, rew, term, trunc, env_id="Imp-v0", final_obs=nxt,
                        action_space={"type": "discrete", "n": 4})
    assert len(ids) == 3
    for e, (ep, T) in enumerate(zip(ids, lengths)):
        got = store.episode(ep)
        assert got["meta"].final_frame_known and got["meta"].policy == "imported"
        np.testing.assert_array_equal(got["obs"][:, 0, 0, 0], 10 * e + np.arange(T + 1))
        np.testing.assert_array_equal(got["actions"], np.arange(T))
    assert store.episode(ids[0])["terminated"][-1] and store.episode(ids[1])["truncated"][-1]
    assert not store.episode(ids[2])["terminated"].any() and not store.episode(ids[2])["truncated"].any()
    # flat arrays come back out of the transition view in the same order
    tb = store.transitions().get_batch(np.arange(len(obs)))
    np.testing.assert_array_equal(tb["obs"], obs)
    np.testing.assert_array_equal(tb["next_obs"], nxt)
    np.testing.assert_array_equal(tb["reward"], rew)

    # one final frame per finished episode: the unfinished tail loses its final frame
    per_ep = nxt[[2, 6]]
    ids2 = import_arrays(store, obs, acts, rew, term, trunc, env_id="Imp-v0", final_obs=per_ep)
    assert [store.meta(i).final_frame_known for i in ids2] == [True, True, False]
    np.testing.assert_array_equal(store.episode(ids2[1])["obs"][-1], nxt[6])
    # no final frames at all (Procgen through gym3)
    ids3 = import_arrays(store, obs, acts, rew, term, trunc, env_id="Imp-v0", drop_unfinished=True)
    assert [store.meta(i).num_frames for i in ids3] == [3, 4]
    with pytest.raises(ValueError, match="final_obs"):
        import_arrays(store, obs, acts, rew, term, trunc, env_id="Imp-v0", final_obs=nxt[:4])
    with pytest.raises(ValueError, match="rewards"):
        import_arrays(store, obs, acts, rew[:-1], term, trunc, env_id="Imp-v0")


def test_step_records_match_batches_without_frames(tmp_path):
    store = TrajectoryStore(tmp_path / "s", create=True)
    rng = np.random.default_rng(0)
    for T in (5, 8):
        store.add_episode(rng.integers(0, 256, (T + 1, 8, 8, 3), dtype=np.uint8), rng.integers(0, 4, T),
                          rng.normal(size=T).astype(np.float32), np.eye(T, dtype=bool)[-1], np.zeros(T, bool),
                          env_id="ALE/Breakout-v5", action_meanings=["NOOP", "FIRE", "RIGHT", "LEFT"])
    tr = store.transitions()
    records = tr.step_records()
    batch = tr.get_batch(np.arange(len(tr)))
    assert set(records) == {"action", "reward", "terminated", "truncated", "life_lost"}
    for k, v in records.items():
        np.testing.assert_array_equal(v, batch[k])
    np.testing.assert_array_equal(tr.step_records([3, 1])["reward"], batch["reward"][[3, 1]])
    clips = store.clips(2, 3)  # windows past an episode's end: zeroed steps, mask False
    records = clips.step_records()
    batch = clips.get_batch(np.arange(len(clips)))
    assert set(records) == {"actions", "rewards", "terminated", "truncated", "life_lost", "mask"}
    assert not records["mask"].all() and records["terminated"].any()
    for k, v in records.items():
        np.testing.assert_array_equal(v, batch[k])
    np.testing.assert_array_equal(clips.step_records([4, 0])["rewards"], batch["rewards"][[4, 0]])


def test_keep_unknown_final_exposes_the_last_step(tmp_path):
    """Procgen-style episodes lose their final frame; a reward head still needs that step's reward and flag."""
    store = TrajectoryStore(tmp_path / "s", create=True)
    T = 4
    obs = np.arange(T, dtype=np.uint8)[:, None, None, None] * np.ones((T, 4, 4, 3), np.uint8)  # T frames only
    rewards = np.array([0, 0, 0, 10], np.float32)
    store.add_episode(obs, np.zeros(T, np.int64), rewards, np.eye(T, dtype=bool)[-1], np.zeros(T, bool),
                      env_id="procgen/coinrun", action_space={"type": "discrete", "n": 15}, final_frame_known=False)
    plain = store.transitions()
    assert len(plain) == T - 1 and plain.step_records()["reward"].max() == 0
    kept = store.transitions(keep_unknown_final=True, frame_stack=2)
    assert len(kept) == T
    batch = kept.get_batch(np.arange(T))
    assert batch["next_obs_known"].tolist() == [True, True, True, False]
    assert batch["reward"][-1] == 10 and batch["terminated"][-1]
    assert batch["next_obs"][-1, -1, 0, 0, 0] == T - 1  # stands in with the last stored frame
    assert batch["next_obs"][1, -1, 0, 0, 0] == 2 and batch["obs"][1, 0, 0, 0, 0] == 0
