"""Pixel U-Net world model with the DWS action module: one pass per frame, built from diffusers' U-Net blocks.

Why a U-Net. A small Wan transformer with 8x8 patches (the first shipped Breakout default) learned the paddle but not
the 2-pixel ball: a ball that moves inside a patch token is a tiny change to a 192-value vector. A convolutional
U-Net sees every pixel at full resolution in its first and last layers and is the design DIAMOND's Atari world model
uses. This one is deliberately small (about 2M parameters, ~0.6 GFLOP per frame at 64x64) so it trains on CPUs.

Inputs (all at 64x64, stacked on channels): the ``K`` context frames, the last frame difference (so velocity is
local: the ball's last step is visible in one place) and the noisy next frame ``x_t``. A 2x2 space-to-depth turns
them into a 32x32 grid (lossless; halves the cost of the full-resolution layers), followed by three levels (32, 16,
8) of diffusers :class:`~diffusers.models.resnet.ResnetBlock2D`, skip connections, and a depth-to-space output.
``cell = 4`` makes it a 4x4 space-to-depth (levels 16, 8, 4): every pixel is still an input and an output, but the
network's first level works on a quarter of the positions, which on a CPU cuts the per-position work (norms,
activations, conversions) that dominates a step at small widths.

Actions, DWS (paper Eq. 1). Each ``ResnetBlock2D`` runs with ``time_embedding_norm="scale_shift"``: after its second
group norm it computes ``norm2(h) * (1 + alpha) + beta`` with ``(alpha, beta) = time_emb_proj(SiLU(temb))``. That is
exactly the DWS modulation, so every block gets its own first linear layer (``cond -> hidden``) here and diffusers'
``time_emb_proj`` (``hidden -> 2 * channels``, zero-initialised here) is the second: two linear layers per block,
regressed from the action embedding, and the action enters as an argument (no hooks, no stored state). The condition
is the embedding of the ``K`` actions of the window (the ``K - 1`` between context frames and the one that leads to
the new frame, each at its own position) together with the noise level.

Flow. Rectified flow ``x_t = (1 - t) x_0 + t eps`` in residual x0 form, as the pixel Wan default: the network's
output ``f`` corrects the last context frame, ``x0_hat = prev + f``, and the output layer starts at zero, so a fresh
model predicts "copy the last frame". Sampling is Euler from ``t = 1``; with one step the frame is the model's
``t = 1`` prediction, so training puts a share ``t_one_prob`` of its targets exactly at ``t = 1`` (the path sampling
uses) and the rest at ``t ~ U(0, 1)``.

Loss. The motion-reinforced weights (``c``, ``tau``, ``delta``) per pixel, and on top a fixed share of every
frame's loss on the pixels that changed around it (:func:`~dws_gym.models.motion.changed_share_mean`), because the
ball is too small for per-pixel weights of a few times 1 to matter. Training clips of ``H`` targets are unrolled:
target ``j`` is predicted from a context whose newest frames are the model's own (detached) predictions of targets
``< j`` (``unroll=True``), so it learns to continue from what it dreams, as it must at stepping time. The real
context frames can be corrupted with a little noise (``context_noise``, as GameNGen and Diffusion Forcing do) while
the targets stay clean, so the model learns to clean its context rather than copy its errors forward.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import Timesteps
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from dws_gym.checks import check_positive_int

from .actions import DiscreteActionEmbedder
from .group_norm import GroupNorm
from .motion import DEFAULT_DELTA, DEFAULT_TAU, changed_pixels, changed_share_mean, motion_weights

__all__ = ["UNET_CONFIG_NAME", "UNET_FORMAT_VERSION", "UNET_WEIGHTS_NAME", "UNetConfig", "UNetWorldModel"]

UNET_FORMAT_VERSION = 1
UNET_CONFIG_NAME = "unet_config.json"
UNET_WEIGHTS_NAME = "unet_model.safetensors"
_ACTION_MODES = ("frame", "none")


@dataclass
class UNetConfig:
    """Everything needed to rebuild a :class:`UNetWorldModel` (JSON-serialisable).

    Attributes:
        frame_size: Env frames are ``(frame_size, frame_size, channels)`` uint8 (divisible by ``4 * cell``).
        cell: Side of the space-to-depth cell (2 or 4): the network's levels work at ``1 / cell``, ``1 / (2 cell)``
            and ``1 / (4 cell)`` of the frame size.
        channels: Colour channels (3).
        context_frames: ``K``, frames each prediction conditions on.
        widths: Channels of the three levels (at 1/2, 1/4 and 1/8 of the frame size with ``cell = 2``).
        groups: Group-norm groups (must divide every width).
        num_actions: Size of the discrete action space.
        action_text_dim: Width of cached action sentence embeddings; ``None`` uses a learned table.
        cond_dim: Embedding size of one action.
        cond_hidden_dim: Hidden width of each block's DWS module (its first linear layer's output).
        action_mode: ``"frame"`` (DWS) or ``"none"`` (an action-free ablation).
        t_one_prob: Share of training targets at ``t = 1`` (the one-step sampling path); the rest ``U(0, 1)``.
        unroll: Predict later targets of a training clip from the model's own earlier predictions.
        t_one_hypotheses: Training only: each ``t = 1`` target is trained from the best of this many noise draws
            (implicit maximum likelihood, IMLE): the draws go through the network without gradients, and the one
            whose prediction is nearest the target under the frame's own loss is the one trained. With ``1`` (plain
            regression) the one-step prediction is the mean over the futures the context allows, so a ball whose
            next position is uncertain (a serve, a bounce off a paddle that may have moved) comes out as a faint
            smear over its possible positions; with more draws different noise lands on different futures and a
            one-step sample is a sharp one of them.
        context_noise: Largest level of context-frame corruption during training: each clip's real context frames
            become ``(1 - s) x + s eps`` with ``s ~ U(0, context_noise)`` (``0`` disables it). The target stays
            clean, so the model learns to remove small errors from its context instead of carrying them on, which
            is what keeps long dreams from gathering speckles.
        motion_c, motion_tau, motion_delta: Motion-reinforced weights (paper Eq. 2-3); ``motion_c = 1`` disables them.
        changed_share: Share of each frame's loss on the changed pixels (``0`` disables it).
        change_threshold: Channel-mean change (``[0, 1]`` units) that marks a pixel as changed.
        change_dilate: Pixels the changed mask grows by.
        sampling_steps: Default Euler steps per frame.
        keep_below: Stepping only: keep the previous frame's pixel where the predicted change is below this
            (``[0, 1]`` units; ``0`` disables), which stops faint speckles from accumulating over long rollouts.
        format_version: On-disk format version.
    """

    frame_size: int = 64
    channels: int = 3
    context_frames: int = 4
    widths: tuple[int, int, int] = (48, 96, 128)
    cell: int = 2
    groups: int = 8
    num_actions: int = 4
    action_text_dim: int | None = None
    cond_dim: int = 32
    cond_hidden_dim: int = 128
    action_mode: str = "frame"
    t_one_prob: float = 0.75
    unroll: bool = True
    t_one_hypotheses: int = 1
    context_noise: float = 0.0
    motion_c: float = 4.0
    motion_tau: float = DEFAULT_TAU
    motion_delta: float = DEFAULT_DELTA
    changed_share: float = 0.4
    change_threshold: float = 0.04
    change_dilate: int = 1
    sampling_steps: int = 1
    keep_below: float = 0.0
    format_version: int = UNET_FORMAT_VERSION

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)  # JSON gives a list
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that is out of range."""
        for name in ("frame_size", "channels", "context_frames", "groups", "num_actions", "cond_dim",
                     "cond_hidden_dim", "sampling_steps"):
            check_positive_int(f"UNetConfig.{name}", getattr(self, name))
        if self.context_frames < 2:
            raise ValueError(f"UNetConfig.context_frames must be >= 2 (the last frame difference), "
                             f"got {self.context_frames}")
        if isinstance(self.cell, bool) or not isinstance(self.cell, int) or self.cell not in (2, 4):
            raise ValueError(f"UNetConfig.cell must be 2 or 4 (the space-to-depth cell's side), got {self.cell!r}")
        if self.frame_size % (4 * self.cell):
            raise ValueError(f"UNetConfig.frame_size must be divisible by 4 * cell = {4 * self.cell}, "
                             f"got {self.frame_size}")
        if len(self.widths) != 3 or any(w < 1 or w % self.groups for w in self.widths):
            raise ValueError(f"UNetConfig.widths must be 3 positive multiples of groups={self.groups}, "
                             f"got {self.widths}")
        if self.action_mode not in _ACTION_MODES:
            raise ValueError(f"UNetConfig.action_mode must be one of {_ACTION_MODES}, got {self.action_mode!r}")
        if not 0.0 <= self.t_one_prob <= 1.0:
            raise ValueError(f"UNetConfig.t_one_prob must lie in [0, 1], got {self.t_one_prob}")
        if not 0.0 <= self.changed_share < 1.0:
            raise ValueError(f"UNetConfig.changed_share must lie in [0, 1), got {self.changed_share}")
        if isinstance(self.t_one_hypotheses, bool) or not isinstance(self.t_one_hypotheses, int) or \
                self.t_one_hypotheses < 1:
            raise ValueError(f"UNetConfig.t_one_hypotheses must be an int >= 1, got {self.t_one_hypotheses!r}")
        if not 0.0 <= self.context_noise < 1.0:
            raise ValueError(f"UNetConfig.context_noise must lie in [0, 1), got {self.context_noise}")
        if not 0.0 <= self.keep_below < 1.0:
            raise ValueError(f"UNetConfig.keep_below must lie in [0, 1), got {self.keep_below}")
        if self.format_version != UNET_FORMAT_VERSION:
            raise ValueError(f"UNetConfig.format_version {self.format_version!r} is not supported (this dws-gym "
                             f"reads {UNET_FORMAT_VERSION}); upgrade dws-gym.")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"] = list(self.widths)
        if self.cell == 2:  # the default is left out, so that folders with it stay readable by older versions
            del d["cell"]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = UNET_CONFIG_NAME) -> UNetConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown keys {unknown}; was it written by a newer dws-gym?")
        return cls(**data)


class _Level(nn.Module):
    """One ResnetBlock2D with its own first DWS linear layer (``cond -> hidden``)."""

    def __init__(self, in_ch: int, out_ch: int, cond_all: int, hidden: int, groups: int) -> None:
        super().__init__()
        self.cond_proj = nn.Linear(cond_all, hidden)
        self.block = ResnetBlock2D(in_channels=in_ch, out_channels=out_ch, temb_channels=hidden, groups=groups,
                                   time_embedding_norm="scale_shift", eps=1e-5)
        # The block's time_emb_proj is the module's second layer: zero, so alpha = beta = 0 until trained.
        nn.init.zeros_(self.block.time_emb_proj.weight)
        nn.init.zeros_(self.block.time_emb_proj.bias)
        # The same norms in a form that compiles to vectorized CPU kernels (dws_gym.models.group_norm).
        self.block.norm1 = GroupNorm.from_module(self.block.norm1)
        self.block.norm2 = GroupNorm.from_module(self.block.norm2)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.block(x, self.cond_proj(cond))


class UNetWorldModel(nn.Module):
    """Action-conditioned next-frame model (rectified flow, residual x0 form) on a small pixel U-Net.

    The Simulator contract: :meth:`sample_next` (uint8 frames in, uint8 frame out), :meth:`training_loss`,
    :meth:`save_pretrained` / :meth:`from_pretrained`, and ``config.context_frames``.

    Args:
        config: Sizes and training options.
        action_text_embeddings: Cached sentence embeddings of the actions ``(num_actions, action_text_dim)``
            (encoded once); ``None`` with ``config.action_text_dim = None`` uses a learned table.
    """

    def __init__(self, config: UNetConfig, action_text_embeddings: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        k, c = config.context_frames, config.channels
        w0, w1, w2 = config.widths
        if config.action_text_dim is not None:
            if action_text_embeddings is None:  # from_config: filled by load_state_dict
                action_text_embeddings = torch.zeros(config.num_actions, config.action_text_dim)
            self.action_embedder = DiscreteActionEmbedder(config.cond_dim, text_embeddings=action_text_embeddings)
        else:
            self.action_embedder = DiscreteActionEmbedder(config.cond_dim, num_actions=config.num_actions)
        # Each of the K window positions has its own embedding offset, so "a_i then a_j" differs from the reverse.
        self.action_position = nn.Parameter(torch.zeros(k, config.cond_dim))
        self.time_features = Timesteps(64, flip_sin_to_cos=True, downscale_freq_shift=0)
        cond_all = k * config.cond_dim + 64
        hid, g = config.cond_hidden_dim, config.groups
        in_ch = config.cell**2 * (k * c + c + c)  # context, last difference, x_t; space-to-depth
        self.stem = nn.Conv2d(in_ch, w0, 3, padding=1)
        self.down0 = _Level(w0, w0, cond_all, hid, g)
        self.pool0 = nn.Conv2d(w0, w1, 3, stride=2, padding=1)
        self.down1 = _Level(w1, w1, cond_all, hid, g)
        self.pool1 = nn.Conv2d(w1, w2, 3, stride=2, padding=1)
        self.mid0 = _Level(w2, w2, cond_all, hid, g)
        self.mid1 = _Level(w2, w2, cond_all, hid, g)
        self.up1 = _Level(w2 + w1, w1, cond_all, hid, g)
        self.up0 = _Level(w1 + w0, w0, cond_all, hid, g)
        self.out_norm = GroupNorm(g, w0, eps=1e-5)
        self.out = nn.Conv2d(w0, config.cell**2 * c, 3, padding=1)
        nn.init.zeros_(self.out.weight)  # a fresh model predicts "copy the last frame" exactly
        nn.init.zeros_(self.out.bias)

    # ---------------------------------------------------------------------------------------------- basics
    @property
    def device(self) -> torch.device:
        return self.stem.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.stem.weight.dtype

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    @staticmethod
    def to_model_space(frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``(..., H, W, C)`` -> float ``(..., C, H, W)`` in ``[-1, 1]``."""
        return frames.permute(*range(frames.ndim - 3), -1, -3, -2).float() / 127.5 - 1.0

    @staticmethod
    def to_frames(x: torch.Tensor) -> torch.Tensor:
        """float ``(..., C, H, W)`` in ``[-1, 1]`` -> uint8 ``(..., H, W, C)`` (rounded, clamped)."""
        u8 = ((x.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
        return u8.permute(*range(u8.ndim - 3), -2, -1, -3)

    # ---------------------------------------------------------------------------------------------- network
    def condition(self, actions: torch.Tensor, t: torch.Tensor, *, validate: bool = True) -> torch.Tensor:
        """The blocks' condition: ``K`` action embeddings (with positions) and the noise level.

        Args:
            actions: ``(B, K)`` int64, the window's actions; ``actions[:, -1]`` leads to the predicted frame.
            t: ``(B,)`` noise levels in ``[0, 1]``.
            validate: Range-check the actions (a device sync; stepping skips it: the Simulator checked them).
        """
        b = actions.shape[0]
        emb = self.action_embedder(actions, validate=validate) + self.action_position  # (B, K, C)
        if self.config.action_mode == "none":
            emb = torch.zeros_like(emb)
        feats = self.time_features(t.float() * 1000.0).to(emb.dtype)
        return torch.cat([emb.reshape(b, -1), feats], dim=1)

    def predict_x0(self, context: torch.Tensor, actions: torch.Tensor, x_t: torch.Tensor,
                   t: torch.Tensor, *, validate: bool = True) -> torch.Tensor:
        """The network's clean-frame estimate.

        Args:
            context: ``(B, K, C, H, W)`` context frames in ``[-1, 1]``, oldest first.
            actions: ``(B, K)`` int64 (see :meth:`condition`).
            x_t: ``(B, C, H, W)`` the noisy next frame.
            t: ``(B,)`` its noise level.
            validate: Range-check the actions (see :meth:`condition`).

        Returns:
            ``x0_hat = context[:, -1] + f``, ``(B, C, H, W)``.
        """
        prev = context[:, -1]
        diff = prev - context[:, -2]
        x = torch.cat([context.flatten(1, 2), diff, x_t], dim=1)
        cell = self.config.cell
        f = self._unet(F.pixel_unshuffle(x, cell), self.condition(actions, t, validate=validate))
        return prev + F.pixel_shuffle(f, cell).to(prev.dtype)

    def _unet(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The U-Net on its space-to-depth input grid (cell side ``s = config.cell``): ``(B, s^2 (K C + 2 C), H/s,
        W/s)`` in, the correction ``f`` out in the same layout, ``(B, s^2 C, H/s, W/s)`` (channel ``s^2 c + s i + j``
        holds colour ``c`` of the pixel at offset ``(i, j)`` of its cell, as
        :func:`torch.nn.functional.pixel_unshuffle` orders them)."""
        h0 = self.down0(self.stem(x), cond)
        h1 = self.down1(self.pool0(h0), cond)
        h = self.mid1(self.mid0(self.pool1(h1), cond), cond)
        h = self.up1(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), h1], dim=1), cond)
        h = self.up0(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), h0], dim=1), cond)
        return self.out(F.silu(self.out_norm(h)))

    # ---------------------------------------------------------------------------------------------- training
    def training_loss(
        self,
        frames: torch.Tensor,
        actions: torch.Tensor,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        teacher: UNetWorldModel | None = None,
        distill_weight: float = 1.0,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Motion-weighted x0 loss over the ``H`` targets of a clip of ``K + H`` frames.

        Args:
            frames: uint8 ``(B, K + H, H_px, W_px, C)``.
            actions: int64 ``(B, K + H - 1)``; ``actions[:, i]`` leads from frame ``i`` to ``i + 1``.
            mask: bool ``(B, K + H)``, False for frames past an episode's end (their targets are skipped).
            generator: Source of the noise and noise levels (a CPU generator).
            teacher: Distillation: a trained (frozen) model whose predictions from the same context, actions, noise
                and noise level this model also regresses onto, with the same frame loss, weighted by
                ``distill_weight`` (see :meth:`check_teacher`). At ``t = 1`` the teacher's output is a
                deterministic function of the noise, so it is a far less noisy target than the data's one future,
                which is what lets a smaller, faster network learn a trained simulator's one-step map in few steps.
                It sees this model's own unrolled context, so it also shows how to recover from this model's errors.
            distill_weight: Weight of the teacher term (the data term keeps weight 1).

        Returns:
            ``(loss, logs)`` with ``logs`` holding ``loss``, ``mse`` (plain MSE of ``x0_hat`` on valid targets,
            in ``[-1, 1]`` units) and ``copy_mse`` (the same for copying the last real frame); with a teacher also
            ``teacher_mse`` (plain MSE to the teacher's prediction).
        """
        k = self.config.context_frames
        if frames.ndim != 5 or frames.dtype != torch.uint8 or frames.shape[1] <= k:
            raise ValueError(f"frames must be uint8 (B, K + H, H, W, C) with K = {k} and H >= 1, "
                             f"got {frames.dtype} {tuple(frames.shape)}")
        b, total = frames.shape[:2]
        if tuple(actions.shape) != (b, total - 1):
            raise ValueError(f"actions must be ({b}, {total - 1}), got {tuple(actions.shape)}")
        horizon = total - k
        x = self.to_model_space(frames.to(self.device))  # (B, F, C, H, W)
        actions = actions.to(self.device).long()
        valid = (torch.ones(b, total, dtype=torch.bool) if mask is None else mask.bool()).to(self.device)
        cfg = self.config
        weights = None
        if cfg.motion_c != 1.0:
            weights = motion_weights(x, c=cfg.motion_c, tau=cfg.motion_tau, delta=cfg.motion_delta,
                                     num_context=k, channels_last=False, value_range=(-1.0, 1.0))
        context0 = x[:, :k]
        if cfg.context_noise > 0:
            s = cfg.context_noise * torch.rand(b, 1, 1, 1, 1, generator=generator).to(self.device)
            noise = torch.randn(context0.shape, generator=generator).to(self.device)
            context0 = (1.0 - s) * context0 + s * noise
        window = list(context0.unbind(1))
        if teacher is not None:
            self.check_teacher(teacher)
        losses, mses, copies, counts, to_teacher = [], [], [], [], []
        for j in range(horizon):
            target = x[:, k + j]
            context = torch.stack(window[-k:], dim=1)
            t = torch.rand(b, generator=generator).to(self.device)
            t = torch.where(torch.rand(b, generator=generator).to(self.device) < cfg.t_one_prob,
                            torch.ones_like(t), t)
            eps = torch.randn(target.shape, generator=generator).to(self.device)
            # Changed pixels around the target, from the real frames (where the ball was and where it went).
            changed = changed_pixels(x[:, k + j - 2: k + j + 1], threshold=cfg.change_threshold,
                                     dilate=cfg.change_dilate)
            w_j = None if weights is None else weights[:, k + j]
            if cfg.t_one_hypotheses > 1:
                eps = self._best_t_one_noise(context, actions[:, j: j + k], target, t, eps, w_j, changed, generator)
            tt = t.view(b, 1, 1, 1)
            x_t = (1.0 - tt) * target + tt * eps
            x0_hat = self.predict_x0(context, actions[:, j: j + k], x_t, t).float()
            err = (x0_hat - target).pow(2).mean(dim=1)  # (B, H, W)
            plain = err.flatten(1).mean(dim=1)
            if w_j is not None:
                err = err * w_j
            per = changed_share_mean(err, changed, cfg.changed_share)
            ok = valid[:, k + j].float()
            if teacher is not None:
                with torch.no_grad():
                    x0_teacher = teacher.predict_x0(context.to(teacher.dtype), actions[:, j: j + k],
                                                    x_t.to(teacher.dtype), t, validate=False).float()
                d_err = (x0_hat - x0_teacher).pow(2).mean(dim=1)
                to_teacher.append((d_err.detach().flatten(1).mean(dim=1) * ok).sum())
                if w_j is not None:
                    d_err = d_err * w_j
                per = per + distill_weight * changed_share_mean(d_err, changed, cfg.changed_share)
            losses.append((per * ok).sum())
            mses.append((plain.detach() * ok).sum())
            copies.append(((x[:, k + j - 1] - target).pow(2).flatten(1).mean(dim=1) * ok).sum())
            counts.append(ok.sum())
            window.append(x0_hat.detach().clamp(-1.0, 1.0) if cfg.unroll else target)
        n = torch.stack(counts).sum().clamp_min(1.0)
        loss = torch.stack(losses).sum() / n
        logs = {"loss": float(loss.detach()), "mse": float(torch.stack(mses).sum() / n),
                "copy_mse": float(torch.stack(copies).sum() / n)}
        if to_teacher:
            logs["teacher_mse"] = float(torch.stack(to_teacher).sum() / n)
        return loss, logs

    def check_teacher(self, teacher: UNetWorldModel) -> None:
        """Refuse a distillation teacher that does not read this model's inputs (``ValueError`` says what differs):
        it must be a :class:`UNetWorldModel` of the same frame size, channels, context frames and number of actions.
        Its widths, space-to-depth cell, action embedding and training settings may differ."""
        if not isinstance(teacher, UNetWorldModel):
            raise ValueError(f"a distillation teacher must be a pixel U-Net world model, got {type(teacher).__name__}")
        names = ("frame_size", "channels", "context_frames", "num_actions")
        differ = {n: (getattr(teacher.config, n), getattr(self.config, n)) for n in names
                  if getattr(teacher.config, n) != getattr(self.config, n)}
        if differ:
            raise ValueError("the distillation teacher reads other inputs than this model: "
                             + ", ".join(f"{n} {a} (teacher) vs {b}" for n, (a, b) in differ.items()))

    @torch.no_grad()
    def _best_t_one_noise(self, context: torch.Tensor, window: torch.Tensor, target: torch.Tensor, t: torch.Tensor,
                          eps: torch.Tensor, weights: torch.Tensor | None, changed: torch.Tensor,
                          generator: torch.Generator | None) -> torch.Tensor:
        """``eps`` with each ``t = 1`` row replaced by the best of ``t_one_hypotheses`` draws (IMLE; see the config).

        "Best" is the frame loss the training step uses (motion weights and the changed-pixel share), so the ball
        decides among draws even though it is a few pixels of the frame. Rows at ``t < 1`` keep their noise: their
        input already carries the target.
        """
        rows = (t >= 1.0).nonzero().flatten()
        if rows.numel() == 0:
            return eps
        m = self.config.t_one_hypotheses
        n = rows.numel()
        draws = torch.randn((n, m - 1, *eps.shape[1:]), generator=generator).to(eps.device)
        draws = torch.cat([eps[rows, None], draws], dim=1)  # (n, m, C, H, W); draw 0 is the one already drawn
        flat = draws.flatten(0, 1)
        pred = self.predict_x0(context[rows].repeat_interleave(m, 0), window[rows].repeat_interleave(m, 0), flat,
                               torch.ones(n * m, device=eps.device), validate=False).float()
        err = (pred - target[rows].repeat_interleave(m, 0)).pow(2).mean(dim=1)
        if weights is not None:
            err = err * weights[rows].repeat_interleave(m, 0)
        score = changed_share_mean(err, changed[rows].repeat_interleave(m, 0), self.config.changed_share)
        best = score.view(n, m).argmin(dim=1)
        out = eps.clone()
        out[rows] = draws[torch.arange(n, device=eps.device), best]
        return out

    # ---------------------------------------------------------------------------------------------- stepping
    def sampling_schedule(self, steps: int) -> list[float]:
        """Noise levels ``1 = t_0 > ... > t_steps = 0`` (uniform)."""
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        return [1.0 - i / steps for i in range(steps + 1)]

    @torch.no_grad()
    def sample_next(
        self,
        frames: torch.Tensor,
        actions: torch.Tensor,
        action: torch.Tensor,
        steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The next frame of every env.

        Args:
            frames: uint8 ``(N, K, H, W, C)`` context on the model's device.
            actions: int64 ``(N, K - 1)`` actions between the context frames.
            action: int64 ``(N,)`` the action taken after the last context frame (validated by the caller).
            steps: Euler steps (``None``: ``config.sampling_steps``).
            generator: Source of the sampling noise (on the model's device).

        Returns:
            uint8 ``(N, H, W, C)``.
        """
        k = self.config.context_frames
        n = frames.shape[0]
        if frames.ndim != 5 or frames.shape[1] != k or tuple(actions.shape) != (n, k - 1) or \
                tuple(action.shape) != (n,):
            raise ValueError(f"sample_next needs frames (N, {k}, H, W, C), actions (N, {k - 1}) and action (N,); "
                             f"got {tuple(frames.shape)}, {tuple(actions.shape)}, {tuple(action.shape)}")
        steps = self.config.sampling_steps if steps is None else steps
        # The noise is drawn here, eagerly (a generator does not trace), and the frames go to the network's
        # space-to-depth grid and back here too, as uint8 copies: compiled inside the float kernels, those
        # permutes became scalar gathers that took about a fifth of a compiled bf16 call at 64 envs.
        h, w, c = frames.shape[-3:]
        s = self.config.cell
        # On a CPU a bf16 draw is a float32 draw rounded (the same values), but its kernel is not vectorised:
        # drawing float32 and casting took 2.2 instead of 3.3 ms at 64 envs on two AMX Xeon threads.
        draw_dtype = torch.float32 if frames.device.type == "cpu" else self.dtype
        noise = torch.randn((n, c, h, w), generator=generator, device=frames.device, dtype=draw_dtype)
        # pixel_unshuffle's layout (colour, row and column in the cell, then the cell): cast in the permuted order,
        # then copied into it as bf16 took 0.23 ms at 64 envs on two AMX Xeon threads, where unshuffling and then
        # casting took 0.73 and one strided copy that casts 0.46.
        noise = noise.view(n, c, h // s, s, w // s, s).permute(0, 1, 3, 5, 2, 4).to(self.dtype)
        noise = noise.reshape(n, c * s * s, h // s, w // s)
        cells = frames.reshape(n, k, h // s, s, w // s, s, c).permute(0, 1, 6, 3, 5, 2, 4)
        cells = cells.reshape(n, k * c * s * s, h // s, w // s)  # a contiguous copy: the permute is not a view
        out = self.denoise(cells, actions, action, noise, steps)
        return F.pixel_shuffle(out, s).permute(0, 2, 3, 1).contiguous()

    def denoise(self, cells: torch.Tensor, actions: torch.Tensor, action: torch.Tensor, noise: torch.Tensor,
                steps: int) -> torch.Tensor:
        """:meth:`sample_next` on the network's ``cell`` x ``cell`` space-to-depth grid, from given starting noise,
        without its checks: ``steps`` Euler steps from ``t = 1``, then the ``keep_below`` rule. The work
        ``Simulator.compile`` compiles.

        Args:
            cells: uint8 ``(N, s^2 K C, H/s, W/s)`` (``s = config.cell``), the context frames as
                :func:`~torch.nn.functional.pixel_unshuffle` (factor ``s``) lays out their ``K C`` channels.
            actions: int64 ``(N, K - 1)``; action: int64 ``(N,)`` (see :meth:`sample_next`).
            noise: ``(N, s^2 C, H/s, W/s)`` in the model's dtype, the starting noise on the same grid.
            steps: Euler steps.

        Returns:
            uint8 ``(N, s^2 C, H/s, W/s)``: the new frame on the grid (:func:`~torch.nn.functional.pixel_shuffle`
            gives it back as ``(N, C, H, W)``).
        """
        # The arithmetic of predict_x0, on the grid: the pixel (un)shuffles move values and compute nothing.
        cc = noise.shape[1]  # channels of one frame on the grid: s^2 C
        n, c = cells.shape[0], cc // self.config.cell**2
        context = (cells.float() / 127.5 - 1.0).to(self.dtype)
        prev = context[:, -cc:]
        fixed = torch.cat([context, prev - context[:, -2 * cc: -cc]], dim=1)  # context frames, last difference
        window = torch.cat([actions, action[:, None]], dim=1).long()
        schedule = self.sampling_schedule(steps)
        x = x0_hat = noise
        for t_now, t_next in zip(schedule[:-1], schedule[1:]):
            t = torch.full((n,), t_now, device=cells.device)
            f = self._unet(torch.cat([fixed, x], dim=1), self.condition(window, t, validate=False))
            x0_hat = prev + f.to(prev.dtype)
            x = x0_hat + (t_next / t_now) * (x - x0_hat) if t_next > 0 else x0_hat
        x = x.float().clamp(-1.0, 1.0)
        if self.config.keep_below > 0:
            # Each pixel's largest change over its colours (colour c is channels s^2 c .. s^2 c + s^2 - 1), for all
            # its colours.
            prev = prev.float()
            moved = (x - prev).abs().unflatten(1, (c, cc // c)).amax(dim=1).repeat(1, c, 1, 1)
            x = torch.where(moved < 2.0 * self.config.keep_below, prev, x)
        return ((x + 1.0) * 127.5).round().to(torch.uint8)

    # ---------------------------------------------------------------------------------------------- disk
    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``unet_config.json`` and ``unet_model.safetensors`` (full weights, no pickle) into ``folder``."""
        from safetensors.torch import save_file

        from dws_gym.fileio import write_folder_atomically

        folder = Path(folder)
        if folder.exists() and any(folder.iterdir()) and not (folder / UNET_CONFIG_NAME).is_file():
            raise FileExistsError(f"{folder} exists and is not a U-Net world model folder; choose another path.")
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}

        def write(tmp: Path) -> None:
            save_file(state, str(tmp / UNET_WEIGHTS_NAME),
                      metadata={"format": "pt", "dws_unet_format": str(UNET_FORMAT_VERSION)})
            (tmp / UNET_CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")

        return write_folder_atomically(folder, write)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None) -> UNetWorldModel:
        """Load a model written by :meth:`save_pretrained` (strict: every weight must match)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        config_path, weights_path = folder / UNET_CONFIG_NAME, folder / UNET_WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing; is {folder} a folder written by save_pretrained?")
        try:
            data = json.loads(config_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{config_path} is not valid JSON ({e}); re-save the simulator.") from e
        if not isinstance(data, dict):
            raise ValueError(f"{config_path} must hold a JSON object, got {type(data).__name__}.")
        try:
            config = UNetConfig.from_dict(data, source=str(config_path))
        except TypeError as e:
            raise ValueError(f"{config_path}: {e}") from e
        model = cls(config)
        try:
            state = load_file(str(weights_path))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{weights_path} is truncated or not a safetensors file ({e}); download or re-save "
                             "the simulator.") from e
        model.load_state_dict(state, strict=True)
        model.to(device=device)
        if dtype is not None:
            model.to(dtype)
        return model.eval()


def unet_flops_per_frame(config: UNetConfig) -> float:
    """Multiply-adds x 2 of one :meth:`UNetWorldModel.predict_x0` call per frame (convolutions only)."""
    k, c, s = config.context_frames, config.channels, config.frame_size // config.cell
    q = config.cell**2
    w0, w1, w2 = config.widths

    def conv(hw: int, cin: int, cout: int, ks: int = 3) -> float:
        return 2.0 * hw * hw * cin * cout * ks * ks

    def res(hw: int, cin: int, cout: int) -> float:
        return conv(hw, cin, cout) + conv(hw, cout, cout) + (conv(hw, cin, cout, 1) if cin != cout else 0.0)

    total = conv(s, q * (k * c + 2 * c), w0) + res(s, w0, w0) + conv(s // 2, w0, w1) + res(s // 2, w1, w1)
    total += conv(s // 4, w1, w2) + 2 * res(s // 4, w2, w2) + res(s // 2, w2 + w1, w1) + res(s, w1 + w0, w0)
    total += conv(s, w0, q * c)
    return total

