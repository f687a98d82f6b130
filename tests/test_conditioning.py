"""The DWS action-conditioned module on tiny real diffusers Wan and transformers Llama models."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_model, save_model
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

from dws_gym.models import (
    ActionConditioner,
    DiscreteActionEmbedder,
    find_prefn_norms,
    freeze_base,
    get_action_conditioner,
    inject_action_conditioning,
)

COND = 8
FRAMES = 3
WAN_TOKENS_PER_FRAME = 16  # 8x8 pixels, patch (1, 2, 2) -> 4x4 tokens per frame
# Llama token stream: BOS, then per frame one slot token + 4 frame tokens (ids: -1, then 0 x5, 1 x5, 2 x5).
LLAMA_FRAME_IDS = torch.tensor([-1] + [f for f in range(FRAMES) for _ in range(5)])


def make_wan(seed: int = 0) -> WanTransformer3DModel:
    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=3,
        out_channels=3,
        text_dim=16,
        freq_dim=16,
        ffn_dim=32,
        num_layers=2,
        rope_max_seq_len=32,
    ).eval()


def make_llama(seed: int = 0, cls: type = LlamaForCausalLM) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return cls(config).eval()


def wan_inputs(batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "hidden_states": torch.randn(batch, 3, FRAMES, 8, 8, generator=g),
        "timestep": torch.tensor([10, 500][:batch]),
        "encoder_hidden_states": torch.randn(batch, 4, 16, generator=g),
    }


def llama_inputs(batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(0, 64, (batch, len(LLAMA_FRAME_IDS)), generator=g)}


FAMILIES = {
    "wan": (make_wan, wan_inputs, {"tokens_per_frame": WAN_TOKENS_PER_FRAME}),
    "llama": (make_llama, llama_inputs, {"frame_ids": LLAMA_FRAME_IDS}),
}


def run(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    out = model(**inputs)
    return out.sample if hasattr(out, "sample") else out.logits


def actions_emb(batch: int = 2, seed: int = 2) -> torch.Tensor:
    return torch.randn(batch, FRAMES, COND, generator=torch.Generator().manual_seed(seed))


def perturb(conditioner: ActionConditioner, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in conditioner.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def capture_norm_outputs(norm: torch.nn.Module) -> tuple[list[torch.Tensor], object]:
    """Record a norm's output after the action hook (hooks run in registration order)."""
    seen: list[torch.Tensor] = []
    handle = norm.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    return seen, handle


def test_prefn_norms_found_for_both_families() -> None:
    family, norms = find_prefn_norms(make_wan())
    assert family == "wan" and [n for n, _ in norms] == ["blocks.0.norm3", "blocks.1.norm3"]
    model = make_wan()
    for block, (_, norm) in zip(model.blocks, find_prefn_norms(model)[1]):
        assert norm is block.norm3  # norm3 feeds block.ffn (see module docstring)
    for cls, prefix in ((LlamaForCausalLM, "model.layers"), (LlamaModel, "layers")):
        family, norms = find_prefn_norms(make_llama(cls=cls))
        assert family == "llama"
        assert [n for n, _ in norms] == [f"{prefix}.{i}.post_attention_layernorm" for i in range(2)]
    with pytest.raises(ValueError, match="cannot detect"):
        find_prefn_norms(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no 'llama' blocks"):
        find_prefn_norms(make_wan(), family="llama")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["frame", "global", "none"])
def test_fresh_module_computes_the_base_model(family: str, mode: str) -> None:
    make, inputs, mapping = FAMILIES[family]
    model = make()
    with torch.no_grad():
        base = run(model, inputs())
        conditioner = inject_action_conditioning(model, COND, family="auto", mode=mode)
        assert model.dws_action is conditioner and get_action_conditioner(model) is conditioner
        for seed in (2, 5):
            with conditioner.set_condition(actions_emb(seed=seed), **mapping):
                assert torch.equal(run(model, inputs()), base)
    if mode == "none":
        assert sum(p.numel() for p in conditioner.parameters()) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_trained_module_changes_output_and_receives_gradients(family: str) -> None:
    make, inputs, mapping = FAMILIES[family]
    model = make()
    with torch.no_grad():
        base = run(model, inputs())
    conditioner = inject_action_conditioning(model, COND)
    perturb(conditioner)
    emb = actions_emb().requires_grad_(True)
    with conditioner.set_condition(emb, **mapping):
        out = run(model, inputs())
        out.square().mean().backward()
    assert not torch.allclose(out, base)
    for name, p in conditioner.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert emb.grad is not None and emb.grad.abs().sum() > 0  # gradients reach the action embedder too


def _grads(model: torch.nn.Module, inputs: dict, emb: torch.Tensor, mapping: dict) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    with model.dws_action.set_condition(emb, **mapping):
        run(model, inputs).square().mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _enable_checkpointing(model: torch.nn.Module) -> None:
    if hasattr(model, "enable_gradient_checkpointing"):
        model.enable_gradient_checkpointing()
    elif hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable()
    else:  # older transformers
        model.gradient_checkpointing_enable()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("frozen", [False, True])
def test_gradients_equal_with_and_without_checkpointing(family: str, frozen: bool) -> None:
    make, inputs, mapping = FAMILIES[family]
    model = make().train()  # transformers only checkpoints in training mode; neither tiny model has dropout
    conditioner = inject_action_conditioning(model, COND)
    perturb(conditioner)
    if frozen:
        freeze_base(model)
    norm = find_prefn_norms(model, family)[1][0][1]
    calls, handle = capture_norm_outputs(norm)
    plain = _grads(model, inputs(), actions_emb(), mapping)
    assert len(calls) == 1
    _enable_checkpointing(model)
    calls.clear()
    checkpointed = _grads(model, inputs(), actions_emb(), mapping)
    handle.remove()
    assert len(calls) == 2, "the block was not recomputed: checkpointing is not active"
    assert torch.equal(calls[0], calls[1])  # the recompute saw the same action condition
    assert plain.keys() == checkpointed.keys()
    assert any(n.startswith("dws_action.") for n in plain)
    if frozen:
        assert all(n.startswith("dws_action.") for n in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


def test_checkpoint_recompute_without_the_condition_raises() -> None:
    model = make_wan().train()
    conditioner = inject_action_conditioning(model, COND)
    perturb(conditioner)
    model.enable_gradient_checkpointing()
    with conditioner.set_condition(actions_emb(), tokens_per_frame=WAN_TOKENS_PER_FRAME):
        loss = run(model, wan_inputs()).mean()
    with pytest.raises(RuntimeError, match="keep the condition set until backward"):
        loss.backward()
    conditioner.set_condition(actions_emb(), tokens_per_frame=WAN_TOKENS_PER_FRAME)
    loss = run(model, wan_inputs()).mean()
    conditioner.set_condition(actions_emb(seed=9), tokens_per_frame=WAN_TOKENS_PER_FRAME)  # next batch too early
    with pytest.raises(RuntimeError, match="replaced after the forward pass"):
        loss.backward()


def test_freeze_base_train_step_changes_only_the_module_and_embedder() -> None:
    model = make_wan().train()
    embedder = DiscreteActionEmbedder(COND, num_actions=4)
    conditioner = inject_action_conditioning(model, COND)
    params = freeze_base(model, embedder)
    assert {id(p) for p in params} == {id(p) for p in [*conditioner.parameters(), *embedder.parameters()]}
    assert all(not p.requires_grad for n, p in model.named_parameters() if not n.startswith("dws_action."))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    before_emb = {n: p.detach().clone() for n, p in embedder.named_parameters()}
    optimizer = torch.optim.SGD(params, lr=0.5)
    actions = torch.tensor([[0, 1], [2, 3]])
    target = torch.randn(2, 3, FRAMES, 8, 8, generator=torch.Generator().manual_seed(4))
    for _ in range(2):  # the zero-initialised output layer moves first, then gradients reach everything upstream
        optimizer.zero_grad()
        with conditioner.set_condition(embedder.embed_for_frames(actions), tokens_per_frame=WAN_TOKENS_PER_FRAME):
            loss = (run(model, wan_inputs()) - target).square().mean()
        loss.backward()
        optimizer.step()
    for name, p in model.named_parameters():
        if name.startswith("dws_action."):
            assert not torch.equal(p, before[name]), f"{name} did not train"
        else:
            assert torch.equal(p, before[name]), f"frozen {name} changed"
    for name, p in embedder.named_parameters():
        assert not torch.equal(p, before_emb[name]), f"embedder {name} did not train"
    with pytest.raises(ValueError, match="inject_action_conditioning"):
        freeze_base(make_wan())


@pytest.mark.parametrize("family", FAMILIES)
def test_safetensors_round_trip(tmp_path, family: str) -> None:
    make, inputs, mapping = FAMILIES[family]
    model = make(seed=0)
    perturb(inject_action_conditioning(model, COND))
    path = tmp_path / "model.safetensors"
    save_model(model, str(path))
    other = make(seed=1)
    inject_action_conditioning(other, COND)
    missing, unexpected = load_model(other, str(path), strict=True)
    assert not missing and not unexpected
    with torch.no_grad():
        with model.dws_action.set_condition(actions_emb(), **mapping):
            expected = run(model, inputs())
        with other.dws_action.set_condition(actions_emb(), **mapping):
            assert torch.equal(run(other, inputs()), expected)
    base = make(seed=1)
    with pytest.raises(RuntimeError):  # the module's weights are part of the checkpoint
        load_model(base, str(path), strict=True)


def _token_frames(family: str) -> torch.Tensor:
    if family == "wan":
        return torch.arange(FRAMES).repeat_interleave(WAN_TOKENS_PER_FRAME)
    return LLAMA_FRAME_IDS


@pytest.mark.parametrize("family", FAMILIES)
def test_each_frame_is_modulated_only_by_its_own_action(family: str) -> None:
    make, inputs, mapping = FAMILIES[family]
    model = make()
    conditioner = inject_action_conditioning(model, COND)
    perturb(conditioner)
    first_norm = find_prefn_norms(model, family)[1][0][1]
    seen, handle = capture_norm_outputs(first_norm)
    emb = actions_emb()
    changed = emb.clone()
    changed[:, 1] += 1.0  # a different action embedding for frame 1 only
    outs = []
    with torch.no_grad():
        for e in (emb, changed):
            with conditioner.set_condition(e, **mapping):
                outs.append(run(model, inputs()))
    handle.remove()
    token_frames = _token_frames(family)
    differs = (seen[0] - seen[1]).abs().amax(dim=(0, 2)) > 0  # per token, block 0's pre-FFN activations
    assert torch.equal(differs, token_frames == 1)
    if family == "llama":  # causal attention: logits before frame 1's first token cannot change
        first = int((token_frames == 1).nonzero()[0])
        assert torch.equal(outs[0][:, :first], outs[1][:, :first])
        assert not torch.equal(outs[0][:, first:], outs[1][:, first:])


def test_global_mode_pools_the_trajectory() -> None:
    model = make_wan()
    conditioner = inject_action_conditioning(model, COND, mode="global")
    perturb(conditioner)
    seen, handle = capture_norm_outputs(model.blocks[0].norm3)
    emb = actions_emb()
    with torch.no_grad():
        outs = []
        for e in (emb, emb.flip(1), emb + torch.tensor([0.0, 3.0, 0.0])[None, :, None]):
            with conditioner.set_condition(e):  # no token mapping needed
                outs.append(run(model, wan_inputs()))
    handle.remove()
    assert torch.allclose(outs[0], outs[1], atol=1e-6)  # the order of actions is lost, like a static prompt
    differs = (seen[0] - seen[2]).abs().amax(dim=(0, 2)) > 0
    assert bool(differs.all())  # changing one frame's action moves every frame's tokens


def test_bad_conditions_raise_clear_errors() -> None:
    model = make_wan()
    conditioner = inject_action_conditioning(model, COND)
    with pytest.raises(ValueError, match="cond_dim"):
        conditioner.set_condition(torch.randn(2, FRAMES, COND + 1), tokens_per_frame=WAN_TOKENS_PER_FRAME)
    with pytest.raises(ValueError, match="exactly one"):
        conditioner.set_condition(actions_emb())
    with pytest.raises(ValueError, match=r"\(B, F, cond_dim\)"):
        conditioner.set_condition(torch.randn(FRAMES, COND), tokens_per_frame=WAN_TOKENS_PER_FRAME)
    with pytest.raises(ValueError, match=r"\[-1, 3\)"):
        conditioner.set_condition(actions_emb(), frame_ids=torch.tensor([0, 3]))
    with torch.no_grad():
        with conditioner.set_condition(actions_emb(), tokens_per_frame=8):
            with pytest.raises(ValueError, match="48 tokens"):
                run(model, wan_inputs())
        with conditioner.set_condition(actions_emb(batch=3), tokens_per_frame=WAN_TOKENS_PER_FRAME):
            with pytest.raises(ValueError, match="batch 3"):
                run(model, wan_inputs())
        with conditioner.set_condition(actions_emb(), frame_ids=torch.zeros(10, dtype=torch.long)):
            with pytest.raises(ValueError, match="covers 10 tokens"):
                run(model, wan_inputs())
        with pytest.raises(RuntimeError, match="no condition is set"):
            run(model, wan_inputs())
        with conditioner.disabled():
            base = run(model, wan_inputs())
        # a batch-1 condition broadcasts over the batch
        with conditioner.set_condition(actions_emb(batch=1), tokens_per_frame=WAN_TOKENS_PER_FRAME):
            assert torch.equal(run(model, wan_inputs()), base)
    with pytest.raises(ValueError, match="already has"):
        inject_action_conditioning(model, COND)


def test_remove_restores_the_base_model_and_deepcopy_rebinds_hooks() -> None:
    model = make_wan()
    with torch.no_grad():
        base = run(model, wan_inputs())
    conditioner = inject_action_conditioning(model, COND)
    perturb(conditioner)
    ema = copy.deepcopy(model)  # e.g. an EMA copy: its hooks must drive its own module
    with torch.no_grad():
        with ema.dws_action.set_condition(actions_emb(), tokens_per_frame=WAN_TOKENS_PER_FRAME):
            conditioned = run(ema, wan_inputs())
        for p in ema.dws_action.parameters():
            p.zero_()
        with ema.dws_action.set_condition(actions_emb(), tokens_per_frame=WAN_TOKENS_PER_FRAME):
            assert torch.equal(run(ema, wan_inputs()), base)  # zeroed copy = base model
        with conditioner.set_condition(actions_emb(), tokens_per_frame=WAN_TOKENS_PER_FRAME):
            assert torch.equal(run(model, wan_inputs()), conditioned)  # the original is untouched
        conditioner.remove()
        assert torch.equal(run(model, wan_inputs()), base)  # no hooks, no condition needed
    assert all(len(block.norm3._forward_hooks) == 0 for block in model.blocks)
    del model.dws_action
    assert get_action_conditioner(model) is None
    inject_action_conditioning(model, COND)  # a removed model can be conditioned again


def test_conditioner_follows_dtype_moves() -> None:
    model = make_llama()
    conditioner = inject_action_conditioning(model, COND, hidden_dim=5)
    assert conditioner.modulations[0].linear1.out_features == 5
    model.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in conditioner.parameters())
    with torch.no_grad(), conditioner.set_condition(actions_emb(), frame_ids=LLAMA_FRAME_IDS):
        assert run(model, llama_inputs()).dtype == torch.float64
