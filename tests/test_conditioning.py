"""The DWS action-conditioned module injected with hooks into tiny real transformers Llama models.

(The world model's Wan backbone takes the module's scale and shift as arguments instead: tests/test_causal_wan.py.)
"""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_model, save_model
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

from dws_gym.models import (
    ActionConditioner,
    ActionModulation,
    BlockActionModulation,
    DiscreteActionEmbedder,
    find_prefn_norms,
    freeze_base,
    get_action_conditioner,
    inject_action_conditioning,
)

COND = 8
FRAMES = 3
# Llama token stream: BOS, then per frame one slot token + 4 frame tokens (ids: -1, then 0 x5, 1 x5, 2 x5).
FRAME_IDS = torch.tensor([-1] + [f for f in range(FRAMES) for _ in range(5)])
TOKENS = len(FRAME_IDS)


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


def llama_inputs(batch: int = 2, length: int = TOKENS) -> dict:
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(0, 64, (batch, length), generator=g)}


def run(model: torch.nn.Module, inputs: dict | None = None) -> torch.Tensor:
    return model(**(llama_inputs() if inputs is None else inputs)).logits


def actions_emb(batch: int = 2, seed: int = 2) -> torch.Tensor:
    return torch.randn(batch, FRAMES, COND, generator=torch.Generator().manual_seed(seed))


def perturb(conditioner: torch.nn.Module, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in conditioner.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def first_norm(model: torch.nn.Module) -> torch.nn.Module:
    return find_prefn_norms(model)[1][0][1]


def capture_norm_outputs(norm: torch.nn.Module) -> tuple[list[torch.Tensor], object]:
    """Record a norm's output after the action hook (hooks run in registration order)."""
    seen: list[torch.Tensor] = []
    handle = norm.register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    return seen, handle


def test_action_modulation_starts_at_zero():
    module = ActionModulation(COND, 32, hidden_dim=5)
    alpha, beta = module(actions_emb())
    assert alpha.shape == beta.shape == (2, FRAMES, 32)
    assert not alpha.any() and not beta.any()
    blocks = BlockActionModulation(COND, [32, 16])
    assert [m.linear2.out_features for m in blocks.modulations] == [64, 32]
    with pytest.raises(ValueError, match="mode"):
        BlockActionModulation(COND, [32], mode="tokens")


def test_prefn_norms_found():
    for cls, prefix in ((LlamaForCausalLM, "model.layers"), (LlamaModel, "layers")):
        family, norms = find_prefn_norms(make_llama(cls=cls))
        assert family == "llama"
        assert [n for n, _ in norms] == [f"{prefix}.{i}.post_attention_layernorm" for i in range(2)]
    with pytest.raises(ValueError, match="no Llama-style decoder layers"):
        find_prefn_norms(torch.nn.Linear(2, 2))
    wan = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=3, out_channels=3,
        text_dim=8, freq_dim=16, ffn_dim=32, num_layers=1,
    )  # fmt: skip
    with pytest.raises(ValueError, match="no Llama-style decoder layers"):  # Wan takes the action as an argument
        inject_action_conditioning(wan, COND)
    with pytest.raises(ValueError, match="family"):
        find_prefn_norms(make_llama(), family="wan")


@pytest.mark.parametrize("mode", ["frame", "global", "none"])
def test_fresh_module_computes_the_base_model(mode: str) -> None:
    model = make_llama()
    with torch.no_grad():
        base = run(model)
        conditioner = inject_action_conditioning(model, COND, family="auto", mode=mode)
        assert model.dws_action is conditioner and get_action_conditioner(model) is conditioner
        for seed in (2, 5):
            with conditioner.set_condition(actions_emb(seed=seed), frame_ids=FRAME_IDS):
                assert torch.equal(run(model), base)
    if mode == "none":
        assert sum(p.numel() for p in conditioner.parameters()) == 0


def test_trained_module_changes_output_and_receives_gradients() -> None:
    model = make_llama()
    with torch.no_grad():
        base = run(model)
    conditioner = inject_action_conditioning(model, COND)
    perturb(conditioner)
    emb = actions_emb().requires_grad_(True)
    with conditioner.set_condition(emb, frame_ids=FRAME_IDS):
        out = run(model)
        out.square().mean().backward()
    assert not torch.allclose(out, base)
    for name, p in conditioner.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert emb.grad is not None and emb.grad.abs().sum() > 0  # gradients reach the action embedder too


def _grads(model: torch.nn.Module, emb: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    with model.dws_action.set_condition(emb, frame_ids=FRAME_IDS):
        run(model).square().mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _enable_checkpointing(model: torch.nn.Module) -> None:
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable()
    else:  # older transformers
        model.gradient_checkpointing_enable()


@pytest.mark.parametrize("frozen", [False, True])
def test_gradients_equal_with_and_without_checkpointing(frozen: bool) -> None:
    model = make_llama().train()  # transformers only checkpoints in training mode; the tiny model has no dropout
    conditioner = inject_action_conditioning(model, COND)
    perturb(conditioner)
    if frozen:
        freeze_base(model)
    calls, handle = capture_norm_outputs(first_norm(model))
    plain = _grads(model, actions_emb())
    assert len(calls) == 1
    _enable_checkpointing(model)
    calls.clear()
    checkpointed = _grads(model, actions_emb())
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
    model = make_llama().train()
    conditioner = inject_action_conditioning(model, COND)
    perturb(conditioner)
    _enable_checkpointing(model)
    with conditioner.set_condition(actions_emb(), frame_ids=FRAME_IDS):
        loss = run(model).mean()
    with pytest.raises(RuntimeError, match="keep the condition set until backward"):
        loss.backward()
    conditioner.set_condition(actions_emb(), frame_ids=FRAME_IDS)
    loss = run(model).mean()
    conditioner.set_condition(actions_emb(seed=9), frame_ids=FRAME_IDS)  # next batch too early
    with pytest.raises(RuntimeError, match="replaced after the forward pass"):
        loss.backward()


def test_freeze_base_train_step_changes_only_the_module_and_embedder() -> None:
    model = make_llama().train()
    embedder = DiscreteActionEmbedder(COND, num_actions=4)
    conditioner = inject_action_conditioning(model, COND)
    params = freeze_base(model, embedder)
    assert {id(p) for p in params} == {id(p) for p in [*conditioner.parameters(), *embedder.parameters()]}
    assert all(not p.requires_grad for n, p in model.named_parameters() if not n.startswith("dws_action."))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    before_emb = {n: p.detach().clone() for n, p in embedder.named_parameters()}
    optimizer = torch.optim.SGD(params, lr=0.5)
    actions = torch.tensor([[0, 1], [2, 3]])
    target = torch.randn(2, TOKENS, 64, generator=torch.Generator().manual_seed(4))
    for _ in range(2):  # the zero-initialised output layer moves first, then gradients reach everything upstream
        optimizer.zero_grad()
        with conditioner.set_condition(embedder.embed_for_frames(actions), frame_ids=FRAME_IDS):
            loss = (run(model) - target).square().sum()  # a sum: the mean's updates fall below float32 resolution
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
        freeze_base(make_llama())


def test_safetensors_round_trip(tmp_path) -> None:
    model = make_llama(seed=0)
    perturb(inject_action_conditioning(model, COND))
    path = tmp_path / "model.safetensors"
    save_model(model, str(path))
    other = make_llama(seed=1)
    inject_action_conditioning(other, COND)
    missing, unexpected = load_model(other, str(path), strict=True)
    assert not missing and not unexpected
    with torch.no_grad():
        with model.dws_action.set_condition(actions_emb(), frame_ids=FRAME_IDS):
            expected = run(model)
        with other.dws_action.set_condition(actions_emb(), frame_ids=FRAME_IDS):
            assert torch.equal(run(other), expected)
    base = make_llama(seed=1)
    # the module's weights are part of the checkpoint: a model without the module has no place for them
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\) in state_dict: \"dws_action\."):
        load_model(base, str(path), strict=True)


@pytest.mark.parametrize("layout", ["frame_ids", "tokens_per_frame"])
def test_each_frame_is_modulated_only_by_its_own_action(layout: str) -> None:
    model = make_llama()
    conditioner = inject_action_conditioning(model, COND)
    perturb(conditioner)
    seen, handle = capture_norm_outputs(first_norm(model))
    if layout == "frame_ids":
        mapping, token_frames, inputs = {"frame_ids": FRAME_IDS}, FRAME_IDS, llama_inputs()
    else:  # frame-major tokens: frame i is the i-th run of 5 tokens
        token_frames = torch.arange(FRAMES).repeat_interleave(5)
        mapping, inputs = {"tokens_per_frame": 5}, llama_inputs(length=len(token_frames))
    emb = actions_emb()
    changed = emb.clone()
    changed[:, 1] += 1.0  # a different action embedding for frame 1 only
    outs = []
    with torch.no_grad():
        for e in (emb, changed):
            with conditioner.set_condition(e, **mapping):
                outs.append(run(model, inputs))
    handle.remove()
    differs = (seen[0] - seen[1]).abs().amax(dim=(0, 2)) > 0  # per token, block 0's pre-FFN activations
    assert torch.equal(differs, token_frames == 1)
    # Causal attention: logits before frame 1's first token cannot change.
    first = int((token_frames == 1).nonzero()[0])
    assert torch.equal(outs[0][:, :first], outs[1][:, :first])
    assert not torch.equal(outs[0][:, first:], outs[1][:, first:])


def test_global_mode_pools_the_trajectory() -> None:
    model = make_llama()
    conditioner = inject_action_conditioning(model, COND, mode="global")
    perturb(conditioner)
    seen, handle = capture_norm_outputs(first_norm(model))
    emb = actions_emb()
    with torch.no_grad():
        outs = []
        for e in (emb, emb.flip(1), emb + torch.tensor([0.0, 3.0, 0.0])[None, :, None]):
            with conditioner.set_condition(e):  # no token mapping needed
                outs.append(run(model))
    handle.remove()
    assert torch.allclose(outs[0], outs[1], atol=1e-6)  # the order of actions is lost, like a static prompt
    differs = (seen[0] - seen[2]).abs().amax(dim=(0, 2)) > 0
    assert bool(differs.all())  # changing one frame's action moves every token


def test_bad_conditions_raise_clear_errors() -> None:
    model = make_llama()
    conditioner = inject_action_conditioning(model, COND)
    with pytest.raises(ValueError, match="cond_dim"):
        conditioner.set_condition(torch.randn(2, FRAMES, COND + 1), frame_ids=FRAME_IDS)
    with pytest.raises(ValueError, match="exactly one"):
        conditioner.set_condition(actions_emb())
    with pytest.raises(ValueError, match=r"\(B, F, cond_dim\)"):
        conditioner.set_condition(torch.randn(FRAMES, COND), frame_ids=FRAME_IDS)
    with pytest.raises(ValueError, match=r"\[-1, 3\)"):
        conditioner.set_condition(actions_emb(), frame_ids=torch.tensor([0, 3]))
    with torch.no_grad():
        with conditioner.set_condition(actions_emb(), tokens_per_frame=4):
            with pytest.raises(ValueError, match=f"{TOKENS} tokens"):
                run(model)
        with conditioner.set_condition(actions_emb(batch=3), frame_ids=FRAME_IDS):
            with pytest.raises(ValueError, match="batch 3"):
                run(model)
        with conditioner.set_condition(actions_emb(), frame_ids=torch.zeros(10, dtype=torch.long)):
            with pytest.raises(ValueError, match="covers 10 tokens"):
                run(model)
        with pytest.raises(RuntimeError, match="no condition is set"):
            run(model)
        with conditioner.disabled():
            base = run(model)
        # a batch-1 condition broadcasts over the batch
        with conditioner.set_condition(actions_emb(batch=1), frame_ids=FRAME_IDS):
            assert torch.equal(run(model), base)
    with pytest.raises(ValueError, match="already has"):
        inject_action_conditioning(model, COND)


def test_remove_restores_the_base_model_and_deepcopy_rebinds_hooks() -> None:
    model = make_llama()
    with torch.no_grad():
        base = run(model)
    conditioner = inject_action_conditioning(model, COND)
    perturb(conditioner)
    ema = copy.deepcopy(model)  # e.g. an EMA copy: its hooks must drive its own module
    with torch.no_grad():
        with ema.dws_action.set_condition(actions_emb(), frame_ids=FRAME_IDS):
            conditioned = run(ema)
        for p in ema.dws_action.parameters():
            p.zero_()
        with ema.dws_action.set_condition(actions_emb(), frame_ids=FRAME_IDS):
            assert torch.equal(run(ema), base)  # zeroed copy = base model
        with conditioner.set_condition(actions_emb(), frame_ids=FRAME_IDS):
            assert torch.equal(run(model), conditioned)  # the original is untouched
        conditioner.remove()
        assert torch.equal(run(model), base)  # no hooks, no condition needed
    assert all(len(norm._forward_hooks) == 0 for _, norm in find_prefn_norms(model)[1])
    del model.dws_action
    assert get_action_conditioner(model) is None
    inject_action_conditioning(model, COND)  # a removed model can be conditioned again


def test_conditioner_follows_dtype_moves() -> None:
    model = make_llama()
    conditioner = inject_action_conditioning(model, COND, hidden_dim=5)
    assert isinstance(conditioner, ActionConditioner) and isinstance(conditioner, BlockActionModulation)
    assert conditioner.modulations[0].linear1.out_features == 5
    model.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in conditioner.parameters())
    with torch.no_grad(), conditioner.set_condition(actions_emb(), frame_ids=FRAME_IDS):
        assert run(model).dtype == torch.float64
