"""The pixel U-Net world model: DWS module at every block, residual start, save / load, the Simulator contract."""

import json

import numpy as np
import pytest
import torch

from dws_gym.models.motion import changed_pixels, changed_share_mean
from dws_gym.models.reward import RewardConfig, RewardHead
from dws_gym.models.unet import UNET_CONFIG_NAME, UNetConfig, UNetWorldModel, unet_flops_per_frame
from dws_gym.simulator import Simulator, SimulatorConfig

TINY = dict(widths=(8, 16, 16), groups=4, cond_dim=8, cond_hidden_dim=16, context_frames=3)


def tiny(seed=0, perturb=False, **kw):
    torch.manual_seed(seed)
    model = UNetWorldModel(UNetConfig(**{**TINY, **kw}))
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return model


def clip(b=2, f=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (b, f, 64, 64, 3), generator=g, dtype=torch.uint8)
    actions = torch.randint(0, 4, (b, f - 1), generator=g)
    return frames, actions


def test_fresh_model_copies_the_last_frame_and_ignores_actions():
    model = tiny().eval()
    frames, actions = clip()
    out = model.sample_next(frames[:, :3], actions[:, :2], actions[:, 2], generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == (2, 64, 64, 3)
    assert torch.equal(out, frames[:, 2])  # zero output layer: x0_hat = previous frame exactly
    # the DWS second layers (diffusers' time_emb_proj) start at zero: alpha = beta = 0 for any action
    for level in (model.down0, model.down1, model.mid0, model.mid1, model.up1, model.up0):
        assert torch.count_nonzero(level.block.time_emb_proj.weight) == 0


def test_actions_change_the_frame_once_trained():
    model = tiny(perturb=True).eval()
    frames, actions = clip()
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    a = model.sample_next(frames[:, :3], actions[:, :2], torch.tensor([0, 0]), generator=g())
    b = model.sample_next(frames[:, :3], actions[:, :2], torch.tensor([2, 2]), generator=g())
    assert not torch.equal(a, b)
    none = tiny(perturb=True, action_mode="none").eval()
    a = none.sample_next(frames[:, :3], actions[:, :2], torch.tensor([0, 0]), generator=g())
    b = none.sample_next(frames[:, :3], actions[:, :2], torch.tensor([2, 2]), generator=g())
    assert torch.equal(a, b)


@pytest.mark.parametrize("steps, keep_below, cell", [(1, 0.0, 2), (3, 0.0, 2), (1, 0.05, 2), (3, 0.05, 2),
                                                     (1, 0.05, 4), (3, 0.0, 4)])
def test_sampling_on_the_cell_grid_matches_the_training_path(steps, keep_below, cell):
    """sample_next works on the space-to-depth grid; frame for frame it is predict_x0's Euler sampling."""
    model = tiny(perturb=True, keep_below=keep_below, cell=cell).eval()
    frames, actions = clip(b=3, seed=2)
    ctx, acts, act = frames[:, :3], actions[:, :2], actions[:, 2]
    out = model.sample_next(ctx, acts, act, steps=steps, generator=torch.Generator().manual_seed(5))
    # The reference: the same noise draw, Euler steps of predict_x0 in pixel layout, keep_below, then uint8.
    x = torch.randn((3, 3, 64, 64), generator=torch.Generator().manual_seed(5))
    context = model.to_model_space(ctx)
    window = torch.cat([acts, act[:, None]], dim=1)
    schedule = model.sampling_schedule(steps)
    with torch.no_grad():
        for t_now, t_next in zip(schedule[:-1], schedule[1:]):
            x0 = model.predict_x0(context, window, x, torch.full((3,), t_now))
            x = x0 + (t_next / t_now) * (x - x0) if t_next > 0 else x0
    x = x.clamp(-1.0, 1.0)
    if keep_below:
        prev = context[:, -1]
        x = torch.where((x - prev).abs().amax(dim=1, keepdim=True) < 2 * keep_below, prev, x)
    ref = model.to_frames(x)
    assert out.shape == ref.shape == (3, 64, 64, 3)
    assert torch.equal(out, ref)
    if keep_below:  # the rule kept some pixels and let others change
        assert 0 < (out == ctx[:, -1]).all(dim=-1).float().mean() < 1


@pytest.mark.parametrize("cell", [2, 4])
def test_bf16_sampling_noise_is_a_bf16_draw_of_the_generator(cell):
    """The CPU draws its bf16 noise in float32 and rounds it (faster), on the cell grid as pixel_unshuffle lays it
    out; a seeded bf16 step keeps its frames."""
    model = tiny(perturb=True, keep_below=0.05, cell=cell).eval().to(torch.bfloat16)
    frames, actions = clip(b=3, seed=4)
    ctx, acts, act = frames[:, :3], actions[:, :2], actions[:, 2]
    out = model.sample_next(ctx, acts, act, generator=torch.Generator().manual_seed(7))
    noise = torch.randn((3, 3, 64, 64), generator=torch.Generator().manual_seed(7), dtype=torch.bfloat16)
    cells = torch.nn.functional.pixel_unshuffle(ctx.permute(0, 1, 4, 2, 3).flatten(1, 2), cell)
    with torch.no_grad():
        ref = model.denoise(cells, acts, act, torch.nn.functional.pixel_unshuffle(noise, cell), 1)
    ref = torch.nn.functional.pixel_shuffle(ref, cell).permute(0, 2, 3, 1)
    assert torch.equal(out, ref)


def test_training_loss_learns_and_reports_copy_baseline():
    model = tiny()
    frames, actions = clip(b=4, f=5)
    mask = torch.ones(4, 5, dtype=torch.bool)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    loss0, logs = model.training_loss(frames, actions, mask, generator=g)
    # a fresh model is the copy baseline on the first target; unrolled targets continue from its own copy
    assert logs["copy_mse"] > 0 and np.isfinite(logs["loss"])
    for _ in range(15):
        loss, _ = model.training_loss(frames, actions, mask, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < loss0.item()


def test_invalid_targets_do_not_count():
    model = tiny(perturb=True)
    frames, actions = clip(b=2, f=5)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    full, _ = model.training_loss(frames, actions, mask, generator=g())
    frames2 = frames.clone()
    frames2[1, 3:] = 0  # garbage past the episode end
    masked, _ = model.training_loss(frames2, actions, mask, generator=g())
    assert torch.allclose(full, masked)


def test_shapes_are_checked_with_clear_errors():
    model = tiny()
    frames, actions = clip()
    with pytest.raises(ValueError, match=r"actions must be \(2, 4\)"):
        model.training_loss(frames, actions[:, :3])
    with pytest.raises(ValueError, match="sample_next needs frames"):
        model.sample_next(frames[:, :2], actions[:, :2], actions[:, 2])
    with pytest.raises(ValueError, match="widths must be 3 positive multiples"):
        UNetConfig(widths=(10, 16, 16), groups=4)


def test_save_load_round_trip_and_corrupt_files(tmp_path):
    model = tiny(perturb=True).eval()
    folder = model.save_pretrained(tmp_path / "wm")
    loaded = UNetWorldModel.from_pretrained(folder)
    frames, actions = clip()
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert torch.equal(model.sample_next(frames[:, :3], actions[:, :2], actions[:, 2], generator=g()),
                       loaded.sample_next(frames[:, :3], actions[:, :2], actions[:, 2], generator=g()))
    (folder / "unet_model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="unet_model.safetensors is truncated"):
        UNetWorldModel.from_pretrained(folder)
    cfg = json.loads((folder / UNET_CONFIG_NAME).read_text())
    cfg["surprise"] = 1
    (folder / UNET_CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unknown keys"):
        UNetWorldModel.from_pretrained(folder)


def test_simulator_steps_and_reloads_a_unet_backbone(tmp_path):
    model = tiny(perturb=True)
    head = RewardHead(RewardConfig(context_frames=3, num_actions=4, dim=16, depth=1, num_heads=2))
    frames, actions = clip(b=3, f=3)
    sim = Simulator(SimulatorConfig(env_id="ALE/Breakout-v5", action_meanings=["NOOP", "FIRE", "RIGHT", "LEFT"],
                                    context_frames=3, sampling_steps=1, backbone="unet"),
                    model, head, frames.numpy(), actions.numpy())
    sim.save_pretrained(tmp_path / "sim")
    again = Simulator.from_pretrained(tmp_path / "sim")
    assert isinstance(again.world_model, UNetWorldModel)
    for s in (sim, again):
        state = s.init_state(frames, actions)
        frame, reward, term, state = s.step(state, [0, 1, 2], generator=torch.Generator().manual_seed(0))
        assert frame.shape == (3, 64, 64, 3) and reward.shape == (3,) and term.dtype == torch.bool


@pytest.mark.parametrize("cell", [2, 4])
def test_flop_count_matches_the_profiler(cell):
    from torch.utils.flop_counter import FlopCounterMode

    cfg = UNetConfig(cell=cell)
    model = UNetWorldModel(cfg).eval()
    frames, actions = clip(b=1, f=5)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.sample_next(frames[:, :4], actions[:, :3], actions[:, 3])
    conv = sum(v for k, v in counter.get_flop_counts()["Global"].items() if "convolution" in str(k))
    assert conv == pytest.approx(unet_flops_per_frame(cfg), rel=0.01)


def test_a_4x4_cell_works_on_a_quarter_of_the_positions_and_is_checked():
    """cell = 4: the first level runs at 16x16 for a 64x64 frame, and every pixel is still predicted."""
    model = tiny(perturb=True, cell=4).eval()
    assert model.stem.in_channels == 16 * (3 * 3 + 2 * 3) and model.out.out_channels == 16 * 3
    frames, actions = clip(b=2, f=4)
    seen = []
    hook = model.down0.register_forward_hook(lambda mod, args, out: seen.append(tuple(out.shape)))
    out = model.sample_next(frames[:, :3], actions[:, :2], actions[:, 2], generator=torch.Generator().manual_seed(0))
    hook.remove()
    assert seen == [(2, 8, 16, 16)] and out.shape == (2, 64, 64, 3)
    assert (out != frames[:, 2]).any(dim=-1).float().mean() > 0.5  # perturbed weights move most pixels
    assert UNetConfig.from_dict(UNetConfig(cell=4).to_dict()).cell == 4
    assert UNetConfig.from_dict({k: v for k, v in UNetConfig().to_dict().items() if k != "cell"}).cell == 2
    for bad, msg in [(dict(cell=3), "cell must be 2 or 4"), (dict(cell=4, frame_size=40), "divisible by 4 \\* cell")]:
        with pytest.raises(ValueError, match=msg):
            UNetConfig(**bad)


def test_changed_share_gives_moving_pixels_a_fixed_share():
    err = torch.zeros(1, 8, 8)
    err[0, 0, 0] = 64.0  # one wrong pixel out of 64
    changed = torch.zeros(1, 8, 8, dtype=torch.bool)
    changed[0, 0, 0] = True
    assert changed_share_mean(err, changed, 0.0).item() == pytest.approx(1.0)  # the plain mean
    assert changed_share_mean(err, changed, 0.4).item() == pytest.approx(0.6 * 1.0 + 0.4 * 64.0)
    assert changed_share_mean(err, torch.zeros_like(changed), 0.4).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"share must lie in \[0, 1\)"):
        changed_share_mean(err, changed, 1.0)


def test_changed_pixels_cover_where_the_ball_was_and_went():
    f = -torch.ones(1, 3, 3, 16, 16)
    f[0, 0, :, 4, 4] = 1.0  # ball at (4, 4), then (4, 6), then (4, 8)
    f[0, 1, :, 4, 6] = 1.0
    f[0, 2, :, 4, 8] = 1.0
    m = changed_pixels(f, threshold=0.04, dilate=0)[0]
    assert m[4, 4] and m[4, 6] and m[4, 8] and int(m.sum()) == 3
    assert int(changed_pixels(f, dilate=1)[0].sum()) == 3 * 7  # rows 3..5 x columns 3..9


def test_context_noise_corrupts_the_context_and_leaves_targets_clean():
    frames, actions = clip(b=3, f=5)
    frames = frames[:, :1].expand(-1, 5, -1, -1, -1).contiguous()  # a still scene: copying is exact
    clean, noisy = tiny(), tiny(context_noise=0.5)
    assert noisy.state_dict().keys() == clean.state_dict().keys()
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    _, logs_clean = clean.training_loss(frames, actions, generator=g())
    _, logs_noisy = noisy.training_loss(frames, actions, generator=g())
    # The copy baseline is measured on the real (clean) frames either way ...
    assert logs_noisy["copy_mse"] == pytest.approx(logs_clean["copy_mse"])
    # ... while a fresh model, which copies its (now corrupted) last context frame, is scored against clean targets.
    assert logs_clean["mse"] == 0.0 and logs_noisy["mse"] > 1e-3
    with pytest.raises(ValueError, match="context_noise must lie in"):
        UNetConfig(**TINY, context_noise=1.0)
    # Stepping is untouched by the training-only setting.
    stepped = tiny(context_noise=0.5).eval()
    out = stepped.sample_next(frames[:, :3], actions[:, :2], actions[:, 2], generator=g())
    assert torch.equal(out, frames[:, 2])


def _frame_score(model, context, window, eps, target, changed):
    """The per-sample loss the training step gives a t = 1 prediction from noise ``eps``."""
    pred = model.predict_x0(context, window, eps, torch.ones(eps.shape[0]), validate=False).float()
    err = (pred - target).pow(2).mean(dim=1)
    return changed_share_mean(err, changed, model.config.changed_share)


def test_t_one_hypotheses_train_each_t_one_target_from_its_best_noise_draw():
    m = 6
    model = tiny(perturb=True, t_one_hypotheses=m, motion_c=1.0).eval()  # perturbed: predictions depend on noise
    frames, actions = clip(b=3, f=4)
    x = model.to_model_space(frames)
    context, target, window = x[:, :3], x[:, 3], actions[:, :3]
    changed = changed_pixels(x[:, 1:4])
    t = torch.tensor([1.0, 0.3, 1.0])
    eps = torch.randn(target.shape, generator=torch.Generator().manual_seed(5))
    out = model._best_t_one_noise(context, window, target, t, eps, None, changed, torch.Generator().manual_seed(9))
    assert torch.equal(out[1], eps[1])  # t < 1 keeps its noise: the input already carries the target
    # Replay the draws: the chosen noise is the argmin of the training loss over the original draw and m - 1 more.
    more = torch.randn((2, m - 1, *eps.shape[1:]), generator=torch.Generator().manual_seed(9))
    for row, i in ((0, 0), (2, 1)):
        cands = torch.cat([eps[row, None], more[i]])
        scores = _frame_score(model, context[[row]].expand(m, -1, -1, -1, -1), window[[row]].expand(m, -1),
                              cands, target[[row]].expand(m, -1, -1, -1), changed[[row]].expand(m, -1, -1))
        assert torch.equal(out[row], cands[int(scores.argmin())])
        assert scores.min() < scores[0]  # with 6 draws of a noise-dependent model, a better one than the first
    with pytest.raises(ValueError, match="t_one_hypotheses must be an int >= 1"):
        UNetConfig(**TINY, t_one_hypotheses=0)


def test_t_one_hypotheses_is_training_only_and_saved(tmp_path):
    frames, actions = clip(b=2, f=5)
    one, best = tiny(perturb=True), tiny(perturb=True, t_one_hypotheses=3)
    assert one.state_dict().keys() == best.state_dict().keys()
    loss, logs = best.training_loss(frames, actions, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert np.isfinite(logs["loss"])
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731
    assert torch.equal(one.eval().sample_next(frames[:, :3], actions[:, :2], actions[:, 2], generator=g()),
                       best.eval().sample_next(frames[:, :3], actions[:, :2], actions[:, 2], generator=g()))
    best.save_pretrained(tmp_path / "wm")
    assert UNetWorldModel.from_pretrained(tmp_path / "wm").config.t_one_hypotheses == 3


def test_distillation_regresses_onto_the_teacher_and_trains_only_the_student():
    """With a teacher, every target is also regressed onto its prediction from the same context, actions and noise:
    a teacher equal to the student adds nothing; another one is a target a narrower student moves towards, and the
    teacher itself gets no gradient. A teacher that reads other inputs is refused."""
    frames, actions = clip(b=2, f=5)
    student = tiny(seed=1, perturb=True, widths=(8, 8, 16))
    twin = tiny(seed=1, perturb=True, widths=(8, 8, 16)).requires_grad_(False)
    alone, _ = student.training_loss(frames, actions, generator=torch.Generator().manual_seed(3))
    with_twin, logs = student.training_loss(frames, actions, generator=torch.Generator().manual_seed(3),
                                            teacher=twin, distill_weight=2.0)
    assert logs["teacher_mse"] == 0.0 and torch.allclose(with_twin, alone)

    teacher = tiny(seed=2, perturb=True).requires_grad_(False)  # wider: widths (8, 16, 16)
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    first = None
    for _ in range(25):
        loss, logs = student.training_loss(frames, actions, generator=torch.Generator().manual_seed(3),
                                           teacher=teacher, distill_weight=10.0)
        first = logs["teacher_mse"] if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert logs["teacher_mse"] < 0.5 * first, (first, logs["teacher_mse"])
    assert all(p.grad is None for p in teacher.parameters())

    with pytest.raises(ValueError, match="context_frames 4 \\(teacher\\) vs 3"):
        student.training_loss(frames, actions, teacher=tiny(context_frames=4))
    with pytest.raises(ValueError, match="num_actions 6 \\(teacher\\) vs 4"):
        student.check_teacher(tiny(num_actions=6))
    with pytest.raises(ValueError, match="must be a pixel U-Net"):
        student.check_teacher(torch.nn.Linear(2, 2))
