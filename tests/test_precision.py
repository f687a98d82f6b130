"""Stepping precision: ``dtype="auto" | "bf16" | "fp32"`` for the simulator and the dream env, and how it is chosen."""

import os
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import dws_gym  # noqa: F401  (registers the dream ids)
from dws_gym.cpu_allocator import keep_freed_memory
from dws_gym.envs.dream import DreamVectorEnv
from dws_gym.hardware import cpu_bf16_flags, resolve_precision
from dws_gym.models.reward import RewardConfig, RewardHead
from dws_gym.models.unet import UNET_WEIGHTS_NAME, UNetConfig, UNetWorldModel
from dws_gym.simulator import REWARD_NAME, WORLD_MODEL_DIR, Simulator, SimulatorConfig

K = 3
ENVS = 16
STEPS = 10
MEANINGS = ["NOOP", "FIRE", "RIGHT", "LEFT"]
BAD_DTYPE = "dtype must be 'auto', 'bf16' or 'fp32'"

NO_BF16_CPU = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12 64-Core Processor
flags\t\t: fpu vme de pse tsc msr sse sse2 avx avx2 fma bmi2 sha_ni
"""
AMX_CPU = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""


def unet_sim(seed: int = 0) -> Simulator:
    """A small U-Net simulator with every weight perturbed, so frames, rewards and terminations all vary."""
    torch.manual_seed(seed)
    model = UNetWorldModel(UNetConfig(widths=(8, 16, 16), groups=4, cond_dim=8, cond_hidden_dim=16, context_frames=K))
    head = RewardHead(RewardConfig(context_frames=K, num_actions=4, dim=16, depth=1, num_heads=2))
    with torch.no_grad():
        for p in [*model.parameters(), *head.parameters()]:
            p.add_(0.05 * torch.randn_like(p))
        for out in (head.reward_out, head.termination_out):  # no "quiet transition" prior: mixed decisions
            out.weight.normal_(0.0, 1.0)
            out.bias.zero_()
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(ENVS, K, 64, 64, 3), dtype=np.uint8)
    actions = rng.integers(0, 4, size=(ENVS, K - 1))
    config = SimulatorConfig(env_id="ALE/Breakout-v5", action_meanings=MEANINGS, context_frames=K, sampling_steps=1,
                             backbone="unet")
    return Simulator(config, model, head, frames, actions)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return unet_sim().save_pretrained(tmp_path_factory.mktemp("precision") / "sim", card=False)


def rollout(sim: Simulator) -> list[tuple]:
    """10 closed-loop steps of every start clip: ``(state before, action, frame, reward, terminated)`` per step."""
    state = sim.init_state(sim.start_frames, sim.start_actions)
    g = torch.Generator().manual_seed(1)
    plan = np.random.default_rng(0).integers(0, 4, (STEPS, ENVS))
    out = []
    for a in plan:
        frame, reward, term, new = sim.step(state, a, generator=g)
        assert frame.dtype == torch.uint8 and reward.dtype == torch.float32 and term.dtype == torch.bool
        out.append((state, torch.as_tensor(a), frame, reward, term))
        state = new
    return out


def test_bf16_rollout_frames_stay_close_to_fp32(folder):
    fp32 = Simulator.from_pretrained(folder)  # the default stays fp32
    bf16 = Simulator.from_pretrained(folder, dtype="bf16")
    assert not fp32.precision.bf16 and fp32.reward_head.pos.dtype == torch.float32
    assert bf16.precision.bf16 and bf16.world_model.dtype == torch.bfloat16
    assert bf16.reward_head.pos.dtype == torch.bfloat16 and bf16.reward_head.bins.dtype == torch.float32
    a, b = rollout(fp32), rollout(bf16)
    # Closed loop: each step feeds its own frames back, so the gap may grow; the tolerance holds at every step.
    gaps = [float((x[2].float() - y[2].float()).abs().mean()) for x, y in zip(a, b)]
    assert max(gaps) < 2.0, gaps  # mean |delta| of the uint8 frames below 2 levels at each of the 10 steps
    moved = float((a[-1][2].float() - a[0][2].float()).abs().mean())
    assert moved > 5.0 * max(gaps), (moved, gaps)  # ...while the frames themselves change far more


def test_bf16_rewards_and_terminations_match_fp32_away_from_the_decision_boundary(folder):
    """Same transitions (from the fp32 rollout) scored by the fp32 and the bf16 head.

    Rewards and terminations are decisions (reward class argmax, termination logit > 0) on logits that bf16 moves
    by a few hundredths, so they are identical except where the fp32 logits sit that close to a boundary; this head
    has no "quiet transition" prior, so such near-ties occur (a trained head's logits are far from them).
    """
    fp32 = Simulator.from_pretrained(folder)
    bf16 = Simulator.from_pretrained(folder, dtype="bf16")
    clear_total = agree = total = 0
    steps = rollout(fp32)
    assert len(torch.cat([x[3] for x in steps]).unique()) > 1 and len(torch.cat([x[4] for x in steps]).unique()) == 2
    for state, action, frame, reward, term in steps:
        with torch.no_grad():
            o32 = fp32.reward_head(state.frames, action, frame)
            o16 = bf16.reward_head(state.frames, action, frame)
        r16, t16 = bf16.reward_head.predict(state.frames, action, frame)
        assert r16.dtype == torch.float32 and t16.dtype == torch.bool
        assert float((o16.termination_logit.float() - o32.termination_logit).abs().max()) < 0.1
        assert float((o16.reward_logits.float() - o32.reward_logits).abs().max()) < 0.1
        top = o32.reward_logits.topk(2, dim=-1).values
        clear = ((top[:, 0] - top[:, 1]) > 0.1) & (o32.termination_logit.abs() > 0.1)
        assert torch.equal(r16[clear], reward[clear]) and torch.equal(t16[clear], term[clear])
        clear_total += int(clear.sum())
        agree += int(((r16 == reward) & (t16 == term)).sum())
        total += len(term)
    assert clear_total > 0.8 * total and agree > 0.95 * total, (clear_total, agree, total)
    print(f"bf16 vs fp32 head: {agree}/{total} decisions agree; {clear_total} clear of the boundary")


def test_set_precision_round_trip_and_save_writes_float32(folder, tmp_path):
    sim = Simulator.from_pretrained(folder, dtype="bf16")
    sim.save_pretrained(tmp_path / "again", card=False)
    assert sim.world_model.dtype == torch.bfloat16  # still stepping in bf16 after saving
    weights = load_file(str(tmp_path / "again" / WORLD_MODEL_DIR / UNET_WEIGHTS_NAME))
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}
    assert {t.dtype for t in load_file(str(tmp_path / "again" / REWARD_NAME)).values()
            if t.is_floating_point()} == {torch.float32}
    assert sim.set_precision("fp32").dtype == torch.float32 and sim.world_model.dtype == torch.float32
    auto = sim.set_precision("auto")
    assert auto.bf16 == bool(cpu_bf16_flags()) and auto.reason.startswith(auto.name)


def test_resolve_precision_reads_the_cpu_flags():
    none = resolve_precision("auto", "cpu", cpuinfo=NO_BF16_CPU)
    assert none.dtype == torch.float32 and not none.bf16
    assert none.reason == "fp32: CPU has no amx_bf16 / avx512_bf16 (given CPU)"
    amx = resolve_precision("auto", "cpu", cpuinfo=AMX_CPU)
    assert amx.dtype == torch.bfloat16 and amx.reason == "bf16: CPU has amx_bf16, avx512_bf16 (given CPU)"
    assert cpu_bf16_flags(AMX_CPU) == ["amx_bf16", "avx512_bf16"] and cpu_bf16_flags(NO_BF16_CPU) == []
    assert cpu_bf16_flags("") == []  # no /proc/cpuinfo at all: fp32
    forced = resolve_precision("bf16", "cpu", cpuinfo=NO_BF16_CPU)
    assert forced.bf16 and "emulated" in forced.reason
    assert resolve_precision("fp32", "cpu", cpuinfo=AMX_CPU).dtype == torch.float32
    assert resolve_precision(torch.bfloat16, "cpu", cpuinfo=NO_BF16_CPU).bf16
    # autocast is a no-op context in fp32
    with none.autocast("cpu"):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.parametrize("bad", ["fp16", "float16", "BF16", "", None, torch.float16])
def test_bad_dtypes_raise_a_clear_value_error(bad, folder):
    with pytest.raises(ValueError, match=BAD_DTYPE):
        resolve_precision(bad, "cpu")
    with pytest.raises(ValueError, match=BAD_DTYPE):
        Simulator.from_pretrained(folder, dtype=bad)
    with pytest.raises(ValueError, match=BAD_DTYPE):
        DreamVectorEnv(folder, 2, device="cpu", dtype=bad)


def test_dream_env_dtype_default_auto_and_metadata(folder):
    envs = gym.make_vec("dws/Dream-v0", num_envs=3, simulator=str(folder), device="cpu")
    auto = resolve_precision("auto", "cpu")
    assert envs.simulator.precision == auto and envs.metadata["precision"] == auto.reason
    # A CPU env keeps freed memory for its next step's buffers (dws_gym.cpu_allocator) and says so; one that was told
    # not to says that an earlier env set it (process-wide).
    assert envs.metadata["cpu_allocator"] == keep_freed_memory()
    envs.close()
    later = DreamVectorEnv(folder, 2, device="cpu", keep_freed_memory=False)
    assert later.metadata["cpu_allocator"] == f"{keep_freed_memory()} (set earlier in this process)"
    envs = gym.make_vec("dws/Dream-v0", num_envs=3, simulator=str(folder), device="cpu", dtype="bf16")
    envs.reset(seed=0)
    obs, reward, term, trunc, _ = envs.step(np.array([0, 1, 2]))
    assert envs.simulator.precision.bf16 and envs.metadata["precision"].startswith("bf16")
    assert obs.dtype == np.uint8 and reward.dtype == np.float32 and term.dtype == np.bool_ and trunc.dtype == np.bool_
    envs.close()
    env = gym.make("dws/Dream-v0", simulator=str(folder), device="cpu", dtype="fp32")
    assert not env.unwrapped.simulator.precision.bf16 and env.unwrapped.metadata["precision"].startswith("fp32")
    assert env.unwrapped.metadata["cpu_allocator"] == keep_freed_memory()
    env.reset(seed=0)
    obs, reward, *_ = env.step(1)
    assert obs.dtype == np.uint8 and isinstance(reward, float)
    env.close()
    with pytest.raises(ValueError, match=BAD_DTYPE):
        gym.make("dws/Dream-v0", simulator=str(folder), device="cpu", dtype="half")


def test_describe_machine_and_proc_status_bytes():
    from dws_gym.hardware import cpu_model, describe_machine, proc_status_bytes

    line = describe_machine()
    assert cpu_model() in line and f"{os.cpu_count()} cores" in line and f"torch {torch.__version__}" in line
    if sys.platform.startswith("linux"):
        rss = proc_status_bytes("VmRSS")
        assert rss > 10 * 1024**2 and rss % 1024 == 0  # a Python process with torch holds well over 10 MiB
        with pytest.raises(KeyError, match="NoSuchField"):
            proc_status_bytes("NoSuchField")


def test_compiled_step_matches_the_eager_one_and_can_be_undone():
    """``DreamVectorEnv(compile=True)`` runs ``Simulator.compile`` (inductor, fp32): the eager frames up to a rounding
    step in a few pixels; ``compile(False)`` restores the eager call exactly. (One compilation: it is slow on a CPU.)"""
    from dws_gym.envs.dream import DreamVectorEnv

    sim = unet_sim()
    state = sim.init_state(sim.start_frames, sim.start_actions)
    action = np.arange(ENVS) % 4
    eager, eager_reward, eager_term, _ = sim.step(state, action, generator=torch.Generator().manual_seed(3))
    eager_logits = sim.reward_head(state.frames, torch.as_tensor(action), eager).reward_logits
    assert DreamVectorEnv(unet_sim(), 1, device="cpu", dtype="fp32").metadata["compiled"] is None
    envs = DreamVectorEnv(sim, ENVS, device="cpu", dtype="fp32", compile=True)
    calls = "UNetWorldModel.denoise, RewardHead.frame_tokens, RewardHead.logits_from_tokens"
    assert envs.metadata["compiled"] == f"torch.compile({calls})" == sim.compiled
    compiled, reward, term, _ = sim.step(state, action, generator=torch.Generator().manual_seed(3))
    diff = (compiled.int() - eager.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01  # uint8 rounding of float-rounding differences
    # the reward head runs compiled too: the same scores on the same frames, and the same decisions here
    assert {"frame_tokens", "logits_from_tokens"} <= set(sim.reward_head.__dict__)
    torch.testing.assert_close(sim.reward_head(state.frames, torch.as_tensor(action), eager).reward_logits,
                               eager_logits, atol=1e-4, rtol=1e-4)
    assert torch.equal(reward, eager_reward) and torch.equal(term, eager_term)
    envs.reset(seed=0)
    obs, *_ = envs.step(action)
    assert obs.shape == (ENVS, 64, 64, 3)
    assert sim.compile(False) is None and "denoise" not in sim.world_model.__dict__
    assert not {"frame_tokens", "logits_from_tokens"} & set(sim.reward_head.__dict__)
    again, _, _, _ = sim.step(state, action, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again, eager)


def test_compile_takes_torch_compile_arguments_and_refuses_other_values():
    """``compile={...}`` passes keyword arguments to ``torch.compile`` (here the eager backend: tracing only, fast);
    anything but a bool or a mapping is refused before a simulator is loaded."""
    from dws_gym.envs.dream import DreamVectorEnv

    sim = unet_sim()
    envs = DreamVectorEnv(sim, 2, device="cpu", dtype="fp32", compile={"backend": "eager"})
    calls = "UNetWorldModel.denoise, RewardHead.frame_tokens, RewardHead.logits_from_tokens"
    assert envs.metadata["compiled"] == f"torch.compile({calls}, backend='eager')" == sim.compiled
    envs.reset(seed=0)
    obs, *_ = envs.step(np.array([0, 1]))
    assert obs.shape == (2, 64, 64, 3)
    with pytest.raises(ValueError, match="compile must be True, False or a dict of torch.compile keyword arguments"):
        DreamVectorEnv("no/such/simulator", 2, device="cpu", compile="inductor")
