"""The frame-causal, action-conditioned Wan backbone (dws_gym.models.causal_wan) on tiny real diffusers models:
agreement with diffusers' own forward, the DWS modulation as an argument, frame causality, KV cache, gradient
checkpointing and input checks."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import WanTransformer3DModel

from dws_gym.models import BlockActionModulation, DiscreteActionEmbedder, freeze_base, get_action_conditioner
from dws_gym.models.causal_wan import (
    block_causal_mask,
    clear_kv_cache,
    make_frame_causal,
    wan_block_forward,
    wan_forward,
)

COND = 8
FRAMES = 3
TOKENS_PER_FRAME = 16  # 8x8 pixels, patch (1, 2, 2) -> 4x4 tokens per frame
WIDTH = 2 * 12


def make_wan(seed: int = 0, cross_attn_norm: bool = True) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=3, out_channels=3,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32, cross_attn_norm=cross_attn_norm,
    ).eval()  # fmt: skip


def make_module(mode: str = "frame", seed: int | None = None) -> BlockActionModulation:
    """A DWS module for :func:`make_wan`; ``seed`` moves every weight off its (zero) initial value."""
    module = BlockActionModulation(COND, [WIDTH, WIDTH], mode=mode)
    if seed is not None:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return module


def inputs(batch: int = 2, frames: int = FRAMES, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, frames, 8, 8, generator=gen)
    t = torch.tensor([100.0, 700.0][:batch])
    text = torch.randn(batch, 4, 16, generator=gen)
    return x, t, text


def action_emb(batch: int = 2, frames: int = FRAMES, seed: int = 2) -> torch.Tensor:
    return torch.randn(batch, frames, COND, generator=torch.Generator().manual_seed(seed))


def ffn_inputs(model: WanTransformer3DModel, block: int = 0) -> tuple[list[torch.Tensor], object]:
    """Record what a block's FFN receives (the normed, action- and timestep-modulated tokens)."""
    seen: list[torch.Tensor] = []
    handle = model.blocks[block].ffn.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    return seen, handle


# ------------------------------------------------------------------------------------------------------ masks
def test_block_causal_mask():
    mask = block_causal_mask(3, 3, 2)
    frame = torch.arange(6) // 2
    assert torch.equal(mask, frame[:, None] >= frame[None, :])
    # Queries are the last frame(s) of the keys (KV cache): one query frame sees everything.
    assert block_causal_mask(1, 4, 5) is None
    tail = block_causal_mask(2, 4, 1)
    assert torch.equal(tail, torch.tensor([[True, True, True, False], [True, True, True, True]]))


# ------------------------------------------------------------------------------------------------------ diffusers
@torch.no_grad()
@pytest.mark.parametrize("cross_attn_norm", [True, False])
def test_forward_matches_diffusers(cross_attn_norm):
    """Without actions our forward is diffusers' forward: bit for bit with one timestep per sample, and to float
    rounding with one per frame (diffusers repeats it over the frame's tokens)."""
    model = make_wan(cross_attn_norm=cross_attn_norm)
    x, t, text = inputs()
    assert torch.equal(wan_forward(model, x, t, text), model(x, t, text, return_dict=False)[0])
    per_frame = torch.tensor([[0.0, 300.0, 900.0], [50.0, 50.0, 600.0]])
    ours = wan_forward(model, x, per_frame, text)
    reference = model(x, per_frame.repeat_interleave(TOKENS_PER_FRAME, dim=1), text, return_dict=False)[0]
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)


@torch.no_grad()
def test_causal_processor_matches_upstream_attention():
    """Frame 0 of a causal clip equals diffusers' own processor (full attention) run on frame 0 alone."""
    upstream = make_wan()
    causal = copy.deepcopy(upstream)
    make_frame_causal(causal)
    x, t, text = inputs()
    ours = wan_forward(causal, x, t, text)
    reference = upstream(x[:, :, :1], t, text, return_dict=False)[0]
    torch.testing.assert_close(ours[:, :, :1], reference, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="tokens_per_frame"):  # diffusers' forward does not pass the token layout
        causal(x, t, text, return_dict=False)


# ------------------------------------------------------------------------------------------------------ actions
@torch.no_grad()
@pytest.mark.parametrize("mode", ["frame", "global", "none"])
def test_fresh_module_computes_the_base_model(mode):
    model = make_wan()
    make_frame_causal(model)
    x, t, text = inputs()
    base = wan_forward(model, x, t, text)
    module = make_module(mode)
    for seed in (2, 5):
        assert torch.equal(wan_forward(model, x, t, text, action_emb(seed=seed), module), base)
    if mode == "none":
        assert sum(p.numel() for p in module.parameters()) == 0
        assert torch.equal(wan_forward(model, x, t, text, None, module), base)  # no embedding needed


def test_trained_module_changes_output_and_receives_gradients():
    model = make_wan()
    x, t, text = inputs()
    with torch.no_grad():
        base = wan_forward(model, x, t, text)
    module = make_module(seed=3)
    emb = action_emb().requires_grad_(True)
    out = wan_forward(model, x, t, text, emb, module)
    out.square().mean().backward()
    assert not torch.allclose(out, base)
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert emb.grad is not None and emb.grad.abs().sum() > 0  # gradients reach the action embedder too


@torch.no_grad()
def test_each_frame_is_modulated_only_by_its_own_action():
    model = make_wan()
    make_frame_causal(model)
    module = make_module(seed=3)
    x, t, text = inputs()
    emb = action_emb()
    changed = emb.clone()
    changed[:, 1] += 1.0  # a different action embedding for frame 1 only
    seen, handle = ffn_inputs(model)
    outs = [wan_forward(model, x, t, text, e, module) for e in (emb, changed)]
    handle.remove()
    token_frames = torch.arange(FRAMES).repeat_interleave(TOKENS_PER_FRAME)
    differs = (seen[0] - seen[1]).abs().amax(dim=(0, 2)) > 0  # per token, block 0's FFN input
    assert torch.equal(differs, token_frames == 1)
    # Frame-causal attention: frame 0's output cannot see frame 1's action; frames 1 and 2 do.
    assert torch.equal(outs[0][:, :, 0], outs[1][:, :, 0])
    for f in (1, 2):
        assert (outs[0][:, :, f] - outs[1][:, :, f]).abs().max() > 1e-5, f


@torch.no_grad()
def test_global_mode_pools_the_trajectory():
    model = make_wan()
    module = make_module("global", seed=3)
    x, t, text = inputs()
    emb = action_emb()
    seen, handle = ffn_inputs(model)
    shifted = emb + torch.tensor([0.0, 3.0, 0.0])[None, :, None]
    outs = [wan_forward(model, x, t, text, e, module) for e in (emb, emb.flip(1), shifted)]
    handle.remove()
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)  # the order is lost, like a static prompt
    assert bool(((seen[0] - seen[2]).abs().amax(dim=(0, 2)) > 0).all())  # one frame's action moves every token
    # Any number of frames may be pooled, one embedding included.
    pooled = wan_forward(model, x, t, text, emb.mean(dim=1, keepdim=True), module)
    torch.testing.assert_close(pooled, outs[0], rtol=1e-5, atol=1e-6)


def test_block_forward_takes_per_frame_scale_and_shift():
    """The block applies LN(x) (1 + alpha_i) + beta_i to frame i's normed tokens before Wan's own modulation."""
    model = make_wan()
    block = model.blocks[0]
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, FRAMES * TOKENS_PER_FRAME, WIDTH, generator=gen)
    text = torch.randn(2, 4, WIDTH, generator=gen)
    temb = torch.randn(2, 6, WIDTH, generator=gen)
    rotary = model.rope(torch.zeros(1, 3, FRAMES, 8, 8))
    alpha, beta = (torch.randn(2, FRAMES, WIDTH, generator=gen) for _ in range(2))
    seen = []
    handle = block.ffn.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        wan_block_forward(block, tokens, text, temb, rotary, alpha, beta)
        wan_block_forward(block, tokens, text, temb, rotary)
    handle.remove()
    _, _, _, c_shift, c_scale, _ = (block.scale_shift_table + temb).chunk(6, dim=1)
    plain = (seen[1] - c_shift) / (1 + c_scale)  # LN(x), recovered from the unconditioned call
    expected = plain.unflatten(1, (FRAMES, -1)) * (1 + alpha[:, :, None]) + beta[:, :, None]
    expected = expected.flatten(1, 2) * (1 + c_scale) + c_shift
    torch.testing.assert_close(seen[0], expected, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------------ training
@pytest.mark.parametrize("mode", ["frame", "global"])
def test_gradients_equal_with_and_without_checkpointing(mode):
    model = make_wan().train()
    make_frame_causal(model)
    model.dws_action = make_module(mode, seed=3)
    x, _, text = inputs()
    t = torch.tensor([[0.0, 300.0, 900.0], [0.0, 500.0, 200.0]])
    results = []
    for checkpointing in (False, True):
        if checkpointing:
            model.enable_gradient_checkpointing()
        model.zero_grad(set_to_none=True)
        emb = action_emb().requires_grad_(True)
        seen, handle = ffn_inputs(model)
        wan_forward(model, x, t, text, emb, model.dws_action).square().mean().backward()
        handle.remove()
        assert len(seen) == (2 if checkpointing else 1)  # the checkpointed block ran again in backward
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((grads, emb.grad.clone()))
    (plain, plain_emb), (ckpt, ckpt_emb) = results
    assert plain.keys() == ckpt.keys() and any(n.startswith("dws_action.") for n in plain)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(ckpt_emb, plain_emb, rtol=1e-5, atol=1e-6)


def test_freeze_base_keeps_the_module_and_embedder_trainable():
    """What the training script does with a pre-trained backbone: only the DWS module and the embedder train."""
    model = make_wan().train()
    make_frame_causal(model)
    model.dws_action = make_module()
    assert get_action_conditioner(model) is model.dws_action
    embedder = DiscreteActionEmbedder(COND, num_actions=4)
    params = freeze_base(model, embedder)
    assert {id(p) for p in params} == {id(p) for p in [*model.dws_action.parameters(), *embedder.parameters()]}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(params, lr=0.5)
    x, t, text = inputs()
    actions = torch.tensor([[0, 1], [2, 3]])
    target = torch.randn(2, 3, FRAMES, 8, 8, generator=torch.Generator().manual_seed(4))
    for _ in range(2):  # the zero-initialised output layer moves first, then gradients reach everything upstream
        optimizer.zero_grad()
        out = wan_forward(model, x, t, text, embedder.embed_for_frames(actions), model.dws_action)
        (out - target).square().mean().backward()
        optimizer.step()
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) != name.startswith("dws_action."), name


# ------------------------------------------------------------------------------------------------------ KV cache
@torch.no_grad()
def test_kv_cache_with_frame_offset_matches_the_full_clip():
    model = make_wan()
    make_frame_causal(model)
    module = make_module(seed=3)
    x, _, text = inputs()
    emb = action_emb()
    t_full = torch.tensor([[0.0, 0.0, 600.0], [0.0, 0.0, 250.0]])
    full = wan_forward(model, x, t_full, text, emb, module)
    wan_forward(model, x[:, :, :2], torch.zeros(2), text, emb[:, :2], module, cache_mode="write")
    new = wan_forward(model, x[:, :, 2:], t_full[:, 2], text, emb[:, 2:], module, cache_mode="read", frame_offset=2)
    torch.testing.assert_close(new, full[:, :, 2:], rtol=1e-5, atol=1e-5)
    clear_kv_cache(model)
    assert all(block.attn1.processor.cache is None for block in model.blocks)


# ------------------------------------------------------------------------------------------------------ checks
def test_bad_inputs_raise_clear_errors():
    model = make_wan()
    module = make_module()
    x, t, text = inputs()
    with pytest.raises(ValueError, match="pass action_emb"):
        wan_forward(model, x, t, text, None, module)
    with pytest.raises(ValueError, match="2 frames but the input has 3"):
        wan_forward(model, x, t, text, action_emb(frames=2), module)
    with pytest.raises(ValueError, match="cond_dim"):
        wan_forward(model, x, t, text, torch.randn(2, FRAMES, COND + 1), module)
    with pytest.raises(ValueError, match="batch 3"):
        wan_forward(model, x, t, text, action_emb(batch=3), module)
    with pytest.raises(ValueError, match="timestep"):
        wan_forward(model, x, t[:, None].expand(2, 2), text, action_emb(), module)
    with pytest.raises(ValueError, match="1 regressors for 2 blocks"):
        wan_forward(model, x, t, text, action_emb(), BlockActionModulation(COND, [WIDTH]))
    with pytest.raises(ValueError, match="make_frame_causal"):
        wan_forward(model, x, t, text, cache_mode="write")
    with pytest.raises(ValueError, match="cache_mode"):
        wan_forward(model, x, t, text, cache_mode="on")
    # One embedding for the whole batch broadcasts.
    with torch.no_grad():
        one = wan_forward(model, x, t, text, action_emb(batch=1), make_module(seed=3))
        both = wan_forward(model, x, t, text, action_emb(batch=1).expand(2, -1, -1), make_module(seed=3))
    torch.testing.assert_close(one, both, rtol=1e-6, atol=1e-6)  # equal up to the GEMMs' batch-size rounding
