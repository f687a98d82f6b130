"""Motion-reinforced loss weights (paper Eq. 2-3): exact endpoints, shape of the curve, loss equivalence, pooling."""

import math

import pytest
import torch
import torch.nn.functional as F

from dws_gym.models.motion import (
    DEFAULT_C,
    DEFAULT_DELTA,
    MotionLossConfig,
    frame_differences,
    motion_weighted_mse,
    motion_weights,
    pool_weights,
    weighted_mean,
)


def _clip(seed: int = 0, shape=(2, 4, 16, 16, 3)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)


def _moving_square_clip() -> torch.Tensor:
    """(1, 3, 16, 16, 3) uint8: a white 3x3 square moving right on black, plus a faint 10-level pixel."""
    frames = torch.zeros(1, 3, 16, 16, 3, dtype=torch.uint8)
    for j in range(3):
        frames[0, j, 5:8, 2 + 2 * j : 5 + 2 * j] = 255
    frames[0, 2, 0, 0] = 10
    return frames


def test_weights_are_one_where_nothing_changes_and_c_at_the_largest_change():
    frames = _moving_square_clip()
    w = motion_weights(frames, c=3.0, tau=0.1, delta=0.05)
    assert w.shape == (1, 3, 16, 16) and w.dtype == torch.float32
    assert torch.all(w[:, 0] == 1.0), "context frame must be exactly 1"
    d = frame_differences(frames)
    for j in (1, 2):
        static = d[0, j - 1] == 0
        assert static.any() and torch.all(w[0, j][static] == 1.0)
        peak = d[0, j - 1] == d[0, j - 1].max()
        assert torch.all(w[0, j][peak] == 3.0)
        assert w[0, j].max() == 3.0 and w[0, j].min() == 1.0
    # The faint pixel (change 10/255 against a peak of 1.0) stays close to 1.
    assert 1.0 < w[0, 2, 0, 0] < 3.0 ** 0.01


def test_argmax_pixel_gets_exactly_c_on_random_clips():
    frames = _clip(1)
    c = 2.5
    w = motion_weights(frames, c=c, num_context=1)
    d = frame_differences(frames)  # (B, F-1, H, W)
    for b in range(frames.shape[0]):
        for j in range(1, frames.shape[1]):
            idx = torch.argmax(d[b, j - 1])
            assert w[b, j].flatten()[idx].item() == c


def test_weights_are_monotone_and_continuous_in_the_change():
    # One frame pair whose pixel changes sweep 0..1 finely along a row; the frame's largest change is 1.
    values = torch.linspace(0.0, 1.0, 257)
    frames = torch.zeros(1, 2, 1, 257, 1)
    frames[0, 1, 0, :, 0] = values
    w = motion_weights(frames, c=4.0, tau=0.2, delta=0.05)[0, 1, 0]
    assert w[0].item() == 1.0 and w[-1].item() == 4.0
    assert torch.all(w[1:] >= w[:-1]), "weights must not decrease as the change grows"
    # Continuity: the slope is largest at the peak, c ln(c) / tau * e^(m/tau) / (e^(m/tau) - 1) with m = 1, so
    # neighbouring changes 1/256 apart differ by at most that times 1/256 (no jumps anywhere).
    max_slope = 4.0 * math.log(4.0) / 0.2 * math.exp(5.0) / math.expm1(5.0)
    assert (w[1:] - w[:-1]).abs().max().item() <= max_slope / 256 * (1 + 1e-4)
    # Strictly inside (1, c) away from the endpoints.
    assert torch.all((w[1:-1] > 1.0) & (w[1:-1] < 4.0))


def test_frames_with_changes_below_delta_get_small_weights():
    frames = torch.zeros(1, 2, 8, 8, 3)
    frames[0, 1, 2:4, 2:4] = 0.02  # the whole frame's largest change: 0.02 < delta
    c, delta = 4.0, 0.05
    w = motion_weights(frames, c=c, tau=0.2, delta=delta)[0, 1]
    # e <= d_max / delta, so every weight is at most c ** (d_max / delta) = 4 ** 0.4 ~ 1.74, well below c.
    bound = c ** (0.02 / delta)
    assert w.max().item() <= bound + 1e-6
    assert w.max().item() < c
    assert w.max().item() > 1.0
    # The same pattern with a big change elsewhere in the frame: the faint change is barely weighted.
    frames[0, 1, 6, 6] = 1.0
    w2 = motion_weights(frames, c=c, tau=0.2, delta=delta)[0, 1]
    assert w2[2, 2].item() < c ** 0.01 and w2[6, 6].item() == c


def test_small_tau_does_not_overflow():
    frames = _clip(2).float() / 255
    w = motion_weights(frames, c=4.0, tau=1e-4, delta=0.05)
    assert torch.isfinite(w).all() and w.min() >= 1.0 and w.max() == 4.0


def test_c_equal_one_reproduces_the_plain_loss_bitwise():
    frames = _clip(3)
    w = motion_weights(frames, c=1.0)
    assert torch.all(w == 1.0)
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 4, 3, 16, 16, generator=g, requires_grad=True)
    target = torch.randn(2, 4, 3, 16, 16, generator=g)
    loss = motion_weighted_mse(pred, target, w)
    assert torch.equal(loss, F.mse_loss(pred, target))
    mask = torch.tensor([True, False]).view(2, 1, 1, 1, 1)
    masked_plain = weighted_mean((pred - target) ** 2, None, mask)
    assert torch.equal(motion_weighted_mse(pred, target, w, mask), masked_plain)
    assert torch.allclose(masked_plain, F.mse_loss(pred[0], target[0]))


def test_weights_carry_no_gradient_and_scale_the_loss():
    frames = (_clip(4).float() / 255).requires_grad_(True)
    w = motion_weights(frames, c=4.0)
    assert not w.requires_grad and w.grad_fn is None
    pred = torch.zeros(2, 4, 16, 16, 3, requires_grad=True)
    target = torch.ones(2, 4, 16, 16, 3)
    loss = motion_weighted_mse(pred, target, w, channels_last=True)
    loss.backward()
    # d/dpred mean(w (pred - t)^2) = 2 w (pred - t) / n: the gradient follows the weights pixel by pixel.
    n = pred.numel()
    expected = (2.0 * w.unsqueeze(-1) * (0.0 - 1.0) / n).expand_as(pred)
    assert torch.allclose(pred.grad, expected)
    assert frames.grad is None
    assert math.isclose(loss.item(), w.mean().item(), rel_tol=1e-6)


def test_rejects_weights_with_gradient_and_bad_shapes():
    loss = torch.ones(2, 3)
    with pytest.raises(ValueError, match="gradient"):
        weighted_mean(loss, torch.ones(2, 3, requires_grad=True))
    with pytest.raises(ValueError, match="broadcast"):
        weighted_mean(loss, torch.ones(4))
    with pytest.raises(ValueError, match=r"\(B, F, H, W\)"):
        motion_weighted_mse(torch.zeros(1, 2, 3, 8, 8), torch.zeros(1, 2, 3, 8, 8), torch.ones(1, 2, 4, 4))


def test_pool_weights_shape_and_values():
    w = torch.ones(2, 3, 64, 64)
    w[0, 1, 10, 20] = 3.0  # patch (1, 2) of an 8x8 grid of 8x8 patches
    w[1, 2, 63, 0] = 2.0  # patch (7, 0)
    pooled = pool_weights(w, 8)
    assert pooled.shape == (2, 3, 8, 8)
    assert pooled[0, 1, 1, 2] == 3.0 and pooled[1, 2, 7, 0] == 2.0
    assert pooled.sum().item() == 2 * 3 * 64 - 2 + 3.0 + 2.0
    assert torch.equal(pooled, F.max_pool2d(w, 8))
    # Non-dividing grids (e.g. a latent grid) also work.
    assert pool_weights(w, (5, 7)).shape == (2, 3, 5, 7)
    tokens = pooled.flatten(2)
    assert tokens[0, 1, 1 * 8 + 2] == 3.0
    with pytest.raises(ValueError, match=r"pool size \(65, 65\) must be between 1 and the weight grid \(64, 64\)"):
        pool_weights(w, 65)


def test_uint8_and_float_inputs_agree_and_layouts_agree():
    frames = _clip(5)
    w_u8 = motion_weights(frames)
    w_f = motion_weights(frames.float() / 255)
    w_signed = motion_weights(frames.float() / 127.5 - 1, value_range=(-1.0, 1.0))
    w_cf = motion_weights(frames.permute(0, 1, 4, 2, 3), channels_last=False)
    assert torch.allclose(w_u8, w_f, atol=1e-5)
    assert torch.allclose(w_u8, w_signed, atol=1e-5)
    assert torch.equal(w_u8, w_cf)


def test_context_frames_get_weight_one():
    frames = _clip(6, shape=(1, 5, 8, 8, 3))
    w = motion_weights(frames, num_context=3)
    assert torch.all(w[:, :3] == 1.0)
    assert torch.all(w[:, 3:].amax(dim=(-2, -1)) == DEFAULT_C)
    # Target frames are weighted exactly as with one context frame.
    assert torch.equal(w[:, 3:], motion_weights(frames, num_context=1)[:, 3:])


def test_config_and_input_validation():
    cfg = MotionLossConfig()
    assert (cfg.c, cfg.delta) == (DEFAULT_C, DEFAULT_DELTA) and cfg.enabled
    assert not MotionLossConfig(c=1.0).enabled
    assert torch.equal(cfg.weights(_clip(7)), motion_weights(_clip(7)))
    names = {"c": "weight strength c", "tau": "temperature tau", "delta": "floor delta"}
    for bad in ({"c": 0.0}, {"c": -1.0}, {"c": float("nan")}, {"tau": 0.0}, {"tau": float("nan")}, {"delta": 0.0}):
        (key, value), = bad.items()
        message = rf"motion {names[key]} must be a finite number > 0 .*got {value}"
        with pytest.raises(ValueError, match=message):
            MotionLossConfig(**bad)
        with pytest.raises(ValueError, match=message):
            motion_weights(_clip(7), **bad)
    nan_frames = torch.zeros(1, 2, 4, 4, 3)
    nan_frames[0, 1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        motion_weights(nan_frames)
    with pytest.raises(ValueError, match="5-D"):
        motion_weights(torch.zeros(2, 4, 4, 3))
    with pytest.raises(ValueError, match="num_context"):
        motion_weights(_clip(7), num_context=0)
    with pytest.raises(ValueError, match="uint8 or floating"):
        motion_weights(torch.zeros(1, 2, 4, 4, 3, dtype=torch.int32))
