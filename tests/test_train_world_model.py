"""train_world_model.py end to end at tiny sizes: collect -> train -> checkpoint -> resume -> table -> simulator; DDP."""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_sim import make_breakout_store

from dws_gym.simulator import Simulator

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "train_world_model.py"
# The default backbone (unet) at tiny widths; FLOW switches to the Wan transformer at tiny sizes.
TINY = ["--unet.widths", "8", "16", "16", "--context-frames", "3", "--horizon", "2", "--batch-size", "2",
        "--reward-steps", "4", "--reward-batch-size", "8", "--eval-clips", "2", "--eval-horizon", "3",
        "--num-start-states", "4", "--no-progress", "--no-capture-video", "--warmup-steps", "1", "--log-every", "1"]
FLOW = ["--backbone", "flow", "--flow.patch-size", "4", "--flow.num-heads", "2", "--flow.head-dim", "48",
        "--flow.num-layers", "1", "--flow.ffn-dim", "64", "--flow.sampling-steps", "1"]


def run(args, cwd, env_extra=None, launcher=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.update(env_extra or {})
    cmd = (launcher or [sys.executable]) + [str(SCRIPT)] + args
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}\nSTDOUT\n{proc.stdout[-3000:]}\nSTDERR\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("train")
    proc = run(["--data", "store", "--collect-steps", "400", "--total-steps", "2", "--checkpoint-every", "1",
                "--output-dir", "run"] + TINY, cwd)
    return cwd, proc


def markdown_table(text: str, title: str) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the markdown table printed under ``**{title}**`` in ``text``."""
    lines = text.splitlines()
    start = lines.index(f"**{title}**") + 2  # the title, a blank line, then the table
    header, rule = lines[start], lines[start + 1]
    assert header.startswith("| ") and set(rule) <= set("|-"), (header, rule)
    body = []
    for line in lines[start + 2:]:
        if not line.startswith("| "):
            break
        body.append([cell.strip() for cell in line.strip("|").split("|")])
    return [cell.strip() for cell in header.strip("|").split("|")], body


def test_pipeline_writes_simulator_table_and_logs(trained):
    cwd, proc = trained
    assert "collecting 400 random-policy steps" in proc.stdout
    assert "simulator saved to" in proc.stdout
    sim = Simulator.from_pretrained(cwd / "run" / "simulator")
    assert sim.config.env_id == "ALE/Breakout-v5" and sim.config.action_meanings == ["NOOP", "FIRE", "RIGHT", "LEFT"]
    assert sim.start_frames.shape == (4, 3, 64, 64, 3)
    assert sim.config.pretrained_backbone is None and sim.config.training["steps"] == 2
    # one table: printed, written next to the run and recorded in the simulator (for its card)
    table_md = (cwd / "run" / "held_out_table.md").read_text()
    assert table_md == sim.config.metrics["table_markdown"] + "\n" and table_md.strip() in proc.stdout
    state = sim.init_state(sim.start_frames[:2], sim.start_actions[:2])
    frame, *_ = sim.step(state, [1, 2], generator=torch.Generator().manual_seed(0))
    assert frame.shape == (2, 64, 64, 3)
    events = list((cwd / "run").glob("events.out.tfevents.*"))
    assert events, "TensorBoard logs are written into the run's --output-dir"
    assert not (cwd / "runs").exists()  # nothing outside it


SIDES = ("model", "copy", "shuffled")
FRAME_COLUMNS = ["h"] + [f"{m} {side}" for m in ("psnr", "ssim", "mse", "moving_mse") for side in SIDES] + \
    ["action_sensitivity"]
# (low, high) of each metric: PSNR in dB (an exact copy is capped at 100), SSIM, MSE of [0, 1] pixels.
RANGES = {"psnr": (0.0, 100.0), "ssim": (-1.0, 1.0), "mse": (0.0, 1.0), "moving_mse": (0.0, 1.0),
          "action_sensitivity": (-math.inf, 1.0)}


def test_held_out_table_has_every_horizon_and_column_with_values_in_range(trained):
    """--eval-clips 2 --context-frames 3 --eval-horizon 3: the table the run writes, cell by cell."""
    cwd, _ = trained
    text = (cwd / "run" / "held_out_table.md").read_text()
    columns, rows = markdown_table(text, "Held-out open-loop rollouts (2 windows, context 3, h = 1..3)")
    assert columns == FRAME_COLUMNS
    assert [row[0] for row in rows] == ["1", "2", "3", "mean"]
    values = [[float(cell) for cell in row[1:]] for row in rows]
    for name, column in zip(columns[1:], zip(*values)):
        low, high = RANGES[name.split(" ")[0]]
        assert all(math.isfinite(v) and low <= v <= high for v in column), (name, column)
        if name != "action_sensitivity":  # the mean row averages the horizons (cells rounded to 4 digits)
            assert column[-1] == pytest.approx(sum(column[:-1]) / 3, rel=2e-3), name
    # the cells are the recorded numbers, rounded
    sim = Simulator.from_pretrained(cwd / "run" / "simulator")
    recorded = sim.config.metrics["table"]
    assert recorded["columns"] == FRAME_COLUMNS and [r["h"] for r in recorded["rows"]] == [1, 2, 3, "mean"]
    for row, cells in zip(recorded["rows"], values):
        assert cells == pytest.approx([row[c] for c in FRAME_COLUMNS[1:]], rel=1e-3, abs=1e-12)
    # reward tables: one row per reward sign and termination, counting each of the 2 x 3 dreamed transitions
    for title in ("Reward sign / termination of one-step transitions (real context, simulated next frame)",
                  "Reward sign / termination over the open-loop rollout (h = 1..3)"):
        columns, rows = markdown_table(text, title)
        assert columns == ["target", "precision", "recall", "support", "predicted"]
        assert [row[0] for row in rows] == ["reward<0", "reward=0", "reward>0", "terminated"]
        signs = rows[:3]
        assert sum(int(r[3]) for r in signs) == sum(int(r[4]) for r in signs) == 2 * 3, title
        for r in rows:
            for cell in r[1:3]:
                assert cell == "nan" or 0.0 <= float(cell) <= 1.0, (title, r)
            assert int(r[3]) >= 0 and int(r[4]) >= 0


def test_resume_continues_from_checkpoint(trained, tmp_path):
    cwd, _ = trained
    run_dir = tmp_path / "run"
    shutil.copytree(cwd / "run", run_dir)
    proc = run(["--data", str(cwd / "store"), "--total-steps", "3", "--output-dir", str(run_dir), "--resume"] + TINY,
               tmp_path)
    assert "resumed" in proc.stdout and "at step 2" in proc.stdout
    ckpt = torch.load(run_dir / "checkpoint" / "training_state.pt", weights_only=False)
    assert ckpt["step"] == 3
    # the finished reward head is kept, not trained again; the world model did train one more step
    before = Simulator.from_pretrained(cwd / "run" / "simulator")
    after = Simulator.from_pretrained(run_dir / "simulator")
    for (name, a), b in zip(before.reward_head.state_dict().items(), after.reward_head.state_dict().values()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, b) for a, b in zip(before.world_model.state_dict().values(),
                                                     after.world_model.state_dict().values()))


def test_retrain_reward_head_keeps_world_model_and_trains_a_new_head(trained, tmp_path):
    cwd, _ = trained
    run_dir = tmp_path / "run"
    shutil.copytree(cwd / "run", run_dir)
    proc = run(["--data", str(cwd / "store"), "--total-steps", "2", "--output-dir", str(run_dir), "--resume",
                "--retrain-reward-head", "--seed", "7", "--reward-dream-share", "0.5", "--reward-dream-windows", "3",
                "--reward-dream-horizon", "2"] + TINY, tmp_path)
    assert "at step 2" in proc.stdout
    assert "dreamed transitions from 3 training windows" in proc.stdout and "50% of each batch" in proc.stdout
    before = Simulator.from_pretrained(cwd / "run" / "simulator")
    after = Simulator.from_pretrained(run_dir / "simulator")
    for (name, a), b in zip(before.world_model.state_dict().items(), after.world_model.state_dict().values()):
        assert torch.equal(a, b), name  # no world-model step: the run had already reached --total-steps
    assert any(not torch.equal(a, b) for a, b in zip(before.reward_head.state_dict().values(),
                                                     after.reward_head.state_dict().values()))
    ckpt = torch.load(run_dir / "checkpoint" / "training_state.pt", weights_only=False)
    assert "reward_head" in ckpt and ckpt["step"] == 2
    # the prior correction of the real + dreamed batches is kept with the head, and is the head's
    offsets, t_offset = ckpt["reward_prior_offsets"]
    assert tuple(after.reward_head.config.reward_logit_offset) == pytest.approx(offsets)
    assert after.reward_head.config.termination_logit_offset == pytest.approx(t_offset)


def test_a_run_can_end_with_the_head_calibrated_to_the_real_payment_rate(tmp_path):
    make_breakout_store(tmp_path / "store", rewarded_steps=(4, 8, 11, 15), episodes=6)
    proc = run(["--data", str(tmp_path / "store"), "--total-steps", "1", "--output-dir", str(tmp_path / "run"),
                "--reward-calibrate-windows", "64"] + TINY, tmp_path)
    assert "reward head calibration: no-reward logit offset" in proc.stdout
    sim = Simulator.from_pretrained(tmp_path / "run" / "simulator")
    assert "to the real payment rate" in sim.config.training["reward_head_calibration"]
    assert "--reward-calibrate-windows 64" in sim.config.training["command"]


def _script(monkeypatch):
    """train_world_model.py imported as a module (its functions, not its __main__ block)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_world_model", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "train_world_model", script)  # dataclasses look their module up there
    spec.loader.exec_module(script)
    return script


@pytest.mark.parametrize("changes, message", [(dict(retrain_reward_head=True), "--resume"),
                                              (dict(reward_rare_fraction=1.0), "[0, 1)"),
                                              (dict(reward_dream_share=1.0), "--reward-dream-share"),
                                              (dict(reward_dream_windows=0), "must be positive"),
                                              (dict(reward_calibrate_windows=-1), "--reward-calibrate-windows"),
                                              (dict(prefetch=-1), "--prefetch must be >= 0"),
                                              (dict(reward_depth=0), "--reward-depth must be >= 1"),
                                              (dict(reward_memory_frames=0), "--reward-memory-frames must be"),
                                              (dict(reward_memory_frames=5), "--context-frames (4)"),
                                              (dict(reward_patch_size=12), "--reward-patch-size must be a power"),
                                              (dict(reward_patch_size=1), "--reward-patch-size must be a power")])
def test_flags_that_cannot_work_are_refused(monkeypatch, changes, message):
    script = _script(monkeypatch)
    script.check_args(script.Args())
    with pytest.raises(SystemExit, match=re.escape(message)):
        script.check_args(script.Args(**changes))


def test_the_script_checks_its_flags_before_any_work(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--data", "store", "--reward-dream-share", "1.0"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--reward-dream-share" in proc.stderr + proc.stdout
    assert not (tmp_path / "store").exists()  # failed before collecting anything


def test_distill_from_trains_a_narrower_unet_on_a_simulator_and_records_its_teacher(trained, tmp_path):
    cwd, _ = trained
    tiny = list(TINY)
    tiny[tiny.index("--unet.widths") + 2] = "8"  # --unet.widths 8 8 16: the student is narrower than its teacher
    proc = run(["--data", str(cwd / "store"), "--total-steps", "2", "--output-dir", "student", "--distill-from",
                str(cwd / "run" / "simulator"), "--distill-weight", "0.5", "--init-from",
                str(cwd / "run" / "simulator"), "--reward-depth", "1", "--reward-memory-frames", "1"] + tiny, tmp_path)
    assert re.search(r"step 2/2 loss \S+ mse \S+ copy \S+ teacher \d", proc.stdout), proc.stdout[-2000:]
    assert "pruned its channels from widths (8, 16, 16) to (8, 8, 16)" in proc.stdout
    sim = Simulator.from_pretrained(tmp_path / "student" / "simulator")
    assert list(sim.world_model.config.widths) == [8, 8, 16]
    assert sim.reward_head.config.depth == 1 and len(sim.reward_head.blocks) == 2  # one self-, one cross-attention
    assert sim.reward_head.config.memory_frames == 1  # which reads the last context frame only
    pruned = "its channels pruned from widths (8, 16, 16) to (8, 8, 16)"
    assert pruned in sim.config.training["initialised_from"]
    # A resume without --init-from keeps the provenance on the card.
    run(["--data", str(cwd / "store"), "--total-steps", "3", "--output-dir", "student", "--resume", "--distill-from",
         str(cwd / "run" / "simulator"), "--distill-weight", "0.5", "--reward-depth", "1", "--reward-memory-frames", "1"]
        + tiny, tmp_path)
    assert pruned in Simulator.from_pretrained(tmp_path / "student" / "simulator").config.training["initialised_from"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    resume = ["--data", str(cwd / "store"), "--total-steps", "3", "--output-dir", "student", "--resume",
              "--distill-from", str(cwd / "run" / "simulator"), "--distill-weight", "0.5"]
    other_head = subprocess.run([sys.executable, str(SCRIPT)] + resume + tiny, cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=300)
    refused = other_head.stderr + other_head.stdout
    assert other_head.returncode != 0 and "--reward-depth 1" in refused and "--reward-memory-frames 1" in refused
    assert sim.config.training["distilled_from"].startswith(f"{cwd / 'run' / 'simulator'} (a simulator of ")
    assert sim.config.training["distilled_from"].endswith("teacher term weight 0.5")
    # A teacher that reads other inputs, or a flow student, is refused before training.
    other = [a if a != "3" else "4" for a in tiny]  # --context-frames 4
    bad = subprocess.run([sys.executable, str(SCRIPT), "--data", str(cwd / "store"), "--total-steps", "1",
                          "--output-dir", "bad", "--distill-from", str(cwd / "run" / "simulator")] + other,
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "context_frames 3 (teacher) vs 4" in bad.stderr + bad.stdout
    other_game = tmp_path / "pong_teacher"  # the same network, recorded as another game's simulator
    shutil.copytree(cwd / "run" / "simulator", other_game)
    config = json.loads((other_game / "simulator_config.json").read_text())
    (other_game / "simulator_config.json").write_text(json.dumps({**config, "env_id": "ALE/Pong-v5"}))
    bad = subprocess.run([sys.executable, str(SCRIPT), "--data", str(cwd / "store"), "--total-steps", "1",
                          "--output-dir", "bad", "--distill-from", str(other_game)] + tiny,
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "simulates ALE/Pong-v5, but the data is ALE/Breakout-v5" in bad.stderr + bad.stdout
    flow = subprocess.run([sys.executable, str(SCRIPT), "--data", "store", "--backbone", "flow", "--distill-from",
                           str(cwd / "run" / "simulator")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert flow.returncode != 0 and "--backbone unet" in flow.stderr + flow.stdout
    assert not (tmp_path / "store").exists()


def test_resume_with_other_model_flags_names_them_and_keeps_the_checkpoint(trained, tmp_path):
    cwd, _ = trained
    run_dir = tmp_path / "run"
    shutil.copytree(cwd / "run", run_dir)
    state = run_dir / "checkpoint" / "training_state.pt"
    before = state.read_bytes()
    tiny = [a if a != "16" else "24" for a in TINY]  # --unet.widths 8 16 16 -> 8 24 24
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--data", str(cwd / "store"), "--total-steps", "3",
                           "--output-dir", str(run_dir), "--resume"] + tiny, cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "it was trained with --unet.widths 8 16 16" in proc.stderr + proc.stdout
    assert state.read_bytes() == before
    # A run-shaping (top-level) flag is named before any weight is compared.
    proc = subprocess.run([sys.executable, str(SCRIPT), "--data", str(cwd / "store"), "--total-steps", "3",
                           "--output-dir", str(run_dir), "--resume"] + TINY + ["--context-frames", "4"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "different run (--context-frames 3)" in proc.stderr + proc.stdout
    assert state.read_bytes() == before


def test_resume_without_checkpoint_says_what_to_do(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--resume", "--output-dir", "nowhere"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no checkpoint" in proc.stderr + proc.stdout


def test_torchrun_two_process_gloo_smoke(trained, tmp_path):
    cwd, _ = trained
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this python")
    run(["--data", str(cwd / "store"), "--total-steps", "2", "--output-dir", "ddp", "--no-cuda"] + TINY, tmp_path,
        launcher=[str(torchrun), "--nproc-per-node", "2", "--standalone"])
    sim = Simulator.from_pretrained(tmp_path / "ddp" / "simulator")
    assert sim.config.training["batch_size"] == 4  # 2 clips per process x 2 processes


def test_flow_backbone_trains_and_saves(tmp_path, trained):
    cwd, _ = trained
    run(["--data", str(cwd / "store"), "--total-steps", "1", "--output-dir", "flow"] + TINY + FLOW, tmp_path)
    sim = Simulator.from_pretrained(tmp_path / "flow" / "simulator")
    assert sim.config.backbone == "flow" and type(sim.world_model).__name__ == "FlowWorldModel"


def test_interrupted_run_resumes_to_the_same_weights_and_lists_every_command(tmp_path, trained):
    """A run stopped by --max-minutes and resumed ends bitwise where an uninterrupted run ends; the uninterrupted one
    reads its batches in turn (--prefetch 0), the cut one reads them ahead (the default), so neither changes them."""
    cwd, _ = trained
    store = str(cwd / "store")
    common = ["--data", store, "--total-steps", "3", "--checkpoint-every", "100"] + TINY
    run(common + ["--output-dir", "straight", "--prefetch", "0"], tmp_path)
    first = run(common + ["--output-dir", "cut", "--max-minutes", "0"], tmp_path)  # stops after one step
    assert "stopped at step 1/3" in first.stdout and not (tmp_path / "cut" / "simulator").exists()
    run(common + ["--output-dir", "cut", "--resume"], tmp_path)
    a = Simulator.from_pretrained(tmp_path / "straight" / "simulator")
    b = Simulator.from_pretrained(tmp_path / "cut" / "simulator")
    for (name, x), y in zip(a.world_model.state_dict().items(), b.world_model.state_dict().values()):
        assert torch.equal(x, y), name
    for (name, x), y in zip(a.reward_head.state_dict().items(), b.reward_head.state_dict().values()):
        assert torch.equal(x, y), name  # its batches come from np_rng after the world model's: rewound on close
    command = b.config.training["command"]
    assert command.count("python train_world_model.py") == 2 and "--max-minutes 0" in command
    assert "--resume" in command.split(" && ")[1]
    assert b.config.training["precision"].startswith(("bf16", "fp32"))


def test_init_from_starts_at_the_given_simulator_and_rejects_another_shape(trained, tmp_path, monkeypatch, capsys):
    cwd, _ = trained
    script = _script(monkeypatch)
    source = Simulator.from_pretrained(cwd / "run" / "simulator")
    args = script.Args(unet=script.UNetFlags(widths=(8, 16, 16)), context_frames=3)
    fresh = script.build_model(args, list(source.config.action_meanings), torch.device("cpu"))
    assert any(not torch.equal(a, b) for a, b in zip(fresh.state_dict().values(),
                                                      source.world_model.state_dict().values()))
    script.init_world_model(fresh, cwd / "run" / "simulator")
    for name, value in source.world_model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    wider = script.build_model(script.Args(unet=script.UNetFlags(widths=(8, 16, 24)), context_frames=3),
                               list(source.config.action_meanings), torch.device("cpu"))
    with pytest.raises(SystemExit, match=r"keeps or narrows every width: \(8, 16, 16\) cannot become \(8, 16, 24\)"):
        script.init_world_model(wider, cwd / "run" / "simulator")
    cell4 = script.build_model(script.Args(unet=script.UNetFlags(widths=(8, 16, 16), cell=4), context_frames=3),
                               list(source.config.action_meanings), torch.device("cpu"))
    with pytest.raises(SystemExit, match="4x4 space-to-depth|2x2 space-to-depth cells and --unet.cell is 4"):
        script.init_world_model(cell4, cwd / "run" / "simulator")
    # A narrower model starts from the source's pruned channels: the same action table, fewer level-1 channels,
    # each pool0 row one of the source's.
    narrower = script.build_model(script.Args(unet=script.UNetFlags(widths=(8, 8, 8)), context_frames=3),
                                  list(source.config.action_meanings), torch.device("cpu"))
    script.init_world_model(narrower, cwd / "run" / "simulator")
    assert "pruned its channels from widths (8, 16, 16) to (8, 8, 8)" in capsys.readouterr().out
    table = "action_embedder.table.weight"
    assert torch.equal(narrower.state_dict()[table], source.world_model.state_dict()[table])
    pool = source.world_model.state_dict()["pool0.weight"]
    assert all(any(torch.equal(row, r) for r in pool) for row in narrower.state_dict()["pool0.weight"])
    assert "pruned from widths (8, 16, 16) to (8, 8, 8)" in script.describe_init_source(cwd / "run" / "simulator",
                                                                                        (8, 8, 8))
    with pytest.raises(SystemExit, match="no unet_model.safetensors or flow_model.safetensors"):
        script.init_world_model(fresh, tmp_path)
    # Another game (ALE's 18 actions, the source is Breakout's 4): every weight but the action table comes from the
    # source; the table is rebuilt, its rows for the keys Breakout has (NOOP, FIRE, RIGHT, LEFT) copied.
    from dws_gym.models.actions import ALE_ACTION_MEANINGS

    table = "action_embedder.table.weight"
    source_table = source.world_model.state_dict()[table]
    source_meanings = list(source.config.action_meanings)
    other_game = script.build_model(args, list(ALE_ACTION_MEANINGS), torch.device("cpu"))
    script.init_world_model(other_game, cwd / "run" / "simulator", list(ALE_ACTION_MEANINGS))
    rebuilt = other_game.state_dict()[table]
    assert rebuilt.shape[0] == 18
    for j, meaning in enumerate(ALE_ACTION_MEANINGS):
        if meaning in source_meanings:
            assert torch.equal(rebuilt[j], source_table[source_meanings.index(meaning)]), meaning
        else:
            assert not any(torch.equal(rebuilt[j], row) for row in source_table), meaning
    for name, value in source.world_model.state_dict().items():
        if name != table:
            assert torch.equal(other_game.state_dict()[name], value), name
    # The same number of actions with other meanings is another game too; the same meanings take the source's table.
    meanings = ["NOOP", "FIRE", "UP", "DOWN"]
    same_count = script.build_model(args, meanings, torch.device("cpu"))
    script.init_world_model(same_count, cwd / "run" / "simulator", meanings)
    for j in (0, 1):  # NOOP and FIRE are Breakout's too; UP and DOWN are new
        assert torch.equal(same_count.state_dict()[table][j], source_table[source_meanings.index(meanings[j])])
    assert not torch.equal(same_count.state_dict()[table][2:], source_table[2:])
    same_game = script.build_model(args, list(source.config.action_meanings), torch.device("cpu"))
    script.init_world_model(same_game, cwd / "run" / "simulator", list(source.config.action_meanings))
    assert torch.equal(same_game.state_dict()[table], source.world_model.state_dict()[table])
    # Action sentences are this game's: a text-conditioned source never lends them (same shape or not).
    from dws_gym.models.unet import UNetConfig, UNetWorldModel

    config = UNetConfig(widths=(8, 16, 16), context_frames=3, num_actions=4, action_text_dim=6)
    text_source = UNetWorldModel(config, action_text_embeddings=torch.randn(4, 6))
    text_source.save_pretrained(tmp_path / "text_source")
    text_target = UNetWorldModel(config, action_text_embeddings=torch.randn(4, 6))
    sentences = text_target.state_dict()["action_embedder.text_embeddings"].clone()
    script.init_world_model(text_target, tmp_path / "text_source")
    assert torch.equal(text_target.state_dict()["action_embedder.text_embeddings"], sentences)
    assert torch.equal(text_target.state_dict()["action_position"], text_source.state_dict()["action_position"])
    damaged = tmp_path / "damaged"
    shutil.copytree(cwd / "run" / "simulator" / "world_model", damaged)
    weights = damaged / "unet_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(SystemExit, match="--init-from: .*unet_model.safetensors.*re-download or re-save it"):
        script.init_world_model(fresh, damaged)

    # The script: a fine-tune of that simulator runs and its card lists the command with --init-from.
    run(["--data", str(cwd / "store"), "--total-steps", "1", "--output-dir", "tuned", "--unet.context-noise", "0.2",
         "--init-from", str(cwd / "run" / "simulator")] + TINY, tmp_path)
    tuned = Simulator.from_pretrained(tmp_path / "tuned" / "simulator")
    assert tuned.world_model.config.context_noise == pytest.approx(0.2)
    card = (tmp_path / "tuned" / "simulator" / "README.md").read_text()
    assert "--init-from" in card and "trained from scratch on the data below" not in card
    source_text = f"{cwd / 'run' / 'simulator'} (a simulator of ALE/Breakout-v5, trained from scratch)"
    assert f"weights started from those of `{source_text}`" in card
    assert script.describe_init_source(tmp_path / "tuned" / "simulator") == (
        f"{tmp_path / 'tuned' / 'simulator'} (a simulator of ALE/Breakout-v5, itself fine-tuned from {source_text})")


def test_pretrained_path_takes_its_settings_from_the_flow_flags(tmp_path, monkeypatch):
    """--pretrained: the flow group's training / sampling settings reach the Wan model; its sizes come from Wan."""
    from tiny_sim import make_tiny_wan_folder

    script = _script(monkeypatch)
    folder = make_tiny_wan_folder(tmp_path / "wan")
    flow = script.FlowFlags(working_resolution=32, prompt_max_length=8, sample_shift=3.0, sampling_steps=2,
                            context_noise=0.05, motion_c=2.0, num_layers=7)
    args = script.Args(backbone="flow", pretrained=str(folder), context_frames=2, flow=flow)
    model = script.build_model(args, ["NOOP", "FIRE", "RIGHT", "LEFT"], torch.device("cpu"), frame_size=32)
    cfg = model.config
    assert (cfg.space, cfg.working_resolution, cfg.prompt_max_length, cfg.context_frames) == ("latent", 32, 8, 2)
    assert (cfg.sample_shift, cfg.sampling_steps, cfg.context_noise, cfg.motion_c) == (3.0, 2, 0.05, 2.0)
    assert cfg.parametrization == "v" and cfg.wan_config["num_layers"] == 2  # Wan's own, not --flow.num-layers 7
    assert cfg.prompt.startswith("A video of the game Breakout")
    with pytest.raises(SystemExit, match="pass --backbone flow with it"):
        script.build_model(script.Args(pretrained=str(folder)), ["NOOP"], torch.device("cpu"))


def test_a_patch_size_that_does_not_divide_the_frames_is_refused_before_training(trained, tmp_path):
    cwd, _ = trained
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--data", str(cwd / "store"), "--reward-patch-size", "128",
                           "--total-steps", "2", "--output-dir", str(tmp_path / "run")] + TINY,
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "--reward-patch-size 128 does not divide the 64x64 frames" in proc.stderr + proc.stdout
    assert not (tmp_path / "run" / "checkpoint").exists() and not (tmp_path / "run" / "simulator").exists()
