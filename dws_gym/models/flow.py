"""Rectified-flow video world model on diffusers' ``WanTransformer3DModel`` (docs/ARCHITECTURE.md, 'Models').

State space. By default the model works on pixels: env frames ``uint8 (B, F, H, W, 3)`` become floats in
``[-1, 1]`` laid out ``(B, C, F, H, W)`` and are cut into ``(1, p, p)`` patches. A pre-trained Wan2.1 instead works in
its ``AutoencoderKLWan`` latent space (:meth:`FlowWorldModel.from_pretrained_wan`), every env frame encoded as its own
one-frame clip at a working resolution, latents normalised with the VAE's per-channel mean / std.

Flow. Rectified flow with ``x_t = (1 - t) * x_0 + t * eps``, ``t`` in ``[0, 1]`` (Wan's timestep is ``1000 * t``).
Every frame carries its own ``t``: the backbone runs through :func:`~dws_gym.models.causal_wan.wan_forward`, which
embeds one timestep per frame and gives each frame's tokens that frame's modulation in every block and the output
norm (what diffusers' per-token timesteps compute, embedded once per frame instead of once per token). When all frames
of a call share one ``t``, as in stepping, a ``(B,)`` timestep is passed instead. A training clip has ``K`` clean
context frames (``t = 0``; optionally lightly noised, ``context_noise``) and ``H`` target frames with independent
``t`` (diffusion forcing); the loss covers valid target frames only. Self-attention is frame-causal
(:class:`~dws_gym.models.causal_wan.FrameCausalAttnProcessor`: tokens of frame ``i`` attend to frames ``<= i``), so a
clip trained all at once matches generating one frame at a time (exactly so for ``H = 1``), and the context's keys /
values can be cached while a new frame is sampled.

Parametrisation (``FlowConfig.parametrization``):

* ``"residual"`` (pixel default). The network sees ``[x_t, prev]`` stacked on channels, ``prev`` being the previous
  frame (the clean context frame or, for later targets, the clean earlier target as in stepping; frame 0 gets
  itself), and its output ``f`` is a correction to it: ``x0_hat = prev + f``. The output projection starts at zero,
  so a fresh model predicts "copy the last frame" exactly. Sampling uses the implied velocity
  ``v_hat = (x_t - x0_hat) / t``. The loss is the motion-weighted ``|x0_hat - x_0|^2``; since the flow's target is
  ``v = eps - x_0`` and ``v_hat - v = (x0_hat - x_0) / t``, this is the v-loss weighted by ``t^2``.
  Why the x0 form: small from-scratch runs of the pixel model found v-prediction stuck at a floor
  (a patch's values did not fit through the width) and plain x0-prediction collapsing to a dataset-average frame
  that erased the ball and paddle. Skip-connecting the previous frame fixes the collapse (copying is the starting
  point; ``f`` only has to carry what moves), and with that skip the x0 form is the natural loss: it weighs every
  noise level alike, whereas the v-loss's ``1 / t^2`` spends the gradient on nearly clean inputs, where the answer
  is already visible in ``x_t``, instead of on high noise, where the next frame must come from the context and the
  action — the part a world model exists for.
* ``"v"`` (pre-trained default). The network predicts ``v_hat`` directly (Wan's own objective), ``x0_hat = x_t -
  t * v_hat``, loss ``|v_hat - v|^2``. This keeps the base model's output head, so a freshly conditioned pre-trained
  model computes exactly the base function; ``prev`` then enters only as extra input channels whose patch-
  embedding weights start at zero (``prev_frame_input``).

Sampling is Euler from ``t = 1`` to ``0`` in x0 form, ``x_{t'} = x0_hat + (t' / t) (x_t - x0_hat)`` (algebraically
the Euler step ``x_t + (t' - t) v_hat``), so the last step returns ``x0_hat`` exactly.

Actions. Frame ``i + 1``'s tokens are modulated by ``a_i``'s embedding and frame 0's by a learned null
embedding (:class:`~dws_gym.models.actions.DiscreteActionEmbedder`), through the DWS module
(:class:`~dws_gym.models.conditioning.BlockActionModulation`, one regressor per block) whose scale and shift
:func:`~dws_gym.models.causal_wan.wan_block_forward` applies to each block's pre-FFN norm, taking them as arguments.
Motion-reinforced weights (paper Eq. 2-3) come from :func:`~dws_gym.models.motion.motion_weights`, per pixel in
pixel space, max-pooled to the latent grid otherwise.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
from torch import nn

from .actions import ContinuousActionEmbedder, DiscreteActionEmbedder, TextActionEncoder
from .causal_wan import CacheMode, clear_kv_cache, make_frame_causal, wan_forward
from .conditioning import CONDITIONER_ATTR, BlockActionModulation
from .flow_config import (  # re-exported: the config belongs to the model's API
    FLOW_CONFIG_NAME,
    FLOW_FORMAT_VERSION,
    FLOW_WEIGHTS_NAME,
    FlowConfig,
)
from .motion import motion_weights, pool_weights, weighted_mean

__all__ = [
    "FLOW_CONFIG_NAME",
    "FLOW_FORMAT_VERSION",
    "FLOW_WEIGHTS_NAME",
    "FlowConfig",
    "FlowWorldModel",
]


# ================================================================================================== helpers
def _init_kwargs(cls: type, config: Any) -> dict[str, Any]:
    """The entries of a diffusers config that are constructor arguments of ``cls`` (JSON-ready)."""
    names = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return json.loads(json.dumps({k: v for k, v in dict(config).items() if k in names}))


# ================================================================================================== model
class FlowWorldModel(nn.Module):
    """Action-conditioned rectified-flow world model (see the module docstring for the maths).

    Args:
        config: The :class:`FlowConfig`.
        action_text_embeddings: ``(num_actions, action_text_dim)`` cached sentence embeddings of the actions,
            required when ``config.action_text_dim`` is set (loading from disk fills them from the weights).
        prompt_embeds: ``(1, L, text_dim)`` encoded static prompt for a latent-space model (same remark).

    Submodules: ``transformer`` (the Wan backbone, with the DWS module as ``transformer.dws_action``),
    ``action_embedder``, ``prompt_tokens`` (pixel space) or the ``prompt_embeds`` buffer, and ``vae`` (latent space,
    frozen).
    """

    def __init__(
        self,
        config: FlowConfig,
        *,
        action_text_embeddings: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        _placeholders: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(config, FlowConfig):
            raise ValueError(f"config must be a FlowConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        self.transformer = WanTransformer3DModel(**config.wan_kwargs())
        make_frame_causal(self.transformer)
        # Registered on the transformer as `transformer.dws_action` (see the `conditioner` property): saved, loaded
        # and moved with it, under the same keys as a hooked ActionConditioner.
        wan = self.transformer.config
        dims = [wan.num_attention_heads * wan.attention_head_dim] * wan.num_layers
        module = BlockActionModulation(config.cond_dim, dims, config.cond_hidden_dim, config.action_mode)
        setattr(self.transformer, CONDITIONER_ATTR, module)
        if config.parametrization == "residual":
            # A fresh model predicts x0_hat = prev exactly (copy the last frame).
            nn.init.zeros_(self.transformer.proj_out.weight)
            nn.init.zeros_(self.transformer.proj_out.bias)

        self.action_embedder = self._build_action_embedder(config, action_text_embeddings, _placeholders)

        text_dim = int(self.transformer.config.text_dim)
        if config.space == "pixel":
            self.prompt_tokens = nn.Parameter(torch.randn(1, config.num_prompt_tokens, text_dim) * 0.5)
            self.vae = None
        else:
            from diffusers import AutoencoderKLWan

            if prompt_embeds is None:
                if not _placeholders:
                    raise ValueError(
                        "a latent-space model needs prompt_embeds (1, L, text_dim); see from_pretrained_wan"
                    )
                prompt_embeds = torch.zeros(1, config.prompt_max_length, text_dim)
            if prompt_embeds.ndim != 3 or prompt_embeds.shape[0] != 1 or prompt_embeds.shape[2] != text_dim:
                raise ValueError(f"prompt_embeds must be (1, L, {text_dim}), got {tuple(prompt_embeds.shape)}")
            self.register_buffer("prompt_embeds", prompt_embeds.detach().float().clone())
            self.vae = AutoencoderKLWan(**config.vae_config)
            self.vae.requires_grad_(False)
            self.vae.eval()
            z = self.vae.config.z_dim
            self.register_buffer("latents_mean", torch.tensor(self.vae.config.latents_mean).view(1, z, 1, 1, 1))
            self.register_buffer("latents_std", torch.tensor(self.vae.config.latents_std).view(1, z, 1, 1, 1))
        if config.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()

    @staticmethod
    def _build_action_embedder(
        config: FlowConfig, text_embeddings: torch.Tensor | None, placeholders: bool
    ) -> nn.Module:
        if config.action_space == "continuous":
            return ContinuousActionEmbedder(int(config.action_dim), config.cond_dim)
        if config.action_text_dim is None:
            if text_embeddings is not None:
                raise ValueError("action_text_embeddings given but config.action_text_dim is None")
            return DiscreteActionEmbedder(config.cond_dim, num_actions=config.num_actions, mode="table")
        expected = (config.num_actions, config.action_text_dim)
        if text_embeddings is None:
            if not placeholders:
                raise ValueError(f"config.action_text_dim is set: pass action_text_embeddings of shape {expected}")
            text_embeddings = torch.zeros(expected)
        if tuple(text_embeddings.shape) != expected:
            raise ValueError(f"action_text_embeddings must be {expected}, got {tuple(text_embeddings.shape)}")
        return DiscreteActionEmbedder(config.cond_dim, text_embeddings=text_embeddings, mode="text")

    # ---------------------------------------------------------------------------------------------- basics
    def train(self, mode: bool = True) -> FlowWorldModel:
        """Set training mode; the frozen VAE always stays in eval mode."""
        super().train(mode)
        if self.vae is not None:
            self.vae.eval()
        return self

    @property
    def conditioner(self) -> BlockActionModulation:
        """The DWS action module (``transformer.dws_action``), one two-layer regressor per block."""
        return self.transformer.dws_action

    @property
    def device(self) -> torch.device:
        """Device of the transformer's parameters."""
        return self.transformer.proj_out.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating-point dtype of the transformer's parameters."""
        return self.transformer.proj_out.weight.dtype

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters (all, or those with ``requires_grad``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def enable_gradient_checkpointing(self, enable: bool = True) -> None:
        """Recompute each transformer block during backward (less memory, same gradients)."""
        if enable:
            self.transformer.enable_gradient_checkpointing()
        else:
            self.transformer.disable_gradient_checkpointing()
        self.config.gradient_checkpointing = enable

    def _check_frames(self, frames: torch.Tensor, name: str) -> None:
        size, ch = self.config.frame_size, self.config.channels
        if not isinstance(frames, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(frames).__name__}")
        if frames.ndim != 5 or tuple(frames.shape[2:]) != (size, size, ch):
            raise ValueError(f"{name} must be (B, F, {size}, {size}, {ch}), got {tuple(frames.shape)}")
        if frames.dtype != torch.uint8 and not frames.is_floating_point():
            raise ValueError(f"{name} must be uint8 (0..255) or floating point in [0, 1], got {frames.dtype}")

    # ---------------------------------------------------------------------------------------------- spaces
    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Env frames to flow states.

        Args:
            frames: ``(B, F, H, W, C)`` uint8, or floating point in ``[0, 1]``, on any device.

        Returns:
            ``(B, C_state, F, h, w)`` float32 on the model's device (states stay float32 whatever the backbone's
            dtype, so copying a frame is exact): pixels in ``[-1, 1]`` (``h = H``), or normalised VAE latents of each
            frame encoded as its own one-frame clip.
        """
        self._check_frames(frames, "frames")
        frames = frames.to(self.device)
        x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
        x = x.permute(0, 4, 1, 2, 3) * 2.0 - 1.0  # (B, C, F, H, W) in [-1, 1]
        if self.config.space == "pixel":
            return x
        b, c, f, h, w = x.shape
        images = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        size = int(self.config.working_resolution)
        if (h, w) != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False).clamp(-1.0, 1.0)
        vae_dtype = next(self.vae.parameters()).dtype
        with torch.no_grad():
            latent = self.vae.encode(images.unsqueeze(2).to(vae_dtype)).latent_dist.mode()  # (B*F, z, 1, h', w')
        latent = (latent.float() - self.latents_mean) / self.latents_std
        latent = latent.squeeze(2).unflatten(0, (b, f)).permute(0, 2, 1, 3, 4)
        return latent.contiguous()

    def decode_frames(self, states: torch.Tensor) -> torch.Tensor:
        """Flow states ``(B, C_state, F, h, w)`` to env frames ``(B, F, H, W, C)`` uint8 (rounded, clamped)."""
        if states.ndim != 5 or states.shape[1] != self.config.state_channels:
            raise ValueError(f"states must be (B, {self.config.state_channels}, F, h, w), got {tuple(states.shape)}")
        if self.config.space == "pixel":
            x = states.float()
        else:
            b, z, f = states.shape[:3]
            latent = states.float() * self.latents_std + self.latents_mean
            latent = latent.permute(0, 2, 1, 3, 4).reshape(b * f, z, 1, *states.shape[3:])
            vae_dtype = next(self.vae.parameters()).dtype
            with torch.no_grad():
                images = self.vae.decode(latent.to(vae_dtype)).sample[:, :, 0].float()  # (B*F, 3, H', W')
            size = self.config.frame_size
            if images.shape[-2:] != (size, size):
                images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            x = images.unflatten(0, (b, f)).permute(0, 2, 1, 3, 4)
        pixels = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
        return pixels.permute(0, 2, 3, 4, 1).contiguous()

    def _prompt(self, batch: int) -> torch.Tensor:
        prompt = self.prompt_tokens if self.config.space == "pixel" else self.prompt_embeds
        return prompt.to(self.dtype).expand(batch, -1, -1)

    # ---------------------------------------------------------------------------------------------- network
    def _network(
        self,
        x_t: torch.Tensor,
        prev: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        *,
        cache_mode: CacheMode = "off",
        frame_offset: int = 0,
    ) -> torch.Tensor:
        """One backbone call -> raw output ``(B, C, F, h, w)`` (a correction or a velocity, per the parametrisation).

        Args:
            x_t, prev: ``(B, C, F, h, w)`` noisy states and previous frames.
            t: ``(B, F)`` noise level of each frame, or ``(B,)`` one level for every frame of the call (stepping:
                embedded once instead of once per frame).
            cond: ``(B, F, cond_dim)`` action embeddings (``(B, 1, cond_dim)`` suffices in ``"global"`` mode).
            cache_mode, frame_offset: KV cache of the frame-causal attention (see :func:`~.causal_wan.wan_forward`).
        """
        inputs = torch.cat([x_t, prev], dim=1) if self.config.prev_frame_input else x_t
        b, _, _, h, w = inputs.shape
        p_h, p_w = self.config.spatial_patch
        if h % p_h or w % p_w:
            raise ValueError(f"state grid {(h, w)} is not divisible by the patch {(p_h, p_w)}")
        timestep = t.to(torch.float32) * 1000.0
        out = wan_forward(
            self.transformer,
            inputs.to(self.dtype),
            timestep,
            self._prompt(b),
            cond.to(self.dtype),
            self.conditioner,
            cache_mode=cache_mode,
            frame_offset=frame_offset,
        )
        return out.float()

    def forward(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        actions: torch.Tensor,
        prev_source: torch.Tensor,
    ) -> torch.Tensor:
        """Predict the clean states of a whole clip (frame-causal).

        Args:
            x_t: ``(B, C, F, h, w)`` noisy states (``t = 0`` frames are clean).
            t: ``(B, F)`` noise level of each frame, in ``[0, 1]``.
            actions: ``(B, F - 1)`` actions (``(B, F - 1, A)`` continuous); ``actions[:, i]`` leads to frame ``i + 1``.
            prev_source: ``(B, C, F, h, w)`` frames the previous-frame input / skip reads: frame ``j`` gets
                ``prev_source[:, :, j - 1]`` (frame 0 gets ``prev_source[:, :, 0]``). Usually the clean frames.

        Returns:
            ``x0_hat`` ``(B, C, F, h, w)``; output frame ``j`` depends on inputs of frames ``<= j`` and on
            ``actions[:, :j]`` only.
        """
        prev = _shift_prev(prev_source)
        cond = self.action_embedder.embed_for_frames(actions.to(self.device))
        out = self._network(x_t, prev, t, cond)
        return self._to_x0(out, x_t, prev, t)

    def _to_x0(self, out: torch.Tensor, x_t: torch.Tensor, prev: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.config.parametrization == "residual":
            return prev + out
        return x_t - t.to(out.dtype)[:, None, :, None, None] * out

    # ---------------------------------------------------------------------------------------------- training
    def _sample_t(self, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        gen_device = generator.device if generator is not None else self.device
        if self.config.t_sampling == "uniform":
            t = torch.rand(shape, generator=generator, device=gen_device)
        else:
            z = torch.randn(shape, generator=generator, device=gen_device)
            t = torch.sigmoid(self.config.logit_mean + self.config.logit_std * z)
        return t.to(self.device)

    def _randn(self, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        gen_device = generator.device if generator is not None else self.device
        return torch.randn(shape, generator=generator, device=gen_device).to(self.device)

    def training_loss(
        self,
        frames: torch.Tensor,
        actions: torch.Tensor,
        mask: torch.Tensor | None = None,
        motion_c: float | None = None,
        generator: torch.Generator | None = None,
        context_frames: int | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Motion-reinforced rectified-flow loss on a batch of clips.

        Args:
            frames: ``(B, K + H, H_px, W_px, C)`` uint8 (or float in ``[0, 1]``); the first ``K =
                config.context_frames`` are context.
            actions: ``(B, K + H - 1)`` (``(B, K + H - 1, A)`` continuous); ``actions[:, j]`` leads to frame ``j + 1``.
            mask: ``(B, K + H)`` bool, ``True`` for real frames (``ClipDataset``'s mask); context frames must be
                real. ``None``: all real.
            motion_c: Motion weight strength ``c`` (``None``: ``config.motion_c``; ``1``: plain loss).
            generator: Source of the noise levels and noise (on any device); ``None`` uses torch's global RNG.
            context_frames: ``K`` for this batch (``None``: ``config.context_frames``).

        Returns:
            ``(loss, logs)``: the scalar loss (with gradient) and floats ``loss``, ``mse`` (unweighted x0 error on
            valid targets), ``copy_mse`` (error of copying the previous frame, the baseline to beat) and ``t_mean``.
        """
        cfg = self.config
        self._check_frames(frames, "frames")
        batch, length = frames.shape[:2]
        k = cfg.context_frames if context_frames is None else context_frames
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"context_frames must be a positive int, got {k!r}")
        if length <= k:
            raise ValueError(f"frames has {length} frames; need the {k} context frames plus at least one target")
        self._check_actions(actions, batch, length - 1)
        if mask is None:
            mask = torch.ones(batch, length, dtype=torch.bool, device=self.device)
        if tuple(mask.shape) != (batch, length):
            raise ValueError(f"mask must be (B, F) = {(batch, length)}, got {tuple(mask.shape)}")
        mask = mask.to(self.device, torch.bool)
        if not bool(mask[:, :k].all()):
            raise ValueError("every context frame must be real (mask True for the first context_frames frames)")

        x0 = self.encode_frames(frames)  # (B, C, F, h, w)
        t = torch.zeros(batch, length, device=self.device)
        t[:, k:] = self._sample_t((batch, length - k), generator)
        if cfg.context_noise > 0:
            t[:, :k] = cfg.context_noise * self._sample_uniform((batch, k), generator)
        eps = self._randn(tuple(x0.shape), generator)
        tb = t.to(x0.dtype)[:, None, :, None, None]
        x_t = (1.0 - tb) * x0 + tb * eps
        # The previous-frame input reads the (augmented) context and the clean earlier targets (teacher forcing),
        # as in stepping, where every earlier frame is a finished frame.
        source = torch.cat([x_t[:, :, :k], x0[:, :, k:]], dim=2)
        prev = _shift_prev(source)

        cond = self.action_embedder.embed_for_frames(actions.to(self.device))
        out = self._network(x_t, prev, t, cond)
        x0_hat = self._to_x0(out, x_t, prev, t)
        if cfg.parametrization == "residual":
            per_element = (x0_hat - x0) ** 2
        else:
            per_element = (out - (eps - x0)) ** 2

        c = cfg.motion_c if motion_c is None else float(motion_c)
        weights = motion_weights(frames.to(self.device), c=c, tau=cfg.motion_tau, delta=cfg.motion_delta, num_context=k)
        weights = _to_grid(weights, x0.shape[-2:])  # (B, F, h, w)
        target = mask.clone()
        target[:, :k] = False
        target_mask = target[:, None, :, None, None]
        loss = weighted_mean(per_element, weights.unsqueeze(1), target_mask)
        with torch.no_grad():
            mse = weighted_mean((x0_hat - x0) ** 2, None, target_mask)
            copy_mse = weighted_mean((prev - x0) ** 2, None, target_mask)
            n_targets = target.sum().clamp_min(1)
            t_mean = (t * target).sum() / n_targets
        logs = {
            "loss": float(loss.detach()),
            "mse": float(mse),
            "copy_mse": float(copy_mse),
            "t_mean": float(t_mean),
        }
        return loss, logs

    def _sample_uniform(self, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        gen_device = generator.device if generator is not None else self.device
        return torch.rand(shape, generator=generator, device=gen_device).to(self.device)

    def _check_actions(self, actions: torch.Tensor, batch: int, steps: int) -> None:
        if not isinstance(actions, torch.Tensor):
            raise ValueError(f"actions must be a torch.Tensor, got {type(actions).__name__}")
        expected = (batch, steps) if self.config.action_space == "discrete" else (batch, steps, self.config.action_dim)
        if tuple(actions.shape) != expected:
            raise ValueError(f"actions must have shape {expected} (one per transition), got {tuple(actions.shape)}")

    # ---------------------------------------------------------------------------------------------- sampling
    def sampling_schedule(self, steps: int) -> list[float]:
        """The ``steps + 1`` noise levels of Euler sampling, from 1 down to 0 (shifted by ``sample_shift``)."""
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        s = self.config.sample_shift
        return [s * u / (1.0 + (s - 1.0) * u) for u in (1.0 - i / steps for i in range(steps + 1))]

    @torch.no_grad()
    def sample_next(
        self,
        context_frames: torch.Tensor,
        context_actions: torch.Tensor,
        action: torch.Tensor,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool | None = None,
    ) -> torch.Tensor:
        """Generate the frame that follows ``action`` after a context (few-step Euler, ``t: 1 -> 0``).

        Args:
            context_frames: ``(B, K, H, W, C)`` uint8 (or float in ``[0, 1]``), oldest first; any ``K >= 1``.
            context_actions: ``(B, K - 1)`` actions between the context frames (``(B, K - 1, A)`` continuous).
            action: ``(B,)`` the action taken after the last context frame (``(B, A)`` continuous). Shapes are
                checked here, action values are not (no device sync per step): discrete actions must lie in
                ``[0, num_actions)``, as ``Simulator.check_actions`` ensures.
            steps: Euler steps (``None``: ``config.sampling_steps``).
            generator: The only source of randomness (the initial noise); a CPU generator works for any device.
            use_cache: Cache the context's keys / values (``None``: ``config.kv_cache``); same result up to float
                rounding.

        Returns:
            ``(B, H, W, C)`` uint8 next frame on the model's device.
        """
        state = self.sample_next_state(context_frames, context_actions, action, steps, generator, use_cache)
        return self.decode_frames(state.unsqueeze(2))[:, 0]

    @torch.no_grad()
    def sample_next_state(
        self,
        context_frames: torch.Tensor,
        context_actions: torch.Tensor,
        action: torch.Tensor,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool | None = None,
    ) -> torch.Tensor:
        """:meth:`sample_next` before decoding: the generated state ``(B, C_state, h, w)`` float32."""
        self._check_frames(context_frames, "context_frames")
        batch, k = context_frames.shape[:2]
        if not isinstance(action, torch.Tensor):
            raise ValueError(f"action must be a torch.Tensor, got {type(action).__name__}")
        action = action.to(self.device)
        self._check_actions(context_actions, batch, k - 1)
        if action.shape[0] != batch or action.ndim != (1 if self.config.action_space == "discrete" else 2):
            raise ValueError(f"action must have one entry per batch element ({batch}), got {tuple(action.shape)}")
        steps = self.config.sampling_steps if steps is None else steps
        use_cache = self.config.kv_cache if use_cache is None else use_cache
        schedule = self.sampling_schedule(steps)

        ctx = self.encode_frames(context_frames)  # (B, C, K, h, w)
        all_actions = torch.cat([context_actions.to(self.device), action.unsqueeze(1)], dim=1)
        # Action values are the caller's contract (Simulator.check_actions validates them once at the boundary);
        # re-checking their range here would cost a device sync per step.
        cond = self.action_embedder.embed_for_frames(all_actions, validate=False)  # (B, K + 1, cond_dim)
        if self.config.action_mode == "global":
            # The global ablation pools the whole clip's embeddings (as one training call does); pool once here so
            # the cached context call and the new-frame calls see the same pooled embedding.
            cond_ctx = cond_new = cond = cond.mean(dim=1, keepdim=True)
        else:
            cond_ctx, cond_new = cond[:, :k], cond[:, k:]
        prev_ctx = _shift_prev(ctx)
        prev_new = ctx[:, :, -1:]
        t_ctx = torch.zeros(batch, k, device=self.device)
        x = self._randn((batch, ctx.shape[1], 1, *ctx.shape[3:]), generator)

        try:
            if use_cache:
                # Every context frame is clean: one noise level (0) for the whole call.
                self._network(ctx, prev_ctx, t_ctx[:, 0], cond_ctx, cache_mode="write")
            for t_now, t_next in zip(schedule[:-1], schedule[1:]):
                t_new = torch.full((batch, 1), t_now, device=self.device)
                if use_cache:
                    out = self._network(x, prev_new, t_new[:, 0], cond_new, cache_mode="read", frame_offset=k)
                else:
                    full = self._network(
                        torch.cat([ctx, x], dim=2),
                        torch.cat([prev_ctx, prev_new], dim=2),
                        torch.cat([t_ctx, t_new], dim=1),
                        cond,
                    )
                    out = full[:, :, k:]
                x0_hat = self._to_x0(out, x, prev_new, t_new)
                # x0-form Euler step; the last one (t_next = 0) returns x0_hat exactly.
                x = x0_hat + (t_next / t_now) * (x - x0_hat) if t_next > 0 else x0_hat
        finally:
            clear_kv_cache(self.transformer)
        if self.config.keep_below > 0 and self.config.space == "pixel":
            # Compare what the frame will show (decoding clamps to [-1, 1]); a change of d in [0, 1] units is 2 d.
            x = x.clamp(-1.0, 1.0)
            still = (x - prev_new).abs().amax(dim=1, keepdim=True) < 2.0 * self.config.keep_below
            x = torch.where(still, prev_new, x)
        return x[:, :, 0]

    # ---------------------------------------------------------------------------------------------- disk
    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``flow_config.json`` and ``flow_model.safetensors`` (full weights, no pickle) into ``folder``."""
        from safetensors.torch import save_file

        from dws_gym.fileio import write_folder_atomically

        folder = Path(folder)
        if folder.exists() and any(folder.iterdir()) and not (folder / FLOW_CONFIG_NAME).is_file():
            raise FileExistsError(f"{folder} exists and is not a flow world model folder; choose another path.")
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}

        def write(tmp: Path) -> None:  # weights and config become visible together
            save_file(state, str(tmp / FLOW_WEIGHTS_NAME),
                      metadata={"format": "pt", "dws_flow_format": str(FLOW_FORMAT_VERSION)})
            self.config.to_json(tmp / FLOW_CONFIG_NAME)

        return write_folder_atomically(folder, write)

    @classmethod
    def from_config(cls, config: FlowConfig | dict[str, Any]) -> FlowWorldModel:
        """A model with this config whose cached tensors (action text embeddings, prompt) are zero placeholders,
        to be filled by ``load_state_dict`` (what :meth:`from_pretrained` does)."""
        if isinstance(config, dict):
            config = FlowConfig.from_dict(config)
        return cls(config, _placeholders=True)

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> FlowWorldModel:
        """Load a model written by :meth:`save_pretrained` (strict: every weight must match).

        Raises:
            FileNotFoundError: the config or the weights file is missing.
            ValueError: the weights file is empty, truncated or not a safetensors file (the message names it).
        """
        from dws_gym.fileio import load_safetensors

        folder = Path(folder)
        config_path, weights_path = folder / FLOW_CONFIG_NAME, folder / FLOW_WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing; is {folder} a folder written by save_pretrained?")
        model = cls.from_config(FlowConfig.from_json(config_path))
        state, _ = load_safetensors(weights_path, "the flow world model's weights")
        model.load_state_dict(state, strict=True)
        model.to(device=device)
        if dtype is not None:
            model.transformer.to(dtype)
        return model.eval()

    # ---------------------------------------------------------------------------------------------- pre-trained
    @classmethod
    def from_pretrained_wan(
        cls,
        path_or_repo_id: str | os.PathLike,
        *,
        working_resolution: int = 256,
        prompt: str | None = None,
        prompt_embeds: torch.Tensor | None = None,
        num_actions: int | None = None,
        action_texts: Sequence[str] | None = None,
        cond_dim: int = 256,
        frame_size: int = 64,
        context_frames: int = 4,
        prev_frame_input: bool = True,
        torch_dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
        **config_overrides: Any,
    ) -> FlowWorldModel:
        """Build a latent-space model from a diffusers Wan2.1 text-to-video folder or hub id.

        Loads ``transformer/`` (``WanTransformer3DModel``), ``vae/`` (``AutoencoderKLWan``) and, when text has to be
        encoded, ``text_encoder/`` + ``tokenizer/``. The base weights go into a freshly built model with
        ``load_state_dict(strict=False)``; the only missing keys allowed are the new DWS module's (checked). The static
        prompt is encoded once, padded like Wan's pipeline to ``prompt_max_length`` and stored; the text encoder is
        then dropped.

        Args:
            path_or_repo_id: Local folder in the diffusers layout, or a hub id such as
                ``"Wan-AI/Wan2.1-T2V-1.3B-Diffusers"`` (passed to ``from_pretrained`` as is).
            working_resolution: Square size env frames are resized to before the VAE (64 px is only 4x4 tokens).
            prompt: Text describing the game, for the cross-attention (needs the text encoder).
            prompt_embeds: ``(1, L, text_dim)`` precomputed prompt embedding instead of ``prompt``.
            num_actions: Discrete action count for a learned action table (when ``action_texts`` is not given).
            action_texts: One sentence per discrete action; encoded once by the base's text encoder.
            cond_dim: Action embedding size; with the default hidden width (``cond_dim``) the DWS module adds
                ``cond_dim * (cond_dim + 2 * width)`` parameters per block (about 25M for Wan2.1-1.3B at 256).
            frame_size: Env frame size.
            context_frames: ``K``.
            prev_frame_input: Also feed the previous frame's latent (zero-initialised extra input channels).
            torch_dtype: dtype to load the backbone in (e.g. ``torch.bfloat16`` on a GPU); default float32.
            device: Where to put the model (and run the text encoder).
            **config_overrides: Other :class:`FlowConfig` fields (``sampling_steps``, ``sample_shift``, ...).

        Raises:
            OSError: when the files cannot be found or fetched (offline: set up a local folder).
            ValueError: for inconsistent arguments.
        """
        from diffusers import AutoencoderKLWan

        source = str(path_or_repo_id)
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of prompt= (encoded by the base's text encoder) or prompt_embeds=")
        if (num_actions is None) == (action_texts is None):
            raise ValueError("pass exactly one of num_actions= (learned action table) or action_texts= (sentences)")
        try:
            base = WanTransformer3DModel.from_pretrained(source, subfolder="transformer", torch_dtype=torch_dtype)
            vae = AutoencoderKLWan.from_pretrained(source, subfolder="vae")
        except (OSError, ValueError) as err:
            raise OSError(
                f"could not load a diffusers Wan2.1 model from {source!r} ({err}). Pass a local folder with "
                "transformer/ and vae/ (and text_encoder/ + tokenizer/ to encode text), or a hub id while online "
                "(with HF_HUB_OFFLINE=1 only the local cache is searched)."
            ) from err
        wan_config = _init_kwargs(WanTransformer3DModel, base.config)
        text_dim = int(wan_config["text_dim"])
        max_length = int(config_overrides.pop("prompt_max_length", 512))

        text_table = None
        if prompt is not None or action_texts is not None:
            text_encoder, tokenizer = _load_text_encoder(source, torch_dtype, device)
            if prompt is not None:
                prompt_embeds = _encode_prompt(text_encoder, tokenizer, prompt, max_length)
            if action_texts is not None:
                encoder = TextActionEncoder(model=text_encoder, tokenizer=tokenizer, device=device)
                text_table = encoder.encode(list(action_texts))
                num_actions = len(action_texts)
            del text_encoder, tokenizer

        config = FlowConfig(
            frame_size=frame_size,
            context_frames=context_frames,
            space="latent",
            text_dim=text_dim,
            num_actions=num_actions,
            action_text_dim=None if text_table is None else int(text_table.shape[1]),
            cond_dim=cond_dim,
            parametrization=config_overrides.pop("parametrization", "v"),
            prev_frame_input=prev_frame_input,
            working_resolution=working_resolution,
            prompt=prompt,
            prompt_max_length=max_length if prompt is not None else int(prompt_embeds.shape[1]),
            base_model=source,
            wan_config=wan_config,
            vae_config=_init_kwargs(AutoencoderKLWan, vae.config),
            **config_overrides,
        )
        model = cls(config, action_text_embeddings=text_table, prompt_embeds=prompt_embeds)
        model.load_base_weights(base.state_dict(), vae.state_dict())
        del base, vae
        model.to(device=device)
        if torch_dtype is not None:
            model.transformer.to(torch_dtype)
        return model

    def load_base_weights(self, transformer_state: dict[str, torch.Tensor], vae_state: dict[str, torch.Tensor]) -> None:
        """Copy a base Wan's weights into this model; everything except the DWS module must be covered.

        The previous-frame input channels, absent from the base, are added to the base's patch embedding as zeros.

        Raises:
            RuntimeError: if the base leaves other keys missing or has keys this model does not.
        """
        state = dict(transformer_state)
        key = "patch_embedding.weight"
        ours = self.transformer.patch_embedding.weight
        if key in state and self.config.prev_frame_input and state[key].shape[1] * 2 == ours.shape[1]:
            base_w = state[key]
            state[key] = torch.cat([base_w, torch.zeros_like(base_w)], dim=1)
        missing, unexpected = self.transformer.load_state_dict(state, strict=False)
        new_keys = {k for k in self.transformer.state_dict() if k.split(".")[0] == "dws_action"}
        if set(missing) != new_keys or unexpected:
            extra_missing = sorted(set(missing) - new_keys)
            raise RuntimeError(
                "the base checkpoint does not match this backbone: missing (besides the new DWS module) "
                f"{extra_missing[:10]}, unexpected {sorted(unexpected)[:10]}"
            )
        if self.vae is not None:
            self.vae.load_state_dict(vae_state, strict=True)


# ================================================================================================== helpers
def _shift_prev(states: torch.Tensor) -> torch.Tensor:
    """Previous frame of every frame, ``(B, C, F, h, w)``; frame 0's previous frame is itself."""
    return torch.cat([states[:, :, :1], states[:, :, :-1]], dim=2)


def _to_grid(weights: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Motion weights ``(B, F, H, W)`` on the state grid: as is, max-pooled down, or nearest-upsampled."""
    h, w = int(size[0]), int(size[1])
    if tuple(weights.shape[-2:]) == (h, w):
        return weights
    if h <= weights.shape[-2] and w <= weights.shape[-1]:
        return pool_weights(weights, (h, w))
    b, f = weights.shape[:2]
    return F.interpolate(weights.flatten(0, 1).unsqueeze(1), size=(h, w), mode="nearest").reshape(b, f, h, w)


def _load_text_encoder(source: str, dtype: torch.dtype | None, device: str | torch.device) -> tuple[nn.Module, Any]:
    from transformers import AutoTokenizer, UMT5EncoderModel

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, subfolder="tokenizer")
        encoder = UMT5EncoderModel.from_pretrained(source, subfolder="text_encoder", dtype=dtype)
    except (OSError, ValueError) as err:
        raise OSError(
            f"could not load text_encoder/ and tokenizer/ from {source!r} ({err}); pass prompt_embeds= and "
            "num_actions= to skip text encoding"
        ) from err
    return encoder.to(device).eval(), tokenizer


@torch.no_grad()
def _encode_prompt(encoder: nn.Module, tokenizer: Any, prompt: str, max_length: int) -> torch.Tensor:
    """Encode a prompt as Wan's pipeline does: real tokens' states, zero-padded to ``max_length``; ``(1, L, D)``."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt must be a non-empty string")
    tokens = tokenizer(
        [prompt.strip()],
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    device = next(encoder.parameters()).device
    ids, mask = tokens.input_ids.to(device), tokens.attention_mask.to(device)
    states = encoder(ids, mask).last_hidden_state.float().cpu()
    real = int(mask.gt(0).sum())
    out = torch.zeros(1, max_length, states.shape[-1])
    out[:, :real] = states[:, :real]
    return out
