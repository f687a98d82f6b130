"""Diffusers' ``WanTransformer3DModel`` as a frame-causal, action-conditioned world-model backbone.

The world model keeps diffusers' modules and weights (so pre-trained Wan2.1 checkpoints load unchanged) but runs
them through its own forward functions, which take everything a call needs as arguments:

* :func:`wan_forward`: the whole transformer (patch embedding, timestep / text embedding, blocks, output norm and
  projection, unpatchify). Timesteps may be one per sample or one per frame, the per-frame action embeddings feed
  the DWS module (:class:`~dws_gym.models.conditioning.BlockActionModulation`, registered on the transformer as
  ``dws_action``), and gradient checkpointing passes the action tensors to each recomputed block explicitly.
* :func:`wan_block_forward`: one ``WanTransformerBlock``, with the DWS modulation
  ``LN(x) * (1 + alpha) + beta`` applied to the normed activations that feed the FFN, inside Wan's own timestep
  modulation: ``ffn((LN(h) * (1 + alpha) + beta) * (1 + c_scale) + c_shift)``.
* :class:`FrameCausalAttnProcessor` (installed by :func:`make_frame_causal`): self-attention in which tokens of
  frame ``i`` attend to frames ``<= i`` only, with an optional KV cache, so a clip trained all at once matches
  generating one frame at a time and the context's keys / values can be reused while a new frame is sampled.

Tokens are frame-major (``F * h' * w'`` after patching), so a frame's tokens are one contiguous run. Per-frame values
(timestep modulation, action scale / shift) are applied by viewing the ``(B, L, D)`` tokens as a ``(B, G, L / G, D)``
grid, ``G`` being the number of values; elementwise, this is exactly what diffusers computes with per-token values.

Written against diffusers 0.42.1 (``transformer_wan.py``, Apache-2.0); the functions are adaptations of
``WanTransformerBlock.forward`` and ``WanTransformer3DModel.forward``, without the image-conditioning (I2V) inputs.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_wan import (
    WanRotaryPosEmbed,
    WanTransformer3DModel,
    WanTransformerBlock,
)
from torch import nn
from torch.utils.checkpoint import checkpoint

from .conditioning import BlockActionModulation, modulate

__all__ = [
    "CacheMode",
    "FrameCausalAttnProcessor",
    "block_causal_mask",
    "clear_kv_cache",
    "frame_rotary_embedding",
    "make_frame_causal",
    "wan_block_forward",
    "wan_forward",
]

#: ``"off"``: no KV cache; ``"write"``: store this call's keys / values; ``"read"``: attend to the stored ones too.
CacheMode = Literal["off", "write", "read"]
_CACHE_MODES = ("off", "write", "read")


# ================================================================================================== attention
def block_causal_mask(
    query_frames: int, key_frames: int, tokens_per_frame: int, device: torch.device | None = None
) -> torch.Tensor | None:
    """Boolean attention mask letting each token see its own frame and earlier ones.

    The queries are the *last* ``query_frames`` of the ``key_frames`` frames (with a KV cache the keys include the
    cached context in front of the queries).

    Returns:
        ``(query_frames * tokens_per_frame, key_frames * tokens_per_frame)`` bool, ``True`` = may attend; ``None`` when
        nothing is masked (a single query frame that is the last key frame).
    """
    if query_frames > key_frames:
        raise ValueError(f"{query_frames} query frames cannot exceed the {key_frames} key frames")
    if query_frames == 1:
        return None
    offset = key_frames - query_frames
    q = torch.arange(query_frames, device=device).repeat_interleave(tokens_per_frame) + offset
    k = torch.arange(key_frames, device=device).repeat_interleave(tokens_per_frame)
    return q[:, None] >= k[None, :]


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding: rotate interleaved pairs ``(x[2i], x[2i+1])`` of ``x`` ``(B, L, heads, d)``."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    # Wan keeps its tables in float64; rotating in float32 (or x's dtype if wider) is as exact and far cheaper.
    dtype = torch.promote_types(x.dtype, torch.float32)
    cos, sin = cos[..., 0::2].to(dtype), sin[..., 1::2].to(dtype)
    x1, x2 = x1.to(dtype), x2.to(dtype)
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2).type_as(x)


class FrameCausalAttnProcessor:
    """Self-attention processor for Wan blocks (``attn1``) with a frame-causal mask and an optional KV cache.

    Does what diffusers' ``WanAttnProcessor`` does for self-attention (q / k / v projections, RMS q-k norm, 3-axis
    rotary embedding, scaled-dot-product attention, output projection), except that a token of frame ``i`` only
    attends to tokens of frames ``<= i`` (tokens are frame-major: ``tokens_per_frame`` consecutive tokens per frame).
    Attention runs through ``torch.nn.functional.scaled_dot_product_attention``, which takes the boolean mask.

    ``tokens_per_frame`` and ``cache_mode`` are arguments of each call (:func:`wan_block_forward` passes them).
    ``cache_mode="write"`` stores this call's keys / values (after norm and rotary embedding) in :attr:`cache`;
    ``"read"`` puts the stored ones in front of this call's, for queries that are the frames following the cached
    ones. This is exact because under the causal mask earlier frames never depend on later ones.
    """

    def __init__(self) -> None:
        self.cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        tokens_per_frame: int | None = None,
        cache_mode: CacheMode = "off",
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("FrameCausalAttnProcessor is for self-attention (attn1) without an external mask")
        if getattr(attn, "fused_projections", False):
            raise ValueError("FrameCausalAttnProcessor needs unfused q/k/v projections; call unfuse_projections()")
        if tokens_per_frame is None:
            raise ValueError("tokens_per_frame is not given; call the backbone through causal_wan.wan_forward")
        length = hidden_states.shape[1]
        if length % tokens_per_frame:
            raise ValueError(f"sequence of {length} tokens is not a whole number of {tokens_per_frame}-token frames")

        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = _apply_rotary(query, *rotary_emb)
            key = _apply_rotary(key, *rotary_emb)

        if cache_mode == "write":
            self.cache = (key.detach(), value.detach())
        elif cache_mode == "read":
            if self.cache is None:
                raise RuntimeError("KV cache read before it was written")
            key = torch.cat([self.cache[0], key], dim=1)
            value = torch.cat([self.cache[1], value], dim=1)

        mask = block_causal_mask(length // tokens_per_frame, key.shape[1] // tokens_per_frame, tokens_per_frame,
                                 query.device)  # fmt: skip
        out = F.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=mask
        )
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


def make_frame_causal(transformer: WanTransformer3DModel) -> list[FrameCausalAttnProcessor]:
    """Install a :class:`FrameCausalAttnProcessor` in every block's self-attention (in place; the state_dict is
    unchanged). Returns the processors, in block order."""
    processors = []
    for block in transformer.blocks:
        processor = FrameCausalAttnProcessor()
        block.attn1.set_processor(processor)
        processors.append(processor)
    return processors


def clear_kv_cache(transformer: WanTransformer3DModel) -> None:
    """Drop the keys / values the frame-causal processors hold (so they do not outlive a sampling call)."""
    for block in transformer.blocks:
        if isinstance(block.attn1.processor, FrameCausalAttnProcessor):
            block.attn1.processor.cache = None


def frame_rotary_embedding(
    rope: WanRotaryPosEmbed, hidden_states: torch.Tensor, frame_offset: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Wan's rotary tables ``(cos, sin)`` for ``hidden_states`` ``(B, C, F, H, W)`` whose first frame sits at position
    ``frame_offset`` of the clip (a call on new frames only, after a KV cache of ``frame_offset`` frames)."""
    if frame_offset == 0:
        return rope(hidden_states)
    _, _, frames, height, width = hidden_states.shape
    # The rotary module only reads the input's shape; a meta stand-in covers cached + new frames, allocating nothing.
    cos, sin = rope(torch.empty((1, 1, frames + frame_offset, height, width), device="meta"))
    skip = cos.shape[1] // (frames + frame_offset) * frame_offset
    return cos[:, skip:], sin[:, skip:]


# ================================================================================================== forward
def _grid(tokens: torch.Tensor, groups: int) -> torch.Tensor:
    """View ``(B, L, D)`` frame-major tokens as ``(B, groups, L / groups, D)`` (a view: no copy)."""
    return tokens.unflatten(1, (groups, -1))


def _check_groups(name: str, length: int, groups: int) -> None:
    if length % groups:
        raise ValueError(f"{name} has {groups} entries, which do not divide the {length} tokens into equal runs")


def wan_block_forward(
    block: WanTransformerBlock,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    temb: torch.Tensor,
    rotary_emb: tuple[torch.Tensor, torch.Tensor],
    action_scale: torch.Tensor | None = None,
    action_shift: torch.Tensor | None = None,
    tokens_per_frame: int | None = None,
    cache_mode: CacheMode = "off",
) -> torch.Tensor:
    """One Wan transformer block with the DWS action modulation before its FFN.

    An adaptation of diffusers' ``WanTransformerBlock.forward`` (self-attention, cross-attention, FFN, each with
    Wan's timestep scale / shift / gate) that also takes the action's scale and shift and, for frame-causal
    self-attention, the token layout and KV-cache mode as arguments.

    Args:
        block: The diffusers block whose modules and weights are used.
        hidden_states: ``(B, L, D)`` frame-major tokens.
        encoder_hidden_states: ``(B, S, D)`` projected prompt tokens (cross-attention keys / values).
        temb: Timestep modulation, ``(B, 6, D)`` for all tokens or ``(B, G, 6, D)`` for ``G`` equal runs of tokens
            (one per frame).
        rotary_emb: Wan's rotary ``(cos, sin)`` tables for these tokens.
        action_scale, action_shift: ``alpha, beta`` of the DWS module, ``(B or 1, A, D)`` for ``A`` equal runs of
            tokens (``A`` frames, or ``A = 1`` for one value for all tokens); ``None`` leaves the block as is.
        tokens_per_frame: Tokens of one frame; required by a :class:`FrameCausalAttnProcessor`.
        cache_mode: KV-cache mode of a :class:`FrameCausalAttnProcessor` (``"off"`` for any other processor).

    Returns:
        The block's output tokens ``(B, L, D)``, in ``hidden_states``' dtype.
    """
    length, dtype = hidden_states.shape[1], hidden_states.dtype
    if temb.ndim == 3:  # (B, 6, D): one modulation for every token, a single run
        temb = temb.unsqueeze(1)
    runs = temb.shape[1]
    _check_groups("temb", length, runs)
    # Wan adds its learned table and the timestep projection in float32; each part is (B, runs, 1, D).
    table = block.scale_shift_table.unsqueeze(0)
    shift, scale, gate, ffn_shift, ffn_scale, ffn_gate = (table + temb.float()).chunk(6, dim=2)

    # 1. Self-attention (frame-causal when the processor is ours).
    attn_kwargs: dict[str, object] = {}
    if isinstance(block.attn1.processor, FrameCausalAttnProcessor):
        attn_kwargs = {"tokens_per_frame": tokens_per_frame, "cache_mode": cache_mode}
    elif cache_mode != "off":
        raise ValueError("a KV cache needs the frame-causal processors; call make_frame_causal(transformer) first")
    normed = (_grid(block.norm1(hidden_states.float()), runs) * (1 + scale) + shift).flatten(1, 2).to(dtype)
    attn_out = block.attn1(normed, None, None, rotary_emb, **attn_kwargs)
    hidden_states = (_grid(hidden_states.float(), runs) + _grid(attn_out, runs) * gate).flatten(1, 2).to(dtype)

    # 2. Cross-attention to the prompt (norm2 is the identity when the model has no cross_attn_norm).
    normed = block.norm2(hidden_states.float()).to(dtype)
    hidden_states = hidden_states + block.attn2(normed, encoder_hidden_states, None, None)

    # 3. FFN. norm3 is the pre-FFN LayerNorm (no affine weights); the action modulates its float32 output first.
    normed = block.norm3(hidden_states.float())
    if action_scale is not None and action_shift is not None:
        _check_groups("action_scale", length, action_scale.shape[1])
        actions = action_scale.shape[1]
        normed = modulate(_grid(normed, actions), action_scale.unsqueeze(2), action_shift.unsqueeze(2)).flatten(1, 2)
    elif (action_scale is None) != (action_shift is None):
        raise ValueError("pass both action_scale and action_shift, or neither")
    normed = (_grid(normed, runs) * (1 + ffn_scale) + ffn_shift).flatten(1, 2).to(dtype)
    ff_out = block.ffn(normed)
    return (_grid(hidden_states.float(), runs) + _grid(ff_out.float(), runs) * ffn_gate).flatten(1, 2).to(dtype)


def wan_forward(
    transformer: WanTransformer3DModel,
    hidden_states: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    action_emb: torch.Tensor | None = None,
    modulation: BlockActionModulation | None = None,
    *,
    cache_mode: CacheMode = "off",
    frame_offset: int = 0,
) -> torch.Tensor:
    """Run a ``WanTransformer3DModel`` with per-frame timesteps and the DWS action modulation as arguments.

    An adaptation of diffusers' ``WanTransformer3DModel.forward`` over the model's own submodules (``rope``,
    ``patch_embedding``, ``condition_embedder``, ``blocks``, ``norm_out``, ``proj_out``, ``scale_shift_table``).
    Training and stepping use it alike; with ``transformer.gradient_checkpointing`` set and gradients enabled every
    block is recomputed in backward (``torch.utils.checkpoint``), its action scale / shift passed as inputs.

    Args:
        transformer: The backbone (temporal patch size 1; no image conditioning).
        hidden_states: ``(B, C_in, F, H, W)`` input states.
        timestep: Wan's timestep (``1000 * t``), ``(B,)`` for all frames of the call (embedded once) or ``(B, F)``
            per frame.
        encoder_hidden_states: ``(B, S, text_dim)`` prompt embeddings.
        action_emb: ``(B or 1, F, cond_dim)`` per-frame action embeddings (``"frame"`` mode), or ``(B or 1, F', C)``
            for any ``F'`` in ``"global"`` mode, where they are averaged once per call; ignored when ``modulation`` is
            ``None`` or in ``"none"`` mode.
        modulation: The DWS module, one regressor per block (usually ``transformer.dws_action``).
        cache_mode: KV-cache mode of the frame-causal processors (see :class:`FrameCausalAttnProcessor`).
        frame_offset: Position of the first frame in the clip (after ``frame_offset`` cached frames).

    Returns:
        ``(B, C_out, F, H, W)`` output, in the backbone's dtype.
    """
    if hidden_states.ndim != 5:
        raise ValueError(f"hidden_states must be (B, C, F, H, W), got {tuple(hidden_states.shape)}")
    if cache_mode not in _CACHE_MODES:
        raise ValueError(f"cache_mode must be one of {_CACHE_MODES}, got {cache_mode!r}")
    if transformer.condition_embedder.image_embedder is not None:
        raise ValueError("image-conditioned Wan backbones (image_dim set) are not supported")
    batch, _, frames, height, width = hidden_states.shape
    p_t, p_h, p_w = transformer.config.patch_size
    if p_t != 1 or height % p_h or width % p_w:
        raise ValueError(f"input {(frames, height, width)} does not fit the patch {(p_t, p_h, p_w)} (temporal 1)")
    if tuple(timestep.shape) not in ((batch,), (batch, frames)):
        raise ValueError(f"timestep must be (B,) or (B, F) = {(batch, frames)}, got {tuple(timestep.shape)}")
    emb = _action_embedding(transformer, modulation, action_emb, batch, frames)
    rows, cols = height // p_h, width // p_w

    rotary_emb = frame_rotary_embedding(transformer.rope, hidden_states, frame_offset)
    tokens = transformer.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()  # (B, L, D)
    per_frame = timestep.ndim == 2
    temb, temb_proj, text, _ = transformer.condition_embedder(
        timestep.flatten(), encoder_hidden_states, None, timestep_seq_len=frames if per_frame else None
    )
    temb_proj = temb_proj.unflatten(-1, (6, -1))  # (B, 6, D) or (B, F, 6, D)

    checkpointing = torch.is_grad_enabled() and transformer.gradient_checkpointing
    for index, block in enumerate(transformer.blocks):
        scale = shift = None
        if emb is not None:
            scale, shift = modulation.modulations[index](emb)  # (B or 1, F or 1, D)
        args = (block, tokens, text, temb_proj, rotary_emb, scale, shift, rows * cols, cache_mode)
        if checkpointing:
            tokens = checkpoint(wan_block_forward, *args, use_reentrant=False)
        else:
            tokens = wan_block_forward(*args)

    # Output norm with its own timestep scale / shift, then the per-token patch projection.
    if per_frame:  # temb (B, F, D)
        shift, scale = (transformer.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
    else:  # temb (B, D)
        shift, scale = (transformer.scale_shift_table + temb.unsqueeze(1)).unsqueeze(1).chunk(2, dim=2)
    dtype = tokens.dtype
    tokens = (_grid(transformer.norm_out(tokens.float()), shift.shape[1]) * (1 + scale) + shift).flatten(1, 2)
    patches = transformer.proj_out(tokens.to(dtype))  # (B, L, p_h * p_w * C_out), channels last

    # Unpatchify: (B, F, rows, cols, p_h, p_w, C) -> (B, C, F, rows * p_h, cols * p_w).
    patches = patches.reshape(batch, frames, rows, cols, p_h, p_w, -1)
    return patches.permute(0, 6, 1, 2, 4, 3, 5).reshape(batch, -1, frames, rows * p_h, cols * p_w)


def _action_embedding(
    transformer: WanTransformer3DModel,
    modulation: BlockActionModulation | None,
    action_emb: torch.Tensor | None,
    batch: int,
    frames: int,
) -> torch.Tensor | None:
    """The embedding the blocks' regressors read (pooled once in ``"global"`` mode), or ``None`` when the model is
    not action-conditioned. Checks shapes only (no device sync)."""
    if modulation is None or modulation.mode == "none":
        return None
    if len(modulation.modulations) != len(transformer.blocks):
        raise ValueError(
            f"the DWS module has {len(modulation.modulations)} regressors for {len(transformer.blocks)} blocks"
        )
    if action_emb is None:
        raise ValueError("the model is action-conditioned: pass action_emb (B, F, cond_dim)")
    modulation.check_embedding(action_emb)
    if action_emb.shape[0] not in (1, batch):
        raise ValueError(f"action_emb has batch {action_emb.shape[0]} but the input has batch {batch}")
    if modulation.mode == "global":
        # The ablation's single pooled embedding, computed once per call and shared by every block.
        return action_emb.mean(dim=1, keepdim=True)
    if action_emb.shape[1] != frames:
        raise ValueError(f"action_emb has {action_emb.shape[1]} frames but the input has {frames}")
    return action_emb
