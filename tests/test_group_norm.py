"""dws_gym.models.group_norm: the compiled-CPU form computes torch's group norm; eager it is torch's, bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dws_gym.models.group_norm import GroupNorm


def _norm(groups: int, channels: int, affine: bool = True) -> GroupNorm:
    norm = GroupNorm(groups, channels, eps=1e-5, affine=affine)
    if affine:
        with torch.no_grad():
            norm.weight.copy_(torch.randn(channels, generator=torch.Generator().manual_seed(1)))
            norm.bias.copy_(torch.randn(channels, generator=torch.Generator().manual_seed(2)))
    return norm


def _input(shape: tuple[int, ...], channels_last: bool, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    # An offset and a scale per channel, as activations have: E[x^2] - E[x]^2 must survive a mean far from 0.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g) * torch.rand(shape[1], 1, 1, generator=g) * 3 + torch.randn(
        shape[1], 1, 1, generator=g) * 4
    x = x.to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def test_it_is_a_group_norm_with_the_same_state_dict() -> None:
    plain = nn.GroupNorm(4, 16)
    ours = GroupNorm.from_module(plain)
    assert isinstance(ours, nn.GroupNorm)
    assert ours.weight is plain.weight and ours.bias is plain.bias
    assert ours.state_dict().keys() == plain.state_dict().keys()
    assert (ours.num_groups, ours.num_channels, ours.eps) == (4, 16, plain.eps)


@pytest.mark.parametrize("channels_last", [False, True])
def test_eager_is_torch_group_norm_exactly(channels_last: bool) -> None:
    norm = _norm(8, 32)
    x = _input((3, 32, 8, 8), channels_last)
    assert torch.equal(norm(x), F.group_norm(x, 8, norm.weight, norm.bias, 1e-5))


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-4), (torch.bfloat16, 0.07)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_compiled_on_cpu_matches_torch_group_norm(dtype: torch.dtype, atol: float, channels_last: bool) -> None:
    torch._dynamo.reset()
    norm = _norm(8, 32).to(dtype)
    x = _input((4, 32, 16, 16), channels_last, dtype)
    with torch.no_grad():
        want = F.group_norm(x.float(), 8, norm.weight.float(), norm.bias.float(), 1e-5)
        got = torch.compile(norm, dynamic=False)(x)
    assert got.dtype == dtype and got.shape == x.shape
    assert torch.isfinite(got).all()
    # bf16: the output's own rounding (values up to ~6, bf16 spacing 1/32 there) dominates.
    assert (got.float() - want).abs().max().item() < atol


def test_compiled_without_affine_parameters() -> None:
    torch._dynamo.reset()
    norm = _norm(4, 8, affine=False)
    x = _input((2, 8, 4, 4), True)
    with torch.no_grad():
        got = torch.compile(norm, dynamic=False)(x)
    torch.testing.assert_close(got, F.group_norm(x, 4, None, None, 1e-5), atol=1e-4, rtol=1e-4)
