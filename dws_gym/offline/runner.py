"""The run around an offline RL algorithm, shared by ``offline/cql.py`` and ``offline/iql.py``.

A script defines its hyperparameters (a subclass of :class:`OfflineConfig`) and its algorithm (an object with
``train(batch) -> logs``, ``state_dict()`` and ``load_state_dict()``); :func:`start_run` and :func:`train` do the
rest the same way for both: defaults from the dataset's game, seeding, TensorBoard (and wandb), minibatches from the
memory-mapped stores, evaluation on the real env's level ranges, atomic checkpoints, ``--resume`` and the final
``results.json``.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from dws_gym.agents import ActorCritic, PolicyConfig, save_policy
from dws_gym.data import ReadAhead, TrajectoryStore
from dws_gym.envs.real import parse_env_id
from dws_gym.hardware import Precision, resolve_precision
from dws_gym.offline.replay import OfflineReplay, describe_store
from dws_gym.policy_eval import below_test_levels, evaluate_on_levels
from dws_gym.training import global_rng_states, load_checkpoint, restore_global_rng_states, save_checkpoint

__all__ = ["RESUME_FIELDS", "OfflineAlgorithm", "OfflineConfig", "OfflineRun", "data_levels", "start_run", "train"]

RESUME_FIELDS = ("env_id", "dataset", "synthetic_dataset", "synthetic_fraction", "frame_stack", "arch", "batch_size",
                 "seed", "learning_rate", "gamma", "tau", "max_grad_norm")
"""Config fields a resumed run must keep (they shape the networks, the data or the learning rule). The fields an
algorithm's config adds to :class:`OfflineConfig` (CQL's ``alpha``, IQL's ``expectile``, ...) are kept too."""


def _resume_fields(config: OfflineConfig) -> tuple[str, ...]:
    """:data:`RESUME_FIELDS` plus the algorithm's own hyperparameters."""
    shared = {f.name for f in fields(OfflineConfig)}
    return RESUME_FIELDS + tuple(f.name for f in fields(config) if f.name not in shared)


@dataclass
class OfflineConfig:
    """Flags every offline script shares (a script subclasses it with its algorithm's hyperparameters)."""

    exp_name: str = "offline"
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

    # Optimisation
    total_steps: int = 100_000
    """gradient steps (fixed, whatever the data size)"""
    batch_size: int = 256
    """transitions per gradient step"""
    learning_rate: float = 5e-4
    """Adam learning rate"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """Polyak rate of the target networks"""
    max_grad_norm: float = 10.0
    """gradient clipping"""
    arch: Literal["impala", "nature"] = "impala"
    """trunk of every network"""
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    """precision of the networks' forward passes: auto = bf16 autocast where the hardware has native bf16 (CUDA;
    CPUs with AMX or AVX512-BF16), else fp32; weights, optimizer states, targets and losses stay float32"""
    prefetch: int = 2
    """minibatches read from the stores ahead of the gradient steps, by as many threads (0: read in turn); the
    batches and a resumed run are the same either way"""

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


class OfflineAlgorithm(Protocol):
    """What :func:`train` drives."""

    def train(self, batch: dict[str, torch.Tensor]) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class OfflineRun:
    """Everything :func:`start_run` set up."""

    config: OfflineConfig
    algorithm: str
    env_id: str
    procgen: bool
    out_dir: Path
    run_name: str
    device: torch.device
    replay: OfflineReplay
    rng: np.random.Generator
    writer: Any
    checkpoint: dict[str, Any] | None
    precision: Precision
    """what the forward passes run in (``config.dtype`` resolved on ``device``)"""
    distribution_mode: str = "easy"
    """Procgen: the mode the data was collected in, which the evaluation plays"""
    test_levels_unseen: bool | None = None
    """Procgen: whether no real episode was collected on levels >= 250 (``None``: ALE)"""

    def network(self, **extra: Any) -> ActorCritic:
        """A fresh :class:`ActorCritic` for the data's observations and actions (``extra`` goes in its config)."""
        cfg, info = self.config, self.replay.info
        obs_shape = (cfg.frame_stack, *info.obs_shape) if cfg.frame_stack > 1 else info.obs_shape
        return ActorCritic(PolicyConfig(arch=cfg.arch, obs_shape=obs_shape, num_actions=info.num_actions,
                                        env_id=self.env_id, action_meanings=info.action_meanings,
                                        extra={"algorithm": self.algorithm, **extra})).to(self.device)

    def autocast(self) -> torch.autocast:
        """The context an algorithm runs its forward passes in: bf16 autocast when :attr:`precision` is bf16
        (the algorithm casts what its losses read back to float32)."""
        return self.precision.autocast(self.device)

    def reward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The reward the loss sees: raw for Procgen, its sign for ALE (as CleanRL's DQN clips it)."""
        return batch["reward"] if self.procgen else torch.sign(batch["reward"])


def data_levels(store: TrajectoryStore) -> tuple[str, bool]:
    """What the real episodes of a Procgen store record of their levels (``collect.py``'s ``extra["levels"]``):
    ``(distribution mode, test levels unseen)``. The mode is the one the episodes share (``"easy"`` when they record
    none or several); the test levels (``PROCGEN_LEVELS["test"]``, from 250) are unseen when every episode records a
    finite level range that ends before them."""
    modes, unseen = set(), True
    for ep in store.episode_ids():
        meta = store.meta(ep)
        if meta.synthetic:
            continue
        levels = meta.extra.get("levels") or {}
        if levels.get("distribution_mode"):
            modes.add(levels["distribution_mode"])
        unseen &= below_test_levels(int(levels.get("start_level", 0)), int(levels.get("num_levels") or 0))
    return (modes.pop() if len(modes) == 1 else "easy"), unseen


def start_run(config: OfflineConfig, algorithm: str) -> OfflineRun:
    """Fill the game's defaults, check a resume, seed everything, open the logs and the data."""
    if config.prefetch < 0:
        raise SystemExit(f"--prefetch must be >= 0 (0 reads each minibatch in turn), got {config.prefetch}.")
    dataset = TrajectoryStore(config.dataset)  # opened once: its game decides the defaults, then it feeds the replay
    env_id = config.env_id or describe_store(dataset).env_id
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
        changed = {k: (ckpt["config"].get(k), getattr(config, k)) for k in _resume_fields(config)
                   if ckpt["config"].get(k) != getattr(config, k)}
        if changed:
            raise SystemExit(f"--resume: the run in {out_dir} used other settings {changed} (saved, given); pass "
                             "the saved ones.")
        run_name = ckpt["run_name"]
    if config.track:
        import wandb

        wandb.init(project=config.wandb_project_name, entity=config.wandb_entity, sync_tensorboard=True,
                   config=vars(config), name=run_name, save_code=True, resume="allow", id=run_name.replace("/", "_"))
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(out_dir))
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n%s" % (
        "\n".join([f"|{key}|{value}|" for key, value in vars(config).items()])))
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    torch.backends.cudnn.deterministic = config.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and config.cuda else "cpu")
    precision = resolve_precision(config.dtype, device)
    print(f"precision: {precision.reason}", flush=True)
    replay = OfflineReplay(dataset, config.synthetic_dataset, synthetic_fraction=config.synthetic_fraction,
                           frame_stack=config.frame_stack)
    print(f"data: {len(replay.real)} real transitions ({config.dataset})"
          + (f" + {len(replay.synthetic)} synthetic ({config.synthetic_dataset}), {replay.synthetic_fraction:.2f} of "
             "each minibatch" if replay.synthetic is not None else "")
          + (f"; {replay.left_out} time-limit ends without a next frame left out" if replay.left_out else ""),
          flush=True)
    mode, unseen = data_levels(dataset) if procgen else ("easy", None)
    if unseen is False:
        print("note: some episodes of the dataset record no level range, or one that reaches levels >= 250, so the "
              "'test' evaluation may not be on unseen levels for this policy: collect with --num-levels 200 for the "
              "split", flush=True)
    return OfflineRun(config, algorithm, env_id, procgen, out_dir, run_name, device, replay,
                      np.random.default_rng(config.seed), writer, ckpt, precision, mode, unseen)


def train(run: OfflineRun, algo: OfflineAlgorithm, policy: ActorCritic, *, deterministic_eval: bool,
          print_keys: Sequence[str], policy_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Take ``config.total_steps`` gradient steps of ``algo`` (from the checkpoint when resuming), evaluating
    ``policy`` on the real env and checkpointing as configured; write and return ``results.json``'s content."""
    cfg, writer, replay, rng = run.config, run.writer, run.replay, run.rng
    step = 0
    if run.checkpoint is not None:
        algo.load_state_dict(run.checkpoint["algo"])
        step = int(run.checkpoint["step"])
        restore_global_rng_states(run.checkpoint["rng"])
        rng.bit_generator.state = run.checkpoint["replay_rng"]
        print(f"resumed {run.out_dir} at step {step}", flush=True)
    depth = cfg.prefetch if step < cfg.total_steps else 0  # a finished run reads nothing ahead
    batches = ReadAhead(lambda g: replay.draw(cfg.batch_size, g), replay.read, rng, depth=depth,
                        workers=max(1, depth))

    def checkpoint() -> None:
        if cfg.save_model:
            save_policy(policy, run.out_dir / "policy", extra={"algorithm": run.algorithm, "step": step,
                                                               "run_name": run.run_name, **(policy_extra or {})})
        save_checkpoint(run.out_dir / "checkpoint", {
            "config": asdict(cfg), "run_name": run.run_name, "step": step, "algo": algo.state_dict(),
            "rng": global_rng_states(), "replay_rng": batches.rng_state})  # not rng's: it has read ahead

    def evaluate() -> dict[str, Any]:
        was_training = policy.training
        policy.eval()
        result = evaluate_on_levels(policy, run.env_id, cfg.eval_episodes, frame_stack=cfg.frame_stack,
                                    seed=cfg.seed + 100_000, max_steps=cfg.eval_max_steps,
                                    deterministic=deterministic_eval, distribution_mode=run.distribution_mode)
        policy.train(was_training)
        for name, r in result.items():
            writer.add_scalar(f"eval/{name}_return", r["return"], step)
            writer.add_scalar(f"eval/{name}_length", r["length"], step)
        print(f"step={step} " + " ".join(f"eval/{k}_return={v['return']:.2f}" for k, v in result.items()), flush=True)
        return result

    start_time, start_step, last_ckpt = time.time(), step, time.time()
    result: dict[str, Any] = {}
    try:
        while step < cfg.total_steps:
            logs = algo.train(OfflineReplay.to_torch(batches.next(), run.device))
            step += 1
            if step % cfg.log_every == 0 or step == cfg.total_steps:
                for k, v in logs.items():
                    writer.add_scalar(f"losses/{k}", v, step)
                sps = (step - start_step) / (time.time() - start_time)
                writer.add_scalar("charts/SPS", sps, step)
                print(f"step={step} " + " ".join(f"{k}={logs[k]:.4f}" for k in print_keys) + f" SPS={sps:.3g}",
                      flush=True)
            if cfg.eval_episodes > 0 and (step % cfg.eval_every == 0 or step == cfg.total_steps):
                result = evaluate()
            if time.time() - last_ckpt >= 60 * cfg.checkpoint_minutes:
                checkpoint()
                last_ckpt = time.time()
    finally:
        batches.close()

    checkpoint()
    if not result and cfg.eval_episodes > 0:
        result = evaluate()
    summary = {"algorithm": run.algorithm, "env_id": run.env_id, "seed": cfg.seed, "steps": step,
               "dataset": cfg.dataset, "synthetic_dataset": cfg.synthetic_dataset,
               "synthetic_fraction": replay.synthetic_fraction, "real_transitions": len(replay.real),
               "synthetic_transitions": 0 if replay.synthetic is None else len(replay.synthetic),
               "eval": result, "test_levels_unseen": run.test_levels_unseen, "precision": run.precision.reason,
               "config": asdict(cfg)}
    (run.out_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"finished at step {step}; policy, checkpoint and results.json in {run.out_dir}", flush=True)
    writer.close()
    return summary
