"""bench/action_effect.py: how far a real game's actions move its next frames, from saved emulator states."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scripts import load_script


def _bench():
    return load_script("bench/action_effect.py", "bench_action_effect")


@pytest.mark.parametrize("env_id", ["ALE/Breakout-v5", "procgen/coinrun"])
def test_a_replay_from_a_saved_state_is_exact_and_other_actions_move_the_frames(env_id):
    pytest.importorskip("procgen" if env_id.startswith("procgen") else "ale_py")
    result = _bench().measure(env_id, states=6, horizon=4, seed=3, sticky=0.0)
    assert result["again"].shape == result["other"].shape == (4,)
    assert (result["windows"] > 0).all()
    # Without sticky actions both games are deterministic: the same actions from the same state give the same frames.
    assert np.allclose(result["again"], 0.0)
    assert np.nanmax(result["other"]) > 0.0


def test_sticky_actions_make_ale_replays_differ_and_the_minimal_action_set_is_used():
    pytest.importorskip("ale_py")
    bench = _bench()
    result = bench.measure("ALE/BattleZone-v5", states=8, horizon=5, seed=1, sticky=0.25)
    assert np.nanmax(result["again"]) > 0.0
    assert bench.make_game("ALE/Breakout-v5", 0).num_actions == 4  # the real env's (and datasets') action space


def test_the_ceiling_column_reads_the_simulator_card(tmp_path):
    bench = _bench()
    sim = tmp_path / "sim"
    sim.mkdir()
    rows = [{"h": h, "moving_mse model": 0.01 * h} for h in (1, 2)] + [{"h": "mean", "moving_mse model": 0.015}]
    (sim / "simulator_config.json").write_text(json.dumps({"metrics": {"table": {"rows": rows}}}))
    assert np.allclose(bench.held_out_error(sim, 3)[:2], [0.01, 0.02]) and np.isnan(bench.held_out_error(sim, 3)[2])
    result = {"again": np.array([0.0, 0.0]), "other": np.array([0.01, 0.02]), "windows": np.array([5, 5])}
    text = bench.table(result, bench.held_out_error(sim, 2))
    # other / (e + other): 0.01 / 0.02 and 0.02 / 0.04
    assert "| 1 | 5 | 0.00000 | 0.01000 | 0.01000 | 0.500 |" in text and text.count("0.500") == 2
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "simulator_config.json").write_text("{}")
    with pytest.raises(SystemExit, match="holds no held-out table"):
        bench.held_out_error(tmp_path / "bare", 2)
    with pytest.raises(ValueError, match="sticky must lie in"):
        bench.measure("ALE/Breakout-v5", 1, 1, 0, sticky=1.0)


def test_main_appends_the_table_to_the_results_file(tmp_path):
    pytest.importorskip("procgen")
    results = tmp_path / "RESULTS.md"
    results.write_text("# figures\n")
    bench = _bench()
    text = bench.main(bench.Args(env_id="procgen/coinrun", states=2, horizon=2, write_results=True,
                                 results_file=str(results)))
    written = results.read_text()
    assert written.startswith("# figures\n") and "## How much the actions move procgen/coinrun" in written
    assert text in written and "Machine:" in written
