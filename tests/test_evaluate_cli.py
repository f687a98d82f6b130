"""`python -m dws_gym.evaluation`: a saved simulator scored on the held-out episodes of a real Breakout store."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_sim import make_tiny_sim

from dws_gym.collect import CollectArgs, collect
from dws_gym.data import TrajectoryStore
from dws_gym.evaluation import held_out_windows
from dws_gym.evaluation.__main__ import EvaluateArgs, evaluate, main


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("breakout")
    collect(CollectArgs(env_id="ALE/Breakout-v5", steps=240, out=str(out), num_envs=4, progress=False))
    return str(out)


@pytest.fixture(scope="module")
def sim_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("sim") / "simulator"
    make_tiny_sim(seed=3).save_pretrained(folder)
    return str(folder)


def test_held_out_windows_come_from_the_last_episodes(store_path):
    store = TrajectoryStore(store_path)
    batch = held_out_windows(store, "ALE/Breakout-v5", 3, 4, 5, 0.25, seed=0)
    ids = sorted(store.episode_ids())
    held = ids[-int(np.ceil(0.25 * len(ids))):]
    assert batch["frames"].shape == (5, 7, 64, 64, 3) and batch["mask"].all()
    assert set(batch["episode_id"].tolist()) <= set(held)
    again = held_out_windows(store, "ALE/Breakout-v5", 3, 4, 5, 0.25, seed=0)
    assert np.array_equal(batch["frames"], again["frames"])  # same seed, same windows


def test_cli_prints_one_table_per_step_count_and_writes_json(store_path, sim_folder, tmp_path, capsys):
    out = tmp_path / "eval.json"
    results = main(["--simulator", sim_folder, "--data", store_path, "--clips", "3", "--horizon", "2",
                    "--held-out-fraction", "0.25", "--sampling-steps", "1", "2", "--out", str(out),
                    "--closed-loop-episodes", "0"])
    assert sorted(results) == [1, 2]
    for result in results.values():
        assert result.num_clips == 3 and result.horizon == 2
        assert [row["h"] for row in result.table.rows] == [1, 2, "mean"]
    printed = capsys.readouterr().out
    assert printed.count("sampling step(s)") == 2 and "psnr model" in printed
    saved = json.loads(out.read_text())
    assert sorted(saved) == ["1", "2"] and saved["1"]["num_clips"] == 3


def test_same_command_gives_the_same_numbers(store_path, sim_folder):
    args = EvaluateArgs(simulator=sim_folder, data=store_path, clips=3, horizon=2, held_out_fraction=0.25,
                        closed_loop_episodes=2, closed_loop_steps=3)
    a, b = evaluate(args), evaluate(args)
    (steps,) = a
    assert a[steps].table.rows == b[steps].table.rows
    assert a[steps].events.table.rows == b[steps].events.table.rows
    np.testing.assert_array_equal(a[steps].closed_loop.real_returns, b[steps].closed_loop.real_returns)
    np.testing.assert_array_equal(a[steps].closed_loop.dream_returns, b[steps].closed_loop.dream_returns)


def test_store_without_the_simulators_game_is_refused(store_path, tmp_path):
    sim = make_tiny_sim(seed=0, env_id="ALE/Pong-v5")
    args = EvaluateArgs(simulator="unused", data=store_path, clips=2, horizon=2, closed_loop_episodes=0)
    with pytest.raises(ValueError, match="holds no ALE/Pong-v5 episodes"):
        evaluate(args, simulator=sim)


def test_record_writes_the_table_into_the_folder_and_card(store_path, tmp_path):
    folder = tmp_path / "sim"
    make_tiny_sim(seed=4).save_pretrained(folder)
    main(["--simulator", str(folder), "--data", store_path, "--clips", "2", "--horizon", "2",
          "--held-out-fraction", "0.25", "--sampling-steps", "2", "--record", "--closed-loop-episodes", "2",
          "--closed-loop-steps", "3"])
    from dws_gym.simulator import Simulator

    sim = Simulator.from_pretrained(folder)
    assert sim.config.sampling_steps == 2 and sim.world_model.config.sampling_steps == 2
    assert sim.config.metrics["num_clips"] == 2 and "--record" in sim.config.metrics["evaluation_command"]
    assert sim.config.metrics["evaluation_command"].endswith("--episode-ends")  # the draw is stated
    card = (folder / "README.md").read_text()
    assert sim.config.metrics["table_markdown"].splitlines()[0] in card and "2 Euler steps" in card
    # The event and closed-loop tables land in the config and the card too.
    metrics = sim.config.metrics
    assert metrics["events"]["horizon"] == 2 and metrics["closed_loop"]["episodes"] == 2
    assert metrics["closed_loop"]["steps"] == 3 and metrics["closed_loop"]["sampling_steps"] == 2
    assert set(metrics["event_acceptance"]) == {"reward_recall", "reward_precision", "closed_loop_return",
                                                "closed_loop_correlation", "all"}
    assert "Reward / termination events" in card and "Closed-loop returns: 2 episodes x 3 steps" in card
    assert "**Event acceptance**" in card and "closed-loop returns, real vs dream)" in card


def test_record_refuses_several_step_counts_and_non_folders(store_path, sim_folder, tmp_path):
    with pytest.raises(SystemExit, match="one --sampling-steps"):
        main(["--simulator", sim_folder, "--data", store_path, "--sampling-steps", "1", "2", "--record"])
    with pytest.raises(SystemExit, match="not one"):
        main(["--simulator", str(tmp_path / "nothing"), "--data", store_path, "--record"])
    with pytest.raises(SystemExit, match="--dtype fp32"):  # bf16 would round the weights it writes back
        main(["--simulator", sim_folder, "--data", store_path, "--record", "--dtype", "bf16"])


def test_bf16_run_says_what_ran_and_stays_close_to_fp32(store_path, sim_folder, tmp_path):
    out = {}
    for dtype in ("fp32", "bf16"):
        out[dtype] = tmp_path / f"{dtype}.json"
        main(["--simulator", sim_folder, "--data", store_path, "--clips", "3", "--horizon", "2",
              "--held-out-fraction", "0.25", "--closed-loop-episodes", "0", "--dtype", dtype, "--out", str(out[dtype])])
    fp32, bf16 = (json.loads(out[d].read_text())["1"] for d in ("fp32", "bf16"))
    assert fp32["precision"] == "fp32" and bf16["precision"] == "bf16" and not bf16["compiled"]
    psnr = [[row["psnr model"] for row in r["table"]["rows"]] for r in (fp32, bf16)]
    assert np.allclose(psnr[0], psnr[1], atol=3.0)  # the same windows and noise; bf16 rounds the weights


def test_event_and_closed_loop_flags(store_path, sim_folder, tmp_path, capsys):
    out = tmp_path / "eval.json"
    results = main(["--simulator", sim_folder, "--data", store_path, "--clips", "3", "--horizon", "3",
                    "--held-out-fraction", "0.25", "--closed-loop-episodes", "2", "--closed-loop-steps", "4",
                    "--event-tolerance", "0", "--event-match-sign", "--out", str(out)])
    ((steps, result),) = results.items()
    assert result.events is not None and result.events.tolerance == 0 and result.events.match_sign
    assert [row["h"] for row in result.events.table.rows] == [1, 2, 3, "all"]
    loop = result.closed_loop
    assert loop is not None and loop.episodes == 2 and loop.steps == 4 and loop.env_id == "ALE/Breakout-v5"
    printed = capsys.readouterr().out
    assert "reward recall" in printed and "Closed-loop returns" in printed and "**Event acceptance**" in printed
    saved = json.loads(out.read_text())[str(steps)]
    assert saved["events"]["tolerance"] == 0 and len(saved["closed_loop"]["real_returns"]) == 2

    results = main(["--simulator", sim_folder, "--data", store_path, "--clips", "3", "--horizon", "2",
                    "--held-out-fraction", "0.25", "--no-events", "--closed-loop-episodes", "0"])
    ((_, result),) = results.items()
    assert result.events is None and result.closed_loop is None
    assert "Event acceptance" not in result.to_markdown()
    with pytest.raises(ValueError, match="closed-loop-episodes"):
        main(["--simulator", sim_folder, "--data", store_path, "--closed-loop-episodes", "-1"])
