"""Structured pruning of the pixel U-Net world model (dws_gym.models.unet_prune)."""

from __future__ import annotations

import pytest
import torch

from dws_gym.models.unet import UNetConfig, UNetWorldModel
from dws_gym.models.unet_prune import prune_unet_state

K = 3


def trained_like(seed: int = 0) -> UNetWorldModel:
    """A tiny U-Net whose zero-initialised layers (DWS second layers, output conv) hold random weights, as a trained
    model's do, so every channel reaches the output."""
    torch.manual_seed(seed)
    model = UNetWorldModel(UNetConfig(widths=(16, 16, 24), groups=4, cond_dim=8, cond_hidden_dim=16,
                                      context_frames=K))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "time_emb_proj" in name or name.startswith("out."):
                p.normal_(0.0, 0.1)
    return model.eval()


def inputs(seed: int = 1, b: int = 2) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    context = torch.rand(b, K, 3, 64, 64, generator=g) * 2 - 1
    actions = torch.randint(0, 4, (b, K), generator=g)
    return context, actions, torch.randn(b, 3, 64, 64, generator=g), torch.rand(b, generator=g)


def test_pruning_to_the_same_widths_reproduces_the_model_exactly():
    model = trained_like()
    state, config = prune_unet_state(model.state_dict(), model.config, model.config.widths)
    same = UNetWorldModel(config)
    same.load_state_dict(state, strict=True)
    x = inputs()
    with torch.no_grad():
        assert torch.equal(same.eval().predict_x0(*x), model.predict_x0(*x))


def test_a_pruned_model_loads_at_the_narrower_widths_and_keeps_the_important_channels_per_group():
    model = trained_like()
    state = model.state_dict()
    # Level-0 stream channel 1 (group 0) is written with zero weights: it carries nothing and must be dropped; channel
    # 5 (group 1) is written and read much larger than the rest: it must be kept.
    with torch.no_grad():
        for name in ("stem.weight", "down0.block.conv2.weight"):
            state[name][1] = 0.0
            state[name][5] *= 10.0
    pruned, config = prune_unet_state(state, model.config, (8, 12, 24))
    assert tuple(config.widths) == (8, 12, 24) and config.groups == model.config.groups
    student = UNetWorldModel(config)
    student.load_state_dict(pruned, strict=True)
    kept = [next(i for i in range(16) if torch.equal(state["stem.weight"][i], row))
            for row in pruned["stem.weight"]]
    assert 1 not in kept and 5 in kept
    assert [sum(c // 4 == g for c in kept) for g in range(4)] == [2, 2, 2, 2]  # 2 of 4 in every group-norm group
    assert kept == sorted(kept)
    # The DWS scale and shift rows of a block's hidden channels are sliced together: the same channels in both.
    proj, old = pruned["down0.block.time_emb_proj.weight"], state["down0.block.time_emb_proj.weight"]
    assert proj.shape[0] == 16
    scale_rows = [next(i for i in range(16) if torch.equal(old[i], row)) for row in proj[:8]]
    shift_rows = [next(i for i in range(16, 32) if torch.equal(old[i], row)) - 16 for row in proj[8:]]
    assert scale_rows == shift_rows
    with torch.no_grad():
        out = student.eval().predict_x0(*inputs())
    assert out.shape == (2, 3, 64, 64) and torch.isfinite(out).all()
    # Fewer channels, the same function family: the output moves, but stays near the full model's.
    with torch.no_grad():
        full = model.predict_x0(*inputs())
        gap = (out - full).pow(2).mean()
        fresh = UNetWorldModel(config).eval().predict_x0(*inputs())
    assert gap < (fresh - full).pow(2).mean()


def test_pruning_refuses_to_widen_or_to_break_the_group_norms():
    model = trained_like()
    with pytest.raises(ValueError, match="keeps or narrows every width"):
        prune_unet_state(model.state_dict(), model.config, (16, 16, 32))
    with pytest.raises(ValueError, match="widths"):
        prune_unet_state(model.state_dict(), model.config, (6, 16, 24))  # 6 is not a multiple of 4 groups
    with pytest.raises(ValueError, match="not the weights of a pixel U-Net"):
        prune_unet_state({"stem.weight": torch.zeros(1)}, model.config, (8, 16, 24))
