"""PPO inside a DWS world simulator with prioritized imagination (an MBPO-style loop on CleanRL's PPO).

The model-based RL of "Pre-Trained Video Generative Models as World Simulators" (He et al., 2025): real experience
seeds short rollouts dreamed by the simulator, and PPO learns from both. Each iteration:

1. ``num_envs`` real envs step ``num_steps`` times under the policy. Every real state with ``K`` frames of history in
   its episode enters the real-start buffer as a window of ``K`` frames and the ``K - 1`` actions between them (the
   simulator's start format); the buffer keeps the newest ``start_buffer_size`` windows.
2. ``num_dream_envs`` dreams (a :class:`~dws_gym.envs.dream.DreamVectorEnv` whose start-state sampler is that buffer)
   start from windows drawn by ``--imagination``: ``prioritized`` (by TD error), ``uniform``, or ``none`` (plain PPO
   through the same code). They run ``horizon`` steps under the same policy; the cut at ``horizon`` is a truncation,
   bootstrapped from ``V(s_H)``. A dream's frame stack starts from the last frames of its real window.
3. Each start's TD priority, the mean ``|delta_t|`` of the steps dreamed from it under the critic that acted, goes
   back to the buffer through ``info["start_id"]`` (see :class:`~dws_gym.imagination.PrioritizedStartStates`).
4. PPO (CleanRL's clipped objective, clipped value loss, per-minibatch advantage normalisation) updates on the real
   batch plus ``imagined_ratio`` imagined transitions per real one; each imagined loss term is weighted by the
   importance weight of its start window (``beta`` annealed linearly to 1 over the run).

Defaults follow CleanRL's ppo_atari.py for ALE ids (Nature-CNN, 8 envs x 128 steps, lr 2.5e-4 annealed, clip 0.1,
4 epochs x 4 minibatches, rewards clipped to their sign in the loss, a life loss ends the value target when nothing
is dreamed: simulators predict game over, not a lost life) and ppo_procgen.py for Procgen ids (IMPALA-CNN, 64 envs
x 256 steps, lr 5e-4, gamma 0.999, clip 0.2, 3 epochs x 8 minibatches, rewards scaled by a running return std and
clipped to [-10, 10]). ``--total-timesteps`` counts real env steps only.

Gymnasium 1.x autoreset: ALE and the dream env reset ``NEXT_STEP`` (the step after an end ignores its action and
returns the next episode's first frame); those steps are masked out of the loss and of GAE, and the final
observation they follow bootstraps truncations. Procgen resets ``SAME_STEP``; its final frame is lost, so every end
is terminal. Episode statistics are summed from rewards and ends.

The world model stays fixed: ``--wm-update-every`` (fine-tuning the simulator on new real data, which the paper
does for Procgen) is left out. ``--simulator`` defaults to the simulator shipped for the game (``dws/Breakout-v0``'s
for ALE/Breakout-v5).

Checkpoints (every ``checkpoint_minutes`` and at the end, both writes atomic): ``{output_dir}/policy`` (``save_policy``,
readable by ``load_policy``) and ``{output_dir}/checkpoint/training_state.pt`` (model, optimizer, global step,
iteration, python / numpy / torch RNG states, and the start-state buffer itself: its windows, ids and priorities).
``--resume --output-dir D`` continues that run where it stopped (``--total-timesteps`` may be raised); real episodes
in progress at the checkpoint restart, dreams are seeded per iteration.

    python ppo_dws.py --env-id ALE/Breakout-v5 --total-timesteps 100000                  # prioritized imagination
    python ppo_dws.py --imagination uniform        # or: --imagination none (plain PPO)
    python ppo_dws.py --output-dir runs/my_run --resume
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import tyro
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from dws_gym.agents import ActorCritic, PolicyConfig, save_policy
from dws_gym.envs.dream import DreamVectorEnv
from dws_gym.envs.real import make_real_env, parse_env_id
from dws_gym.envs.registration import simulator_for_real_env
from dws_gym.flags import flag_given
from dws_gym.imagination import PrioritizedStartStates
from dws_gym.policy_eval import (
    below_test_levels,
    describe_levels,
    evaluate_on_levels,
    evaluate_policy,
    level_ranges,
)
from dws_gym.rl import (
    ReturnScaler,
    StartWindowRecorder,
    WindowFrameStack,
    gae,
    minibatch_plan,
    ppo_losses,
    real_start_priorities,
    start_priorities,
    valid_steps,
)
from dws_gym.training import global_rng_states, load_checkpoint, restore_global_rng_states, save_checkpoint


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda will be used when available (policy and simulator)"""
    track: bool = False
    """if toggled, this experiment will be tracked with Weights and Biases"""
    wandb_project_name: str = "dws-gym"
    """the wandb's project name"""
    wandb_entity: str | None = None
    """the entity (team) of wandb's project"""
    save_model: bool = True
    """save the policy (save_policy format) at every checkpoint and at the end"""
    upload_model: bool = False
    """upload the final policy folder to the Hugging Face Hub as `{hf_entity}/{env}-{exp_name}-seed{seed}`"""
    hf_entity: str = ""
    """the user or org name of the model repository from the Hugging Face Hub"""

    # Algorithm specific arguments
    env_id: str = "ALE/Breakout-v5"
    """the real env: `ALE/<Game>-v5` or `procgen/<game>`"""
    total_timesteps: int = 100_000
    """real env steps of the run (imagined steps are not counted)"""
    learning_rate: float | None = None
    """the learning rate of the optimizer (default: 2.5e-4 ALE, 5e-4 Procgen)"""
    num_envs: int | None = None
    """the number of parallel real envs (default: 8 ALE, 64 Procgen)"""
    num_steps: int | None = None
    """the number of steps to run in each real env per policy rollout (default: 128 ALE, 256 Procgen)"""
    anneal_lr: bool | None = None
    """toggle learning rate annealing (default: on for ALE, off for Procgen)"""
    gamma: float | None = None
    """the discount factor gamma (default: 0.99 ALE, 0.999 Procgen)"""
    gae_lambda: float = 0.95
    """the lambda for the general advantage estimation"""
    num_minibatches: int | None = None
    """the number of mini-batches per epoch (default: 4 ALE, 8 Procgen)"""
    update_epochs: int | None = None
    """the K epochs to update the policy (default: 4 ALE, 3 Procgen)"""
    norm_adv: bool = True
    """toggles advantages normalization"""
    clip_coef: float | None = None
    """the surrogate clipping coefficient (default: 0.1 ALE, 0.2 Procgen)"""
    clip_vloss: bool = True
    """toggles whether or not to use a clipped loss for the value function, as per the paper"""
    ent_coef: float = 0.01
    """coefficient of the entropy"""
    vf_coef: float = 0.5
    """coefficient of the value function"""
    max_grad_norm: float = 0.5
    """the maximum norm for the gradient clipping"""
    target_kl: float | None = None
    """the target KL divergence threshold"""
    arch: Literal["nature", "impala"] | None = None
    """policy trunk (default: nature for ALE, impala for Procgen)"""
    frame_stack: int = 4
    """frames stacked in every observation (real and dreamed)"""
    episodic_life: bool = True
    """ALE: a lost life ends the value target (as CleanRL's EpisodicLifeEnv), the game goes on. Only with
    --imagination none: simulators predict game over, not a lost life, so dreams would bootstrap across the lost
    lives that end the real targets (two targets for one state); with imagination it is turned off, and asking for
    it is an error"""
    norm_reward: bool | None = None
    """scale rewards by a running std of the discounted return, clip to [-10, 10] (default: off ALE, on Procgen)"""
    procgen_num_levels: int = 0
    """Procgen: number of levels (0 = unlimited)"""
    procgen_distribution_mode: str = "easy"
    """Procgen: distribution mode"""

    # Imagination
    imagination: Literal["prioritized", "uniform", "none"] = "prioritized"
    """how dreams pick real start windows: by TD error, uniformly, or no dreams at all (plain PPO)"""
    simulator: str | None = None
    """simulator folder or Hub repo id (default: the one shipped for env_id)"""
    horizon: int = 16
    """H: steps of every imagined rollout (truncated there, bootstrapped from V(s_H))"""
    num_dream_envs: int = 32
    """dreams stepped together per imagined rollout"""
    imagined_ratio: float = 0.5
    """imagined transitions per real transition in every PPO minibatch (0.5: 512 per 1024 real at the defaults)"""
    alpha: float = 0.6
    """priority exponent: P(i) proportional to (TD priority + eps)^alpha"""
    beta: float = 0.4
    """initial importance-sampling exponent, annealed linearly to 1 over the run"""
    priority_eps: float = 1e-3
    """added to every TD priority so no start window becomes undrawable"""
    start_buffer_size: int = 20_000
    """real start windows kept (the newest; about 49 kB each with K = 4)"""
    sampling_steps: int | None = None
    """Euler steps per dreamed frame (default: the simulator's)"""
    compile_simulator: bool = False
    """torch.compile the simulator's network (1.2x faster dreams on an AMX CPU in bf16, after a compile)"""

    # Evaluation, checkpoints
    eval_every: int = 10_000
    """evaluate on the real env every this many real steps (and at the end)"""
    eval_episodes: int = 8
    """episodes per evaluation (0: no evaluation)"""
    eval_max_steps: int = 27_000
    """an evaluation episode is cut after this many steps"""
    final_eval_episodes: int = 0
    """when the run ends, play this many episodes on each named level range (Procgen: train levels 0-199 and unseen
    levels >= 250; ALE: the real game) and record the returns in the saved policy's metadata (`evaluation`) and in
    `{output_dir}/evaluation.json`: what a dataset collected with the policy reports as its behaviour policy's return"""
    checkpoint_minutes: float = 5.0
    """write a checkpoint (policy + training state) at most this many minutes apart"""
    max_minutes: float | None = None
    """stop after the first iteration that ends past this many minutes of the training loop (evaluated, checkpointed;
    `--resume` continues the run): a time budget for GPU sessions"""
    output_dir: str | None = None
    """run folder: TensorBoard events, policy, checkpoint (default: runs/{run_name})"""
    resume: bool = False
    """continue the run in --output-dir from its checkpoint"""

    # to be filled in runtime
    batch_size: int = 0
    """the real batch size (computed in runtime)"""
    minibatch_size: int = 0
    """the real part of a mini-batch (computed in runtime)"""
    num_iterations: int = 0
    """the number of iterations (computed in runtime)"""


RESUME_FIELDS = ("env_id", "imagination", "arch", "frame_stack", "num_envs", "num_steps", "start_buffer_size",
                 "num_dream_envs", "horizon", "episodic_life")
"""Args a resumed run must keep (they shape the model, the buffers or the batch)."""


def fill_defaults(args: Args, argv: Sequence[str] = ()) -> bool:
    """Fill the game-family defaults (CleanRL's Atari or Procgen PPO); return True for Procgen. ``argv``: the command
    line, to tell an explicit ``--episodic-life`` from the default."""
    procgen = parse_env_id(args.env_id)[0] == "procgen"
    defaults = dict(learning_rate=(2.5e-4, 5e-4), num_envs=(8, 64), num_steps=(128, 256), anneal_lr=(True, False),
                    gamma=(0.99, 0.999), num_minibatches=(4, 8), update_epochs=(4, 3), clip_coef=(0.1, 0.2),
                    arch=("nature", "impala"), norm_reward=(False, True))
    for name, (ale, pg) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, pg if procgen else ale)
    if not 0.0 <= args.imagined_ratio:
        raise SystemExit(f"--imagined-ratio must be >= 0, got {args.imagined_ratio}.")
    if args.eval_every < 1:
        raise SystemExit(f"--eval-every must be >= 1 real steps, got {args.eval_every}; to skip the evaluations "
                         "during training pass --eval-episodes 0.")
    if procgen or args.imagination != "none":
        if args.episodic_life and not procgen and flag_given(argv, "--episodic-life"):
            raise SystemExit("--episodic-life needs --imagination none: the simulator predicts game over, not a lost "
                             "life, so dreams would bootstrap across the lost lives that end the real value targets. "
                             "Drop the flag (imagination turns it off) or pass --imagination none.")
        args.episodic_life = False  # Procgen has no lives; dreams have no life loss
    return procgen


def shipped_simulator(env_id: str) -> str:
    """The simulator folder shipped for a real env id."""
    try:
        return simulator_for_real_env(env_id)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"{e} Or use --imagination none.") from None


def real_env_kwargs(args: Args, procgen: bool) -> dict:
    if procgen:
        return {"num_levels": args.procgen_num_levels, "distribution_mode": args.procgen_distribution_mode}
    return {}


def clip_real(reward: np.ndarray, procgen: bool) -> np.ndarray:
    """Atari rewards enter the loss as their sign (CleanRL's ClipRewardEnv)."""
    return reward if procgen else np.sign(reward)


def clip_dreamed(reward: np.ndarray, procgen: bool) -> np.ndarray:
    """Dreamed Atari rewards: the sign of the nearest integer (a point prediction of 0.02 is no reward)."""
    return reward if procgen else np.sign(np.round(reward))


def buffer_state(buffer: PrioritizedStartStates | None) -> dict | None:
    """The buffer's state with its arrays as tensors (torch.save stores those compactly)."""
    if buffer is None:
        return None
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in buffer.state_dict().items()}


if __name__ == "__main__":
    args = tyro.cli(Args)
    procgen = fill_defaults(args, sys.argv[1:])
    args.batch_size = int(args.num_envs * args.num_steps)
    args.minibatch_size = int(args.batch_size // args.num_minibatches)
    args.num_iterations = args.total_timesteps // args.batch_size
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    out_dir = Path(args.output_dir or f"runs/{run_name}")
    ckpt = None
    if args.resume:
        if args.output_dir is None:
            raise SystemExit("--resume continues the run in --output-dir: pass that folder.")
        ckpt = load_checkpoint(out_dir / "checkpoint")
        saved = dict(ckpt["args"])
        saved["episodic_life"] = saved["episodic_life"] and not procgen  # Procgen has no lives: the flag did nothing
        changed = {k: (saved[k], getattr(args, k)) for k in RESUME_FIELDS if saved[k] != getattr(args, k)}
        if "episodic_life" in changed and args.imagination != "none":
            raise SystemExit(f"--resume: the run in {out_dir} ended real value targets at a lost life while its "
                             "dreams did not, which ppo_dws.py no longer does (simulators predict no lost life); "
                             "start a new run.")
        if changed:
            raise SystemExit(f"--resume: the run in {out_dir} used other settings {changed} (saved, given); pass "
                             "the saved ones.")
        run_name = ckpt["run_name"]
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                   config=vars(args), name=run_name, save_code=True, resume="allow", id=run_name.replace("/", "_"))
    writer = SummaryWriter(str(out_dir))
    writer.add_text(
        "hyperparameters",
        "|param|value|\n|-|-|\n%s" % ("\n".join([f"|{key}|{value}|" for key, value in vars(args).items()])),
    )

    # seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    # env setup
    envs = make_real_env(args.env_id, args.num_envs, frame_stack=args.frame_stack, **real_env_kwargs(args, procgen))
    next_step_mode = not procgen  # ALE: NEXT_STEP autoreset; Procgen: SAME_STEP
    frame_shape = envs.single_observation_space.shape[-3:]
    agent = ActorCritic(PolicyConfig.from_spaces(
        envs.single_observation_space, envs.single_action_space, arch=args.arch, env_id=args.env_id,
        action_meanings=list(envs.action_meanings), extra={"algorithm": "ppo_dws", "imagination": args.imagination},
    )).to(device)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)
    scaler = ReturnScaler(args.num_envs, args.gamma) if args.norm_reward else None
    # the levels the policy trains on, recorded with it (a dataset it collects names them)
    levels = ({"start_level": 0, "num_levels": args.procgen_num_levels,
               "distribution_mode": args.procgen_distribution_mode} if procgen else None)
    (out_dir / "evaluation.json").unlink(missing_ok=True)  # an earlier call's: it describes an earlier policy

    # the simulator, the real-start buffer and the dreams
    buffer = dreams = stacker = recorder = None
    if args.imagination != "none":
        from dws_gym.simulator import Simulator

        simulator = Simulator.from_pretrained(args.simulator or shipped_simulator(args.env_id), device=device)
        if simulator.config.env_id != args.env_id or simulator.num_actions != envs.single_action_space.n:
            raise SystemExit(f"The simulator imitates {simulator.config.env_id} with {simulator.num_actions} actions; "
                             f"{args.env_id} needs {envs.single_action_space.n}.")
        buffer = PrioritizedStartStates(args.start_buffer_size, alpha=args.alpha if args.imagination == "prioritized"
                                        else 0.0, beta=args.beta, eps=args.priority_eps)
        dreams = DreamVectorEnv(simulator, args.num_dream_envs, sampling_steps=args.sampling_steps,
                                start_states=buffer, autoreset_mode="NextStep", compile=args.compile_simulator)
        stacker = WindowFrameStack(args.frame_stack, buffer.windows)
        recorder = StartWindowRecorder(args.num_envs, simulator.context_frames, frame_shape)

    # resume
    global_step, start_iteration = 0, 0
    if ckpt is not None:
        agent.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        global_step, start_iteration = int(ckpt["global_step"]), int(ckpt["iteration"])
        restore_global_rng_states(ckpt["rng"])
        if buffer is not None:
            buffer.load_state_dict(ckpt["buffer"])
        if scaler is not None and ckpt.get("scaler") is not None:
            scaler.load_state_dict(ckpt["scaler"])
            scaler.returns[:] = 0.0  # the real envs restart their episodes: no discounted return carries over
        print(f"resumed {out_dir} at global_step={global_step} (iteration {start_iteration})", flush=True)

    def save_agent(evaluation: dict | None = None) -> None:
        extra = {"global_step": global_step, "run_name": run_name, "levels": levels}
        save_policy(agent, out_dir / "policy", extra=extra if evaluation is None else {**extra, "evaluation": evaluation})

    def checkpoint(iteration: int) -> None:
        if args.save_model:
            save_agent()
        save_checkpoint(out_dir / "checkpoint", {
            "args": asdict(args), "run_name": run_name, "global_step": global_step, "iteration": iteration,
            "model": agent.state_dict(), "optimizer": optimizer.state_dict(), "rng": global_rng_states(),
            "buffer": buffer_state(buffer), "scaler": None if scaler is None else scaler.state_dict(),
        })

    # storage (observations stay uint8)
    obs_shape = envs.single_observation_space.shape
    obs = torch.zeros((args.num_steps, args.num_envs) + obs_shape, dtype=torch.uint8, device=device)
    actions = torch.zeros((args.num_steps, args.num_envs), dtype=torch.long, device=device)
    logprobs = torch.zeros((args.num_steps, args.num_envs), device=device)
    rewards = torch.zeros((args.num_steps, args.num_envs), device=device)
    terms = torch.zeros((args.num_steps, args.num_envs), dtype=torch.bool, device=device)
    truncs = torch.zeros((args.num_steps, args.num_envs), dtype=torch.bool, device=device)
    dones = torch.zeros((args.num_steps, args.num_envs), dtype=torch.bool, device=device)
    values = torch.zeros((args.num_steps, args.num_envs), device=device)
    if dreams is not None:
        h, nd = args.horizon, args.num_dream_envs
        d_obs = torch.zeros((h, nd) + obs_shape, dtype=torch.uint8, device=device)
        d_actions = torch.zeros((h, nd), dtype=torch.long, device=device)
        d_logprobs, d_rewards, d_values = (torch.zeros((h, nd), device=device) for _ in range(3))
        d_terms, d_truncs = (torch.zeros((h, nd), dtype=torch.bool, device=device) for _ in range(2))
        d_starts = np.zeros((h, nd), dtype=np.int64)

    # start the game
    start_time, start_step = time.time(), global_step
    last_ckpt = time.time()
    next_eval = (global_step // args.eval_every + 1) * args.eval_every
    next_obs, _ = envs.reset(seed=args.seed + global_step)
    if recorder is not None:
        recorder.reset(next_obs[:, -1])
    prev_done = torch.zeros(args.num_envs, dtype=torch.bool, device=device)
    ep_return, ep_length = np.zeros(args.num_envs), np.zeros(args.num_envs, dtype=np.int64)
    iteration = start_iteration

    for iteration in range(start_iteration + 1, args.num_iterations + 1):
        # Annealing the rate if instructed to do so.
        if args.anneal_lr:
            frac = 1.0 - (iteration - 1.0) / args.num_iterations
            optimizer.param_groups[0]["lr"] = frac * args.learning_rate

        # ---- real rollout
        first_done = prev_done.clone()
        emitted: list = []  # (step, envs, ids) of the start windows this rollout yields
        for step in range(0, args.num_steps):
            global_step += args.num_envs
            obs[step] = torch.as_tensor(next_obs, device=device)
            with torch.no_grad():
                action, logprob, _, value = agent.get_action_and_value(obs[step])
                values[step] = value.flatten()
            actions[step], logprobs[step] = action, logprob
            next_obs, reward, term, trunc, info = envs.step(action.cpu().numpy())
            done = term | trunc
            reset_step = prev_done.cpu().numpy() if next_step_mode else np.zeros(args.num_envs, bool)
            life_lost = info["life_lost"] if args.episodic_life else np.zeros(args.num_envs, bool)
            r = clip_real(reward, procgen)
            if scaler is not None:
                r = np.clip(scaler.scale(r, done, ~reset_step), -10, 10)
            rewards[step] = torch.as_tensor(r, dtype=torch.float32, device=device)
            terms[step] = torch.as_tensor(term | life_lost, device=device)
            truncs[step] = torch.as_tensor(trunc, device=device)
            dones[step] = torch.as_tensor(done, device=device)
            prev_done = dones[step].clone()

            ep_return += reward * ~reset_step
            ep_length += ~reset_step
            for i in np.flatnonzero(done):
                print(f"global_step={global_step}, episodic_return={ep_return[i]}")
                writer.add_scalar("charts/episodic_return", ep_return[i], global_step)
                writer.add_scalar("charts/episodic_length", ep_length[i], global_step)
                ep_return[i], ep_length[i] = 0.0, 0
            if recorder is not None:
                new_episode = reset_step if next_step_mode else done
                w_frames, w_actions = recorder.step(action.cpu().numpy(), next_obs[:, -1], new_episode,
                                                    done if next_step_mode else np.zeros(args.num_envs, bool))
                if len(w_frames):
                    emitted.append((step, np.flatnonzero(recorder.emitted), buffer.add(w_frames, w_actions)))

        valid = valid_steps(dones, first_done, next_step=next_step_mode)
        with torch.no_grad():
            next_value = agent.get_value(torch.as_tensor(next_obs, device=device)).flatten()
        advantages, returns, real_deltas = gae(rewards, values, next_value, terms, truncs, valid, gamma=args.gamma,
                                               lam=args.gae_lambda, same_step=not next_step_mode)
        if emitted:  # the new windows' first priorities: the real TD error at their last frame
            buffer.update_priorities(*real_start_priorities(real_deltas, valid, emitted))
        writer.add_scalar("charts/real_reward_mean", rewards[valid].mean().item() if valid.any() else 0.0,
                          global_step)

        # ---- imagined rollout from real start windows
        n_imagined = 0
        if dreams is not None and len(buffer) > 0:
            buffer.set_beta(min(1.0, args.beta + (1.0 - args.beta) * global_step / args.total_timesteps))
            seed = int(np.random.SeedSequence([args.seed, iteration]).generate_state(1)[0])
            _, d_info = dreams.reset(seed=seed)
            current = d_info["start_id"].copy()
            d_next = stacker.reset(current)
            d_prev_done = np.zeros(args.num_dream_envs, bool)
            for step in range(args.horizon):
                d_obs[step] = torch.as_tensor(d_next, device=device)
                d_starts[step] = current
                with torch.no_grad():
                    action, logprob, _, value = agent.get_action_and_value(d_obs[step])
                d_actions[step], d_logprobs[step], d_values[step] = action, logprob, value.flatten()
                frame, reward, term, trunc, d_info = dreams.step(action.cpu().numpy())
                r = clip_dreamed(reward, procgen)
                if scaler is not None:
                    r = np.clip(scaler.apply(r), -10, 10)
                d_rewards[step] = torch.as_tensor(r, dtype=torch.float32, device=device)
                d_terms[step] = torch.as_tensor(term, device=device)
                d_truncs[step] = torch.as_tensor(trunc, device=device)
                restarted = d_info.get("_start_id", np.zeros(args.num_dream_envs, bool))
                if restarted.any():  # NEXT_STEP: these envs ignored their action and start a new dream
                    current[restarted] = d_info["start_id"][restarted]
                d_next = stacker.step(frame, restarted, d_info.get("start_id"))
            with torch.no_grad():
                d_next_value = agent.get_value(torch.as_tensor(d_next, device=device)).flatten()
            d_valid = valid_steps(d_terms | d_truncs, torch.zeros(args.num_dream_envs, dtype=torch.bool,
                                                                  device=device))
            # the cut at the horizon is a truncation: gae bootstraps the last step from V(s_H)
            d_advantages, d_returns, d_deltas = gae(d_rewards, d_values, d_next_value, d_terms, d_truncs, d_valid,
                                                    gamma=args.gamma, lam=args.gae_lambda)
            # weights of the probabilities the starts were drawn with: before their priorities change
            d_weights = torch.as_tensor(buffer.importance_weights(d_starts.reshape(-1)), dtype=torch.float32,
                                        device=device)
            ids, priorities = start_priorities(d_deltas, d_valid, d_starts)
            dreams.update_priorities(ids, priorities)
            n_imagined = args.horizon * args.num_dream_envs
            writer.add_scalar("charts/imagined_reward_mean", d_rewards[d_valid].mean().item(), global_step)
            writer.add_scalar("charts/td_priority_mean", float(priorities.mean()) if len(priorities) else 0.0,
                              global_step)
            writer.add_scalar("charts/importance_weight_mean", d_weights.mean().item(), global_step)
            writer.add_scalar("charts/beta", buffer.beta, global_step)
            writer.add_scalar("charts/start_buffer_size", len(buffer), global_step)

        # flatten the batches: real, then imagined
        b_obs = obs.reshape((-1,) + obs_shape)
        b_logprobs, b_actions = logprobs.reshape(-1), actions.reshape(-1)
        b_advantages, b_returns, b_values = advantages.reshape(-1), returns.reshape(-1), values.reshape(-1)
        b_valid = valid.reshape(-1).float()
        b_weights = torch.ones_like(b_valid)
        if n_imagined:
            i_obs = d_obs.reshape((-1,) + obs_shape)
            i_logprobs, i_actions = d_logprobs.reshape(-1), d_actions.reshape(-1)
            i_advantages, i_returns, i_values = d_advantages.reshape(-1), d_returns.reshape(-1), d_values.reshape(-1)
            i_valid, i_weights = d_valid.reshape(-1).float(), d_weights

        # Optimizing the policy and value network
        clipfracs = []
        for epoch in range(args.update_epochs):
            for mb_real, mb_imag in minibatch_plan(args.batch_size, n_imagined, args.imagined_ratio,
                                                   args.num_minibatches):
                parts = [(b_obs, b_actions, b_logprobs, b_advantages, b_returns, b_values, b_valid, b_weights,
                          torch.as_tensor(mb_real, device=device))]
                if len(mb_imag):
                    parts.append((i_obs, i_actions, i_logprobs, i_advantages, i_returns, i_values, i_valid,
                                  i_weights, torch.as_tensor(mb_imag, device=device)))
                mb_obs, mb_actions, mb_logprobs, mb_advantages, mb_returns, mb_values, mb_valid, mb_weights = (
                    torch.cat([p[j][p[-1]] for p in parts]) for j in range(8))

                _, newlogprob, entropy, newvalue = agent.get_action_and_value(mb_obs, mb_actions)
                # masked means (NEXT_STEP reset steps count for nothing), imagined terms importance-weighted
                out = ppo_losses(newlogprob, entropy, newvalue, mb_logprobs, mb_advantages, mb_returns, mb_values,
                                 mb_valid, mb_weights, clip_coef=args.clip_coef, clip_vloss=args.clip_vloss,
                                 norm_adv=args.norm_adv)
                pg_loss, v_loss, entropy_loss = out["pg_loss"], out["v_loss"], out["entropy_loss"]
                old_approx_kl, approx_kl = out["old_approx_kl"], out["approx_kl"]
                clipfracs.append(out["clipfrac"].item())
                loss = pg_loss - args.ent_coef * entropy_loss + v_loss * args.vf_coef

                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                optimizer.step()

            if args.target_kl is not None and approx_kl > args.target_kl:
                break

        real_mask = valid.reshape(-1).cpu().numpy()
        y_pred, y_true = b_values.cpu().numpy()[real_mask], b_returns.cpu().numpy()[real_mask]
        var_y = np.var(y_true) if len(y_true) else 0.0
        explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y

        # record rewards for plotting purposes
        writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
        writer.add_scalar("losses/value_loss", v_loss.item(), global_step)
        writer.add_scalar("losses/policy_loss", pg_loss.item(), global_step)
        writer.add_scalar("losses/entropy", entropy_loss.item(), global_step)
        writer.add_scalar("losses/old_approx_kl", old_approx_kl.item(), global_step)
        writer.add_scalar("losses/approx_kl", approx_kl.item(), global_step)
        writer.add_scalar("losses/clipfrac", np.mean(clipfracs), global_step)
        writer.add_scalar("losses/explained_variance", explained_var, global_step)
        sps = int((global_step - start_step) / (time.time() - start_time))
        print("SPS:", sps, flush=True)
        writer.add_scalar("charts/SPS", sps, global_step)

        out_of_time = args.max_minutes is not None and time.time() - start_time >= 60 * args.max_minutes
        if args.eval_episodes > 0 and (global_step >= next_eval or iteration == args.num_iterations or out_of_time):
            eval_returns, eval_lengths = evaluate_policy(
                agent, args.env_id, args.eval_episodes, frame_stack=args.frame_stack, seed=args.seed + 100_000,
                max_steps=args.eval_max_steps, env_kwargs=real_env_kwargs(args, procgen))
            if eval_returns:
                writer.add_scalar("eval/episodic_return", float(np.mean(eval_returns)), global_step)
                writer.add_scalar("eval/episodic_length", float(np.mean(eval_lengths)), global_step)
                print(f"global_step={global_step}, eval/episodic_return={np.mean(eval_returns):.2f} "
                      f"over {len(eval_returns)} episodes", flush=True)
            next_eval = (global_step // args.eval_every + 1) * args.eval_every
        if time.time() - last_ckpt >= 60 * args.checkpoint_minutes:
            checkpoint(iteration)
            last_ckpt = time.time()
        if out_of_time:
            print(f"--max-minutes {args.max_minutes} reached at global_step={global_step}; --resume continues",
                  flush=True)
            break

    checkpoint(iteration)  # first: a kill during the final evaluation loses no training
    if args.final_eval_episodes > 0:
        ranges = evaluate_on_levels(agent, args.env_id, args.final_eval_episodes, frame_stack=args.frame_stack,
                                    seed=args.seed + 200_000, max_steps=args.eval_max_steps,
                                    distribution_mode=args.procgen_distribution_mode)
        # Levels >= 250 are unseen only when training kept to levels below them (num_levels 0 means every level).
        unseen = below_test_levels(0, args.procgen_num_levels) if procgen else None
        evaluation = {"global_step": global_step, "episodes": args.final_eval_episodes, "ranges": ranges,
                      "range_levels": level_ranges(args.env_id), "train_levels": levels, "test_levels_unseen": unseen}
        for name, result in ranges.items():
            writer.add_scalar(f"eval/final_return_{name}", result["return"], global_step)
        if args.save_model:
            save_agent(evaluation)
        (out_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n")
        print(f"PPO, {global_step} steps: {describe_levels(ranges)}", flush=True)
        if unseen is False:
            trained_on = ("every level" if args.procgen_num_levels == 0
                          else f"levels 0-{args.procgen_num_levels - 1}")
            print(f"note: the policy trained on {trained_on}, so levels >= 250 are not unseen levels for it (train "
                  "with --procgen-num-levels 200 for the split)", flush=True)
    print(f"finished at global_step={global_step}; policy and checkpoint in {out_dir}", flush=True)
    if args.upload_model and args.save_model:
        from huggingface_hub import HfApi

        repo_id = f"{args.hf_entity}/{args.env_id.replace('/', '-')}-{args.exp_name}-seed{args.seed}"
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(out_dir / "policy"))
    envs.close()
    if dreams is not None:
        dreams.close()
    writer.close()
