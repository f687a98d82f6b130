"""bench/keep_below.py: thresholds compared on real closed-loop games, the head calibrated at each one."""

from __future__ import annotations

import numpy as np
import pytest
from scripts import load_script
from tiny_sim import make_breakout_store, make_tiny_sim


def _bench():
    return load_script("bench/keep_below.py", "bench_keep_below")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("keep_below")
    make_breakout_store(root / "store", rewarded_steps=(5, 9, 12, 16))
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
