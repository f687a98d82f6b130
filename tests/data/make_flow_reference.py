"""A tiny saved Wan world model and reference outputs of it, for the regression test in ``tests/test_flow.py``.

``tiny_wan/`` is a small pixel-space :class:`~dws_gym.models.flow.FlowWorldModel` (2 blocks of width 64, 4x4 patches
of 32x32 frames, 4 context frames, discrete actions, ``action_mode="frame"``) whose weights were seeded and then all
moved by ``0.05 * randn``, so the DWS module and the zero-initialised output layer are non-zero and actions matter.
``compute_reference`` runs on it the training loss (with gradients), a whole-clip forward pass with per-frame noise
levels and few-step sampling (KV-cached, the config's default) on fixed, seeded inputs;
``tests/test_flow.py::test_tiny_wan_matches_its_reference`` recomputes the same with the current code and compares.

The recorded outputs (``tiny_wan_flow_reference.safetensors``) were computed, and ``tiny_wan/`` written, by the code
of commit ``4cafe71c09ea48dbf4a06583b7606a92034e8410`` (``OLD_CODE_COMMIT``), the last one whose Wan backbone applied
the DWS modulation through forward hooks; the test checks that the backbone of ``dws_gym.models.causal_wan``, which
takes the modulation as an argument, still computes what that code did. Regenerate only when a numerical change is
intended, from a checkout of that commit (the script refuses to run on code that has ``causal_wan``)::

    git worktree add /tmp/oldcode 4cafe71c09ea48dbf4a06583b7606a92034e8410
    cd /tmp && OMP_NUM_THREADS=1 PYTHONPATH=/tmp/oldcode python /path/to/repo/tests/data/make_flow_reference.py --build
    git worktree remove /tmp/oldcode --force

(``--build`` also rewrites ``tiny_wan/``; without it the saved model is reused. Run from outside the repository so
that ``PYTHONPATH`` rather than the working directory decides which ``dws_gym`` is imported.)
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
from pathlib import Path

import torch

OLD_CODE_COMMIT = "4cafe71c09ea48dbf4a06583b7606a92034e8410"
TINY_MODEL = Path(__file__).with_name("tiny_wan")
REFERENCE = Path(__file__).with_name("tiny_wan_flow_reference.safetensors")

#: The tiny model's FlowConfig (besides these, the defaults of the old commit, which the current code shares).
TINY_CONFIG = dict(
    frame_size=32,
    patch_size=4,
    num_heads=2,
    head_dim=32,
    num_layers=2,
    ffn_dim=128,
    freq_dim=16,
    text_dim=16,
    num_prompt_tokens=2,
    num_actions=4,
    cond_dim=16,
    context_frames=4,
    action_mode="frame",
    context_noise=0.1,
    keep_below=0.05,
    motion_c=4.0,
    sampling_steps=1,
)


def build_tiny_model() -> torch.nn.Module:
    """The tiny model: seeded initial weights, then every parameter moved by ``0.05 * randn`` (own generator)."""
    from dws_gym.models.flow import FlowConfig, FlowWorldModel

    torch.manual_seed(0)
    model = FlowWorldModel(FlowConfig(**TINY_CONFIG))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.05)
    return model


def start_clips(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded, game-like start clips: a coarse random background with a white 4x4 square moving 3 px per frame.

    Returns ``(batch, 4, 32, 32, 3)`` uint8 frames and the ``(batch, 3)`` actions between them.
    """
    gen = torch.Generator().manual_seed(2)
    size, k = TINY_CONFIG["frame_size"], TINY_CONFIG["context_frames"]
    coarse = torch.randint(0, 128, (batch, 3, 8, 8), generator=gen, dtype=torch.uint8)
    background = coarse.repeat_interleave(size // 8, dim=2).repeat_interleave(size // 8, dim=3).permute(0, 2, 3, 1)
    frames = background[:, None].repeat(1, k, 1, 1, 1)
    rows = torch.randint(4, size - 8, (batch,), generator=gen)
    for b in range(batch):
        for f in range(k):
            col = 4 + 3 * f if b % 2 == 0 else 24 - 3 * f  # right in even clips, left in odd ones
            frames[b, f, rows[b] : rows[b] + 4, col : col + 4] = 255
    actions = torch.randint(0, TINY_CONFIG["num_actions"], (batch, k - 1), generator=gen)
    return frames, actions


def compute_reference(model: torch.nn.Module, start_frames: torch.Tensor, start_actions: torch.Tensor) -> dict:
    """Outputs of ``model`` (a ``FlowWorldModel`` in fp32 on the CPU) on fixed inputs, as a dict of tensors.

    Large outputs are cropped to keep the file small: any change of the network's numerics shows everywhere.
    """
    gen = torch.Generator().manual_seed(0)
    k, size, n_actions = model.config.context_frames, model.config.frame_size, model.config.num_actions
    out: dict[str, torch.Tensor] = {}

    # (a) Training loss on a random clip batch, and its gradients (summed per parameter tensor).
    frames = torch.randint(0, 256, (2, k + 2, size, size, 3), generator=gen, dtype=torch.uint8)
    actions = torch.randint(0, n_actions, (2, k + 1), generator=gen)
    mask = torch.ones(2, k + 2, dtype=torch.bool)
    mask[1, -1] = False  # past the end of episode 1
    model.zero_grad(set_to_none=True)
    loss, logs = model.training_loss(frames, actions, mask, generator=torch.Generator().manual_seed(1))
    loss.backward()
    out["loss"] = loss.detach().reshape(1)
    out["logs"] = torch.tensor([logs[name] for name in ("mse", "copy_mse", "t_mean")], dtype=torch.float64)
    named = sorted((n, p) for n, p in model.named_parameters() if p.grad is not None)
    out["grad_abs_sums"] = torch.stack([p.grad.abs().sum() for _, p in named])
    model.zero_grad(set_to_none=True)

    with torch.no_grad():
        # A whole-clip forward pass with per-frame noise levels (frame-causal attention, per-token timesteps).
        x0 = model.encode_frames(frames[:, : k + 1])
        t = torch.rand(2, k + 1, generator=gen)
        t[:, 0] = 0.0
        noise = torch.randn(x0.shape, generator=gen)
        x_t = (1 - t[:, None, :, None, None]) * x0 + t[:, None, :, None, None] * noise
        x0_hat = model(x_t, t, actions[:, :k], x0)
        out["forward_crop"] = x0_hat[..., 8:24, 8:24].contiguous()

        # (b) Sampling: two start clips and one random clip, one and two Euler steps.
        context = torch.cat([start_frames[:2], frames[:1, :k]])
        context_actions = torch.cat([start_actions[:2], actions[:1, : k - 1]])
        action = torch.tensor([1, 2, 3]) % n_actions
        for steps in (1, 2):
            out[f"sample_next_{steps}"] = model.sample_next(
                context, context_actions, action, steps=steps, generator=torch.Generator().manual_seed(5)
            )
        state = model.sample_next_state(
            context, context_actions, action, steps=2, generator=torch.Generator().manual_seed(5)
        )
        out["sample_next_state_2_crop"] = state[..., 8:24, 8:24].contiguous()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", action="store_true", help="rebuild and save tiny_wan/ first")
    args = parser.parse_args()

    import dws_gym
    from safetensors.torch import save_file

    from dws_gym.models.flow import FlowWorldModel

    if importlib.util.find_spec("dws_gym.models.causal_wan") is not None:
        raise SystemExit(
            f"dws_gym at {Path(dws_gym.__file__).parent} is the current code; the reference records what the code "
            f"of commit {OLD_CODE_COMMIT} computed (see this script's docstring)"
        )
    torch.set_num_threads(1)
    if args.build:
        shutil.rmtree(TINY_MODEL, ignore_errors=True)
        build_tiny_model().save_pretrained(TINY_MODEL)
    model = FlowWorldModel.from_pretrained(TINY_MODEL)
    save_file(compute_reference(model, *start_clips()), str(REFERENCE))
    size = sum(p.stat().st_size for p in TINY_MODEL.iterdir())
    print(f"wrote {REFERENCE} ({REFERENCE.stat().st_size / 1024:.0f} KiB); {TINY_MODEL} is {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
