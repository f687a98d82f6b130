"""Tests of the rectified-flow world model (dws_gym.models.flow): parametrisation, causality, KV cache, sampling,
training, checkpointing, save / load, and the pre-trained Wan path on a tiny locally built Wan folder."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tiny_sim import make_tiny_wan_folder

from dws_gym.models.flow import (
    FLOW_CONFIG_NAME,
    FLOW_WEIGHTS_NAME,
    FlowConfig,
    FlowWorldModel,
)

SIZE = 16  # tiny frames keep every test well under a second or two


def tiny_config(**overrides) -> FlowConfig:
    kwargs = dict(
        frame_size=SIZE,
        patch_size=2,
        num_heads=2,
        head_dim=16,
        num_layers=2,
        ffn_dim=64,
        freq_dim=16,
        text_dim=16,
        num_prompt_tokens=2,
        num_actions=4,
        cond_dim=16,
        context_frames=2,
        sampling_steps=3,
    )
    kwargs.update(overrides)
    return FlowConfig(**kwargs)


def tiny_model(seed: int = 0, **overrides) -> FlowWorldModel:
    torch.manual_seed(seed)
    return FlowWorldModel(tiny_config(**overrides)).eval()


@torch.no_grad()
def perturb(model: torch.nn.Module, scale: float = 0.2, seed: int = 1) -> None:
    """Move every weight (incl. the zero-initialised output head and DWS layers) off its initial value."""
    gen = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.add_(torch.randn(param.shape, generator=gen) * scale)


def random_frames(batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, frames, SIZE, SIZE, 3), generator=gen, dtype=torch.uint8)


def moving_square_clips(batch: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A white square on black moving right (action 1) or left (action 2) by 2 px per step."""
    clips = torch.zeros(batch, frames, SIZE, SIZE, 3, dtype=torch.uint8)
    actions = torch.zeros(batch, frames - 1, dtype=torch.long)
    for b in range(batch):
        direction = 1 if b % 2 == 0 else -1
        x = 6
        for f in range(frames):
            clips[b, f, 6:10, x : x + 4] = 255
            if f < frames - 1:
                actions[b, f] = 1 if direction > 0 else 2
                x += 2 * direction
    return clips, actions


# ------------------------------------------------------------------------------------------------------ config
def test_config_json_round_trip(tmp_path):
    cfg = tiny_config(context_noise=0.1, t_sampling="logit_normal")
    path = tmp_path / "cfg.json"
    cfg.to_json(path)
    assert FlowConfig.from_json(path) == cfg
    assert json.loads(path.read_text())["patch_size"] == 2


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(patch_size=4, num_heads=2, head_dim=16), "must fit through the width"),
        (dict(patch_size=3), "must divide frame_size"),
        (dict(parametrization="eps"), "parametrization"),
        (dict(num_actions=None), "num_actions"),
        (dict(context_noise=1.5), "context_noise"),
        (dict(keep_below=-0.1), "keep_below"),
    ],
)
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_default_config_is_small_and_fits_the_patch():
    model = FlowWorldModel(FlowConfig())
    cfg = model.config
    assert cfg.patch_size**2 * cfg.channels <= cfg.width  # each token can emit its whole patch
    assert model.num_parameters() * 4 < 12e6  # < 12 MB of fp32 weights keeps a shipped simulator under 20 MB


# ------------------------------------------------------------------------------------------------------ copy
def test_fresh_model_copies_the_last_frame_exactly():
    model = tiny_model()
    frames = random_frames(3, 2)
    actions = torch.tensor([[0], [1], [3]])
    for use_cache in (True, False):
        gen = torch.Generator().manual_seed(0)
        out = model.sample_next(frames, actions, torch.tensor([2, 0, 1]), steps=3, generator=gen, use_cache=use_cache)
        assert out.dtype == torch.uint8 and out.shape == (3, SIZE, SIZE, 3)
        assert torch.equal(out, frames[:, -1])
    # Float frames in [0, 1] are accepted too.
    out = model.sample_next(frames.float() / 255.0, actions, torch.tensor([2, 0, 1]), steps=2)
    assert torch.equal(out, frames[:, -1])
    # The whole-clip prediction is the previous frame, exactly.
    x0 = model.encode_frames(frames)
    x_hat = model(torch.randn_like(x0), torch.rand(3, 2), actions, x0)
    assert torch.equal(x_hat[:, :, 1], x0[:, :, 0]) and torch.equal(x_hat[:, :, 0], x0[:, :, 0])


# ------------------------------------------------------------------------------------------------------ causality
@torch.no_grad()
def test_changing_frame_j_changes_frames_from_j_on_only():
    model = tiny_model()
    perturb(model)
    frames, j = 4, 2
    gen = torch.Generator().manual_seed(3)
    x_t = torch.randn(2, 3, frames, SIZE, SIZE, generator=gen)
    source = torch.randn(2, 3, frames, SIZE, SIZE, generator=gen)
    t = torch.rand(2, frames, generator=gen)
    actions = torch.randint(0, 4, (2, frames - 1), generator=gen)
    base = model(x_t, t, actions, source)
    x_t2, source2 = x_t.clone(), source.clone()
    x_t2[:, :, j] += 0.5
    source2[:, :, j] -= 0.5
    changed = model(x_t2, t, actions, source2)
    assert torch.equal(changed[:, :, :j], base[:, :, :j])
    for f in range(j, frames):
        assert (changed[:, :, f] - base[:, :, f]).abs().max() > 1e-4, f
    # The noise level of frame j is an input of frame j too.
    t2 = t.clone()
    t2[:, j] = 1.0 - t2[:, j]
    assert torch.equal(model(x_t, t2, actions, source)[:, :, :j], base[:, :, :j])


@torch.no_grad()
def test_action_i_changes_frames_after_i_only():
    model = tiny_model()
    perturb(model)
    frames, i = 4, 1
    gen = torch.Generator().manual_seed(4)
    x_t = torch.randn(2, 3, frames, SIZE, SIZE, generator=gen)
    t = torch.rand(2, frames, generator=gen)
    actions = torch.zeros(2, frames - 1, dtype=torch.long)
    base = model(x_t, t, actions, x_t)
    actions2 = actions.clone()
    actions2[:, i] = 3
    changed = model(x_t, t, actions2, x_t)
    assert torch.equal(changed[:, :, : i + 1], base[:, :, : i + 1])
    for f in range(i + 1, frames):
        assert (changed[:, :, f] - base[:, :, f]).abs().max() > 1e-4, f


@torch.no_grad()
def test_fresh_dws_module_makes_actions_irrelevant():
    """With the DWS module still zero-initialised, actions change nothing (the exact-base invariant)."""
    model = tiny_model()
    perturb(model)
    for mod in model.conditioner.modulations:
        mod.linear2.weight.zero_()
        mod.linear2.bias.zero_()
    x_t = torch.randn(1, 3, 3, SIZE, SIZE)
    t = torch.rand(1, 3)
    a = model(x_t, t, torch.tensor([[0, 1]]), x_t)
    b = model(x_t, t, torch.tensor([[3, 2]]), x_t)
    assert torch.equal(a, b)


@torch.no_grad()
@pytest.mark.parametrize("action_mode", ["frame", "global"])
def test_fresh_dws_module_computes_the_base_model(action_mode):
    """A zero-initialised DWS module leaves every output bit-identical to the same weights without the module."""
    model = tiny_model(action_mode=action_mode)
    perturb(model)
    for mod in model.conditioner.modulations:
        mod.linear2.weight.zero_()
        mod.linear2.bias.zero_()
    base = tiny_model(action_mode="none")
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("transformer.dws_action.")}
    base.load_state_dict(state, strict=True)
    assert len(base.conditioner.modulations) == 0
    x_t = torch.randn(2, 3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    t = torch.rand(2, 3, generator=torch.Generator().manual_seed(1))
    actions = torch.tensor([[0, 1], [3, 2]])
    assert torch.equal(model(x_t, t, actions, x_t), base(x_t, t, actions, x_t))
    frames = random_frames(2, 2, seed=2)
    a, b = (
        m.sample_next_state(frames, actions[:, :1], actions[:, 1], steps=2, generator=torch.Generator().manual_seed(3))
        for m in (model, base)
    )
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------------ sampling
@pytest.mark.parametrize("action_mode", ["frame", "global", "none"])
def test_kv_cache_equals_uncached_sampling(action_mode):
    model = tiny_model(action_mode=action_mode)
    perturb(model)
    frames = random_frames(2, 3, seed=5)
    ctx_actions = torch.tensor([[1, 2], [3, 0]])
    action = torch.tensor([2, 1])
    results = {}
    for use_cache in (True, False):
        gen = torch.Generator().manual_seed(7)
        results[use_cache] = model.sample_next_state(
            frames, ctx_actions, action, steps=3, generator=gen, use_cache=use_cache
        )
    torch.testing.assert_close(results[True], results[False], rtol=1e-4, atol=1e-4)
    assert results[True].abs().max() > 0.1  # a perturbed model generates something non-trivial
    # The caches are released after sampling.
    assert all(block.attn1.processor.cache is None for block in model.transformer.blocks)


def test_sampling_is_reproducible_and_seed_dependent():
    model = tiny_model()
    perturb(model)
    frames = random_frames(2, 2, seed=6)
    args = (frames, torch.tensor([[0], [1]]), torch.tensor([3, 2]))
    a = model.sample_next(*args, steps=2, generator=torch.Generator().manual_seed(11))
    b = model.sample_next(*args, steps=2, generator=torch.Generator().manual_seed(11))
    c = model.sample_next(*args, steps=2, generator=torch.Generator().manual_seed(12))
    assert a.dtype == torch.uint8 and a.shape == (2, SIZE, SIZE, 3)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@torch.no_grad()
def test_keep_below_keeps_small_changes_of_the_previous_frame():
    model = tiny_model()
    perturb(model, scale=0.05)
    frames = random_frames(2, 2, seed=7)
    args = (frames, torch.tensor([[0], [1]]), torch.tensor([3, 2]))
    free = model.sample_next(*args, steps=2, generator=torch.Generator().manual_seed(3))
    change = (free.int() - frames[:, -1].int()).abs().amax(dim=-1)  # (B, H, W), in 0..255
    threshold = float(change.float().median()) / 255.0
    model.config.keep_below = threshold
    kept = model.sample_next(*args, steps=2, generator=torch.Generator().manual_seed(3))
    # Pixels that changed by clearly less than the threshold are copied; clearly larger changes are untouched.
    small, large = change < threshold * 255 - 1, change > threshold * 255 + 1
    assert small.any() and large.any()
    assert torch.equal(kept[small], frames[:, -1][small])
    assert torch.equal(kept[large], free[large])


@torch.no_grad()
def test_continuous_actions_condition_the_next_frame():
    model = tiny_model(action_space="continuous", action_dim=2, num_actions=None)
    perturb(model)
    frames = random_frames(1, 2, seed=3)
    ctx = torch.zeros(1, 1, 2)
    a, b = (
        model.sample_next_state(frames, ctx, torch.tensor([act]), steps=2, generator=torch.Generator().manual_seed(0))
        for act in ([1.0, 0.0], [0.0, 1.0])
    )
    assert a.shape == (1, 3, SIZE, SIZE) and (a - b).abs().max() > 1e-4


def test_sampling_rejects_bad_inputs():
    model = tiny_model()
    frames = random_frames(2, 2)
    with pytest.raises(ValueError, match="actions must have shape"):
        model.sample_next(frames, torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, F, 16, 16, 3\)"):
        model.sample_next(frames[:, :, :8], torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="steps"):
        model.sample_next(frames, torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, dtype=torch.long), steps=0)


def test_sampling_schedule_runs_from_one_to_zero():
    model = tiny_model(sample_shift=3.0)
    schedule = model.sampling_schedule(4)
    assert schedule[0] == 1.0 and schedule[-1] == 0.0
    assert all(a > b for a, b in zip(schedule, schedule[1:]))


# ------------------------------------------------------------------------------------------------------ training
def test_loss_decreases_on_a_tiny_batch():
    torch.manual_seed(0)
    model = FlowWorldModel(tiny_config()).train()
    clips, actions = moving_square_clips(2, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        # The same noise every step: a pure overfitting check.
        loss, logs = model.training_loss(clips, actions, generator=torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(logs["loss"])
    assert losses[0] > 0 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.3 * losses[0], losses


def test_training_loss_logs_and_motion_weighting():
    model = tiny_model()
    clips, actions = moving_square_clips(2, 4)
    plain, logs = model.training_loss(clips, actions, motion_c=1.0, generator=torch.Generator().manual_seed(0))
    # A fresh residual model predicts the previous frame: its error is the copy baseline, and c = 1 is plain MSE.
    assert logs["mse"] == pytest.approx(logs["copy_mse"]) and plain.item() == pytest.approx(logs["mse"], rel=1e-6)
    weighted, _ = model.training_loss(clips, actions, motion_c=4.0, generator=torch.Generator().manual_seed(0))
    assert weighted.item() > plain.item()  # the square's pixels are the ones that change, and they carry the error
    assert 0.0 < logs["t_mean"] < 1.0


def test_masked_frames_do_not_reach_the_loss():
    model = tiny_model()
    perturb(model, 0.05)
    clips, actions = moving_square_clips(2, 4)
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[0, 3] = False  # past the end of episode 0
    a, _ = model.training_loss(clips, actions, mask, generator=torch.Generator().manual_seed(2))
    clips2 = clips.clone()
    clips2[0, 3] = 128
    b, _ = model.training_loss(clips2, actions, mask, generator=torch.Generator().manual_seed(2))
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    with pytest.raises(ValueError, match="context frame must be real"):
        model.training_loss(clips, actions, torch.zeros(2, 4, dtype=torch.bool))


def test_context_noise_and_v_parametrisation_train():
    model = tiny_model(context_noise=0.1, parametrization="v", t_sampling="logit_normal")
    clips, actions = moving_square_clips(2, 3)
    loss, logs = model.training_loss(clips, actions, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and model.transformer.proj_out.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("action_mode", ["frame", "global", "none"])
def test_gradient_checkpointing_gives_equal_gradients(action_mode):
    model = tiny_model(action_mode=action_mode)
    perturb(model, 0.05)
    checkpointed = copy.deepcopy(model)
    checkpointed.enable_gradient_checkpointing()
    clips, actions = moving_square_clips(2, 4)
    grads, ffn_calls = [], []
    for m in (model, checkpointed):
        m.train()
        calls: list[int] = []
        handle = m.transformer.blocks[0].ffn.register_forward_hook(lambda *_: calls.append(1))
        loss, _ = m.training_loss(clips, actions, generator=torch.Generator().manual_seed(9))
        loss.backward()
        handle.remove()
        ffn_calls.append(len(calls))
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert ffn_calls == [1, 2], "the checkpointed block was not recomputed in backward"
    assert grads[0].keys() == grads[1].keys()
    assert any(n.startswith("transformer.dws_action") for n in grads[0]) == (action_mode != "none")
    if action_mode != "none":  # the gradient reaches the action embedder through the explicit action inputs
        assert grads[1]["action_embedder.table.weight"].abs().sum() > 0
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6, msg=name)


def _reference_script():
    """``tests/data/make_flow_reference.py``, which computes the recorded outputs."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).with_name("data") / "make_flow_reference.py"
    spec = importlib.util.spec_from_file_location("make_flow_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_wan_matches_its_reference():
    """A tiny saved Wan world model (``tests/data/tiny_wan``, non-zero DWS module and output layer) loads strictly
    and reproduces the training loss, gradients, a whole-clip forward pass and few-step samples that the code of
    ``OLD_CODE_COMMIT`` (DWS modulation through forward hooks) computed on it
    (``tests/data/make_flow_reference.py``)."""
    from safetensors.torch import load_file

    script = _reference_script()
    reference = load_file(str(script.REFERENCE))
    model = FlowWorldModel.from_pretrained(script.TINY_MODEL)
    assert model.config == FlowConfig(**script.TINY_CONFIG)
    assert model.dtype == torch.float32 and model.config.kv_cache  # sampling takes the KV-cached path
    assert all(bool(p.abs().sum() > 0) for p in model.conditioner.parameters())
    outputs = script.compute_reference(model, *script.start_clips())
    assert outputs.keys() == reference.keys()
    for key, expected in reference.items():
        assert outputs[key].dtype == expected.dtype and outputs[key].shape == expected.shape, key
        torch.testing.assert_close(outputs[key].double(), expected.double(), rtol=1e-5, atol=1e-5, msg=key)


# ------------------------------------------------------------------------------------------------------ disk
def test_save_load_gives_identical_samples(tmp_path):
    torch.manual_seed(0)
    model = FlowWorldModel(tiny_config(action_text_dim=6, num_actions=3), action_text_embeddings=torch.randn(3, 6))
    perturb(model)
    folder = model.save_pretrained(tmp_path / "flow")
    assert (folder / FLOW_CONFIG_NAME).is_file() and (folder / FLOW_WEIGHTS_NAME).is_file()
    loaded = FlowWorldModel.from_pretrained(folder)
    assert loaded.config == model.config
    frames = random_frames(2, 2, seed=8)
    args = (frames, torch.tensor([[0], [2]]), torch.tensor([1, 2]))
    a = model.sample_next(*args, steps=2, generator=torch.Generator().manual_seed(1))
    b = loaded.sample_next(*args, steps=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_load_errors_name_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=FLOW_CONFIG_NAME):
        FlowWorldModel.from_pretrained(tmp_path)


def test_text_action_embeddings_are_required_when_configured():
    with pytest.raises(ValueError, match="action_text_embeddings"):
        FlowWorldModel(tiny_config(action_text_dim=6))
    model = FlowWorldModel(tiny_config(action_text_dim=6), action_text_embeddings=torch.randn(4, 6))
    assert model.action_embedder.mode == "text"


# ------------------------------------------------------------------------------------------------------ pre-trained
@pytest.fixture(scope="module")
def tiny_wan_folder(tmp_path_factory):
    """A Wan2.1-layout folder with a tiny transformer, VAE, UMT5 text encoder and a word-level tokenizer."""
    return make_tiny_wan_folder(tmp_path_factory.mktemp("tiny_wan"))


def _load_tiny_wan(folder, **kwargs) -> FlowWorldModel:
    defaults = dict(
        working_resolution=32,
        prompt="a game of breakout",
        action_texts=["the agent does nothing", "the agent moves the paddle left", "the agent moves right"],
        prompt_max_length=8,
        context_frames=2,
    )
    defaults.update(kwargs)
    return FlowWorldModel.from_pretrained_wan(folder, **defaults).eval()


@torch.no_grad()
def test_pretrained_wan_path_starts_as_the_base_model(tiny_wan_folder):
    from diffusers import WanTransformer3DModel

    model = _load_tiny_wan(tiny_wan_folder)
    cfg = model.config
    assert cfg.space == "latent" and cfg.parametrization == "v" and cfg.base_model == str(tiny_wan_folder)
    assert model.action_embedder.mode == "text" and model.action_embedder.num_actions == 3
    assert model.prompt_embeds.shape == (1, 8, 16)
    assert model.prompt_embeds[0, 4:].abs().sum() == 0  # zero-padded past the prompt's 4 real tokens, as Wan does
    base = WanTransformer3DModel.from_pretrained(tiny_wan_folder, subfolder="transformer").eval()
    x_t = torch.randn(2, 4, 1, 4, 4)
    t = torch.tensor([[0.3], [0.9]])
    x0_hat = model(x_t, t, torch.zeros(2, 0, dtype=torch.long), x_t)
    v_base = base(x_t, t[:, 0] * 1000, model.prompt_embeds.expand(2, -1, -1), return_dict=False)[0]
    torch.testing.assert_close(x0_hat, x_t - t[:, None, :, None, None] * v_base, rtol=1e-5, atol=1e-5)


def test_pretrained_wan_path_samples_trains_and_round_trips(tiny_wan_folder, tmp_path):
    model = _load_tiny_wan(tiny_wan_folder, prompt=None, prompt_embeds=torch.randn(1, 6, 16))
    frames = torch.randint(0, 256, (2, 3, 64, 64, 3), dtype=torch.uint8)
    actions = torch.tensor([[0, 1], [2, 2]])
    latents = model.encode_frames(frames)
    assert latents.shape == (2, 4, 3, 4, 4)
    step_args = (frames[:, :2], actions[:, :1], actions[:, 1])
    out = model.sample_next(*step_args, steps=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 64, 64, 3) and out.dtype == torch.uint8
    loss, _ = model.training_loss(frames, actions, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert model.conditioner.modulations[0].linear2.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.vae.parameters())  # the VAE stays frozen

    model.save_pretrained(tmp_path / "latent")
    loaded = FlowWorldModel.from_pretrained(tmp_path / "latent")
    again = loaded.sample_next(*step_args, steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_pretrained_base_must_cover_everything_but_the_new_module(tiny_wan_folder):
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    model = _load_tiny_wan(
        tiny_wan_folder, prompt=None, prompt_embeds=torch.zeros(1, 4, 16), action_texts=None, num_actions=3
    )
    base = WanTransformer3DModel.from_pretrained(tiny_wan_folder, subfolder="transformer").state_dict()
    vae = AutoencoderKLWan.from_pretrained(tiny_wan_folder, subfolder="vae").state_dict()
    model.load_base_weights(base, vae)  # the complete base loads
    del base["blocks.0.ffn.net.2.weight"]
    with pytest.raises(RuntimeError, match="blocks.0.ffn.net.2.weight"):
        model.load_base_weights(base, vae)


def test_missing_pretrained_folder_fails_fast(tmp_path):
    with pytest.raises(OSError, match="could not load a diffusers Wan2.1 model"):
        FlowWorldModel.from_pretrained_wan(tmp_path / "nope", prompt_embeds=torch.zeros(1, 4, 16), num_actions=3)
