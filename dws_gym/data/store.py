"""On-disk trajectory store: one folder per episode, written atomically, read through memory maps.

Layout of a store rooted at ``root``::

    root/store.json                   format marker {"format": "dws-trajectory-store", "schema_version": 1}
    root/episodes/ep_000000000/       one folder per episode (the id is the number in the name)
        obs.npy                       uint8 (F, H, W, C) frames, F = T + 1 (final frame known) or T
        steps.npy                     structured (T,): action, reward (float32, raw), terminated, truncated, life_lost
        meta.json                     EpisodeMeta fields (everything but the id)
    root/tmp/<host>-<pid>-<random>/   episodes being written; readers never look here

Index convention: ``obs[t + 1]`` is the frame observed after ``action[t]`` was taken in ``obs[t]``;
``reward[t]``, ``terminated[t]``, ``truncated[t]`` and ``life_lost[t]`` are what that step returned.

Writes: an episode is written into a fresh folder under ``tmp/``, every file is fsynced, then the folder is
renamed to the first free ``episodes/ep_<id>``. Renaming a directory onto an existing non-empty directory fails,
so id allocation and publication are one atomic step: concurrent writers (threads, processes, re-runs of a
collector) never collide and never overwrite, and a writer killed mid-write leaves only a folder under ``tmp/``,
which the next ``TrajectoryStore(root, create=True)`` deletes once it is stale (:meth:`TrajectoryStore.cleanup_tmp`).

Reads: the small per-step arrays are loaded at open (a few bytes per step); frames stay on disk and are
memory-mapped lazily, with at most ``max_open`` maps open at once (least recently used are closed).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import io
import json
import math
import os
import re
import shutil
import socket
import threading
import time
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # views import this module; import them lazily at run time
    from dws_gym.data.views import ClipDataset, TransitionDataset

SCHEMA_VERSION = 1
STORE_FORMAT = "dws-trajectory-store"
_EP_RE = re.compile(r"^ep_(\d+)$")
_EP_DIGITS = 9
_OBS_FILE = "obs.npy"
_STEPS_FILE = "steps.npy"
_META_FILE = "meta.json"
_MARKER_FILE = "store.json"
# A temp folder untouched this long whose writer is not a live process on this host is abandoned. The age guard
# matters for writers this host cannot see (another machine on a shared filesystem, another PID namespace under the
# same host name): a live writer touches its folder every few seconds while it writes one episode, so an hour of
# silence means it is gone, and removing the folder of a live writer would make its publish fail.
_STALE_TMP_AGE_S = 3600.0


class CorruptEpisodeError(RuntimeError):
    """An episode folder is unreadable or inconsistent (bad JSON, truncated array, shapes that disagree).

    Attributes:
        path: the offending file (or folder).
        episode_id: the episode's id.
    """

    def __init__(self, path: str | os.PathLike, episode_id: int, problem: str) -> None:
        self.path = Path(path)
        self.episode_id = int(episode_id)
        folder = self.path if self.path.name.startswith("ep_") else self.path.parent
        super().__init__(
            f"corrupt episode {episode_id}: {self.path}: {problem}. Delete the episode folder {folder} "
            f"or open the store with on_corrupt='skip' to leave it out."
        )


@dataclass(frozen=True)
class EpisodeMeta:
    """Metadata of one stored episode (``meta.json`` plus the id taken from the folder name).

    Attributes:
        episode_id: id of the episode in its store.
        env_id: environment id the episode came from (e.g. ``"ALE/Breakout-v5"``).
        obs_shape: shape of one frame, ``(H, W, C)``.
        action_space: ``{"type": "discrete", "n": int}`` or ``{"type": "continuous", "shape": [...]}``
            (optionally ``"low"``/``"high"``); an ``"inferred": True`` key marks an ``n`` guessed from the data.
        action_meanings: names of the discrete actions, or ``None``.
        episode_return: sum of the raw rewards (``"return"`` in the JSON).
        length: number of steps T.
        policy: tag of the policy that acted (``"random"``, a checkpoint name, ...).
        synthetic: True when the frames came from a simulator rather than the real environment.
        source_simulator: the simulator (path or hub id) that produced a synthetic episode, else ``None``.
        final_frame_known: True when ``obs`` holds T + 1 frames; False when the frame after the last step
            was lost (Procgen through gym3; an ALE episode that the game ended, whose returned frame is not the
            final one) and ``obs`` holds T frames.
        schema_version: schema version the episode was written with.
        created_at: UNIX time the episode was written.
        extra: free-form JSON-serialisable dict.
    """

    episode_id: int
    env_id: str
    obs_shape: tuple[int, ...]
    action_space: dict[str, Any]
    action_meanings: list[str] | None
    episode_return: float
    length: int
    policy: str
    synthetic: bool
    source_simulator: str | None
    final_frame_known: bool
    schema_version: int = SCHEMA_VERSION
    created_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        """Number of stored frames: ``length + 1`` when the final frame is known, else ``length``."""
        return self.length + 1 if self.final_frame_known else self.length

    @property
    def return_(self) -> float:
        """Alias of :attr:`episode_return`."""
        return self.episode_return

    @property
    def discrete(self) -> bool:
        """True for a discrete action space."""
        return self.action_space.get("type") == "discrete"

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON form written to ``meta.json`` (no id: the folder name carries it)."""
        d = dataclasses.asdict(self)
        d.pop("episode_id")
        d["return"] = d.pop("episode_return")
        d["obs_shape"] = list(self.obs_shape)
        return d

    @classmethod
    def from_json_dict(cls, episode_id: int, d: Mapping[str, Any]) -> EpisodeMeta:
        """Parse ``meta.json`` content; raises ``ValueError``/``KeyError``/``TypeError`` on bad content."""
        if not isinstance(d, Mapping):
            raise TypeError(f"expected a JSON object, got {type(d).__name__}")
        version = int(d["schema_version"])
        if version > SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {version} is newer than this dws-gym reads ({SCHEMA_VERSION}); upgrade dws-gym"
            )
        space = dict(d["action_space"])
        if space.get("type") not in ("discrete", "continuous"):
            raise ValueError(f"action_space type must be 'discrete' or 'continuous', got {space.get('type')!r}")
        meanings = d.get("action_meanings")
        if meanings is not None:
            meanings = [str(m) for m in meanings]
        obs_shape = tuple(int(s) for s in d["obs_shape"])
        length = int(d["length"])
        if length < 1 or len(obs_shape) != 3 or min(obs_shape) < 1:
            raise ValueError(f"bad length {length} or obs_shape {obs_shape}")
        extra = d.get("extra") or {}
        if not isinstance(extra, dict):
            raise TypeError("'extra' must be a JSON object")
        src = d.get("source_simulator")
        return cls(
            episode_id=int(episode_id),
            env_id=str(d["env_id"]),
            obs_shape=obs_shape,
            action_space=space,
            action_meanings=meanings,
            episode_return=float(d["return"]),
            length=length,
            policy=str(d["policy"]),
            synthetic=bool(d["synthetic"]),
            source_simulator=None if src is None else str(src),
            final_frame_known=bool(d["final_frame_known"]),
            schema_version=version,
            created_at=float(d.get("created_at", 0.0)),
            extra=extra,
        )


def describe_action_space(space: Any) -> dict[str, Any]:
    """Normalise an action-space description to the store's JSON form.

    Accepts a dict (``{"type": "discrete", "n": 4}``, ``{"type": "continuous", "shape": [6]}``; ``"box"`` is read
    as continuous) or a gymnasium-like space object (``Discrete`` via ``.n``, ``Box`` via ``.shape/.low/.high``).
    """
    if isinstance(space, Mapping):
        kind = str(space.get("type", "")).lower()
        if kind == "discrete":
            n = space.get("n")
            if n is None or int(n) < 1:
                raise ValueError(f"a discrete action_space needs n >= 1, got {space!r}")
            out: dict[str, Any] = {"type": "discrete", "n": int(n)}
            if space.get("inferred"):
                out["inferred"] = True
            return out
        if kind in ("continuous", "box"):
            if "shape" not in space:
                raise ValueError(f"a continuous action_space needs 'shape', got {space!r}")
            out = {"type": "continuous", "shape": [int(s) for s in space["shape"]]}
            for key in ("low", "high"):
                if space.get(key) is not None:
                    out[key] = np.asarray(space[key], dtype=np.float64).tolist()
            return out
        raise ValueError(f"action_space 'type' must be 'discrete' or 'continuous', got {space!r}")
    if hasattr(space, "n") and not hasattr(space, "nvec"):
        return {"type": "discrete", "n": int(space.n)}
    if hasattr(space, "shape") and hasattr(space, "low") and hasattr(space, "high"):
        return {
            "type": "continuous",
            "shape": [int(s) for s in space.shape],
            "low": np.asarray(space.low, dtype=np.float64).tolist(),
            "high": np.asarray(space.high, dtype=np.float64).tolist(),
        }
    raise ValueError(f"cannot describe action space {space!r}; pass a dict like {{'type': 'discrete', 'n': 4}}")


def steps_dtype(action_space: Mapping[str, Any]) -> np.dtype:
    """Structured dtype of ``steps.npy`` for an action space (int64 actions if discrete, float32 arrays else)."""
    if action_space["type"] == "discrete":
        action: tuple = ("action", "<i8")
    else:
        shape = tuple(int(s) for s in action_space["shape"])
        action = ("action", "<f4", shape) if shape else ("action", "<f4")
    return np.dtype([action, ("reward", "<f4"), ("terminated", "?"), ("truncated", "?"), ("life_lost", "?")])


@dataclass
class _Episode:
    """What a reader keeps per episode: metadata, the per-step arrays, and where the frames live."""

    meta: EpisodeMeta
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    life_lost: np.ndarray
    obs_path: Path
    obs_offset: int  # byte offset of the pixel data in obs.npy


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _as_flags(name: str, x: Any, T: int) -> np.ndarray:
    a = np.asarray(x)
    if a.shape != (T,):
        raise ValueError(f"{name} must have shape ({T},) (one flag per step), got {a.shape}")
    if a.dtype == np.bool_:
        return a
    if np.issubdtype(a.dtype, np.integer) and np.all((a == 0) | (a == 1)):
        return a.astype(bool)
    raise ValueError(f"{name} must be a bool array (or integers 0/1), got dtype {a.dtype}")


class TrajectoryStore:
    """A folder of episodes (see the module docstring for the layout and the index convention).

    Args:
        root: the store folder.
        create: create ``root`` (and its sub-folders) when missing, and delete stale temp folders of dead writers
            (:meth:`cleanup_tmp`); otherwise a missing store raises ``FileNotFoundError``.
        on_corrupt: ``"raise"`` (default) raises :class:`CorruptEpisodeError` on the first bad episode;
            ``"skip"`` warns (naming the file) and leaves the episode out.
        max_open: most frame files memory-mapped at once (an LRU cache; the kernel caps maps per process).
        durable: fsync files and folders when writing (turn off only for throw-away data).

    Raises:
        ValueError: ``store.json`` is not valid JSON, or names another format or a ``schema_version`` this dws-gym
            does not read (the message names the file and what to do).

    Episodes appended by other processes appear after :meth:`refresh`. Views (:meth:`clips`,
    :meth:`transitions`) capture the episodes present when they are made.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        create: bool = False,
        *,
        on_corrupt: Literal["raise", "skip"] = "raise",
        max_open: int = 256,
        durable: bool = True,
    ) -> None:
        if on_corrupt not in ("raise", "skip"):
            raise ValueError(f"on_corrupt must be 'raise' or 'skip', got {on_corrupt!r}")
        if int(max_open) < 1:
            raise ValueError(f"max_open must be >= 1, got {max_open}")
        self.root = Path(root)
        self.on_corrupt = on_corrupt
        self.max_open = int(max_open)
        self.durable = bool(durable)
        self._episodes_dir = self.root / "episodes"
        self._tmp_dir = self.root / "tmp"
        if create:
            self._check_marker()  # before anything is written into a folder of an unknown layout
            self._episodes_dir.mkdir(parents=True, exist_ok=True)
            self._tmp_dir.mkdir(exist_ok=True)
            self._write_marker()
            try:  # free the disk held by partial episodes of killed writers (readers never look at them)
                self.cleanup_tmp()
            except OSError:  # housekeeping only: a store that cannot be swept can still be written
                pass
        elif not self.root.is_dir():
            raise FileNotFoundError(
                f"trajectory store {self.root} does not exist; check the path, or collect into it first "
                f"(python -m dws_gym.collect --out {self.root}; in Python: TrajectoryStore(path, create=True))"
            )
        elif not self._episodes_dir.is_dir():
            raise FileNotFoundError(
                f"{self.root} is not a trajectory store (no 'episodes' folder in it); check the path, or "
                f"collect into it (python -m dws_gym.collect --out {self.root}; in Python: create=True)"
            )
        else:
            self._check_marker()
        self._lock = threading.RLock()
        self._episodes: dict[int, _Episode] = {}
        self._order: list[int] = []
        self._maps: OrderedDict[int, np.ndarray] = OrderedDict()
        self._next_guess = 0
        self.refresh()

    # ------------------------------------------------------------------ reading

    def refresh(self) -> list[int]:
        """Pick up episodes published since the last scan (by any process) and drop deleted ones.

        Returns the ids of the newly found episodes.
        """
        with self._lock:
            on_disk: dict[int, Path] = {}
            for entry in os.scandir(self._episodes_dir):
                m = _EP_RE.match(entry.name)
                if m and entry.is_dir():
                    on_disk[int(m.group(1))] = Path(entry.path)
            for gone in set(self._episodes) - set(on_disk):
                del self._episodes[gone]
                self._maps.pop(gone, None)
            added = []
            for ep_id in sorted(set(on_disk) - set(self._episodes)):
                try:
                    self._episodes[ep_id] = self._load_episode(ep_id, on_disk[ep_id])
                    added.append(ep_id)
                except CorruptEpisodeError as err:
                    if self.on_corrupt == "raise":
                        raise
                    warnings.warn(str(err), RuntimeWarning, stacklevel=2)
            self._order = sorted(self._episodes)
            if on_disk:
                self._next_guess = max(self._next_guess, max(on_disk) + 1)
            return added

    def _load_episode(self, ep_id: int, folder: Path) -> _Episode:
        """Read meta + steps and check the obs header and size against them (pixels are not read)."""
        meta_path = folder / _META_FILE
        try:
            with open(meta_path, encoding="utf-8") as f:
                raw = json.load(f)
        except FileNotFoundError:
            raise CorruptEpisodeError(meta_path, ep_id, "file is missing") from None
        except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError
            raise CorruptEpisodeError(meta_path, ep_id, f"unreadable JSON ({e})") from None
        try:
            meta = EpisodeMeta.from_json_dict(ep_id, raw)
            want_dtype = steps_dtype(meta.action_space)
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptEpisodeError(meta_path, ep_id, f"bad metadata ({type(e).__name__}: {e})") from None

        steps_path = folder / _STEPS_FILE
        steps = _read_small_npy(steps_path, ep_id, (meta.length,), want_dtype)

        obs_path = folder / _OBS_FILE
        want_shape = (meta.num_frames, *meta.obs_shape)
        offset = _check_npy_header(obs_path, ep_id, want_shape, np.dtype(np.uint8))
        return _Episode(
            meta=meta,
            actions=_readonly(steps["action"]),
            rewards=_readonly(steps["reward"]),
            terminated=_readonly(steps["terminated"]),
            truncated=_readonly(steps["truncated"]),
            life_lost=_readonly(steps["life_lost"]),
            obs_path=obs_path,
            obs_offset=offset,
        )

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, ep_id: object) -> bool:
        return ep_id in self._episodes

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._order))

    @property
    def num_episodes(self) -> int:
        """Number of readable episodes."""
        return len(self._order)

    @property
    def num_steps(self) -> int:
        """Total number of steps (actions) over all episodes."""
        return sum(e.meta.length for e in self._episodes.values())

    @property
    def num_frames(self) -> int:
        """Total number of stored frames over all episodes."""
        return sum(e.meta.num_frames for e in self._episodes.values())

    def episode_ids(self) -> list[int]:
        """Ids of the readable episodes, ascending."""
        return list(self._order)

    def _get(self, ep_id: int) -> _Episode:
        try:
            return self._episodes[int(ep_id)]
        except KeyError:
            raise KeyError(f"no episode {ep_id} in {self.root} (try refresh() if another process wrote it)") from None

    def meta(self, ep_id: int) -> EpisodeMeta:
        """Metadata of episode ``ep_id``."""
        return self._get(ep_id).meta

    def obs(self, ep_id: int) -> np.ndarray:
        """Read-only memory map of an episode's frames, uint8 ``(F, H, W, C)`` (opened lazily, LRU-cached)."""
        ep_id = int(ep_id)
        with self._lock:
            mm = self._maps.get(ep_id)
            if mm is not None:
                self._maps.move_to_end(ep_id)
                return mm
            ep = self._get(ep_id)
            shape = (ep.meta.num_frames, *ep.meta.obs_shape)
            # A str, not a Path: numpy resolves a Path (symlinks, a syscall per component) on every map it opens.
            mm = np.memmap(str(ep.obs_path), dtype=np.uint8, mode="r", offset=ep.obs_offset, shape=shape)
            self._maps[ep_id] = mm
            while len(self._maps) > self.max_open:
                self._maps.popitem(last=False)  # the map closes once no caller holds a view of it
            return mm

    def steps(self, ep_id: int) -> dict[str, np.ndarray]:
        """An episode's per-step arrays (``actions``, ``rewards``, ``terminated``, ``truncated``, ``life_lost``),
        read-only and in memory, without mapping its frames.

        Views that index thousands of episodes use this: holding every episode's frame map would exhaust the
        process's file descriptors (the LRU of :meth:`obs` cannot close a map a caller still holds).
        """
        ep = self._get(ep_id)
        return {
            "actions": ep.actions,
            "rewards": ep.rewards,
            "terminated": ep.terminated,
            "truncated": ep.truncated,
            "life_lost": ep.life_lost,
        }

    def episode(self, ep_id: int) -> dict[str, Any]:
        """One episode as arrays (the names :meth:`add_episode` takes).

        Returns a dict with ``obs`` uint8 ``(F, H, W, C)`` (read-only memory map), ``actions`` (T,) int64 or
        (T, *shape) float32, ``rewards`` float32 (T,), ``terminated``/``truncated``/``life_lost`` bool (T,)
        (read-only), and ``meta`` (:class:`EpisodeMeta`).
        """
        return {"obs": self.obs(ep_id), **self.steps(ep_id), "meta": self.meta(ep_id)}

    def clips(
        self, context: int, horizon: int, stride: int = 1, *, episode_ids: Sequence[int] | None = None
    ) -> ClipDataset:
        """Clip windows of ``context + horizon`` frames; see :class:`dws_gym.data.views.ClipDataset`."""
        from dws_gym.data.views import ClipDataset

        return ClipDataset(self, context, horizon, stride, episode_ids=episode_ids)

    def transitions(
        self, *, episode_ids: Sequence[int] | None = None, frame_stack: int = 1, keep_unknown_final: bool = False
    ) -> TransitionDataset:
        """Every step with a known next frame (plus, with ``keep_unknown_final``, the last step of episodes whose
        final frame is unknown); see :class:`dws_gym.data.views.TransitionDataset`."""
        from dws_gym.data.views import TransitionDataset

        return TransitionDataset(
            self, episode_ids=episode_ids, frame_stack=frame_stack, keep_unknown_final=keep_unknown_final
        )

    # ------------------------------------------------------------------ writing

    def add_episode(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        life_lost: np.ndarray | None = None,
        *,
        env_id: str,
        action_meanings: Sequence[str] | None = None,
        action_space: Mapping[str, Any] | Any | None = None,
        policy: str = "random",
        synthetic: bool = False,
        source_simulator: str | None = None,
        final_frame_known: bool = True,
        extra: Mapping[str, Any] | None = None,
    ) -> int:
        """Validate one episode and publish it atomically; returns its new id.

        Args:
            obs: uint8 ``(T + 1, H, W, C)`` frames (``(T, H, W, C)`` when ``final_frame_known=False``);
                ``obs[t + 1]`` follows ``actions[t]``.
            actions: ``(T,)`` integers for a discrete space (stored int64) or ``(T, *shape)`` floats for a
                continuous one (stored float32).
            rewards: ``(T,)`` raw rewards (real numbers; stored float32).
            terminated, truncated: ``(T,)`` bool; only the last step may be True (an episode ends there).
            life_lost: ``(T,)`` bool, default all False.
            env_id: environment id.
            action_meanings: names of the discrete actions (sets ``n`` when ``action_space`` is not given).
            action_space: dict or gymnasium space (see :func:`describe_action_space`); when omitted it is
                inferred: continuous from float actions, discrete with ``n = len(action_meanings)`` or, failing
                that, ``max(action) + 1`` (marked ``"inferred": True``).
            policy: tag of the acting policy.
            synthetic: True when a simulator produced the frames; ``source_simulator`` names it.
            final_frame_known: False when the frame after the last step was lost.
            extra: free-form JSON-serialisable metadata.

        Raises:
            ValueError: on wrong dtypes, shapes, lengths, out-of-range actions or non-JSON ``extra``.
        """
        obs = np.asarray(obs)
        if obs.dtype != np.uint8:
            raise ValueError(f"obs must be uint8 frames, got dtype {obs.dtype}; convert with .astype(np.uint8)")
        if obs.ndim != 4:
            raise ValueError(f"obs must have shape (frames, H, W, C), got {obs.shape}")
        actions = np.asarray(actions)
        if actions.ndim < 1:
            raise ValueError("actions must be an array with one entry per step")
        T = int(actions.shape[0])
        if T < 1:
            raise ValueError("an episode needs at least one step")
        want_frames = T + 1 if final_frame_known else T
        if obs.shape[0] != want_frames:
            rule = "T + 1 (final_frame_known=True)" if final_frame_known else "T (final_frame_known=False)"
            raise ValueError(f"obs has {obs.shape[0]} frames for {T} actions; expected {rule} = {want_frames}")
        if not isinstance(env_id, str) or not env_id:
            raise ValueError(f"env_id must be a non-empty string, got {env_id!r}")
        if action_meanings is not None:
            action_meanings = [str(m) for m in action_meanings]

        space = self._resolve_space(actions, action_space, action_meanings)
        if space["type"] == "discrete":
            if not np.issubdtype(actions.dtype, np.integer):
                raise ValueError(f"discrete actions must be integers, got dtype {actions.dtype}")
            if actions.ndim != 1:
                raise ValueError(f"discrete actions must have shape ({T},), got {actions.shape}")
            if actions.min() < 0 or actions.max() >= space["n"]:
                raise ValueError(
                    f"discrete actions must lie in [0, {space['n']}), got range [{actions.min()}, {actions.max()}]"
                )
            if action_meanings is not None and len(action_meanings) != space["n"]:
                raise ValueError(f"{len(action_meanings)} action_meanings for {space['n']} discrete actions")
        else:
            if not np.issubdtype(actions.dtype, np.floating):
                raise ValueError(f"continuous actions must be floats, got dtype {actions.dtype}")
            if tuple(actions.shape[1:]) != tuple(space["shape"]):
                raise ValueError(
                    f"continuous actions must have shape ({T}, {', '.join(map(str, space['shape']))}), "
                    f"got {actions.shape}"
                )
        rewards = np.asarray(rewards)
        if rewards.shape != (T,):
            raise ValueError(f"rewards must have shape ({T},), got {rewards.shape}")
        if rewards.dtype == np.bool_ or not (
            np.issubdtype(rewards.dtype, np.floating) or np.issubdtype(rewards.dtype, np.integer)
        ):
            raise ValueError(f"rewards must be real numbers, got dtype {rewards.dtype}")
        if not np.all(np.isfinite(rewards)):
            bad = int(np.flatnonzero(~np.isfinite(rewards))[0])
            raise ValueError(f"rewards must be finite; step {bad} has {rewards[bad]!r}. Nothing was written.")
        terminated = _as_flags("terminated", terminated, T)
        truncated = _as_flags("truncated", truncated, T)
        life_lost = np.zeros(T, bool) if life_lost is None else _as_flags("life_lost", life_lost, T)
        if terminated[:-1].any() or truncated[:-1].any():
            bad = int(np.flatnonzero(terminated[:-1] | truncated[:-1])[0])
            raise ValueError(
                f"step {bad} of {T} is terminated/truncated but is not the last step; split the data into "
                f"episodes at done flags (import_arrays does this)"
            )
        try:
            extra_d = json.loads(json.dumps(dict(extra or {}), allow_nan=False))
        except (TypeError, ValueError) as e:
            raise ValueError(f"extra must be a JSON-serialisable dict: {e}") from None
        if source_simulator is not None and not isinstance(source_simulator, str):
            raise ValueError(f"source_simulator must be a string or None, got {source_simulator!r}")

        steps = np.empty(T, dtype=steps_dtype(space))
        steps["action"] = actions
        steps["reward"] = rewards
        steps["terminated"] = terminated
        steps["truncated"] = truncated
        steps["life_lost"] = life_lost
        meta = EpisodeMeta(
            episode_id=-1,
            env_id=env_id,
            obs_shape=tuple(int(s) for s in obs.shape[1:]),
            action_space=space,
            action_meanings=action_meanings,
            episode_return=float(np.sum(rewards, dtype=np.float64)),
            length=T,
            policy=str(policy),
            synthetic=bool(synthetic),
            source_simulator=source_simulator,
            final_frame_known=bool(final_frame_known),
            schema_version=SCHEMA_VERSION,
            created_at=time.time(),
            extra=extra_d,
        )
        return self._write(obs, steps, meta)

    @staticmethod
    def _resolve_space(
        actions: np.ndarray, action_space: Any, action_meanings: list[str] | None
    ) -> dict[str, Any]:
        if action_space is not None:
            return describe_action_space(action_space)
        if np.issubdtype(actions.dtype, np.floating):
            return {"type": "continuous", "shape": [int(s) for s in actions.shape[1:]]}
        if action_meanings is not None:
            return {"type": "discrete", "n": len(action_meanings)}
        if np.issubdtype(actions.dtype, np.integer) and actions.ndim == 1:
            return {"type": "discrete", "n": max(int(actions.max()) + 1, 1), "inferred": True}
        raise ValueError(
            f"cannot infer the action space from actions of dtype {actions.dtype} and shape {actions.shape}; "
            f"pass action_space="
        )

    def add_episode_from(
        self, source: TrajectoryStore, ep_id: int, *, link: bool = True, extra: Mapping[str, Any] | None = None
    ) -> int:
        """Publish a copy of ``source``'s episode ``ep_id`` in this store; returns its new id here.

        The frame and step files are hard-linked when ``link`` is True and the filesystem allows it (stores never
        rewrite a published file, so a link is as safe as a copy and costs no disk), else copied.
        The metadata is the source's with ``extra`` merged into its ``extra``. Like :meth:`add_episode`, the
        episode appears whole or not at all.

        Raises:
            KeyError: ``source`` has no episode ``ep_id``.
            ValueError: ``source`` is this store, or ``extra`` is not JSON-serialisable.
        """
        if Path(source.root).resolve() == self.root.resolve():
            raise ValueError(f"cannot add {self.root}'s own episode {ep_id} to itself")
        src = source._get(ep_id)
        try:  # before anything is written: extras JSON cannot hold fail here, as in add_episode
            extra_d = json.loads(json.dumps(dict(extra or {}), allow_nan=False))
        except (TypeError, ValueError) as e:
            raise ValueError(f"extra must be a JSON-serialisable dict: {e}") from None
        meta = dataclasses.replace(src.meta, extra={**src.meta.extra, **extra_d})

        def place(tmp: Path) -> None:
            for name in (_OBS_FILE, _STEPS_FILE):
                from_path = src.obs_path.parent / name
                linked = False
                if link:
                    try:
                        os.link(from_path, tmp / name)
                        linked = True
                    except OSError as e:  # another filesystem, or one without (enough) links: copy instead
                        if e.errno in (errno.ENOENT, errno.ENOSPC, errno.EDQUOT):
                            raise
                if not linked:
                    shutil.copyfile(from_path, tmp / name)
                if self.durable:  # a linked file too: its source may have been written without fsync
                    with open(tmp / name, "rb") as f:
                        os.fsync(f.fileno())

        new_id, _ = self._publish_folder(place, meta)
        episode = self._load_episode(new_id, self._episodes_dir / f"ep_{new_id:0{_EP_DIGITS}d}")
        with self._lock:
            self._episodes[new_id] = episode
            self._order = sorted(self._episodes)
        return new_id

    def _publish_folder(self, fill: Callable[[Path], Any], meta: EpisodeMeta) -> tuple[int, Any]:
        """Make a temp folder, let ``fill`` put the frame and step files in it, add ``meta.json`` and publish it as
        the next episode (nothing is left behind on failure); returns the new id and what ``fill`` returned."""
        self._tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp_dir / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()
        try:
            filled = fill(tmp)
            with open(tmp / _META_FILE, "w", encoding="utf-8") as f:
                json.dump(meta.to_json_dict(), f, indent=1)
                f.flush()
                if self.durable:
                    os.fsync(f.fileno())
            if self.durable:
                _fsync_dir(tmp)
            ep_id = self._publish(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if self.durable:
            _fsync_dir(self._episodes_dir)
        return ep_id, filled

    def _write(self, obs: np.ndarray, steps: np.ndarray, meta: EpisodeMeta) -> int:
        def fill(tmp: Path) -> int:
            obs_offset = self._write_npy(tmp / _OBS_FILE, obs)
            self._write_npy(tmp / _STEPS_FILE, steps)
            return obs_offset

        ep_id, obs_offset = self._publish_folder(fill, meta)
        # Keep this reader current without re-reading what was just written.
        folder = self._episodes_dir / f"ep_{ep_id:0{_EP_DIGITS}d}"
        with self._lock:
            self._episodes[ep_id] = _Episode(
                meta=dataclasses.replace(meta, episode_id=ep_id),
                actions=_readonly(steps["action"]),
                rewards=_readonly(steps["reward"]),
                terminated=_readonly(steps["terminated"]),
                truncated=_readonly(steps["truncated"]),
                life_lost=_readonly(steps["life_lost"]),
                obs_path=folder / _OBS_FILE,
                obs_offset=obs_offset,
            )
            self._order = sorted(self._episodes)
        return ep_id

    def _write_npy(self, path: Path, arr: np.ndarray) -> int:
        """Write ``arr`` as .npy, fsync it, return the byte offset of its data."""
        with open(path, "wb") as f:
            np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
            size = f.tell()
            f.flush()
            if self.durable:
                os.fsync(f.fileno())
        return size - arr.nbytes

    def _publish(self, tmp: Path) -> int:
        """Rename ``tmp`` to the first free episode id at or after the guess; the rename is the allocation."""
        with self._lock:
            ep_id = self._next_guess
        misses = 0
        while True:
            dst = self._episodes_dir / f"ep_{ep_id:0{_EP_DIGITS}d}"
            try:
                os.rename(tmp, dst)  # fails on an existing non-empty folder: never overwrites an episode
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                    raise
                misses += 1
                if misses % 64 == 0:  # many writers ahead of us: jump to the end instead of stepping
                    ep_id = max(ep_id, self._scan_max_id()) + 1
                else:
                    ep_id += 1
                continue
            with self._lock:
                self._next_guess = max(self._next_guess, ep_id + 1)
            return ep_id

    def _scan_max_id(self) -> int:
        ids = [int(m.group(1)) for n in os.listdir(self._episodes_dir) if (m := _EP_RE.match(n))]
        return max(ids, default=-1)

    def _check_marker(self) -> None:
        """Refuse a ``store.json`` that is not JSON, not this format's, or of a schema this dws-gym does not read.

        A missing marker is accepted (``create=True`` writes one).
        """
        marker = self.root / _MARKER_FILE
        if not marker.is_file():
            return
        good = json.dumps({"format": STORE_FORMAT, "schema_version": SCHEMA_VERSION})
        try:
            info = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ValueError(
                f"{marker} is not valid JSON ({e}); it marks {self.root} as a trajectory store. If the episodes "
                f"under {self._episodes_dir} were written by this dws-gym, replace the file's content with {good}."
            ) from e
        if not isinstance(info, dict) or info.get("format") != STORE_FORMAT:
            raise ValueError(
                f"{marker} does not describe a trajectory store (expected {good}, got {info!r}); open the folder "
                f"the store was written to, or replace the file's content with {good} if it is one."
            )
        version = info.get("schema_version")
        if version != SCHEMA_VERSION:
            newer = isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION
            raise ValueError(
                f"{marker} has schema_version {version!r}; this dws-gym reads schema_version {SCHEMA_VERSION}. "
                + ("The store was written by a newer dws-gym: upgrade dws-gym to read it." if newer
                   else f"Restore the file (it should read {good}) or re-collect the data.")
            )

    def _write_marker(self) -> None:
        marker = self.root / _MARKER_FILE
        if marker.exists():
            return
        tmp = self.root / f".store.json.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps({"format": STORE_FORMAT, "schema_version": SCHEMA_VERSION}) + "\n")
        os.replace(tmp, marker)

    # ------------------------------------------------------------------ housekeeping

    def cleanup_tmp(self, max_age_s: float = _STALE_TMP_AGE_S) -> list[Path]:
        """Delete leftover temp folders of dead writers; returns the deleted paths.

        A folder is removed when nothing in it changed for ``max_age_s`` seconds and, if it was made on this
        host, its writer process is gone. Readers never look at these folders, so this only frees disk. Opening a
        store with ``create=True`` runs it with the default age.
        """
        removed: list[Path] = []
        if not self._tmp_dir.is_dir():
            return removed
        now = time.time()
        host = socket.gethostname()
        for entry in os.scandir(self._tmp_dir):
            if not entry.is_dir():
                continue
            path = Path(entry.path)
            parts = entry.name.rsplit("-", 2)
            if len(parts) == 3 and parts[0] == host and parts[1].isdigit() and _pid_alive(int(parts[1])):
                continue
            try:
                newest = max([entry.stat().st_mtime] + [p.stat().st_mtime for p in path.iterdir()])
            except FileNotFoundError:
                continue  # published or removed meanwhile
            if now - newest >= max_age_s:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
        return removed

    def close(self) -> None:
        """Drop the cached memory maps (they close once no array view of them is alive)."""
        with self._lock:
            self._maps.clear()

    def __getstate__(self) -> dict[str, Any]:
        # Picklable for DataLoader workers: maps and the lock are per process.
        state = self.__dict__.copy()
        state["_maps"] = OrderedDict()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"TrajectoryStore({str(self.root)!r}, episodes={self.num_episodes}, frames={self.num_frames})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@functools.lru_cache(maxsize=4096)
def _expected_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """The exact header bytes this numpy writes for a C-ordered array (compared byte-wise to skip parsing)."""
    buf = io.BytesIO()
    d = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buf, d)
    return buf.getvalue()


def _read_small_npy(path: Path, ep_id: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Read a small .npy fully and check it holds ``dtype`` with ``shape``."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CorruptEpisodeError(path, ep_id, "file is missing") from None
    except OSError as e:
        raise CorruptEpisodeError(path, ep_id, f"unreadable ({e})") from None
    header = _expected_header(shape, dtype)
    if data.startswith(header) and len(data) == len(header) + math.prod(shape) * dtype.itemsize:
        return np.frombuffer(data, dtype=dtype, offset=len(header)).reshape(shape)
    # Not the byte layout we write: parse it properly to say what is wrong (or accept an equivalent header).
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # truncated or garbled .npy: numpy raises several types
        raise CorruptEpisodeError(path, ep_id, f"unreadable .npy ({type(e).__name__}: {e})") from None
    if arr.dtype != dtype:
        raise CorruptEpisodeError(path, ep_id, f"dtype {arr.dtype} does not match meta.json (expected {dtype})")
    if arr.shape != shape:
        raise CorruptEpisodeError(path, ep_id, f"shape {arr.shape} disagrees with meta.json (expected {shape})")
    return arr


def _check_npy_header(path: Path, ep_id: int, shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Check an .npy's header and file size against the expected array; return the data offset."""
    header = _expected_header(shape, dtype)
    try:
        with open(path, "rb") as f:
            if f.read(len(header)) == header:
                size = os.fstat(f.fileno()).st_size
                want = len(header) + math.prod(shape) * dtype.itemsize
                if size != want:
                    raise CorruptEpisodeError(
                        path, ep_id, f"file is {size} bytes, expected {want} (truncated or overwritten)"
                    )
                return len(header)
            f.seek(0)
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                got_shape, fortran, got_dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                got_shape, fortran, got_dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
    except CorruptEpisodeError:
        raise
    except FileNotFoundError:
        raise CorruptEpisodeError(path, ep_id, "file is missing") from None
    except Exception as e:
        raise CorruptEpisodeError(path, ep_id, f"unreadable .npy header ({type(e).__name__}: {e})") from None
    if got_dtype != dtype or fortran:
        raise CorruptEpisodeError(path, ep_id, f"dtype {got_dtype} (fortran={fortran}), expected C-ordered {dtype}")
    if tuple(got_shape) != tuple(shape):
        raise CorruptEpisodeError(path, ep_id, f"shape {tuple(got_shape)} disagrees with meta.json ({tuple(shape)})")
    want = offset + math.prod(shape) * dtype.itemsize
    if size != want:
        raise CorruptEpisodeError(path, ep_id, f"file is {size} bytes, expected {want} (truncated or overwritten)")
    return offset
