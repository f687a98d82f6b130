"""A tiny real simulator for tests: 1-layer pixel-space flow world model + small reward head, 64x64 Breakout frames."""

from __future__ import annotations

import numpy as np
import torch

from dws_gym.models.flow import FlowConfig, FlowWorldModel
from dws_gym.models.reward import RewardConfig, RewardHead
from dws_gym.simulator import Simulator, SimulatorConfig

BREAKOUT = ["NOOP", "FIRE", "RIGHT", "LEFT"]


def make_tiny_sim(
    seed: int = 0,
    *,
    context: int = 3,
    perturb: bool = True,
    sampling_steps: int = 1,
    num_starts: int = 4,
    env_id: str = "ALE/Breakout-v5",
    term_logit: float | None = None,
) -> Simulator:
    """A simulator small enough to step in milliseconds on a CPU.

    ``perturb`` pushes every weight a little so frames depend on the noise and the action (a fresh model copies the
    last frame exactly). ``term_logit`` fixes the termination probability to ``sigmoid(term_logit)``.
    """
    torch.manual_seed(seed)
    cfg = FlowConfig(context_frames=context, patch_size=4, num_heads=2, head_dim=48, num_layers=1, ffn_dim=64,
                     freq_dim=16, text_dim=16, num_actions=len(BREAKOUT), cond_dim=16, sampling_steps=sampling_steps)
    model = FlowWorldModel(cfg)
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    head = RewardHead(RewardConfig(context_frames=context, num_actions=len(BREAKOUT), dim=16, depth=1, num_heads=2))
    if term_logit is not None:
        with torch.no_grad():
            head.termination_out.weight.zero_()
            head.termination_out.bias.fill_(term_logit)
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(num_starts, context, 64, 64, 3), dtype=np.uint8)
    actions = rng.integers(0, len(BREAKOUT), size=(num_starts, context - 1))
    config = SimulatorConfig(env_id=env_id, action_meanings=BREAKOUT, context_frames=context,
                             sampling_steps=sampling_steps)
    return Simulator(config, model, head, frames, actions)
