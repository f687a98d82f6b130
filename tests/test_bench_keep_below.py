"""bench/keep_below.py: thresholds compared on real closed-loop games, the head calibrated at each one."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny_sim import BREAKOUT, make_tiny_sim

from dws_gym.data.store import TrajectoryStore

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_keep_below", ROOT / "bench" / "keep_below.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the Args annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("keep_below")
    store = TrajectoryStore(root / "store", create=True)
    rng = np.random.default_rng(0)
    for _ in range(4):  # the last one is held out
        rewards = np.zeros(20, np.float32)
        rewards[[5, 9, 12, 16]] = 1.0
        store.add_episode(rng.integers(0, 256, (21, 64, 64, 3), dtype=np.uint8), rng.integers(0, 4, 20), rewards,
                          np.eye(20, dtype=bool)[-1], np.zeros(20, bool), env_id="ALE/Breakout-v5",
                          action_meanings=BREAKOUT)
    make_tiny_sim(0).save_pretrained(root / "sim")
    return root


def test_each_threshold_gets_a_calibrated_head_and_closed_loop_rows(folders, tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# figures\n")
    rows = _bench().main(["--simulator", str(folders / "sim"), "--data", str(folders / "store"), "--keep-below", "0",
                          "0.03", "--calibrate-windows", "12", "--horizon", "2", "--seeds", "1", "--episodes", "2",
                          "--steps", "3", "--write-results", "--results-file", str(results)])
    assert [r["keep_below"] for r in rows] == [0.0, 0.03]
    for r in rows:
        assert r["real_paid"] > 0 and np.isfinite(r["shift"])
        assert r["real 1"] >= 0 and np.isfinite(r["dream 1"])  # real ALE games and the (untrained) dream
    text = results.read_text()
    assert text.startswith("# figures\n") and "## Choosing keep_below" in text and "pooled dream / real" in text
    assert "| 0.03 |" in text


def test_bad_thresholds_are_refused(folders):
    with pytest.raises(SystemExit, match="keep-below"):
        _bench().main(["--simulator", str(folders / "sim"), "--data", str(folders / "store"), "--keep-below", "1.5"])
