"""Discrete IQL on image observations, from a real dataset optionally doubled with synthesized transitions.

Implicit Q-Learning (Kostrikov et al., 2022) as the Procgen offline-RL benchmark runs it (Mediratta et al., 2023,
facebookresearch/gen_dgrl), never querying an action outside the data: ``V`` regresses to the ``expectile`` of the
twin target Q-values of the data's actions (expectile 0.8), both Q-networks to ``r + gamma (1 - done) V(s')``, and
the policy clones the data's actions weighted by ``min(exp(temperature * (Q_target - V)), 100)`` (temperature 3);
IMPALA-CNN networks, lr 3e-4, batch 512. Target Q-networks: Polyak averaging with ``tau`` every step.

Data: ``--dataset`` is a real trajectory store (``python -m dws_gym.collect``), ``--synthetic-dataset`` a store
written by ``offline/augment.py``. Minibatches are drawn from the memory-mapped stores (``next_obs`` by index), the
synthetic share set by ``--synthetic-fraction`` (default: uniform over the union). ``--total-steps`` gradient steps
are taken whatever the data size, so extra data never means extra updates. ALE rewards enter the loss as their sign,
Procgen rewards raw; the last step of a Procgen episode (its final frame is lost) is terminal.

Evaluation on the real env every ``--eval-every`` steps and at the end: Procgen on training levels 0-199 and on
unseen levels >= 250 (``eval/train_return``, ``eval/test_return``), ALE on the game (``eval/real_return``); actions
sampled from the policy. The policy is saved with ``save_policy`` (``load_policy``, the collector and
``offline/augment.py --policy`` read it); ``{output_dir}/results.json`` holds the final evaluation;
``--resume --output-dir D`` continues an interrupted run.

    python offline/iql.py --dataset data/coinrun --env-id procgen/coinrun
    python offline/iql.py --dataset data/coinrun --synthetic-dataset data/coinrun-synthetic
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import tyro
from torch.utils.tensorboard import SummaryWriter

from dws_gym.agents import ActorCritic, PolicyConfig, save_policy
from dws_gym.envs.real import parse_env_id
from dws_gym.offline import OfflineReplay, awr_policy_loss, expectile_loss, iql_q_target
from dws_gym.policy_eval import evaluate_on_levels
from dws_gym.training import global_rng_states, load_checkpoint, restore_global_rng_states, save_checkpoint


@dataclass
class TrainConfig:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, cuda will be used when available"""
    track: bool = False
    """if toggled, this experiment will be tracked with Weights and Biases"""
    wandb_project_name: str = "dws-gym"
    """the wandb's project name"""
    wandb_entity: str | None = None
    """the entity (team) of wandb's project"""
    save_model: bool = True
    """save the policy (save_policy format) at every checkpoint and at the end"""

    # Data
    dataset: str = "data/coinrun"
    """the real trajectory store"""
    synthetic_dataset: str | None = None
    """a store of synthesized transitions (offline/augment.py), mixed into every minibatch"""
    synthetic_fraction: float | None = None
    """share of each minibatch from the synthetic store (default: uniform over both stores)"""
    env_id: str | None = None
    """the real env for evaluation (default: the dataset's)"""
    frame_stack: int | None = None
    """frames per observation (default: 1 Procgen, 4 ALE)"""

    # Algorithm
    total_steps: int = 100_000
    """gradient steps (fixed, whatever the data size)"""
    batch_size: int = 512
    """transitions per gradient step"""
    learning_rate: float = 3e-4
    """Adam learning rate (Q, V and policy)"""
    gamma: float = 0.99
    """discount factor"""
    expectile: float = 0.8
    """expectile of V's regression onto the target Q-values"""
    temperature: float = 3.0
    """inverse temperature of the advantage weights"""
    max_weight: float = 100.0
    """cap of the advantage weights"""
    tau: float = 0.005
    """Polyak rate of the target Q-networks"""
    max_grad_norm: float = 10.0
    """gradient clipping"""
    arch: Literal["impala", "nature"] = "impala"
    """trunk of every network"""

    # Evaluation, checkpoints
    eval_every: int = 10_000
    """evaluate on the real env every this many gradient steps (and at the end)"""
    eval_episodes: int = 10
    """episodes per level range and evaluation (0: none)"""
    eval_max_steps: int = 27_000
    """an evaluation episode is cut after this many steps"""
    log_every: int = 100
    """write losses every this many steps"""
    checkpoint_minutes: float = 5.0
    """write a checkpoint at most this many minutes apart"""
    output_dir: str | None = None
    """run folder: TensorBoard events, policy, checkpoint, results.json (default: runs/{run_name})"""
    resume: bool = False
    """continue the run in --output-dir from its checkpoint"""


RESUME_FIELDS = ("env_id", "dataset", "synthetic_dataset", "synthetic_fraction", "frame_stack", "arch", "batch_size")
"""TrainConfig fields a resumed run must keep (they shape the networks or the data)."""


class IQL:
    """Discrete IQL; ``train(batch)`` takes one gradient step of V, both Qs and the policy and returns the logs.

    Networks are :class:`~dws_gym.agents.ActorCritic` s: the Q-networks read their logits as Q-values, V its critic
    head, the policy its logits; so the policy is saved and loaded like any other.
    """

    def __init__(self, make: Callable[[str], ActorCritic], config: TrainConfig, procgen: bool) -> None:
        self.q1, self.q2, self.v, self.actor = make("q"), make("q"), make("v"), make("policy")
        self.q1_target = copy.deepcopy(self.q1).requires_grad_(False)
        self.q2_target = copy.deepcopy(self.q2).requires_grad_(False)
        lr = config.learning_rate
        self.q_optimizer = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=lr)
        self.v_optimizer = torch.optim.Adam(self.v.parameters(), lr=lr)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.config, self.procgen = config, procgen

    def _step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> float:
        optimizer.zero_grad()
        loss.backward()
        params = [p for group in optimizer.param_groups for p in group["params"]]
        return torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm).item()

    def train(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg = self.config
        obs, action = batch["obs"], batch["action"].long().unsqueeze(1)
        reward = batch["reward"] if self.procgen else torch.sign(batch["reward"])
        with torch.no_grad():
            q_target = torch.minimum(self.q1_target(obs)[0], self.q2_target(obs)[0]).gather(1, action).squeeze(1)
            v_next = self.v.get_value(batch["next_obs"]).squeeze(1)
        # V: expectile regression onto the (data action's) target Q
        v = self.v.get_value(obs).squeeze(1)
        advantage = q_target - v
        v_loss = expectile_loss(advantage, cfg.expectile)
        self._step(v_loss, self.v_optimizer)
        # Q: one-step TD onto V(s'), no max over actions
        target = iql_q_target(reward, batch["done"], v_next, cfg.gamma)
        q1 = self.q1(obs)[0].gather(1, action).squeeze(1)
        q2 = self.q2(obs)[0].gather(1, action).squeeze(1)
        q_loss = 0.5 * ((q1 - target).pow(2).mean() + (q2 - target).pow(2).mean())
        self._step(q_loss, self.q_optimizer)
        # policy: advantage-weighted behaviour cloning
        logits, _ = self.actor(obs)
        log_prob = torch.log_softmax(logits, dim=1).gather(1, action).squeeze(1)
        actor_loss = awr_policy_loss(log_prob, advantage.detach(), cfg.temperature, cfg.max_weight)
        self._step(actor_loss, self.actor_optimizer)
        with torch.no_grad():
            for net, tgt in ((self.q1, self.q1_target), (self.q2, self.q2_target)):
                for p, tp in zip(net.parameters(), tgt.parameters()):
                    tp.lerp_(p, cfg.tau)
        return {"loss": (v_loss + q_loss + actor_loss).item(), "v_loss": v_loss.item(), "q_loss": q_loss.item(),
                "actor_loss": actor_loss.item(), "v": v.mean().item(), "advantage": advantage.mean().item()}

    def state_dict(self) -> dict:
        nets = ("q1", "q2", "v", "actor", "q1_target", "q2_target", "q_optimizer", "v_optimizer", "actor_optimizer")
        return {name: getattr(self, name).state_dict() for name in nets}

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            getattr(self, name).load_state_dict(value)


if __name__ == "__main__":
    config = tyro.cli(TrainConfig)
    replay_probe = OfflineReplay(config.dataset)  # the dataset's game decides the defaults
    env_id = config.env_id or replay_probe.info.env_id
    procgen = parse_env_id(env_id)[0] == "procgen"
    if config.frame_stack is None:
        config.frame_stack = 1 if procgen else 4
    config.env_id = env_id
    run_name = f"{env_id}__{config.exp_name}__{config.seed}__{int(time.time())}"
    out_dir = Path(config.output_dir or f"runs/{run_name}")
    ckpt = None
    if config.resume:
        if config.output_dir is None:
            raise SystemExit("--resume continues the run in --output-dir: pass that folder.")
        ckpt = load_checkpoint(out_dir / "checkpoint")
        changed = {k: (ckpt["config"][k], getattr(config, k)) for k in RESUME_FIELDS
                   if ckpt["config"][k] != getattr(config, k)}
        if changed:
            raise SystemExit(f"--resume: the run in {out_dir} used other settings {changed} (saved, given); pass "
                             "the saved ones.")
        run_name = ckpt["run_name"]
    if config.track:
        import wandb

        wandb.init(project=config.wandb_project_name, entity=config.wandb_entity, sync_tensorboard=True,
                   config=vars(config), name=run_name, save_code=True, resume="allow", id=run_name.replace("/", "_"))
    writer = SummaryWriter(str(out_dir))
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n%s" % (
        "\n".join([f"|{key}|{value}|" for key, value in vars(config).items()])))

    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    torch.backends.cudnn.deterministic = config.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and config.cuda else "cpu")
    rng = np.random.default_rng(config.seed)

    replay = OfflineReplay(config.dataset, config.synthetic_dataset, synthetic_fraction=config.synthetic_fraction,
                           frame_stack=config.frame_stack)
    info = replay.info
    obs_shape = (config.frame_stack, *info.obs_shape) if config.frame_stack > 1 else info.obs_shape
    def make(role: str) -> ActorCritic:
        return ActorCritic(PolicyConfig(arch=config.arch, obs_shape=obs_shape, num_actions=info.num_actions,
                                        env_id=env_id, action_meanings=info.action_meanings,
                                        extra={"algorithm": "iql", "role": role})).to(device)

    algo = IQL(make, config, procgen)
    policy = algo.actor
    print(f"data: {len(replay.real)} real transitions ({config.dataset})"
          + (f" + {len(replay.synthetic)} synthetic ({config.synthetic_dataset}), {replay.synthetic_fraction:.2f} of "
             "each minibatch" if replay.synthetic is not None else ""), flush=True)

    step = 0
    if ckpt is not None:
        algo.load_state_dict(ckpt["algo"])
        step = int(ckpt["step"])
        restore_global_rng_states(ckpt["rng"])
        rng.bit_generator.state = ckpt["replay_rng"]
        print(f"resumed {out_dir} at step {step}", flush=True)

    def checkpoint() -> None:
        if config.save_model:
            save_policy(policy, out_dir / "policy", extra={"algorithm": "iql", "step": step, "run_name": run_name})
        save_checkpoint(out_dir / "checkpoint", {"config": asdict(config), "run_name": run_name, "step": step,
                                                 "algo": algo.state_dict(), "rng": global_rng_states(),
                                                 "replay_rng": rng.bit_generator.state})

    def evaluate() -> dict:
        result = evaluate_on_levels(policy, env_id, config.eval_episodes, frame_stack=config.frame_stack,
                                    seed=config.seed + 100_000, max_steps=config.eval_max_steps, deterministic=False)
        for name, r in result.items():
            writer.add_scalar(f"eval/{name}_return", r["return"], step)
            writer.add_scalar(f"eval/{name}_length", r["length"], step)
        print(f"step={step} " + " ".join(f"eval/{k}_return={v['return']:.2f}" for k, v in result.items()), flush=True)
        return result

    start_time, start_step, last_ckpt = time.time(), step, time.time()
    result: dict = {}
    while step < config.total_steps:
        batch = OfflineReplay.to_torch(replay.sample(config.batch_size, rng), device)
        logs = algo.train(batch)
        step += 1
        if step % config.log_every == 0 or step == config.total_steps:
            for k, v in logs.items():
                writer.add_scalar(f"losses/{k}", v, step)
            sps = (step - start_step) / (time.time() - start_time)
            writer.add_scalar("charts/SPS", sps, step)
            print(f"step={step} v_loss={logs['v_loss']:.4f} q_loss={logs['q_loss']:.4f} "
                  f"actor_loss={logs['actor_loss']:.4f} v={logs['v']:.3f} SPS={sps:.1f}", flush=True)
        if config.eval_episodes > 0 and (step % config.eval_every == 0 or step == config.total_steps):
            result = evaluate()
        if time.time() - last_ckpt >= 60 * config.checkpoint_minutes:
            checkpoint()
            last_ckpt = time.time()

    checkpoint()
    if not result and config.eval_episodes > 0:
        result = evaluate()
    (out_dir / "results.json").write_text(json.dumps({
        "algorithm": "iql", "env_id": env_id, "seed": config.seed, "steps": step, "dataset": config.dataset,
        "synthetic_dataset": config.synthetic_dataset, "synthetic_fraction": replay.synthetic_fraction,
        "real_transitions": len(replay.real),
        "synthetic_transitions": 0 if replay.synthetic is None else len(replay.synthetic),
        "eval": result, "config": asdict(config)}, indent=2) + "\n")
    print(f"finished at step {step}; policy, checkpoint and results.json in {out_dir}", flush=True)
    writer.close()
