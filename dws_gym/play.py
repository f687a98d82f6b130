"""Play a dream with the keyboard, or record it next to the real game headless.

    python -m dws_gym.play dws/Breakout-v0                                  # window: arrows / space, Esc, R
    python -m dws_gym.play dws/Breakout-v0 --headless --out breakout.gif    # real | dream, side by side
    python -m dws_gym.play dws/Breakout-v0 --headless --episodes 100 --max-steps 200 --out dream.mp4
    python -m dws_gym.play dws/Dream-v0 --simulator runs/breakout/simulator --headless --policy runs/ppo/policy

**Headless** (``--headless``) runs ``--episodes`` real games (one batched real env, seeded with ``--seed``) and as
many dreams side by side. Each dream starts from its real game's reset frame: at t = 0 that frame is the only real
frame there is, so the simulator's ``K``-frame context is that frame repeated ``K`` times with NOOP (action 0)
between the copies. Every step one action per episode is chosen from the REAL observation (uniform random with the
seed, or ``--policy``) and applied to both the real game and its dream. Rewards are summed over exactly
``--max-steps`` steps in both: episode ends are ignored for this fixed-length comparison (ALE restarts a finished
game, the dream keeps dreaming), and the first step at which each side ended is reported next to the returns.
Episode 0 is written as an animation: real on the left, dream on the right, each scaled up ``--scale`` times with
nearest-neighbour, split by a 2-pixel column that fills from the top as the episode advances (a time bar). ``.gif``
always works; ``.mp4`` needs the ``video`` extra (``pip install 'dws-gym[video]'``).

**Interactive** (the default) opens a pygame window (``pip install 'dws-gym[play]'``) on a dream started from the
simulator's bundled real start clips; ``--max-steps`` caps an episode (then it restarts). Keys: arrows move, space
fires, Q W E A S D are Procgen's extra buttons, R restarts, Esc quits; nothing pressed is NOOP.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import tyro

from dws_gym.envs.registration import DREAM_GAMES, GENERIC_ID, check_simulator_matches, default_simulator
from dws_gym.evaluation import check_action_meanings, first_end_step, lockstep_rollout
from dws_gym.simulator import Simulator

__all__ = [
    "DreamViewer",
    "PlayArgs",
    "PlayResult",
    "action_components",
    "keys_to_action",
    "main",
    "play_headless",
    "play_interactive",
    "side_by_side",
    "write_animation",
]

SEPARATOR_WIDTH = 2
"""Pixels between the real and the dream half of a recorded frame."""

_SEPARATOR_GREY = 96
_SEPARATOR_BAR = 255
_ANIMATION_SUFFIXES = (".gif", ".mp4")


@dataclass
class PlayArgs:
    """Play a dream with the keyboard, or (--headless) record it next to the real game."""

    env_id: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="ENV_ID")]
    """dream env id: dws/Breakout-v0, dws/BattleZone-v0, dws/CoinRun-v0, dws/Ninja-v0, or dws/Dream-v0 with --simulator"""
    simulator: str | None = None
    """simulator folder or Hugging Face Hub repo id 'user/repo' (default: the one shipped for the env id)"""
    headless: bool = False
    """no window: play real and dream side by side with the same actions and write an animation"""
    policy: str | None = None
    """headless: policy checkpoint folder (dws_gym.agents.save_policy); uniform random actions if omitted"""
    deterministic: bool = False
    """headless: take the policy's most likely action instead of sampling"""
    episodes: int = 1
    """headless: episodes played (as one batch); episode 0 is recorded"""
    max_steps: int = 200
    """headless: steps per episode (fixed length); interactive: episode cap before the dream restarts"""
    out: str = "dream.gif"
    """headless: animation path, .gif or .mp4 (mp4 needs the 'video' extra)"""
    seed: int = 0
    """seeds the real envs, the random policy and the dream's sampling noise"""
    fps: int = 15
    """frames per second of the animation / the window"""
    scale: int = 4
    """nearest-neighbour upscaling of the 64x64 frames"""
    device: str = "auto"
    """where the simulator (and policy) run: auto | cpu | cuda | cuda:<i>"""
    sampling_steps: int | None = None
    """Euler steps per dream step (default: the simulator's own)"""
    distribution_mode: str = "easy"
    """headless, Procgen only: easy | hard | extreme | memory | exploration"""
    data: str | None = None
    """headless: instead of real games from a reset, replay held-out episodes of this trajectory store (the last 10%
    of its episodes, as python -m dws_gym.evaluation holds them out): the dream starts from K logged mid-game frames
    and follows the logged actions next to the logged frames"""


@dataclass
class PlayResult:
    """What a headless run measured and wrote.

    Attributes:
        real_returns: float64 (E,), the real rewards summed over ``max_steps`` steps per episode.
        dream_returns: float64 (E,), the dream's predicted rewards summed over the same steps and actions.
        real_end_steps: int64 (E,), the first step (1-based) at which the real episode terminated or was
            truncated; -1 if it ran all ``max_steps`` steps.
        dream_end_steps: int64 (E,), the first step at which the reward head predicted termination; -1 if never.
        actions: int64 (E, T), the actions both sides took.
        path: the animation written (episode 0, real | dream).
        num_frames: frames in the animation (T + 1: the start frame, then one per step).
    """

    real_returns: np.ndarray
    dream_returns: np.ndarray
    real_end_steps: np.ndarray
    dream_end_steps: np.ndarray
    actions: np.ndarray
    path: Path
    num_frames: int
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- keys -> actions
_ALE_MEANING = re.compile(r"^(UP|DOWN)?(LEFT|RIGHT)?(FIRE)?$")
_BUTTONS = frozenset({"UP", "DOWN", "LEFT", "RIGHT", "FIRE", "D", "A", "W", "S", "Q", "E"})
_KEY_BUTTONS: dict[str, str] = {
    "space": "FIRE", "up": "UP", "down": "DOWN", "left": "LEFT", "right": "RIGHT",
    "d": "D", "a": "A", "w": "W", "s": "S", "q": "Q", "e": "E",
}  # fmt: skip
_OPPOSITES = (("UP", "DOWN"), ("LEFT", "RIGHT"))


def action_components(meaning: str | Sequence[str]) -> frozenset[str]:
    """The buttons an action presses: ``"UPRIGHTFIRE"`` -> {UP, RIGHT, FIRE}; ``"LEFT+UP"`` or ``("LEFT", "UP")``
    -> {LEFT, UP}; ``"NOOP"`` / ``()`` -> {}.

    Raises:
        ValueError: a meaning that is neither an ALE action name nor a Procgen key combo.
    """
    if not isinstance(meaning, str):
        parts = [str(p).upper() for p in meaning]
    elif meaning.upper() in ("NOOP", ""):
        parts = []
    elif "+" in meaning or meaning.upper() in _BUTTONS:
        parts = [p.strip().upper() for p in meaning.split("+")]
    else:
        m = _ALE_MEANING.match(meaning.upper())
        if m is None:
            raise ValueError(
                f"Unknown action meaning {meaning!r}: expected an ALE name such as 'UPLEFTFIRE' or a Procgen combo "
                "such as 'LEFT+UP'."
            )
        parts = [g for g in m.groups() if g]
    unknown = [p for p in parts if p not in _BUTTONS]
    if unknown:
        raise ValueError(f"Unknown button(s) {unknown} in action meaning {meaning!r}; buttons are {sorted(_BUTTONS)}.")
    return frozenset(parts)


def keys_to_action(pressed: Iterable[str], meanings: Sequence[str | Sequence[str]]) -> int:
    """The action index the pressed keys ask for.

    Args:
        pressed: pygame key names held down (case-insensitive): ``"space"`` (FIRE), ``"up"``, ``"down"``,
            ``"left"``, ``"right"``, and ``"q" "w" "e" "a" "s" "d"`` (Procgen's extra buttons). Others are ignored.
        meanings: the env's action meanings in index order (ALE names or Procgen combos).

    Returns:
        The action whose buttons are exactly the pressed ones; otherwise the action pressing the most of them
        and nothing else (lowest index on a tie), e.g. UP+FIRE in Breakout's minimal set is FIRE. Opposite
        arrows held together cancel. Nothing usable pressed gives NOOP (the action pressing no button, else 0).
    """
    buttons = {_KEY_BUTTONS[k.lower()] for k in pressed if k.lower() in _KEY_BUTTONS}
    for a, b in _OPPOSITES:
        if a in buttons and b in buttons:
            buttons -= {a, b}
    components = [action_components(m) for m in meanings]
    if not components:
        raise ValueError("keys_to_action needs at least one action meaning.")
    best, best_size = None, -1
    for index, comp in enumerate(components):
        if comp == buttons:
            return index
        if comp <= buttons and len(comp) > best_size:
            best, best_size = index, len(comp)
    return 0 if best is None else best


# ------------------------------------------------------------------------------------------- animation
def side_by_side(real: np.ndarray, dream: np.ndarray, scale: int = 4, progress: float = 0.0) -> np.ndarray:
    """One recorded frame: ``real | separator | dream``.

    Args:
        real: uint8 (H, W, 3).
        dream: uint8 (H, W, 3).
        scale: nearest-neighbour upscaling factor (>= 1).
        progress: fraction of the episode done, in [0, 1]; that share of the separator (from the top) is drawn
            white, the rest grey. Besides showing time, it keeps consecutive frames distinct so GIF writers do not
            merge them.

    Returns:
        uint8 (H*scale, 2*W*scale + 2, 3).
    """
    if real.shape != dream.shape or real.ndim != 3 or real.shape[-1] != 3:
        raise ValueError(f"real and dream must be (H, W, 3) frames of one shape, got {real.shape} and {dream.shape}.")
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}.")

    def up(x: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(np.asarray(x, dtype=np.uint8), scale, axis=0), scale, axis=1)

    height = real.shape[0] * scale
    sep = np.full((height, SEPARATOR_WIDTH, 3), _SEPARATOR_GREY, dtype=np.uint8)
    sep[: int(round(min(max(progress, 0.0), 1.0) * height))] = _SEPARATOR_BAR
    return np.concatenate([up(real), sep, up(dream)], axis=1)


def _check_animation_path(path: Path) -> None:
    """Fail before any work for a format we cannot write (so a 10-minute run does not die at the end)."""
    suffix = path.suffix.lower()
    if suffix not in _ANIMATION_SUFFIXES:
        raise ValueError(f"--out must end in .gif or .mp4, got {str(path)!r}.")
    if suffix == ".mp4":
        try:
            import imageio_ffmpeg

            imageio_ffmpeg.get_ffmpeg_exe()
        except Exception as e:  # ImportError, or a broken install / missing binary (RuntimeError, ...)
            raise ImportError(
                f"Writing {path} (MP4) needs a working imageio-ffmpeg: pip install 'dws-gym[video]' "
                f"({type(e).__name__}: {e}). Or write a GIF: --out {path.with_suffix('.gif')}."
            ) from e


def _write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """H.264 through imageio-ffmpeg's frame writer (the API every imageio-ffmpeg release shares)."""
    import imageio_ffmpeg

    if frames.shape[1] % 2 or frames.shape[2] % 2:  # yuv420p needs even sizes: pad with black
        frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)))
    height, width = frames.shape[1:3]
    # macro_block_size=2 keeps the exact size (the default 16 would rescale most sizes).
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, macro_block_size=2)
    writer.send(None)
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(frame).tobytes())
    finally:
        writer.close()


def write_animation(path: str | os.PathLike, frames: Sequence[np.ndarray] | np.ndarray, fps: int = 15) -> Path:
    """Write uint8 (F, H, W, 3) frames as a looping GIF or an MP4 (by suffix), atomically (temp file + rename).

    Raises:
        ValueError: another suffix, no frames, or a non-positive fps.
        ImportError: ``.mp4`` without a working imageio-ffmpeg (the message says what to install).
    """
    import imageio.v3 as iio

    path = Path(path)
    _check_animation_path(path)
    if fps < 1:
        raise ValueError(f"fps must be >= 1, got {fps}.")
    stack = np.asarray(frames, dtype=np.uint8)
    if stack.ndim != 4 or stack.shape[0] == 0 or stack.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (F, H, W, 3) with F >= 1, got shape {stack.shape}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        if path.suffix.lower() == ".gif":
            iio.imwrite(tmp, stack, extension=".gif", duration=1000.0 / fps, loop=0)
        else:
            _write_mp4(tmp, stack, fps)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# ------------------------------------------------------------------------------------------- set-up
def _dream_id(env_id: str) -> str:
    env_id = env_id.removeprefix("dws_gym:")
    if env_id not in DREAM_GAMES and env_id != GENERIC_ID:
        raise ValueError(
            f"Unknown dream env id {env_id!r}; use one of {', '.join([*DREAM_GAMES, GENERIC_ID])} "
            f"({GENERIC_ID} with --simulator)."
        )
    return env_id


def load_simulator(args: PlayArgs) -> Simulator:
    """The simulator ``args`` name (or the one shipped for ``args.env_id``), on ``args.device``.

    Raises:
        FileNotFoundError: nothing ships for the id and no ``--simulator`` was given, or the folder / repo is missing.
        ValueError: unknown id, ``dws/Dream-v0`` without ``--simulator``, or a simulator of another game.
    """
    from dws_gym.envs.dream import resolve_device

    env_id = _dream_id(args.env_id)
    source = args.simulator if args.simulator is not None else default_simulator(env_id)
    sim = Simulator.from_pretrained(source, device=resolve_device(args.device))
    check_simulator_matches(env_id, sim.config.env_id, sim.num_actions)
    return sim


def _check_args(args: PlayArgs) -> None:
    for name in ("episodes", "max_steps", "fps", "scale"):
        value = getattr(args, name)
        if int(value) != value or value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}.")
    if args.sampling_steps is not None and args.sampling_steps < 1:
        raise ValueError(f"--sampling-steps must be >= 1, got {args.sampling_steps}.")


def _derived_seed(seed: int, stream: int) -> int:
    # Separate streams from one integer: the policy's and the dream's draws must not coincide.
    return int(np.random.SeedSequence([int(seed), stream]).generate_state(1, np.uint64)[0]) >> 1


# ------------------------------------------------------------------------------------------- headless
def _prepare_headless(args: PlayArgs, simulator: Simulator | None) -> tuple[Path, str, Simulator]:
    """Checked options of a headless run: the animation path, the dream env id and its simulator."""
    _check_args(args)
    out = Path(args.out)
    _check_animation_path(out)
    env_id = _dream_id(args.env_id)
    sim = simulator if simulator is not None else load_simulator(args)
    check_simulator_matches(env_id, sim.config.env_id, sim.num_actions)
    return out, env_id, sim


def play_headless(args: PlayArgs, simulator: Simulator | None = None) -> PlayResult:
    """Play ``args.episodes`` real games and their dreams with the same actions for ``args.max_steps`` steps.

    Args:
        args: the options (see :class:`PlayArgs`); ``args.headless`` is not consulted.
        simulator: use this simulator instead of loading the one ``args`` names.

    Returns:
        Returns and end steps of both sides, the actions, and the animation path (see :class:`PlayResult`).
    """
    from dws_gym.agents import RandomPolicy, check_policy_matches, load_policy
    from dws_gym.envs.dream import resolve_device
    from dws_gym.envs.real import make_real_env, parse_env_id

    out, env_id, sim = _prepare_headless(args, simulator)
    real_id = DREAM_GAMES[env_id].real_env_id if env_id in DREAM_GAMES else sim.config.env_id
    if tuple(sim.config.obs_shape) != (64, 64, 3):
        raise ValueError(
            f"The simulator dreams {tuple(sim.config.obs_shape)} frames but the real envs emit (64, 64, 3); "
            "headless comparison needs frames of the same shape."
        )

    policy: Any
    frame_stack = 1
    policy_generator = torch.Generator().manual_seed(_derived_seed(args.seed, 1))
    if args.policy is not None:
        policy = load_policy(args.policy, device=resolve_device(args.device))
        frame_stack = int(policy.config.frame_stack or 1)
    else:
        policy = RandomPolicy(sim.num_actions, seed=_derived_seed(args.seed, 1))

    e, t_max, k = args.episodes, args.max_steps, sim.context_frames
    env_kwargs: dict[str, Any] = {}
    if parse_env_id(real_id)[0] == "procgen":
        env_kwargs["distribution_mode"] = args.distribution_mode
    real = make_real_env(real_id, num_envs=e, frame_stack=frame_stack, **env_kwargs)
    try:
        meanings = list(real.get_action_meanings())
        check_action_meanings(real_id, meanings, sim)
        if args.policy is not None:
            check_policy_matches(
                policy, real.single_observation_space, real.single_action_space, action_meanings=meanings
            )

        def latest(obs: np.ndarray) -> np.ndarray:
            return obs[:, -1] if frame_stack > 1 else obs

        obs, _ = real.reset(seed=args.seed)
        first = np.ascontiguousarray(latest(obs))  # (E, 64, 64, 3) uint8
        # The real reset frame is the only real frame at t = 0: it fills the whole context, joined by NOOPs.
        state = sim.init_state(
            np.repeat(first[:, None], k, axis=1), np.zeros((e, k - 1), dtype=np.int64)
        )
        dream_generator = torch.Generator().manual_seed(_derived_seed(args.seed, 2))
        recorded = [side_by_side(first[0], first[0], args.scale, 0.0)]

        def record(t: int, real_obs: np.ndarray, frame: torch.Tensor) -> None:
            recorded.append(side_by_side(latest(real_obs)[0], frame[0].cpu().numpy(), args.scale, (t + 1) / t_max))

        run = lockstep_rollout(
            sim, real, state, obs,
            lambda _t, real_obs: policy.act(real_obs, deterministic=args.deterministic, generator=policy_generator),
            t_max, generator=dream_generator, sampling_steps=args.sampling_steps, on_step=record,
        )  # fmt: skip
    finally:
        real.close()

    path = write_animation(out, recorded, fps=args.fps)
    # Fixed-length comparison: every step's reward counts on both sides, episode ends included.
    return PlayResult(
        real_returns=np.cumsum(run["real_rewards"], axis=1)[:, -1],
        dream_returns=np.cumsum(run["dream_rewards"], axis=1)[:, -1],
        real_end_steps=first_end_step(run["real_terminated"] | run["real_truncated"]),
        dream_end_steps=first_end_step(run["dream_terminated"]),
        actions=run["actions"],
        path=path,
        num_frames=len(recorded),
        extra={"real_env_id": real_id, "policy": args.policy or "random", "steps": t_max},
    )


def play_logged(args: PlayArgs, simulator: Simulator | None = None) -> PlayResult:
    """Dream held-out logged episodes of ``args.data`` under their logged actions, next to the logged frames.

    ``args.episodes`` windows of ``K + args.max_steps`` frames are drawn (seeded by ``args.seed``) from the held-out
    episodes (:func:`dws_gym.evaluation.held_out_windows`, as ``python -m dws_gym.evaluation`` draws them); the dream
    starts from each window's first ``K`` frames, so it starts mid-game, with the ball in play where the logged game
    had it. The "real" side is the logged episode itself (a store holds no emulator state to restart the game from),
    and its returns are the logged rewards.
    """
    from dws_gym.data import TrajectoryStore
    from dws_gym.evaluation import held_out_windows, open_loop_rollout

    out, _, sim = _prepare_headless(args, simulator)
    k, t_max = sim.context_frames, args.max_steps
    clips = held_out_windows(TrajectoryStore(args.data), sim.config.env_id, k, t_max, args.episodes, 0.1, args.seed)
    frames, actions = np.asarray(clips["frames"]), np.asarray(clips["actions"])
    run = open_loop_rollout(sim, frames[:, :k], actions[:, : k - 1], actions[:, k - 1 : k - 1 + t_max],
                            generator=torch.Generator().manual_seed(_derived_seed(args.seed, 2)),
                            steps=args.sampling_steps)  # fmt: skip
    real, dream = frames[:, k : k + t_max], np.asarray(run["frames"])
    recorded = [side_by_side(frames[0, k - 1], frames[0, k - 1], args.scale, 0.0)]
    recorded += [side_by_side(real[0, t], dream[0, t], args.scale, (t + 1) / t_max) for t in range(t_max)]
    path = write_animation(out, recorded, fps=args.fps)
    real_rewards = np.asarray(clips["rewards"])[:, k - 1 : k - 1 + t_max]
    real_ends = np.asarray(clips["terminated"])[:, k - 1 : k - 1 + t_max]
    return PlayResult(
        real_returns=real_rewards.sum(axis=1),
        dream_returns=np.asarray(run["rewards"]).sum(axis=1),
        real_end_steps=first_end_step(real_ends),
        dream_end_steps=first_end_step(np.asarray(run["terminated"])),
        actions=actions[:, k - 1 : k - 1 + t_max],
        path=path,
        num_frames=len(recorded),
        extra={"real_env_id": sim.config.env_id, "policy": f"logged ({args.data}, held-out episodes)",
               "steps": t_max},
    )


def format_result(result: PlayResult) -> str:
    """The per-episode table and the mean ± std summary that the CLI prints."""

    def end(step: int) -> str:
        return "-" if step < 0 else str(step)

    lines = [f"{'episode':>7}  {'real return':>11}  {'dream return':>12}  {'real ended':>10}  {'dream ended':>11}"]
    for i in range(len(result.real_returns)):
        lines.append(
            f"{i:>7}  {result.real_returns[i]:>11.2f}  {result.dream_returns[i]:>12.2f}  "
            f"{end(int(result.real_end_steps[i])):>10}  {end(int(result.dream_end_steps[i])):>11}"
        )
    n, steps = len(result.real_returns), result.actions.shape[1]
    lines.append(
        f"return over {n} episode(s) of {steps} steps (same actions, {result.extra.get('policy', 'random')} policy), "
        f"mean ± std: real {result.real_returns.mean():.2f} ± {result.real_returns.std():.2f}, "
        f"dream {result.dream_returns.mean():.2f} ± {result.dream_returns.std():.2f}"
    )
    lines.append(f"wrote {result.path} (real | dream, episode 0, {result.num_frames} frames)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- interactive
def _import_pygame() -> Any:
    try:
        import pygame
    except ImportError as e:
        raise ImportError(
            "The interactive viewer needs pygame: pip install 'dws-gym[play]' (or run with --headless)."
        ) from e
    return pygame


class DreamViewer:
    """A pygame window on one dream: the frame scaled up, the episode's reward sum and the action being taken.

    Args:
        env: a one-env :class:`~dws_gym.envs.dream.DreamVectorEnv` (numpy output, NEXT_STEP autoreset).
        scale: nearest-neighbour upscaling of the frame.
        fps: steps (and redraws) per second at most.
        seed: seed of the first reset.
        title: window caption.

    Use :meth:`run` for the loop; :meth:`step` / :meth:`draw` drive it one frame at a time.
    """

    HUD_HEIGHT = 28

    def __init__(self, env: Any, *, scale: int = 4, fps: int = 15, seed: int | None = 0, title: str = "dws-gym") -> None:
        if env.num_envs != 1:
            raise ValueError(f"DreamViewer shows one dream; got a vector env of {env.num_envs}.")
        self.pygame = pg = _import_pygame()
        self.env = env
        self.scale, self.fps = int(scale), int(fps)
        self.meanings = list(env.get_action_meanings())
        h, w, _ = env.single_observation_space.shape[-3:]
        self.frame_size = (w * self.scale, h * self.scale)
        pg.init()
        self.screen = pg.display.set_mode((self.frame_size[0], self.frame_size[1] + self.HUD_HEIGHT))
        pg.display.set_caption(title)
        try:
            self.font = pg.font.Font(None, 22)
        except Exception:  # pygame builds without SDL_ttf: draw no text rather than fail
            self.font = None
        self.clock = pg.time.Clock()
        self._keys = {getattr(pg, f"K_{name}"): name for name in ("SPACE", "UP", "DOWN", "LEFT", "RIGHT")}
        self._keys = {code: name.lower() for code, name in self._keys.items()}
        self._keys.update({getattr(pg, f"K_{c}"): c for c in "qweasd"})
        self.running = True
        self.reset(seed)

    def reset(self, seed: int | None = None) -> None:
        """Start a new dream episode (from a bundled real start clip)."""
        obs, _ = self.env.reset(seed=seed)
        self.frame = np.asarray(obs[0])
        self.episode_return, self.steps, self.action, self.ended = 0.0, 0, 0, False

    def pressed_keys(self) -> set[str]:
        """Names of the mapped keys held down now."""
        held = self.pygame.key.get_pressed()
        return {name for code, name in self._keys.items() if held[code]}

    def step(self, pressed: Iterable[str]) -> float:
        """Advance the dream with the action the ``pressed`` keys ask for; returns the step's reward."""
        if self.ended:  # NEXT_STEP: this step restarts the episode, so the sum starts over
            self.episode_return, self.steps, self.ended = 0.0, 0, False
        self.action = keys_to_action(pressed, self.meanings)
        obs, reward, terminated, truncated, _ = self.env.step(np.array([self.action]))
        self.frame = np.asarray(obs[0])
        self.episode_return += float(reward[0])
        self.steps += 1
        self.ended = bool(terminated[0] or truncated[0])
        return float(reward[0])

    def draw(self) -> None:
        """Blit the current frame and the HUD line (return, step, action) and flip the display."""
        pg = self.pygame
        big = np.repeat(np.repeat(self.frame, self.scale, axis=0), self.scale, axis=1)
        self.screen.fill((0, 0, 0))
        self.screen.blit(pg.surfarray.make_surface(big.transpose(1, 0, 2)), (0, 0))
        if self.font is not None:
            status = " (episode over)" if self.ended else ""
            text = f"return {self.episode_return:.1f}  step {self.steps}  {self.meanings[self.action]}{status}"
            self.screen.blit(self.font.render(text, True, (230, 230, 230)), (6, self.frame_size[1] + 6))
        pg.display.flip()

    def run(self, max_frames: int | None = None) -> None:
        """The loop: Esc or closing the window quits, R restarts, held keys pick each step's action."""
        pg = self.pygame
        frames = 0
        while self.running and (max_frames is None or frames < max_frames):
            for event in pg.event.get():
                if event.type == pg.QUIT or (event.type == pg.KEYDOWN and event.key == pg.K_ESCAPE):
                    self.running = False
                elif event.type == pg.KEYDOWN and event.key == pg.K_r:
                    self.reset()
            if not self.running:
                break
            self.step(self.pressed_keys())
            self.draw()
            self.clock.tick(self.fps)
            frames += 1

    def close(self) -> None:
        """Close the window (the env stays open: it belongs to the caller)."""
        self.pygame.display.quit()


def play_interactive(args: PlayArgs, simulator: Simulator | None = None, max_frames: int | None = None) -> None:
    """Open the window and play until Esc (or ``max_frames`` frames)."""
    from dws_gym.envs.dream import DreamVectorEnv

    _check_args(args)
    _import_pygame()  # fail before loading a simulator
    env_id = _dream_id(args.env_id)
    sim = simulator if simulator is not None else load_simulator(args)
    env = DreamVectorEnv(
        sim,
        num_envs=1,
        device=args.device if simulator is None else "auto",
        sampling_steps=args.sampling_steps,
        max_episode_steps=args.max_steps,
        env_id=env_id,
    )
    viewer = DreamViewer(env, scale=args.scale, fps=args.fps, seed=args.seed, title=f"dws-gym: {env_id} (dream)")
    try:
        viewer.run(max_frames)
    finally:
        viewer.close()
        env.close()


# ------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> PlayResult | None:
    """Command-line entry point (``python -m dws_gym.play``): the headless result, or None after a window session.

    Bad options, missing simulators and missing extras end the process with the message and exit code 2, without a
    traceback.
    """
    args = tyro.cli(PlayArgs, args=argv, prog="python -m dws_gym.play")
    try:
        if args.headless:
            result = play_logged(args) if args.data is not None else play_headless(args)
            print(format_result(result))
            return result
        play_interactive(args)
        return None
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None



def cli() -> None:
    """The ``dws-play`` console script: :func:`main` with exit status 0 on success (a script's return value would
    become its exit status)."""
    main()


if __name__ == "__main__":
    main()
