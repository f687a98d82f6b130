"""Fine-tune a video generative model into an action-conditioned world simulator with DWS.

Data comes from a trajectory store (collected with a random policy first if the folder is empty). The backbone is
the pixel U-Net of `dws_gym.models.unet` (`--backbone unet`, the default and the shipped Breakout recipe) or a
rectified-flow Wan transformer (`--backbone flow`): a small pixel-space one trained from scratch, or a pre-trained
Wan2.1 (`--pretrained Wan-AI/Wan2.1-T2V-1.3B-Diffusers` or a local folder in that layout) run in its VAE latent space.
The DWS action module conditions every block per frame; the loss is motion-reinforced. `--init-from` starts from
the world model of an existing simulator folder (fine-tuning a shipped simulator on new data or with a new recipe).
A reward / termination head is trained on the real transitions, then the held-out table (open-loop rollouts next to
copying the last frame) is printed, and the simulator folder is saved (and pushed to the Hub with --push-to-hub).

    python train_world_model.py                                # short CPU demo of the whole pipeline
    # the recipe of the simulator shipped for dws/Breakout-v0 (its model card lists every command it ran):
    python -m dws_gym.collect --env-id ALE/Breakout-v5 --steps 120000 --num-envs 8 --seed 1 \
        --out data/breakout-tracker --policy scripted:breakout-tracker:0.25
    python train_world_model.py --data data/breakout-tracker --total-steps 2400 --warmup-steps 100 --batch-size 32 \
        --learning-rate 1e-3 --eval-clips 128 --output-dir runs/breakout-unet   # --resume continues a stopped run
    python train_world_model.py --data data/breakout-tracker --init-from runs/breakout-unet/simulator \
        --unet.context-noise 0.2 --horizon 6 --total-steps 1000 --warmup-steps 50 --batch-size 32 \
        --learning-rate 5e-4 --eval-clips 128 --unet.keep-below 0.07 --output-dir runs/breakout-unet-cn
    torchrun --nproc-per-node 2 train_world_model.py ...       # multi-GPU / multi-process (DDP)
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import tyro

from dws_gym.flags import build_config, config_flags
from dws_gym.models.flow_config import FlowConfig
from dws_gym.models.unet import UNetConfig

# The backbones' flags are their configs' fields (help from the configs' docstrings); what the data or the top-level
# flags decide is derived, not a flag. The recipe defaults of this script differ from the configs' in context noise.
UNetFlags = config_flags(
    UNetConfig, name="UNetFlags",
    derived=("frame_size", "channels", "context_frames", "num_actions", "action_text_dim", "format_version"),
    defaults={"context_noise": 0.1}, choices={"action_mode": Literal["frame", "none"]},
)
FlowFlags = config_flags(
    FlowConfig, name="FlowFlags",
    derived=("frame_size", "channels", "context_frames", "space", "action_space", "num_actions", "action_dim",
             "action_text_dim", "base_model", "wan_config", "vae_config", "format_version"),
    defaults={"context_noise": 0.1},
    choices={"action_mode": Literal["frame", "global", "none"], "parametrization": Literal["residual", "v"],
             "t_sampling": Literal["uniform", "logit_normal"]},
    help={"working_resolution": "pre-trained path: frames are resized to this square size before the VAE "
                                "(default 256)",
          "prompt": "pre-trained path: the static prompt the cross-attention reads (default: describes the game)"},
)
# Settings a pre-trained Wan takes from the flow flags; its sizes come from its own config.
# (Its parametrization is `v` and its DWS width 256, `from_pretrained_wan`'s defaults, not the small backbone's.)
PRETRAINED_SETTINGS = ("action_mode", "motion_c", "motion_tau", "motion_delta", "sampling_steps", "context_noise",
                       "gradient_checkpointing", "t_sampling", "logit_mean", "logit_std", "sample_shift", "kv_cache",
                       "prompt_max_length")
# Top-level flags a checkpoint must resume under (the groups' are checked against the weights, see resume_conflicts).
RUN_SHAPING = ("backbone", "pretrained", "train_mode", "context_frames", "action_text", "distill_from",
               "distill_weight", "reward_depth", "reward_memory_frames", "reward_patch_size")


@dataclass
class Args:
    exp_name: str = "train_world_model"
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
    capture_video: bool = True
    """log real-vs-predicted rollout videos to TensorBoard at evaluation (needs moviepy<2; skipped if missing)"""
    save_model: bool = True
    """save the simulator folder at the end"""
    push_to_hub: str | None = None
    """Hub repo id to upload the finished simulator to (e.g. `user/breakout-dws`)"""

    # data
    env_id: str = "ALE/Breakout-v5"
    """real env the simulator imitates"""
    data: str = "data/breakout"
    """trajectory store folder; collected with a random policy if empty"""
    collect_steps: int = 20_000
    """agent steps to collect when the store is empty"""
    held_out_fraction: float = 0.1
    """fraction of episodes (the newest) held out for evaluation"""

    # model (the backbone's own settings are the nested --unet.* / --flow.* groups below)
    backbone: Literal["unet", "flow"] = "unet"
    """model family: a pixel U-Net built from diffusers blocks (`unet`, the Breakout default, set with --unet.*) or a
    rectified-flow Wan transformer (`flow`, also the path for a pre-trained Wan2.1, set with --flow.*)"""
    init_from: str | None = None
    """start from the world-model weights of this simulator folder (or its `world_model/` folder) instead of a
    fresh model: fine-tune a shipped simulator on new data, a new recipe or another game (the model flags must match
    it, except narrower --unet.widths, which prune a U-Net source to its most important channels; a game with
    other actions gets a rebuilt action table: its actions that press the same keys as the source's start from their
    rows, the others at random at the table's scale; the reward head is trained anew; ignored by --resume, whose
    checkpoint holds the weights)"""
    distill_from: str | None = None
    """distil this simulator folder's (or world_model/ folder's) U-Net into the model being trained: every target is
    also regressed onto the teacher's prediction from the same context, actions and noise (see
    `UNetWorldModel.training_loss`), so a narrower, faster U-Net can learn a trained simulator's map (with
    --backbone unet; the teacher must read the same frames, context frames and actions)"""
    distill_weight: float = 1.0
    """weight of the teacher term against the data term (with --distill-from)"""
    pretrained: str | None = None
    """a diffusers Wan2.1 repo id or local folder (with --backbone flow); None trains a backbone from scratch"""
    train_mode: Literal["full", "module"] = "full"
    """`full` fine-tunes everything; `module` freezes the backbone and trains only the DWS module and action embedder"""
    context_frames: int = 4
    """K: context frames each step conditions on (the model's, the reward head's and the data windows')"""
    horizon: int = 4
    """H: target frames per training clip (each with its own noise level)"""
    action_text: bool = False
    """embed actions from language templates with a pre-trained text encoder (needs the `text` extra)"""
    unet: UNetFlags = field(default_factory=UNetFlags)
    """the pixel U-Net (--backbone unet); `keep_below` and `sampling_steps` are stepping settings that may change on
    --resume"""
    flow: FlowFlags = field(default_factory=FlowFlags)
    """the rectified-flow Wan transformer (--backbone flow); with --pretrained only its training and sampling
    settings apply (the sizes come from the pre-trained config)"""

    # optimisation
    total_steps: int = 400
    """world-model optimiser steps"""
    batch_size: int = 16
    """clips per step (per process)"""
    learning_rate: float = 5e-4
    """peak learning rate (AdamW)"""
    warmup_steps: int = 50
    """linear warm-up steps"""
    weight_decay: float = 0.01
    """AdamW weight decay"""
    max_grad_norm: float = 1.0
    """gradient clipping"""
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    """training precision: `auto` = bf16 autocast where the hardware has native bf16 (CUDA; CPUs with AMX or
    AVX512-BF16), fp32 elsewhere"""
    reward_steps: int = 1000
    """reward / termination head optimiser steps"""
    reward_depth: int = 2
    """reward head depth: pairs of self- and cross-attention blocks (1 halves the head's attention work per step)"""
    reward_memory_frames: int | None = None
    """how many of the newest context frames the reward head's cross-attention reads (1..context frames; 1 cuts its
    keys and values about K-fold); default: all of them"""
    reward_patch_size: int = 8
    """pixels per side of the reward head's patch tokens (a power of two >= 2 dividing the frame's sides; 16 gives a
    quarter of 8's tokens and a cheaper step)"""
    reward_batch_size: int = 64
    """transitions per reward-head step"""
    reward_learning_rate: float = 1e-3
    """reward-head learning rate (AdamW)"""
    reward_rare_fraction: float = 0.15
    """share of each reward-head batch drawn from transitions with a non-zero reward or a termination (the loss
    is then unweighted); 0 draws uniformly and weights the loss by clipped inverse class frequency instead"""
    reward_prior_correction: bool = True
    """predict rewards and terminations with the data's class prior, not the oversampled batches' (logit offsets
    log p_data / p_train, see dws_gym.models.reward_training.prior_correction)"""
    reward_dream_share: float = 0.0
    """share of each reward-head batch whose next frame the world model dreamed, open loop from real training
    windows under the real actions and labelled with the real rewards and terminations: the head learns how the
    simulator draws events (a fainter breaking brick, artefacts that are no event), as it sees them when stepping
    (dws_gym.models.reward_training.DreamedTransitions); 0 trains on real frames only"""
    reward_dream_windows: int = 2048
    """real windows dreamed for --reward-dream-share"""
    reward_dream_horizon: int = 8
    """dreamed steps per window for --reward-dream-share and --reward-calibrate-windows (labels drift as a dream
    leaves the real game)"""
    reward_calibrate_windows: int = 0
    """> 0: dream this many uniformly drawn training windows and set the head's payment threshold so that it pays on
    them as often as the real game did (dws_gym.models.reward_training.calibrate_reward_rate); 0: off"""
    retrain_reward_head: bool = False
    """with --resume: train the reward head again even if the checkpoint holds a finished one"""

    # evaluation, checkpoints
    eval_clips: int = 16
    """held-out clips for the table"""
    eval_horizon: int = 15
    """open-loop rollout length of the table"""
    log_every: int = 10
    """log losses every N steps"""
    checkpoint_every: int = 50
    """write an atomic training checkpoint every N steps"""
    checkpoint_minutes: float = 5.0
    """also write one whenever this many minutes passed since the last (long runs survive interruption)"""
    prefetch: int = 2
    """training batches read from the store ahead of the steps, by as many threads (0: read in turn); the batches and
    a resumed run are the same either way"""
    max_minutes: float | None = None
    """stop training the world model after this many minutes of this invocation (checkpointed; --resume continues
    it, or the run finishes with the steps done so far when --finish-at-limit is set)"""
    finish_at_limit: bool = False
    """with --max-minutes: after the limit, train the reward head and save the simulator from the steps done"""
    budget_minutes: float | None = None
    """fit the run to this many minutes of world-model training: after 20 timed steps, --total-steps becomes the
    smaller of itself and the steps that fit, so the learning-rate schedule completes within the budget (the
    chosen total is stored in the checkpoint and kept on --resume)"""
    num_start_states: int = 64
    """real start clips bundled with the simulator"""
    output_dir: str | None = None
    """run folder (checkpoint, simulator, TensorBoard logs); default runs/{run_name}"""
    resume: bool = False
    """continue the run in --output-dir from its last checkpoint"""
    progress: bool = True
    """show progress bars"""


def game_prompt(env_id: str) -> str:
    game = env_id.split("/")[-1].split("-")[0]
    return f"A video of the game {game}, played by an agent, seen from a fixed camera, pixel-art graphics."


GAME_TEXT_BUFFERS = ("action_embedder.text_embeddings", "prompt_embeds")
"""Frozen buffers built from the game's own text (its action sentences and prompt): never taken from another game."""


def _source_config(folder: Path) -> dict[str, Any] | None:
    """The ``simulator_config.json`` of the simulator folder holding ``folder`` (None for a bare world-model folder
    or an unreadable config)."""
    for candidate in (folder / "simulator_config.json", folder.parent / "simulator_config.json"):
        if candidate.is_file():
            try:
                config = json.loads(candidate.read_text())
            except ValueError:
                return None
            return config if isinstance(config, dict) else None
    return None


def _source_action_meanings(folder: Path) -> list[str] | None:
    """The action meanings recorded in the simulator folder holding ``folder`` (None when not recorded)."""
    meanings = (_source_config(folder) or {}).get("action_meanings")
    return list(meanings) if isinstance(meanings, list) else None


def _source_unet_config(folder: Path) -> Any:
    """The :class:`~dws_gym.models.unet.UNetConfig` of a U-Net simulator folder (or its ``world_model/``), else
    None (another backbone, or no readable config)."""
    from dws_gym.models.unet import UNET_CONFIG_NAME, UNetConfig

    if (folder / "world_model").is_dir():
        folder = folder / "world_model"
    path = folder / UNET_CONFIG_NAME
    if not path.is_file():
        return None
    try:
        return UNetConfig.from_dict(json.loads(path.read_text()), source=str(path))
    except (ValueError, TypeError):
        return None


def describe_init_source(source: str | os.PathLike, widths: tuple[int, ...] | None = None) -> str:
    """``--init-from``'s folder and what its config says of it (for the card's provenance): the game it simulates
    and where its own weights came from (a pre-trained backbone, another simulator, or from scratch); with the
    U-Net ``widths`` of the model it initialised, also whether its channels were pruned to them."""
    config = _source_config(Path(source))
    unet = _source_unet_config(Path(source))
    pruned = ""
    if widths is not None and unet is not None and tuple(unet.widths) != tuple(widths):
        pruned = f"; its channels pruned from widths {tuple(unet.widths)} to {tuple(widths)}"
    if config is not None and "env_id" in config:
        training = config.get("training") if isinstance(config.get("training"), dict) else {}
        if training.get("initialised_from"):
            origin = f"itself fine-tuned from {training['initialised_from']}"
        elif config.get("pretrained_backbone"):
            origin = f"fine-tuned from the pre-trained {config['pretrained_backbone']}"
        else:
            origin = "trained from scratch"
        return f"{source} (a simulator of {config['env_id']}, {origin}{pruned})"
    return f"{source} (no simulator config beside it: its origin is not recorded{pruned})"


def init_world_model(model: torch.nn.Module, source: str | os.PathLike, meanings: list[str] | None = None) -> None:
    """Load the world-model weights of a simulator folder (or its ``world_model/`` folder) into ``model``.

    The training-only settings of ``model``'s config (loss, noise, unroll) stay as built from the flags; only weights
    are taken, and every weight must fit, with three exceptions:

    * a pixel U-Net source wider than ``model`` (``--unet.widths`` narrower than its widths) is pruned to ``model``'s
      widths first (:func:`dws_gym.models.unet_prune.prune_unet_state`): the start of a faster student;

    and two that let a simulator of another game be the start:

    * buffers built from the game's own text (action sentences, prompt) keep ``model``'s;
    * a discrete action table is rebuilt when the source's game has another number of actions, or other action
      meanings than ``meanings`` (this game's; the source's come from its ``simulator_config.json``): an action that
      presses the same keys as a source action starts from its row, the others from random rows at the source
      table's scale (:func:`dws_gym.models.actions.transfer_action_table`).
    """
    from dws_gym.fileio import load_safetensors
    from dws_gym.models.actions import transfer_action_table
    from dws_gym.models.flow_config import FLOW_WEIGHTS_NAME
    from dws_gym.models.unet import UNET_WEIGHTS_NAME, UNetWorldModel
    from dws_gym.models.unet_prune import prune_unet_state

    folder = Path(source)
    if (folder / "world_model").is_dir():
        folder = folder / "world_model"
    names = [n for n in (UNET_WEIGHTS_NAME, FLOW_WEIGHTS_NAME) if (folder / n).is_file()]
    if not names:
        raise SystemExit(f"--init-from {source}: no {UNET_WEIGHTS_NAME} or {FLOW_WEIGHTS_NAME} in {folder}; pass a "
                         "simulator folder (it holds world_model/) or a world-model folder.")
    try:
        state, _ = load_safetensors(folder / names[0], "the world model to start from", fix="re-download or re-save it")
    except ValueError as e:
        raise SystemExit(f"--init-from: {e}") from e
    notes: list[str] = []
    unet = _source_unet_config(folder)
    if isinstance(model, UNetWorldModel) and unet is not None and unet.cell != model.config.cell:
        raise SystemExit(f"--init-from {source}: its U-Net works on {unet.cell}x{unet.cell} space-to-depth cells and "
                         f"--unet.cell is {model.config.cell}: its first and last layers do not fit. Train this "
                         f"model from scratch and learn from that one with --distill-from {source}.")
    if isinstance(model, UNetWorldModel) and unet is not None and tuple(unet.widths) != tuple(model.config.widths):
        # A narrower student starts from the trained model's most important channels (see unet_prune).
        if unet.groups != model.config.groups:
            raise SystemExit(f"--init-from {source}: pruning keeps the group norms' grouping, but the source has "
                             f"groups={unet.groups} and --unet.groups is {model.config.groups}; pass "
                             f"--unet.groups {unet.groups}.")
        try:
            state, _ = prune_unet_state(state, unet, model.config.widths)
        except ValueError as e:
            raise SystemExit(f"--init-from {source}: {e}.") from e
        notes.append(f"pruned its channels from widths {tuple(unet.widths)} to {tuple(model.config.widths)} "
                     "(the weights that matter most in each group; fine-tune it, e.g. with --distill-from)")
    own = model.state_dict()
    source_meanings = _source_action_meanings(folder)
    other_actions = meanings is not None and source_meanings is not None and source_meanings != list(meanings)
    for name, value in own.items():
        if name not in state:
            continue
        if name.endswith(GAME_TEXT_BUFFERS):
            state[name] = value
            notes.append(f"kept this model's {name}: built from this game's text")
        elif name.endswith("action_embedder.table.weight") and state[name].shape[1:] == value.shape[1:] and (
                state[name].shape != value.shape or other_actions):
            n_source = state[name].shape[0]
            known = source_meanings if source_meanings and len(source_meanings) == n_source else None
            target = list(meanings) if meanings is not None and len(meanings) == value.shape[0] else None
            table, copied = transfer_action_table(state[name], known if target else None,
                                                  target or [f"action {i}" for i in range(value.shape[0])])
            state[name] = table.to(value.dtype)
            reused = ", ".join(f"{target[j]} <- {known[i]}" for j, i in copied.items()) if known and target else ""
            notes.append(f"rebuilt {name}: the source's game has other actions ({value.shape[0]} here, {n_source} "
                         f"there); {f'rows reused for {reused}; ' if reused else ''}{value.shape[0] - len(copied)} "
                         "rows start at random, at the source table's scale")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise SystemExit(f"--init-from: the weights in {folder} do not fit the model these flags build (pass the "
                         f"--backbone / --context-frames it was trained with, and its --unet.widths or narrower ones, "
                         f"which prune it): {str(e)[:400]}") from e
    print(f"initialised the world model from {folder}")
    for note in notes:
        print(f"  {note}")


def load_teacher(source: str | os.PathLike, model: torch.nn.Module, device: torch.device, env_id: str,
                 meanings: list[str]) -> torch.nn.Module:
    """The frozen U-Net of ``--distill-from`` (a simulator folder or its ``world_model/``), checked against
    ``model`` and against the game of the data (``env_id`` and its action ``meanings``, where the teacher's simulator
    config records them): ``SystemExit`` says what does not fit."""
    from dws_gym.models.unet import UNET_WEIGHTS_NAME, UNetWorldModel

    folder = Path(source)
    if (folder / "world_model").is_dir():
        folder = folder / "world_model"
    if not isinstance(model, UNetWorldModel):
        raise SystemExit("--distill-from distils a pixel U-Net: pass --backbone unet with it.")
    config = _source_config(folder) or {}
    if config.get("env_id") not in (None, env_id):
        raise SystemExit(f"--distill-from {source} simulates {config['env_id']}, but the data is {env_id}: a teacher "
                         "must simulate the game it teaches.")
    theirs = _source_action_meanings(folder)
    if theirs is not None and theirs != list(meanings):
        raise SystemExit(f"--distill-from {source}: its actions {theirs} are not the data's {list(meanings)} (in that "
                         "order).")
    if not (folder / UNET_WEIGHTS_NAME).is_file():
        raise SystemExit(f"--distill-from {source}: no {UNET_WEIGHTS_NAME} in {folder}; pass a U-Net simulator folder "
                         "(it holds world_model/) or its world-model folder.")
    try:
        teacher = UNetWorldModel.from_pretrained(folder, device=device)
        model.check_teacher(teacher)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise SystemExit(f"--distill-from {source}: {e}") from e
    return teacher.requires_grad_(False)


def backbone_flags(args: Args) -> Any:
    """The flag group of the chosen backbone (``args.unet`` or ``args.flow``)."""
    return args.unet if args.backbone == "unet" else args.flow


def build_model(args: Args, meanings: list[str], device: torch.device, frame_size: int = 64, channels: int = 3):
    """The world model for these args: a U-Net or a pixel-space flow model from scratch, or a pre-trained Wan."""
    from dws_gym.models.actions import TextActionEncoder, action_texts

    game = args.env_id.split("/")[-1].split("-")[0].lower()
    if args.backbone == "unet" and args.pretrained is not None:
        raise SystemExit("--pretrained loads a Wan2.1 video model: pass --backbone flow with it.")
    if args.pretrained is not None:
        from dws_gym.models.flow import FlowWorldModel  # diffusers' transformer package: only for this backbone

        flow = args.flow
        return FlowWorldModel.from_pretrained_wan(
            args.pretrained,
            working_resolution=flow.working_resolution or 256,
            prompt=flow.prompt or game_prompt(args.env_id),
            action_texts=action_texts(meanings, game=game),
            context_frames=args.context_frames,
            frame_size=frame_size,
            device=device,
            **{k: getattr(flow, k) for k in PRETRAINED_SETTINGS},
        )
    text = TextActionEncoder().encode(action_texts(meanings, game=game)) if args.action_text else None
    derived = dict(frame_size=frame_size, channels=channels, context_frames=args.context_frames,
                   num_actions=len(meanings), action_text_dim=None if text is None else int(text.shape[1]))
    if args.backbone == "unet":
        from dws_gym.models.unet import UNetWorldModel

        return UNetWorldModel(build_config(UNetConfig, args.unet, **derived), action_text_embeddings=text).to(device)
    from dws_gym.models.flow import FlowWorldModel

    return FlowWorldModel(build_config(FlowConfig, args.flow, **derived), action_text_embeddings=text).to(device)


def flat_args(args: Args) -> dict[str, Any]:
    """The args as one level of ``name`` / ``group.name`` keys (TensorBoard's hyperparameter table)."""
    out: dict[str, Any] = {}
    for k, v in asdict(args).items():
        if isinstance(v, dict):
            out.update({f"{k}.{name}": value for name, value in v.items()})
        else:
            out[k] = v
    return out


def resume_conflicts(saved: dict[str, Any], args: Args) -> tuple[list[str], list[str]]:
    """Flags whose values differ from those a checkpoint was trained with: ``(run-shaping, backbone-group)``.

    The run-shaping top-level flags (:data:`RUN_SHAPING`) must match. Of the backbone's group, the ones that shape
    the weights show up when the checkpoint does not load; the others (training and stepping settings such as
    ``keep_below``) may change on ``--resume``. Each entry is a ``--flag value`` with the saved value. Checkpoints
    written before the groups existed (flat args) have no group to compare.
    """
    def flag(name: str, value: Any) -> str:
        text = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        return f"--{name.replace('_', '-')} {text}"

    run = [flag(k, saved[k]) for k in RUN_SHAPING if k in saved and saved[k] != getattr(args, k)]
    group = backbone_flags(args)
    saved_group = saved.get(args.backbone)
    changed = []
    if isinstance(saved_group, dict):
        for f in fields(group):
            now = getattr(group, f.name)
            old = saved_group.get(f.name, now)
            if (list(old) if isinstance(old, (list, tuple)) else old) != (list(now) if isinstance(now, tuple) else now):
                changed.append(flag(f"{args.backbone}.{f.name}", old))
    return run, changed


def check_args(args: Args) -> None:
    """Refuse flag values that cannot work, before any data or model is touched (``SystemExit`` says which)."""
    if args.reward_depth < 1:
        raise SystemExit(f"--reward-depth must be >= 1, got {args.reward_depth}.")
    if args.reward_memory_frames is not None and not 1 <= args.reward_memory_frames <= args.context_frames:
        raise SystemExit(f"--reward-memory-frames must be between 1 and --context-frames ({args.context_frames}), "
                         f"got {args.reward_memory_frames}.")
    p = args.reward_patch_size
    if p < 2 or p & (p - 1):
        raise SystemExit(f"--reward-patch-size must be a power of two >= 2, got {p}.")
    if not 0 <= args.reward_rare_fraction < 1:
        raise SystemExit(f"--reward-rare-fraction must be in [0, 1), got {args.reward_rare_fraction}.")
    if not 0 <= args.reward_dream_share < 1:
        raise SystemExit(f"--reward-dream-share must be in [0, 1), got {args.reward_dream_share}.")
    if args.reward_calibrate_windows < 0:
        raise SystemExit(f"--reward-calibrate-windows must be >= 0, got {args.reward_calibrate_windows}.")
    if args.reward_dream_windows < 1 or args.reward_dream_horizon < 1:
        raise SystemExit("--reward-dream-windows and --reward-dream-horizon must be positive, got "
                         f"{args.reward_dream_windows} and {args.reward_dream_horizon}.")
    if args.prefetch < 0:
        raise SystemExit(f"--prefetch must be >= 0 (0 reads each batch in turn), got {args.prefetch}.")
    if not math.isfinite(args.distill_weight) or args.distill_weight < 0:
        raise SystemExit(f"--distill-weight must be >= 0, got {args.distill_weight}.")
    if args.distill_from is not None and args.backbone != "unet":
        raise SystemExit("--distill-from distils a pixel U-Net: pass --backbone unet with it.")
    if args.retrain_reward_head and not args.resume:
        raise SystemExit("--retrain-reward-head retrains the head of a finished run; pass it with --resume.")


class _LossModule(torch.nn.Module):
    """DDP wraps ``forward`` only: route the world model's training loss through it (with the distillation
    teacher, kept out of the module's parameters so DDP neither syncs nor checkpoints it)."""

    def __init__(self, model: torch.nn.Module, teacher: torch.nn.Module | None = None,
                 distill_weight: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self._teacher = (teacher,)  # a tuple: not a registered submodule
        self.distill_weight = distill_weight

    def forward(self, frames, actions, mask, generator):  # noqa: D102
        teacher = self._teacher[0]
        if teacher is None:
            return self.model.training_loss(frames, actions, mask, generator=generator)
        return self.model.training_loss(frames, actions, mask, generator=generator, teacher=teacher,
                                        distill_weight=self.distill_weight)


if __name__ == "__main__":
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    from dws_gym.collect import CollectArgs, collect
    from dws_gym.data import ReadAhead, TrajectoryStore, describe_policies, env_episodes, split_episodes
    from dws_gym.evaluation import evaluate_held_out, sample_eval_clips
    from dws_gym.models.conditioning import freeze_base
    from dws_gym.models.reward import RewardConfig, RewardHead
    from dws_gym.models.reward_training import (
        calibrate_reward_rate,
        calibration_dreams,
        fit_reward_head,
        prior_correction,
        reward_ends_episode_in,
        reward_head_batches,
        sign_values_from_rewards,
        with_dreams,
    )
    from dws_gym.simulator import Simulator, SimulatorConfig
    from dws_gym.training import (
        cleanup_distributed,
        load_checkpoint,
        lr_at,
        pick_device,
        restore_rng,
        rng_state,
        save_checkpoint,
        seed_everything,
        setup_distributed,
    )
    from dws_gym.cpu_allocator import keep_freed_memory
    from dws_gym.hardware import cpu_model, resolve_precision

    args = tyro.cli(Args)
    check_args(args)
    device = pick_device(args.cuda)
    precision = resolve_precision(args.dtype, device)
    # As a CPU dream env does (dws_gym.cpu_allocator). A 24-step bf16 run on two AMX cores faulted 0.30 M pages
    # instead of 15.5 M and took 141 instead of 154 s, its training steps at the same rate (its dreams went faster).
    allocator = keep_freed_memory() if device.type == "cpu" else None
    dist = setup_distributed(device)
    run_name = f"{args.env_id.replace('/', '_')}__{args.exp_name}__{args.seed}__{int(time.time())}"
    out_dir = Path(args.output_dir or f"runs/{run_name}")
    if args.resume and not (out_dir / "checkpoint").exists():
        raise SystemExit(f"--resume: no checkpoint in {out_dir / 'checkpoint'}; pass the --output-dir of the run.")
    seed_everything(args.seed + dist.rank, args.torch_deterministic)

    writer = None
    if dist.is_main:
        if args.track:
            import wandb

            wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                       config=asdict(args), name=run_name, save_code=True)
        writer = SummaryWriter(str(out_dir))  # with the run's checkpoint and simulator (a resume adds a file)
        writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in flat_args(args).items()))

    # ---------------------------------------------------------------- data
    store = TrajectoryStore(args.data, create=True)
    if len(store) == 0:
        if dist.is_main:
            print(f"{args.data} is empty: collecting {args.collect_steps} random-policy steps of {args.env_id}")
            collect(CollectArgs(env_id=args.env_id, steps=args.collect_steps, out=args.data, seed=args.seed,
                                progress=args.progress))
        if dist.enabled:
            torch.distributed.barrier()
        store.refresh()
    try:
        ours = env_episodes(store, args.env_id)
    except ValueError as e:
        raise SystemExit(f"{e}: pick another --data folder.") from None
    train_ids, held_ids = split_episodes(store, args.held_out_fraction, episode_ids=ours)
    meta = store.meta(train_ids[0])
    meanings = list(meta.action_meanings or [str(i) for i in range(meta.action_space["n"])])
    clips = store.clips(args.context_frames, args.horizon, episode_ids=train_ids)
    # Keep the last step of episodes that lost their final frame (Procgen): it carries the reward and termination.
    transitions = store.transitions(episode_ids=train_ids, frame_stack=args.context_frames, keep_unknown_final=True)
    # Draw the start clips and the held-out windows now, so too little data fails before training, not after it.
    sample_rng = np.random.default_rng(args.seed + 12345)
    start_batch = sample_eval_clips(store, train_ids, args.context_frames, 1, args.num_start_states, sample_rng,
                                    replace=True)
    eval_batch = sample_eval_clips(store, held_ids, args.context_frames, args.eval_horizon, args.eval_clips,
                                   sample_rng, replace=True)
    print(f"data: {len(train_ids)} train / {len(held_ids)} held-out episodes, {len(clips)} training windows")

    # ---------------------------------------------------------------- model
    height, width, channels = meta.obs_shape
    if height != width:
        raise SystemExit(f"frames of {args.data} are {height}x{width}; the world model needs square frames.")
    if height % args.reward_patch_size:
        raise SystemExit(f"--reward-patch-size {args.reward_patch_size} does not divide the {height}x{width} frames of "
                         f"{args.data}: pick a power of two that does (8 or 16 for 64x64 frames).")
    model = build_model(args, meanings, device, frame_size=height, channels=channels)
    if args.init_from is not None and not args.resume:
        init_world_model(model, args.init_from, meanings)
    if args.train_mode == "module" and args.backbone != "flow":
        raise SystemExit("--train-mode module freezes a pre-trained Wan backbone: use it with --backbone flow.")
    if args.train_mode == "module":
        trainable = freeze_base(model.transformer, model.action_embedder)
    else:
        trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, weight_decay=args.weight_decay)
    teacher = (None if args.distill_from is None
               else load_teacher(args.distill_from, model, device, args.env_id, meanings))
    loss_module = _LossModule(model, teacher, args.distill_weight)
    if dist.enabled:
        loss_module = torch.nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    generator = torch.Generator().manual_seed(args.seed * 1000 + dist.rank)
    np_rng = np.random.default_rng(args.seed * 1000 + dist.rank)
    # The head pays what the game pays where each sign has one reward value (CoinRun's coin: 10), else +-1; in a
    # game that ends on every reward (CoinRun, Ninja) a dreamed reward ends the dream too.
    records = transitions.step_records()
    reward_head = RewardHead(RewardConfig(context_frames=args.context_frames, num_actions=len(meanings),
                                          frame_shape=tuple(meta.obs_shape), depth=args.reward_depth,
                                          memory_frames=args.reward_memory_frames,
                                          patch_size=args.reward_patch_size,
                                          sign_values=sign_values_from_rewards(records["reward"]),
                                          reward_ends_episode=reward_ends_episode_in(
                                              records["reward"], records["terminated"], records["truncated"]))
                             ).to(device)
    start_step = 0
    reward_trained = False
    reward_prior_offsets: tuple | None = None  # prior_correction of the head's training batches, once trained
    command = "python train_world_model.py " + " ".join(os.sys.argv[1:])
    commands = [command]  # every invocation of this run, resumes included: the card's whole story
    seconds_before = 0.0  # world-model training time of earlier invocations
    sps_before = None  # their throughput, reported when this invocation trains no world-model step
    if args.resume:
        ckpt = load_checkpoint(out_dir / "checkpoint", map_location=device)
        run_changed, group_changed = resume_conflicts(ckpt.get("args", {}), args)
        if run_changed:
            raise SystemExit(f"--resume: {out_dir} was trained with a different run ({' '.join(run_changed)}); pass "
                             "those flags to resume it, or pick a new --output-dir.")
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            hint = (f"; it was trained with {' '.join(group_changed)}: pass those flags to resume it, or pick a new "
                    "--output-dir" if group_changed else "")
            raise SystemExit(f"--resume: the checkpoint in {out_dir} does not fit this model{hint}. "
                             f"{str(e)[:500]}") from e
        if group_changed:
            print(f"--resume: continuing with settings changed from the checkpoint's ({' '.join(group_changed)})")
        optimizer.load_state_dict(ckpt["optimizer"])
        restore_rng(ckpt["rng"][min(dist.rank, len(ckpt["rng"]) - 1)], generator, np_rng)
        start_step = int(ckpt["step"])
        if ckpt.get("total_steps") is not None and args.budget_minutes is not None:
            args.total_steps = int(ckpt["total_steps"])  # the budget's choice, made once
        commands = list(ckpt.get("commands", [])) + [command]
        if args.init_from is None and ckpt.get("args", {}).get("init_from"):
            args.init_from = ckpt["args"]["init_from"]  # the card keeps where the weights came from (and any pruning)
        seconds_before = float(ckpt.get("train_seconds", 0.0))
        sps_before = ckpt.get("samples_per_second")
        if "reward_head" in ckpt and not args.retrain_reward_head:  # a finished head is kept as it is
            reward_head.load_state_dict(ckpt["reward_head"])
            reward_prior_offsets = ckpt.get("reward_prior_offsets")  # absent in older checkpoints: real data only
            reward_trained = True
        print(f"resumed {out_dir} at step {start_step}")

    last_rngs: list = []
    batches: ReadAhead | None = None  # the training batches, read ahead while the world model trains
    t0: float | None = None  # start of this invocation's world-model training
    t_end: float | None = None  # its end (later checkpoints, e.g. after the reward head, do not count that time)

    def checkpoint(step: int, reward_done: bool = False, collective: bool = True) -> None:
        """Atomic checkpoint. Collective (every rank calls it) unless only rank 0 is still working."""
        rngs = [rng_state(generator, np_rng)]
        if batches is not None:  # np_rng has drawn the batches read ahead: store where the handed-out ones end
            rngs[0]["numpy"] = batches.rng_state
        if dist.enabled and collective:
            gathered: list = [None] * dist.world_size
            torch.distributed.all_gather_object(gathered, rngs[0])
            rngs = last_rngs[:] = gathered
        elif dist.enabled and last_rngs:  # keep the other ranks' streams from the last collective checkpoint
            rngs = [rngs[0]] + last_rngs[1:]
        if dist.is_main:
            spent = 0.0 if t0 is None else (t_end if t_end is not None else time.perf_counter()) - t0
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rngs, "step": step,
                     "args": asdict(args), "commands": commands, "total_steps": args.total_steps,
                     "train_seconds": seconds_before + spent,
                     "samples_per_second": samples / max(spent, 1e-9) if t0 is not None and samples else sps_before}
            if reward_done:
                state["reward_head"] = reward_head.state_dict()
                state["reward_prior_offsets"] = reward_prior_offsets
            save_checkpoint(out_dir / "checkpoint", state)

    # ---------------------------------------------------------------- train the world model
    if dist.is_main:
        print(f"precision: {precision.reason}" + (f"; {allocator}" if allocator else ""), flush=True)
    model.train()
    bar = tqdm(desc="world model", disable=not (args.progress and dist.is_main),
               initial=start_step, total=args.total_steps)
    depth = args.prefetch if start_step < args.total_steps else 0  # a finished run reads nothing ahead
    batches = ReadAhead(lambda rng: clips.draw(args.batch_size, rng), clips.get_batch, np_rng, depth=depth,
                        workers=max(1, depth))
    t0, samples = time.perf_counter(), 0
    last_ckpt = t0
    stopped_at: int | None = None  # set when --max-minutes ends the loop early
    budget_fixed = args.budget_minutes is None or start_step > 0
    step = start_step
    while step < args.total_steps:
        if not budget_fixed and step == start_step + 20:
            per_step = (time.perf_counter() - t0) / 20
            fit_t = torch.tensor([max(step + 1, int(60 * args.budget_minutes / per_step))], device=device)
            if dist.enabled:  # every rank must train the same number of steps
                torch.distributed.broadcast(fit_t, 0)
            fit = int(fit_t)
            if fit < args.total_steps:
                args.total_steps = fit
                bar.total = fit
            budget_fixed = True
            if dist.is_main:
                print(f"--budget-minutes {args.budget_minutes}: {per_step:.3f} s per step, training "
                      f"{args.total_steps} steps", flush=True)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, base_lr=args.learning_rate, warmup=args.warmup_steps, total=args.total_steps)
        batch = batches.next()
        frames = torch.from_numpy(batch["frames"]).to(device)
        actions = torch.from_numpy(batch["actions"]).to(device)
        mask = torch.from_numpy(batch["mask"]).to(device)
        with precision.autocast(device):
            loss, logs = loss_module(frames, actions, mask, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, args.max_grad_norm)
        optimizer.step()
        samples += args.batch_size * dist.world_size
        if dist.is_main and (step % args.log_every == 0 or step == args.total_steps - 1):
            sps = samples / (time.perf_counter() - t0)
            for k, v in logs.items():
                writer.add_scalar(f"losses/{k}", v, step)
            writer.add_scalar("losses/grad_norm", float(grad_norm), step)
            writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], step)
            writer.add_scalar("charts/samples_per_second", sps, step)
            bar.set_postfix(loss=f"{logs['loss']:.4f}", mse=f"{logs['mse']:.4f}", copy=f"{logs['copy_mse']:.4f}",
                            sps=f"{sps:.1f}")
            if not args.progress:  # background runs: one plain line per log interval instead of a bar
                teacher_part = f" teacher {logs['teacher_mse']:.5f}" if "teacher_mse" in logs else ""
                print(f"step {step + 1}/{args.total_steps} loss {logs['loss']:.5f} mse {logs['mse']:.5f} "
                      f"copy {logs['copy_mse']:.5f}{teacher_part} samples/s {sps:.1f}", flush=True)
        now = time.perf_counter()
        # Time-based decisions must agree across ranks: rank 0 decides, the others follow.
        due = now - last_ckpt > 60 * args.checkpoint_minutes
        out_of_time = args.max_minutes is not None and now - t0 > 60 * args.max_minutes
        if dist.enabled:  # one host-device round trip per step, only where ranks must agree
            flags = torch.tensor([due, out_of_time], device=device)
            torch.distributed.broadcast(flags, 0)
            due, out_of_time = bool(flags[0]), bool(flags[1])
        if (step + 1) % args.checkpoint_every == 0 or due or out_of_time:
            checkpoint(step + 1)
            last_ckpt = time.perf_counter()
        if out_of_time and step + 1 < args.total_steps:
            stopped_at = step + 1
            break
        step += 1
        bar.update(1)
    bar.close()
    batches.close()  # rewinds np_rng to the last batch used, as if nothing had been read ahead
    batches = None
    t_end = time.perf_counter()
    train_seconds = t_end - t0
    train_sps = samples / max(train_seconds, 1e-9) if samples else float(sps_before or 0.0)
    model.eval()
    # The DDP wrapper holds the process group: drop it now, so cleanup_distributed frees the group while the
    # interpreter is alive (freed at exit instead, gloo's threads can abort a rank after all work is done).
    loss_module = None
    if stopped_at is not None and not args.finish_at_limit:
        if dist.is_main:
            print(f"--max-minutes {args.max_minutes}: stopped at step {stopped_at}/{args.total_steps}; the checkpoint "
                  f"in {out_dir / 'checkpoint'} continues with --resume", flush=True)
        cleanup_distributed(dist)
        raise SystemExit(0)
    done_steps = stopped_at if stopped_at is not None else args.total_steps
    if done_steps > start_step and stopped_at is None:
        checkpoint(args.total_steps)

    # ---------------------------------------------------------------- reward / termination head
    if dist.is_main:
        if not reward_trained:
            stats = transitions.step_records()  # rewards / flags only: no frame is read
            if not (stats["reward"] != 0).any() or not stats["terminated"].any():
                print("warning: the training data has no non-zero reward or no termination; the reward head "
                      "cannot learn to predict them")
            sample_fn, class_w, pos_w = reward_head_batches(transitions, args.reward_rare_fraction)
            if args.reward_dream_share > 0:
                model.eval()
                dream_clips = store.clips(args.context_frames, args.reward_dream_horizon, episode_ids=train_ids)
                t_dream = time.time()
                with precision.autocast(device):
                    sample_fn, dreamed = with_dreams(sample_fn, model, dream_clips, args.reward_dream_share,
                                                     args.reward_dream_windows, np_rng,
                                                     rare_fraction=args.reward_rare_fraction,
                                                     generator=torch.Generator(device).manual_seed(args.seed),
                                                     progress=args.progress)
                print(f"reward head: {len(dreamed)} dreamed transitions from {args.reward_dream_windows} training "
                      f"windows ({time.time() - t_dream:.0f} s), {args.reward_dream_share:.0%} of each batch",
                      flush=True)
            fit_reward_head(reward_head, sample_fn, steps=args.reward_steps, lr=args.reward_learning_rate,
                            batch_size=args.reward_batch_size, generator=np_rng, progress=args.progress,
                            class_weights=class_w, pos_weight=pos_w)
            reward_head.eval()
            # The batches' prior, real and dreamed parts mixed, is known only here: kept with the head.
            reward_prior_offsets = prior_correction(
                transitions.step_records(), args.reward_rare_fraction,
                dreamed.step_records() if args.reward_dream_share > 0 else None, args.reward_dream_share)
            checkpoint(done_steps, reward_done=True, collective=False)
        if args.reward_prior_correction and args.reward_rare_fraction > 0:
            # Oversampled batches inflate the head's odds of rare events; predict with the data's prior instead.
            offsets, t_offset = reward_prior_offsets or prior_correction(transitions.step_records(),
                                                                         args.reward_rare_fraction)
            reward_head.config.reward_logit_offset, reward_head.config.termination_logit_offset = offsets, t_offset
            print(f"reward head prior correction: reward logits {tuple(round(o, 3) for o in offsets)}, "
                  f"termination logit {t_offset:.3f}", flush=True)
        calibration = None
        if args.reward_calibrate_windows:
            model.eval()
            with precision.autocast(device):
                cal_set = calibration_dreams(
                    model, store.clips(args.context_frames, args.reward_dream_horizon, episode_ids=train_ids),
                    args.reward_calibrate_windows, args.seed, progress=args.progress)
            if (cal_set.step_records()["reward"] != 0).any():
                calibration = calibrate_reward_rate(reward_head, cal_set)
                print(f"reward head calibration: {calibration.describe()}", flush=True)
            else:
                print(f"warning: none of the {len(cal_set)} calibration transitions has a reward; the head is not "
                      "calibrated (raise --reward-calibrate-windows)", flush=True)

        # ------------------------------------------------------------ simulator + held-out table
        sim_config = SimulatorConfig(
            env_id=args.env_id,
            action_meanings=meanings,
            obs_shape=tuple(meta.obs_shape),
            context_frames=args.context_frames,
            sampling_steps=int(getattr(model.config, "sampling_steps", 4)),
            backbone=args.backbone,
            pretrained_backbone=args.pretrained,
            training={
                "data": f"{len(store)} episodes / {store.num_steps} steps of {args.env_id} "
                        f"(policy: {describe_policies(store, ours)})",
                "steps": done_steps,
                "batch_size": args.batch_size * dist.world_size,
                "samples_per_second": round(train_sps, 2),
                "device": str(device) if device.type != "cpu" else f"cpu ({cpu_model()}, {torch.get_num_threads()} threads)",
                "precision": precision.reason,
                "train_minutes": round((seconds_before + train_seconds) / 60, 1),
                "command": " && ".join(commands),
            },
        )
        if args.init_from is not None:
            sim_config.training["initialised_from"] = describe_init_source(
                args.init_from, getattr(model.config, "widths", None))
        if args.distill_from is not None:
            sim_config.training["distilled_from"] = (f"{describe_init_source(args.distill_from)}, teacher term "
                                                     f"weight {args.distill_weight}")
        if calibration is not None:
            sim_config.training["reward_head_calibration"] = calibration.card_entry(args.reward_calibrate_windows,
                                                                                     args.reward_dream_horizon)
        sim = Simulator(sim_config, model, reward_head, start_batch["frames"][:, : args.context_frames],
                        start_batch["actions"][:, : args.context_frames - 1])
        result = evaluate_held_out(sim, eval_batch, horizon=args.eval_horizon, generator=generator,
                                   shuffle_rng=np_rng, keep_frames=args.capture_video)
        table = result.to_markdown()
        print(table)
        sim.config.metrics = result.to_dict()
        sim.config.metrics["table_markdown"] = table
        for row in result.table.rows:
            if isinstance(row.get("h"), int):  # per-horizon rows (the "mean" row is in the table text)
                for k, v in row.items():
                    if isinstance(v, (int, float)) and k != "h":
                        writer.add_scalar(f"eval/{k.replace(' ', '_')}", v, row["h"])
        if args.capture_video:
            try:
                real = eval_batch["frames"][:4, args.context_frames:]
                pred = result.arrays["frames"][:4]
                video = np.concatenate([real, pred], axis=3)  # side by side: real | predicted
                writer.add_video("eval/real_vs_predicted", torch.from_numpy(video).permute(0, 1, 4, 2, 3), fps=8)
            except Exception as e:  # moviepy<2 is optional
                print(f"video logging skipped: {e}")
        if args.save_model:
            folder = sim.save_pretrained(out_dir / "simulator")
            (out_dir / "held_out_table.md").write_text(table + "\n")
            print(f"simulator saved to {folder}")
        if args.push_to_hub:
            print(f"pushed to {sim.push_to_hub(args.push_to_hub)}")
        print(json.dumps({"train_samples_per_second": round(train_sps, 2), "train_seconds": round(train_seconds, 1)}))
        writer.close()
    cleanup_distributed(dist)
