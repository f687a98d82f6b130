"""A tiny real simulator for tests: 1-layer pixel-space flow world model + small reward head, 64x64 Breakout frames."""

from __future__ import annotations

import numpy as np
import torch

from dws_gym.data.store import TrajectoryStore
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


def make_tiny_wan_folder(root):
    """Write a Wan2.1-layout folder under ``root`` (tiny transformer, VAE, UMT5 text encoder, word-level tokenizer)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2,
    ).save_pretrained(root / "transformer")  # fmt: skip
    AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
        latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 2.0, 0.5, 1.0],
    ).save_pretrained(root / "vae")  # fmt: skip
    UMT5EncoderModel(UMT5Config(vocab_size=32, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)).save_pretrained(
        root / "text_encoder"
    )
    words = "the a game of breakout agent moves paddle left right does nothing".split()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", eos_token="</s>"
    ).save_pretrained(root / "tokenizer")
    return root


def make_breakout_store(path, rewarded_steps=(5, 12), episodes: int = 4, steps: int = 20, value: float = 1.0):
    """A real store of ``episodes`` random-frame Breakout episodes (64x64) that pay ``value`` at ``rewarded_steps``
    and end in a game over; with the default split the last episode is held out."""
    store = TrajectoryStore(path, create=True)
    rng = np.random.default_rng(0)
    for _ in range(episodes):
        rewards = np.zeros(steps, np.float32)
        rewards[list(rewarded_steps)] = value
        store.add_episode(rng.integers(0, 256, (steps + 1, 64, 64, 3), dtype=np.uint8), rng.integers(0, 4, steps),
                          rewards, np.eye(steps, dtype=bool)[-1], np.zeros(steps, bool), env_id="ALE/Breakout-v5",
                          action_meanings=BREAKOUT)
    return store
