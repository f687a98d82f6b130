"""Reward / termination head of a world simulator (the paper's reward model R_psi).

The video backbone predicts frames only; this separate, small module turns a transition into a reward and a
termination flag. It reads

* ``context``: the last K frames before the action, uint8 ``(B, K, H, W, C)`` (the simulator state's frames),
* ``action``: the action taken after the last context frame, int64 ``(B,)`` (embedded by a learned table) or an
  externally supplied embedding float ``(B, action_embed_dim)`` (e.g. the simulator's cached text embeddings),
* ``next_frame``: the frame that action produced, uint8 ``(B, H, W, C)``,

and predicts reward logits and a termination logit.

Architecture (the paper names linear, self-attention and cross-attention layers; the rest is ours):

1. One small conv stack, shared by all frames, cuts each frame into ``(H / p) * (W / p)`` patch tokens of width
   ``dim`` (``p = patch_size``, stride-2 3x3 convs). Learned spatial and frame-slot embeddings are added.
2. The next frame's tokens also get a linear projection of their difference to the last context frame's tokens:
   rewards and game over mostly show up as *changes* (a brick vanishes, the score ticks), so the change is handed
   to the attention layers instead of left for them to discover.
3. ``depth`` times: self-attention over the next-frame tokens, then cross-attention from them to the context tokens
   plus one action token; each followed by an MLP (pre-LayerNorm residual blocks). The cross-attention reads the
   newest ``memory_frames`` context frames (all ``K`` by default); reading only the last one cuts its keys and values
   from ``K * T + 1`` to ``T + 1`` tokens, the head's largest attention, at the price of the older frames' motion.
4. Mean- and max-pooling over the next-frame tokens (max keeps small objects, such as a score digit, visible),
   concatenated with the action embedding, then an MLP and two linear heads.

Reward targets (``RewardConfig.mode``):

* ``"sign"``: 3 classes of ``sign(r)``, paying ``RewardConfig.sign_values``: ``(-1, 0, +1)`` by default, for games
  trained on clipped rewards (Atari); a game whose rewards of each sign all have one value (Procgen CoinRun and
  Ninja pay 10 for the goal) keeps that value, so the dream pays what the game pays
  (:func:`dws_gym.models.reward_training.sign_values_from_rewards`).
* ``"twohot"``: ``num_bins`` bins evenly spaced in symlog space over ``[bin_low, bin_high]`` (DreamerV3 style;
  default 255 bins over ``[-20, 20]``); the target is the two-hot encoding of ``symlog(r)``.

Prediction: by default the reward is the predicted class value (sign: the argmax class's value; two-hot: the
expectation of the bins under the predicted distribution, mapped back with ``symexp``) and ``terminated`` is
``sigmoid(logit) > 0.5``; with ``sample=True`` the reward class / bin and a Bernoulli termination are drawn from
the passed generator (no other randomness is used).

Class imbalance (rewards and terminations are rare in real data). Our choice, applied in :meth:`RewardHead.loss`:

* Reward: each sample's cross-entropy is weighted by the weight of its reward's *sign* class (in two-hot mode
  too, so rare non-zero rewards are up-weighted alike). A class's weight is its inverse frequency relative to the
  most frequent class, ``n_max / n_c``, clipped to ``max_class_weight`` (default 10); the loss is the weighted
  mean (divided by the sum of the weights, as ``torch.nn.functional.cross_entropy`` does). Counts come from the
  dataset when given (``RewardConfig.class_weights`` or the ``class_weights=`` argument, see
  :func:`dws_gym.models.reward_training.balance_weights_from_data`), else from the batch.
* Termination: binary cross-entropy with ``pos_weight = n_negative / n_positive`` clipped to
  ``[1, max_pos_weight]`` (default 10), again from the dataset when given, else from the batch.
* Or oversampling instead of weights: :class:`~dws_gym.models.reward_training.RareEventSampler` fills a fixed
  share of every batch with rare transitions, so a short training budget still sees many of them; the loss is then
  left unweighted.

Why clip: a game over is about one step in a thousand in Atari; full inverse-frequency weights would make the head
fire on every look-alike frame and end dreamed episodes early, which hurts an agent more than a missed terminal.
A clipped weight restores recall on rare events while keeping the 0.5 threshold meaningful. Set the limits to 1
to train unweighted.

This module holds the network, its config and its file format; training it (batch sources, dataset-level weights,
the prior correction and the fitting loop) is :mod:`dws_gym.models.reward_training`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dws_gym.checks import check_positive_int

__all__ = [
    "SIGN_VALUES",
    "RewardConfig",
    "RewardOutput",
    "RewardHead",
    "class_balanced_weights",
    "load_reward_head",
    "reward_to_sign_class",
    "save_reward_head",
    "symexp",
    "symlog",
    "termination_pos_weight",
    "twohot_encode",
    "twohot_expectation",
]

SIGN_VALUES: tuple[float, float, float] = (-1.0, 0.0, 1.0)
"""Reward value of each sign class: class 0 is a negative, 1 a zero, 2 a positive reward."""

ArrayLike = Union[np.ndarray, torch.Tensor]
_FORMAT_VERSION = 1
_TYPE_TAG = "dws_gym.models.reward.RewardHead"


# --------------------------------------------------------------------------------------------------------------------
# Target transforms
# --------------------------------------------------------------------------------------------------------------------


def symlog(x: torch.Tensor) -> torch.Tensor:
    """``sign(x) * log(1 + |x|)``, elementwise; compresses large magnitudes, identity-like near 0."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    """``sign(x) * (exp(|x|) - 1)``, elementwise; the inverse of :func:`symlog`."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


def _check_bins(bins: torch.Tensor) -> None:
    if bins.ndim != 1 or bins.numel() < 2:
        raise ValueError(f"bins must be a 1-D tensor of at least 2 values, got shape {tuple(bins.shape)}")
    if not bool((bins[1:] > bins[:-1]).all()):
        raise ValueError("bins must be strictly increasing")


def twohot_encode(values: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Two-hot encoding of ``values`` over ``bins``.

    Each value spreads weight 1 over its two neighbouring bins in proportion to closeness, so the weights' mean
    ``sum(w * bins)`` equals the value; values on a bin put exactly 1 on it; values outside ``[bins[0], bins[-1]]``
    are clipped to the end bins.

    Args:
        values: float tensor of any shape ``S`` (in the bins' space, e.g. already symlog-transformed).
        bins: float ``(M,)``, strictly increasing, same device as ``values``.

    Returns:
        float ``(*S, M)`` weights, non-negative, summing to 1 over the last axis.
    """
    _check_bins(bins)
    bins = bins.to(values.dtype) if values.is_floating_point() else bins
    v = values.to(bins.dtype).clamp(bins[0], bins[-1])
    # Index of the bin at or below v, kept one short of the end so idx + 1 exists.
    idx = (torch.searchsorted(bins, v.contiguous(), right=True) - 1).clamp(0, bins.numel() - 2)
    lo, hi = bins[idx], bins[idx + 1]
    w_hi = (v - lo) / (hi - lo)
    out = torch.zeros(*v.shape, bins.numel(), dtype=bins.dtype, device=v.device)
    out.scatter_(-1, idx.unsqueeze(-1), (1.0 - w_hi).unsqueeze(-1))
    out.scatter_add_(-1, (idx + 1).unsqueeze(-1), w_hi.unsqueeze(-1))
    return out


def twohot_expectation(logits: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Expected bin value under ``softmax(logits)``, in the bins' space (apply :func:`symexp` for rewards).

    Args:
        logits: float ``(*S, M)``; ``-inf`` entries are allowed (zero probability).
        bins: float ``(M,)``.

    Returns:
        float ``(*S,)``.
    """
    _check_bins(bins)
    if logits.shape[-1] != bins.numel():
        raise ValueError(f"logits have {logits.shape[-1]} entries on the last axis but there are {bins.numel()} bins")
    return (torch.softmax(logits, dim=-1) * bins.to(logits.dtype)).sum(-1)


def reward_to_sign_class(reward: torch.Tensor) -> torch.Tensor:
    """Sign class of each reward: 0 for ``r < 0``, 1 for ``r == 0``, 2 for ``r > 0`` (int64, same shape)."""
    if reward.dtype == torch.bool:
        raise ValueError("reward must be numeric, got a bool tensor")
    return (torch.sign(reward) + 1).to(torch.int64)


def class_balanced_weights(counts: torch.Tensor, max_weight: float = 10.0) -> torch.Tensor:
    """Inverse-frequency class weights ``n_max / n_c`` clipped to ``[1, max_weight]``.

    The most frequent class gets 1, rarer classes more. Classes with count 0 get ``max_weight`` (they carry no
    samples in these counts; the value only matters if they show up later).

    Args:
        counts: ``(C,)`` non-negative counts (any numeric dtype).
        max_weight: upper clip, ``>= 1``.

    Returns:
        float32 ``(C,)`` on ``counts``' device.
    """
    if not (math.isfinite(max_weight) and max_weight >= 1):
        raise ValueError(f"max_weight must be a finite number >= 1, got {max_weight!r}")
    c = counts.to(torch.float32)
    if c.ndim != 1 or bool((c < 0).any()):
        raise ValueError(f"counts must be a 1-D tensor of non-negative numbers, got {counts!r}")
    w = c.max().clamp_min(1.0) / c.clamp_min(1e-12)
    return w.clamp(1.0, float(max_weight))


def termination_pos_weight(terminated: torch.Tensor, max_weight: float = 10.0) -> float:
    """``pos_weight`` for the termination BCE: ``n_negative / n_positive`` clipped to ``[1, max_weight]``.

    Returns 1.0 when there are no positives (nothing to up-weight).
    """
    if not (math.isfinite(max_weight) and max_weight >= 1):
        raise ValueError(f"max_weight must be a finite number >= 1, got {max_weight!r}")
    t = terminated.reshape(-1).to(torch.bool)
    pos = int(t.sum())
    if pos == 0:
        return 1.0
    return float(min(max((t.numel() - pos) / pos, 1.0), float(max_weight)))


# --------------------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class RewardConfig:
    """Hyper-parameters of a :class:`RewardHead`; JSON serializable via :meth:`to_dict` / :meth:`from_dict`.

    Attributes:
        mode: ``"sign"`` (3 classes of sign(r), for clipped-reward games) or ``"twohot"`` (symlog two-hot bins).
        context_frames: K, the number of context frames the head takes (the simulator's context length); its
            cross-attention reads the newest ``memory_frames`` of them.
        frame_shape: ``(H, W, C)`` of one uint8 frame; H and W divisible by ``patch_size``.
        num_actions: size of a ``Discrete`` action space, embedded by a learned table; ``None`` if actions only
            come as external embeddings.
        action_embed_dim: width of externally supplied action embeddings (e.g. cached text embeddings), projected
            by a linear layer; ``None`` if actions only come as integers. At least one of the two must be set.
        memory_frames: how many of the newest context frames the cross-attention reads (``1..K``); ``None``: all
            ``K``. The change to the last frame (step 2) is always used.
        dim: token width.
        depth: number of (self-attention, cross-attention) block pairs.
        num_heads: attention heads (``dim`` must be divisible by it).
        patch_size: frame pixels per token side, a power of two >= 2 (one stride-2 conv per factor of two).
        mlp_ratio: MLP hidden width as a multiple of ``dim``.
        num_bins, bin_low, bin_high: two-hot bins, evenly spaced in symlog space (ignored in sign mode).
        class_weights: dataset-level sign-class weights (3 floats); ``None`` computes them per batch.
        termination_pos_weight: dataset-level ``pos_weight``; ``None`` computes it per batch.
        max_class_weight, max_pos_weight: clips of the weights computed per batch (>= 1; 1 disables balancing).
        termination_coef: weight of the termination loss relative to the reward loss.
        reward_logit_offset: added to the reward logits when predicting (not in the loss): ``log p_data / p_train``
            per class undoes the prior shift of oversampled training batches
            (:func:`dws_gym.models.reward_training.prior_correction`); ``None`` adds nothing.
        termination_logit_offset: the same for the termination logit (``logit p_data - logit p_train``).
        sign_values: the reward paid for each sign class in sign mode (negative, zero, positive), e.g.
            ``(-1, 0, 10)`` for a game whose only reward is 10; ignored in two-hot mode.
        reward_ends_episode: the game ends on every reward (Procgen CoinRun's coin and Ninja's mushroom are the last
            step of an episode): a predicted non-zero reward also terminates, so a dream cannot pay twice or go on
            past its goal (:func:`dws_gym.models.reward_training.reward_ends_episode_in` reads it from the data;
            sign mode only).
    """

    mode: Literal["sign", "twohot"] = "sign"
    context_frames: int = 4
    frame_shape: tuple[int, int, int] = (64, 64, 3)
    num_actions: int | None = 18
    action_embed_dim: int | None = None
    memory_frames: int | None = None
    dim: int = 64
    depth: int = 2
    num_heads: int = 4
    patch_size: int = 8
    mlp_ratio: float = 2.0
    num_bins: int = 255
    bin_low: float = -20.0
    bin_high: float = 20.0
    class_weights: tuple[float, float, float] | None = None
    termination_pos_weight: float | None = None
    max_class_weight: float = 10.0
    max_pos_weight: float = 10.0
    termination_coef: float = 1.0
    reward_logit_offset: tuple[float, ...] | None = None
    termination_logit_offset: float = 0.0
    sign_values: tuple[float, float, float] = SIGN_VALUES
    reward_ends_episode: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("sign", "twohot"):
            raise ValueError(f"RewardConfig.mode must be 'sign' or 'twohot', got {self.mode!r}")
        self.context_frames = check_positive_int("RewardConfig.context_frames", self.context_frames)
        shape = tuple(self.frame_shape)
        if len(shape) != 3:
            raise ValueError(f"RewardConfig.frame_shape must be (H, W, C), got {self.frame_shape!r}")
        self.frame_shape = tuple(check_positive_int("RewardConfig.frame_shape", s) for s in shape)  # type: ignore[assignment]
        if self.num_actions is not None:
            self.num_actions = check_positive_int("RewardConfig.num_actions", self.num_actions)
        if self.action_embed_dim is not None:
            self.action_embed_dim = check_positive_int("RewardConfig.action_embed_dim", self.action_embed_dim)
        if self.num_actions is None and self.action_embed_dim is None:
            raise ValueError("RewardConfig needs num_actions (integer actions) or action_embed_dim (embeddings)")
        if self.memory_frames is not None:
            m = check_positive_int("RewardConfig.memory_frames", self.memory_frames)
            if m > self.context_frames:
                raise ValueError(f"RewardConfig.memory_frames={m} exceeds context_frames={self.context_frames}: the "
                                 "cross-attention can read at most the K context frames")
            self.memory_frames = m
        for name in ("dim", "depth", "num_heads", "patch_size", "num_bins"):
            setattr(self, name, check_positive_int(f"RewardConfig.{name}", getattr(self, name)))
        if self.dim % self.num_heads:
            raise ValueError(f"RewardConfig.dim={self.dim} must be divisible by num_heads={self.num_heads}")
        p = self.patch_size
        if p < 2 or p & (p - 1):
            raise ValueError(f"RewardConfig.patch_size must be a power of two >= 2, got {p}")
        h, w, _ = self.frame_shape
        if h % p or w % p:
            raise ValueError(f"frame height and width {h}x{w} must be divisible by patch_size={p}")
        if not (math.isfinite(self.mlp_ratio) and self.mlp_ratio > 0):
            raise ValueError(f"RewardConfig.mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        if self.num_bins < 2 or not (self.bin_low < self.bin_high):
            raise ValueError("two-hot bins need num_bins >= 2 and bin_low < bin_high")
        if self.class_weights is not None:
            cw = tuple(float(x) for x in self.class_weights)
            if len(cw) != 3 or not all(math.isfinite(x) and x > 0 for x in cw):
                raise ValueError(f"RewardConfig.class_weights must be 3 positive floats, got {self.class_weights!r}")
            self.class_weights = cw  # type: ignore[assignment]
        if self.termination_pos_weight is not None:
            pw = float(self.termination_pos_weight)
            if not (math.isfinite(pw) and pw > 0):
                raise ValueError(f"RewardConfig.termination_pos_weight must be > 0, got {pw!r}")
            self.termination_pos_weight = pw
        for name in ("max_class_weight", "max_pos_weight"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v >= 1):
                raise ValueError(f"RewardConfig.{name} must be a finite number >= 1, got {v!r}")
            setattr(self, name, v)
        if not (math.isfinite(self.termination_coef) and self.termination_coef >= 0):
            raise ValueError(f"RewardConfig.termination_coef must be >= 0, got {self.termination_coef!r}")
        if self.reward_logit_offset is not None:
            off = tuple(float(x) for x in self.reward_logit_offset)
            if len(off) != self.num_classes or not all(math.isfinite(x) for x in off):
                raise ValueError(f"RewardConfig.reward_logit_offset must be {self.num_classes} finite floats, "
                                 f"got {self.reward_logit_offset!r}")
            self.reward_logit_offset = off  # type: ignore[assignment]
        if not math.isfinite(float(self.termination_logit_offset)):
            raise ValueError(f"RewardConfig.termination_logit_offset must be finite, got "
                             f"{self.termination_logit_offset!r}")
        self.termination_logit_offset = float(self.termination_logit_offset)
        sv = tuple(float(x) for x in self.sign_values)
        ordered = len(sv) == 3 and sv[0] < 0.0 and sv[1] == 0.0 and sv[2] > 0.0
        if not (ordered and all(math.isfinite(x) for x in sv)):
            raise ValueError(f"RewardConfig.sign_values must be (negative, 0, positive) finite floats, "
                             f"got {self.sign_values!r}")
        self.sign_values = sv  # type: ignore[assignment]
        if not isinstance(self.reward_ends_episode, bool):
            raise ValueError(f"RewardConfig.reward_ends_episode must be true or false, got {self.reward_ends_episode!r}")
        if self.reward_ends_episode and self.mode != "sign":
            raise ValueError("RewardConfig.reward_ends_episode needs mode='sign': a two-hot head's point reward is "
                             "almost never exactly 0, so every step would end the episode")

    @property
    def read_frames(self) -> int:
        """Context frames the cross-attention reads: ``memory_frames``, or ``K`` when it is ``None``."""
        return self.context_frames if self.memory_frames is None else self.memory_frames

    @property
    def num_classes(self) -> int:
        """Width of the reward logits: 3 in sign mode, ``num_bins`` in two-hot mode."""
        return 3 if self.mode == "sign" else self.num_bins

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["frame_shape"] = list(self.frame_shape)
        if self.class_weights is not None:
            d["class_weights"] = list(self.class_weights)
        if self.reward_logit_offset is not None:
            d["reward_logit_offset"] = list(self.reward_logit_offset)
        d["sign_values"] = list(self.sign_values)
        if self.memory_frames is None:  # the default is left out, so that such heads stay readable by older versions
            del d["memory_frames"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RewardConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError."""
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown RewardConfig keys {unknown}")
        return cls(**d)


# --------------------------------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class RewardOutput:
    """Raw outputs of :meth:`RewardHead.forward`.

    Attributes:
        reward_logits: float ``(B, num_classes)``: sign classes ``(-1, 0, +1)`` or two-hot bins.
        termination_logit: float ``(B,)``; ``sigmoid`` gives the termination probability.
    """

    reward_logits: torch.Tensor
    termination_logit: torch.Tensor


class _Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class _AttentionBlock(nn.Module):
    """Pre-LayerNorm residual attention + MLP; self-attention when no memory is given, else cross-attention."""

    def __init__(self, dim: int, num_heads: int, hidden: int, cross: bool) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim) if cross else None
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, hidden)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        q = self.norm_q(x)
        kv = q if self.norm_kv is None or memory is None else self.norm_kv(memory)
        x = x + self._attend(q, kv)
        return x + self.mlp(self.norm_mlp(x))

    def _attend(self, q_in: torch.Tensor, kv_in: torch.Tensor) -> torch.Tensor:
        """``self.attn(q_in, kv_in, kv_in)`` (its weights, its result up to float rounding).

        Eager, the attention itself is plain matmuls and a softmax: the fused scaled-dot-product kernel's CPU flash
        path is slow at this head's sizes (head width 16, 64 queries; 5 ms of a 45 ms head call per self-attention
        layer on two AMD EPYC threads in bf16). Compiled (``Simulator.compile``), it is the fused kernel: the
        compiler turns it into its own attention kernel, which ran the whole head call in half the time of the
        compiled plain matmuls (21 against 44 ms, 64 transitions, bf16, same machine).
        """
        attn = self.attn
        b, lq, d = q_in.shape
        heads = attn.num_heads
        w, bias = attn.in_proj_weight, attn.in_proj_bias
        q = F.linear(q_in, w[:d], bias[:d])
        k = F.linear(kv_in, w[d : 2 * d], bias[d : 2 * d])
        v = F.linear(kv_in, w[2 * d :], bias[2 * d :])
        q, k, v = (t.unflatten(-1, (heads, d // heads)).transpose(1, 2) for t in (q, k, v))  # (B, heads, L, d_h)
        if torch.compiler.is_compiling():
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = ((q * (d // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        out = out.transpose(1, 2).reshape(b, lq, d)
        return attn.out_proj(out)


def _patch_embed(in_channels: int, dim: int, patch_size: int) -> nn.Sequential:
    """Stride-2 3x3 convs, widths ramping up to ``dim``, one per factor of two in ``patch_size``."""
    stages = int(round(math.log2(patch_size)))
    widths = [max(dim >> (stages - 1 - i), 8) for i in range(stages)]
    widths[-1] = dim
    layers: list[nn.Module] = []
    c = in_channels
    for i, w in enumerate(widths):
        layers.append(nn.Conv2d(c, w, kernel_size=3, stride=2, padding=1))
        if i < stages - 1:
            layers.append(nn.SiLU())
        c = w
    return nn.Sequential(*layers)


def _to_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise ValueError(f"{name} must be a torch tensor or numpy array, got {type(x).__name__}")


class RewardHead(nn.Module):
    """Predicts the reward and termination of a transition (context frames, action, next frame).

    See the module docstring for the architecture, the reward modes and the class balancing. Inputs may be numpy
    arrays or tensors on any device; they are moved to the head's device, and outputs live there.

    Args:
        config: a :class:`RewardConfig` (defaults: sign mode, K = 4, 64x64x3 frames, 18 actions, ~0.2M params).
    """

    def __init__(self, config: RewardConfig | None = None) -> None:
        super().__init__()
        if config is None:
            config = RewardConfig()
        if not isinstance(config, RewardConfig):
            raise ValueError(f"RewardHead takes a RewardConfig, got {type(config).__name__}")
        self.config = config
        h, w, c = config.frame_shape
        d, p = config.dim, config.patch_size
        hidden = max(int(round(d * config.mlp_ratio)), 1)
        self.num_tokens = (h // p) * (w // p)

        self.patch = _patch_embed(c, d, p)
        self.pos = nn.Parameter(torch.randn(self.num_tokens, d) * 0.02)
        # Slots 0..K-1: context frames (oldest first); slot K: the next frame. A head that reads fewer frames
        # (memory_frames) leaves the oldest slots unused; they stay, so every head of a config has one layout.
        self.frame_slot = nn.Parameter(torch.randn(config.context_frames + 1, d) * 0.02)
        self.change = nn.Linear(d, d)
        self.action_table = nn.Embedding(config.num_actions, d) if config.num_actions is not None else None
        self.action_proj = nn.Linear(config.action_embed_dim, d) if config.action_embed_dim is not None else None
        self.blocks = nn.ModuleList()
        for _ in range(config.depth):
            self.blocks.append(_AttentionBlock(d, config.num_heads, hidden, cross=False))
            self.blocks.append(_AttentionBlock(d, config.num_heads, hidden, cross=True))
        self.norm_out = nn.LayerNorm(d)
        self.trunk = nn.Sequential(nn.Linear(3 * d, hidden), nn.GELU())
        self.reward_out = nn.Linear(hidden, config.num_classes)
        self.termination_out = nn.Linear(hidden, 1)
        bins = torch.linspace(config.bin_low, config.bin_high, config.num_bins, dtype=torch.float64)
        # Snap a bin that should sit at 0 (odd count, symmetric range) onto exact 0, so "no reward" is representable.
        bins = torch.where(bins.abs() < 1e-9 * (config.bin_high - config.bin_low), torch.zeros_like(bins), bins)
        self.register_buffer("bins", bins.float(), persistent=False)
        self.register_buffer("sign_values", torch.tensor(config.sign_values), persistent=False)
        # Start from the prior "no reward, not terminated", so an untrained head (sampled or not) reads as a quiet
        # transition: zero output weights, about 0.8 probability on the zero-reward class / bin(s), p(term) ~ 0.12.
        for lin in (self.reward_out, self.termination_out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        c = config.num_classes
        zero = torch.tensor([0.0, 1.0, 0.0]) if config.mode == "sign" else twohot_encode(torch.zeros(()), self.bins)
        with torch.no_grad():
            self.reward_out.bias.copy_(zero * math.log(4.0 * (c - 1)))
        nn.init.constant_(self.termination_out.bias, -2.0)

    @property
    def device(self) -> torch.device:
        """Device of the head's parameters."""
        return self.pos.device

    # ---------------------------------------------------------------------------------------------------------------
    # Input checks
    # ---------------------------------------------------------------------------------------------------------------

    def _check_inputs(
        self, context: Any, action: Any, next_frame: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.config
        k = cfg.context_frames
        frame = tuple(cfg.frame_shape)
        context = _to_tensor(context, "context")
        next_frame = _to_tensor(next_frame, "next_frame")
        action = _to_tensor(action, "action")
        if context.dtype != torch.uint8 or next_frame.dtype != torch.uint8:
            raise ValueError(
                f"context and next_frame must be uint8 frames (0..255), got {context.dtype} and {next_frame.dtype}"
            )
        if context.ndim != 5 or tuple(context.shape[1:]) != (k, *frame):
            raise ValueError(
                f"context must have shape (B, {k}, {', '.join(map(str, frame))}) (the last K = {k} frames), "
                f"got {tuple(context.shape)}"
            )
        if next_frame.ndim != 4 or tuple(next_frame.shape[1:]) != frame:
            raise ValueError(
                f"next_frame must have shape (B, {', '.join(map(str, frame))}), got {tuple(next_frame.shape)}"
            )
        b = context.shape[0]
        if next_frame.shape[0] != b:
            raise ValueError(f"context has batch {b} but next_frame has batch {next_frame.shape[0]}")
        if action.is_floating_point():
            if cfg.action_embed_dim is None:
                raise ValueError(
                    "got float action embeddings but this head has no action_embed_dim; pass int64 actions (B,)"
                )
            if tuple(action.shape) != (b, cfg.action_embed_dim):
                raise ValueError(
                    f"action embeddings must have shape (B, {cfg.action_embed_dim}) = ({b}, {cfg.action_embed_dim}), "
                    f"got {tuple(action.shape)}"
                )
        elif action.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            if cfg.num_actions is None:
                raise ValueError(
                    f"got integer actions but this head has no action table; pass float embeddings "
                    f"(B, {cfg.action_embed_dim})"
                )
            if tuple(action.shape) != (b,):
                raise ValueError(f"integer actions must have shape (B,) = ({b},), got {tuple(action.shape)}")
            if b and (int(action.min()) < 0 or int(action.max()) >= cfg.num_actions):
                raise ValueError(
                    f"actions must lie in [0, {cfg.num_actions}), got values in "
                    f"[{int(action.min())}, {int(action.max())}]"
                )
            action = action.to(torch.int64)
        else:
            raise ValueError(f"action must be an integer tensor (B,) or float embeddings, got dtype {action.dtype}")
        dev = self.device
        return context.to(dev), action.to(dev), next_frame.to(dev)

    # ---------------------------------------------------------------------------------------------------------------
    # Forward / predict
    # ---------------------------------------------------------------------------------------------------------------

    def _embed_action(self, action: torch.Tensor) -> torch.Tensor:
        if action.is_floating_point():
            assert self.action_proj is not None
            return self.action_proj(action.to(self.pos.dtype))
        assert self.action_table is not None
        return self.action_table(action)

    def forward(self, context: ArrayLike, action: ArrayLike, next_frame: ArrayLike) -> RewardOutput:
        """Reward logits and termination logit of a batch of transitions.

        Args:
            context: uint8 ``(B, K, H, W, C)``, the last K frames before the action (oldest first).
            action: int64 ``(B,)`` action indices, or float ``(B, action_embed_dim)`` embeddings.
            next_frame: uint8 ``(B, H, W, C)``, the frame produced by the action.

        Returns:
            :class:`RewardOutput` with ``reward_logits`` float ``(B, num_classes)`` and ``termination_logit``
            float ``(B,)``.

        Raises:
            ValueError: wrong shapes, dtypes, batch sizes or action range.
        """
        context, action, next_frame = self._check_inputs(context, action, next_frame)
        return self.logits(context, action, next_frame)

    def logits(self, context: torch.Tensor, action: torch.Tensor, next_frame: torch.Tensor) -> RewardOutput:
        """:meth:`forward` without its input checks: checked tensors on the head's device (uint8 frames, int64
        actions or float embeddings). The tensor work alone, so that ``torch.compile`` sees no host syncs."""
        m = self.config.read_frames  # only the frames the head reads are embedded
        frames = torch.cat([context[:, context.shape[1] - m :], next_frame.unsqueeze(1)], dim=1)  # (B, m+1, H, W, C)
        return self.logits_from_tokens(self.frame_tokens(frames), action)

    def frame_tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """Patch tokens of each frame, ``(B, F, T, D)`` from uint8 ``(B, F, H, W, C)`` on the head's device.

        A frame's tokens depend on that frame alone (the spatial embedding is the same in every slot; the slot
        embedding is added later), so a simulator keeps the context frames' tokens across its steps and computes
        only the new frame's (:class:`dws_gym.simulator.SimState` ``head_tokens``).
        """
        b, f = frames.shape[:2]
        x = frames.flatten(0, 1).permute(0, 3, 1, 2).to(self.pos.dtype) / 127.5 - 1.0
        tok = self.patch(x).flatten(2).transpose(1, 2)  # (B*F, T, D)
        return tok.unflatten(0, (b, f)) + self.pos

    def logits_from_tokens(self, tokens: torch.Tensor, action: torch.Tensor) -> RewardOutput:
        """Logits from :meth:`frame_tokens` of the context frames and the next frame, ``(B, F+1, T, D)``, oldest
        first: ``F`` may be ``K`` or any number down to ``config.read_frames``; the newest ``read_frames`` are read."""
        k, m = self.config.context_frames, self.config.read_frames
        if tokens.shape[1] < m + 1:  # static under torch.compile: no host sync
            raise ValueError(f"logits_from_tokens needs the tokens of at least {m + 1} frames (the {m} context frames "
                             f"the head reads and the next frame), got {tokens.shape[1]}")
        nxt = tokens[:, -1] + self.change(tokens[:, -1] - tokens[:, -2]) + self.frame_slot[-1]
        ctx = (tokens[:, -1 - m : -1] + self.frame_slot[k - m : k, None]).flatten(1, 2)  # (B, m*T, D)
        act = self._embed_action(action)
        memory = torch.cat([ctx, act.unsqueeze(1)], dim=1)
        for block in self.blocks:
            nxt = block(nxt, memory if block.norm_kv is not None else None)
        nxt = self.norm_out(nxt)
        feat = self.trunk(torch.cat([nxt.mean(1), nxt.amax(1), act], dim=-1))
        return RewardOutput(self.reward_out(feat), self.termination_out(feat).squeeze(-1))

    def set_sign_values(self, values: Sequence[float]) -> None:
        """Set what a sign-mode head pays per class (negative, zero, positive), in its config and on its device;
        a pure relabelling of the classes, so a trained head keeps its ranking of transitions.

        Raises:
            ValueError: values that are not (negative, 0, positive) finite floats.
        """
        new = dataclasses.replace(self.config, sign_values=tuple(float(v) for v in values))  # validates
        self.config.sign_values = new.sign_values
        self.sign_values.copy_(torch.tensor(new.sign_values, dtype=self.sign_values.dtype))

    def reward_values(self, reward_logits: torch.Tensor) -> torch.Tensor:
        """Point reward of each row of logits: argmax class value (sign) or ``symexp`` of the bin expectation."""
        if self.config.mode == "sign":
            return self.sign_values.to(reward_logits.dtype)[reward_logits.argmax(-1)]
        return symexp(twohot_expectation(reward_logits, self.bins))

    @torch.no_grad()
    def predict(
        self,
        context: ArrayLike,
        action: ArrayLike,
        next_frame: ArrayLike,
        sample: bool = False,
        generator: torch.Generator | None = None,
        end_on_reward: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reward and termination of each transition, without gradients.

        Args:
            context, action, next_frame: as in :meth:`forward`.
            sample: ``False`` (default): reward = predicted class value (two-hot: ``symexp`` of the expected bin),
                terminated = probability > 0.5. ``True``: reward class / bin drawn from the predicted distribution
                and termination drawn from a Bernoulli.
            generator: the only source of randomness when sampling (drawn on the generator's device); ``None``
                uses torch's global generator. Ignored when ``sample`` is False.
            end_on_reward: apply ``config.reward_ends_episode`` (a paid step terminates); ``None`` follows the config.
                A caller that merges rewards and terminations of different calls passes ``False`` and applies
                the rule to the merged pair.

        Returns:
            ``(reward, terminated)``: float32 ``(B,)`` and bool ``(B,)`` on the head's device.
        """
        return self.decide(self(context, action, next_frame), sample, generator, end_on_reward)

    @torch.no_grad()
    def decide(
        self,
        out: RewardOutput,
        sample: bool = False,
        generator: torch.Generator | None = None,
        end_on_reward: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`predict` from logits already computed (same arguments): the config's logit offsets, then the
        point prediction or a draw."""
        logits = out.reward_logits.float()
        if self.config.reward_logit_offset is not None:
            logits = logits + torch.tensor(self.config.reward_logit_offset, device=logits.device)
        p_term = torch.sigmoid(out.termination_logit.float() + self.config.termination_logit_offset)
        if not sample:
            reward, terminated = self.reward_values(logits).float(), p_term > 0.5
        else:
            probs = torch.softmax(logits, dim=-1)
            dev = generator.device if generator is not None else probs.device
            idx = torch.multinomial(probs.to(dev), 1, generator=generator).squeeze(1).to(probs.device)
            u = torch.rand(p_term.shape, generator=generator, device=dev).to(p_term.device)
            reward = (self.sign_values[idx] if self.config.mode == "sign" else symexp(self.bins[idx])).float()
            terminated = u < p_term
        if self.config.reward_ends_episode if end_on_reward is None else end_on_reward:
            terminated = terminated | (reward != 0)
        return reward, terminated

    # ---------------------------------------------------------------------------------------------------------------
    # Training
    # ---------------------------------------------------------------------------------------------------------------

    def loss(
        self,
        batch: Mapping[str, ArrayLike],
        class_weights: ArrayLike | Sequence[float] | None = None,
        pos_weight: float | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Class-balanced training loss on real transitions.

        Args:
            batch: a dict with ``obs`` (or ``context``) uint8 ``(B, K, H, W, C)``, ``action`` ``(B,)`` int or
                ``(B, action_embed_dim)`` float, ``reward`` ``(B,)`` raw (unclipped) float, ``terminated``
                ``(B,)`` bool / 0-1, ``next_obs`` uint8 ``(B, H, W, C)`` — or ``(B, K, H, W, C)`` as a
                frame-stacked transition view returns it, of which the last frame is used. Numpy or torch.
            class_weights: three sign-class weights overriding ``config.class_weights`` and the batch counts.
            pos_weight: termination ``pos_weight`` overriding ``config.termination_pos_weight`` and the batch.

        Returns:
            ``(loss, logs)``: the scalar loss (reward CE + ``termination_coef`` * termination BCE) and float logs:
            ``loss``, ``reward_loss``, ``termination_loss``, ``reward_accuracy`` (sign of the point prediction
            equals the sign of the target; predictions within 0.5 of zero count as zero),
            ``nonzero_reward_recall`` (same, over non-zero targets; NaN if none),
            ``reward_abs_error``, ``termination_accuracy``, ``termination_recall`` (NaN if no positives),
            ``pos_weight`` and ``class_weight_{neg,zero,pos}``.
        """
        if not isinstance(batch, Mapping):
            raise ValueError(f"batch must be a dict of arrays, got {type(batch).__name__}")
        ctx_key = "obs" if "obs" in batch else "context"
        missing = [key for key in (ctx_key, "action", "reward", "terminated", "next_obs") if key not in batch]
        if missing:
            raise ValueError(f"batch lacks keys {missing}; need obs (or context), action, reward, terminated, next_obs")
        next_obs = _to_tensor(batch["next_obs"], "next_obs")
        if next_obs.ndim == 5:  # a frame-stacked next observation: its newest frame is the next frame
            next_obs = next_obs[:, -1]
        out = self(batch[ctx_key], batch["action"], next_obs)
        b = out.termination_logit.shape[0]
        dev = self.device
        reward = _to_tensor(batch["reward"], "reward")
        term = _to_tensor(batch["terminated"], "terminated")
        if tuple(reward.shape) != (b,) or tuple(term.shape) != (b,):
            raise ValueError(
                f"reward and terminated must have shape (B,) = ({b},), "
                f"got {tuple(reward.shape)} and {tuple(term.shape)}"
            )
        if reward.dtype == torch.bool:
            raise ValueError("reward must be numeric, got bool")
        reward = reward.to(dev, torch.float32)
        if not bool(torch.isfinite(reward).all()):
            raise ValueError("reward contains NaN or inf")
        term = term.to(dev)
        if term.dtype != torch.bool:
            if not bool(((term == 0) | (term == 1)).all()):
                raise ValueError("terminated must be bool or 0/1")
            term = term.to(torch.bool)

        cfg = self.config
        sign_cls = reward_to_sign_class(reward)
        if class_weights is None and cfg.class_weights is not None:
            class_weights = torch.tensor(cfg.class_weights)
        if class_weights is None:
            cw = class_balanced_weights(torch.bincount(sign_cls, minlength=3), cfg.max_class_weight)
        else:
            if isinstance(class_weights, (list, tuple)):
                class_weights = np.asarray(class_weights, dtype=np.float32)
            cw = torch.as_tensor(class_weights).to(dev, torch.float32)
            if tuple(cw.shape) != (3,) or not bool((cw > 0).all()):
                raise ValueError(f"class_weights must be 3 positive weights (neg, zero, pos), got {class_weights!r}")
        if pos_weight is None:
            pos_weight = cfg.termination_pos_weight
        if pos_weight is None:
            pos_weight = termination_pos_weight(term, cfg.max_pos_weight)
        if not (math.isfinite(float(pos_weight)) and float(pos_weight) > 0):
            raise ValueError(f"pos_weight must be a positive number, got {pos_weight!r}")

        logits = out.reward_logits.float()
        if cfg.mode == "sign":
            ce = F.cross_entropy(logits, sign_cls, reduction="none")
        else:
            target = twohot_encode(symlog(reward), self.bins.float())
            ce = -(target * torch.log_softmax(logits, dim=-1)).sum(-1)
        w = cw.to(dev)[sign_cls]
        reward_loss = (w * ce).sum() / w.sum()
        termination_loss = F.binary_cross_entropy_with_logits(
            out.termination_logit.float(), term.float(), pos_weight=torch.tensor(float(pos_weight), device=dev)
        )
        loss = reward_loss + cfg.termination_coef * termination_loss

        with torch.no_grad():
            pred = self.reward_values(logits)
            correct = reward_to_sign_class(torch.where(pred.abs() < 0.5, torch.zeros_like(pred), pred)) == sign_cls
            nonzero = sign_cls != 1
            pred_term = out.termination_logit > 0
            logs = {
                "loss": float(loss),
                "reward_loss": float(reward_loss),
                "termination_loss": float(termination_loss),
                "reward_accuracy": float(correct.float().mean()),
                "nonzero_reward_recall": float(correct[nonzero].float().mean()) if bool(nonzero.any()) else math.nan,
                "reward_abs_error": float((pred - reward).abs().mean()),
                "termination_accuracy": float((pred_term == term).float().mean()),
                "termination_recall": float(pred_term[term].float().mean()) if bool(term.any()) else math.nan,
                "pos_weight": float(pos_weight),
                "class_weight_neg": float(cw[0]),
                "class_weight_zero": float(cw[1]),
                "class_weight_pos": float(cw[2]),
            }
        return loss, logs


# --------------------------------------------------------------------------------------------------------------------
# Persistence
# --------------------------------------------------------------------------------------------------------------------


def save_reward_head(head: RewardHead, path: str | os.PathLike[str]) -> Path:
    """Write ``head`` to one ``.safetensors`` file (weights + config JSON in its metadata), atomically.

    Returns the file path. A simulator folder may instead store ``head.state_dict()`` and ``config.to_dict()``
    itself; this is the standalone form.
    """
    from safetensors.torch import save_file

    if not isinstance(head, RewardHead):
        raise ValueError(f"save_reward_head saves a RewardHead, got {type(head).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in head.state_dict().items()}
    meta = {"type": _TYPE_TAG, "format_version": str(_FORMAT_VERSION), "config": json.dumps(head.config.to_dict())}
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_reward_head(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> RewardHead:
    """Load a head written by :func:`save_reward_head` (strict: every weight must match).

    Raises:
        FileNotFoundError: there is no file at ``path``.
        ValueError: the file is empty, truncated, not a safetensors file or not a reward head (the message names it).
    """
    from dws_gym.fileio import load_safetensors

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no reward head file at {path}; write one with save_reward_head(head, path)")
    state, meta = load_safetensors(path, "a reward / termination head",
                                   fix="re-download or re-save the simulator (or the head, with save_reward_head)")
    if meta.get("type") != _TYPE_TAG or "config" not in meta:
        raise ValueError(f"{path} is not a reward head written by save_reward_head (metadata {sorted(meta)})")
    if int(meta.get("format_version", "0")) > _FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {meta['format_version']}; this dws_gym reads up to {_FORMAT_VERSION}"
        )
    head = RewardHead(RewardConfig.from_dict(json.loads(meta["config"])))
    head.load_state_dict(state, strict=True)
    return head.to(device)
