"""Evaluation metrics: PSNR, SSIM (against independent references), moving region, shuffles, tables."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from dws_gym.metrics import (
    HeldOutTable,
    action_sensitivity,
    lpips_distance,
    moving_mask,
    moving_region_mse,
    precision_recall,
    psnr,
    reward_sign_precision_recall,
    reward_termination_table,
    rollout_table,
    shuffle_actions_across_clips,
    ssim,
)


def _images(seed: int = 0, shape=(2, 3, 24, 20, 3)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape)


def _reference_ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Wang et al. SSIM of one (H, W, C) float image with scipy's Gaussian filter (sigma 1.5, radius 5)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    scores = []
    for ch in range(a.shape[-1]):
        x, y = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)

        def blur(z):
            return gaussian_filter(z, sigma=1.5, truncate=3.5)

        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        scores.append(s[5:-5, 5:-5].mean())  # drop the border where the window leaves the image
    return float(np.mean(scores))


# ----------------------------------------------------------------------------------------------- PSNR


def test_psnr_identical_is_inf_and_constant_offset_is_known():
    a = _images()
    assert np.all(np.isinf(psnr(a, a)))
    out = psnr(a * 0.5, a * 0.5 + 0.1)  # MSE 0.01 -> 10 log10(1 / 0.01) = 20 dB
    assert out.shape == (2, 3)
    assert np.allclose(out, 20.0)
    assert np.allclose(psnr(a * 0.5, a * 0.5 + 0.1, data_range=2.0), 20.0 + 20 * math.log10(2.0))
    # uint8 frames are scaled to [0, 1]: an offset of 51 levels is 0.2 -> 10 log10(1 / 0.04).
    u = np.full((4, 8, 8, 3), 100, dtype=np.uint8)
    assert np.allclose(psnr(u, u + 51), 10 * math.log10(1 / 0.04))
    t = torch.from_numpy(a)
    out_t = psnr(t, t + 0.1)
    assert torch.is_tensor(out_t) and torch.allclose(out_t, torch.tensor(20.0, dtype=torch.float64))


def test_psnr_is_layout_independent_and_validates():
    a, b = _images(1), _images(2)
    assert np.allclose(psnr(a, b), psnr(np.moveaxis(a, -1, -3), np.moveaxis(b, -1, -3)))
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, b[..., :2])
    with pytest.raises(ValueError, match="data_range"):
        psnr(a, b, data_range=0)
    with pytest.raises(ValueError, match="uint8"):
        psnr(np.zeros((4, 4, 3), dtype=np.int64), np.zeros((4, 4, 3), dtype=np.int64))


# ----------------------------------------------------------------------------------------------- SSIM


def test_ssim_identical_is_one_and_matches_scipy_reference():
    a = _images(3)
    noisy = np.clip(a + 0.1 * np.random.default_rng(4).standard_normal(a.shape), 0, 1)
    assert np.allclose(ssim(a, a), 1.0, atol=1e-12)
    out = ssim(a, noisy)
    assert out.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            assert abs(out[i, j] - _reference_ssim(a[i, j], noisy[i, j])) < 1e-5
    # Channels-first gives the same numbers; torch in -> torch out.
    cf = ssim(np.moveaxis(a, -1, -3), np.moveaxis(noisy, -1, -3), channels_last=False)
    assert np.allclose(cf, out)
    assert torch.allclose(ssim(torch.from_numpy(a), torch.from_numpy(noisy)), torch.from_numpy(out))


def test_ssim_matches_scikit_image_when_installed():
    skm = pytest.importorskip("skimage.metrics")
    a = _images(5, shape=(32, 40, 3))
    b = np.clip(a + 0.15 * np.random.default_rng(6).standard_normal(a.shape), 0, 1)
    ref = skm.structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1
    )
    assert abs(ssim(a, b) - ref) < 1e-5
    u, v = (a * 255).astype(np.uint8), (b * 255).astype(np.uint8)
    ref_u8 = skm.structural_similarity(
        u, v, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1
    )
    assert abs(ssim(u, v) - ref_u8) < 1e-5


def test_ssim_decreases_with_noise():
    a = _images(7, shape=(24, 24, 3))
    rng = np.random.default_rng(8)
    noise = rng.standard_normal(a.shape)
    scores = [ssim(a, np.clip(a + s * noise, 0, 1)) for s in (0.0, 0.02, 0.05, 0.1, 0.3)]
    assert scores[0] == pytest.approx(1.0)
    assert all(x > y for x, y in zip(scores, scores[1:]))
    with pytest.raises(ValueError, match="11x11"):
        ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)))


# ---------------------------------------------------------------------------------------- moving region


def _square_clip():
    """Two real frames with a 4x4 white square moving 2 pixels right, on a 16x16 black background."""
    prev = np.zeros((16, 16, 3), dtype=np.uint8)
    cur = np.zeros_like(prev)
    prev[6:10, 2:6] = 255
    cur[6:10, 4:8] = 255
    return prev, cur


def test_moving_mask_of_a_moving_square():
    prev, cur = _square_clip()
    mask = moving_mask(cur, prev)
    expected = np.zeros((16, 16), dtype=bool)
    expected[6:10, 2:4] = True  # uncovered
    expected[6:10, 6:8] = True  # newly covered
    assert mask.dtype == bool and np.array_equal(mask, expected)
    # A change in a single channel counts (channel max); a 5-level flicker does not.
    cur2 = cur.copy()
    cur2[0, 0, 1] = 40
    cur2[15, 15] = 5
    mask2 = moving_mask(cur2, prev)
    assert mask2[0, 0] and not mask2[15, 15]
    assert np.array_equal(moving_mask(np.moveaxis(cur, -1, 0), np.moveaxis(prev, -1, 0), channels_last=False), expected)


def test_moving_region_mse_scores_copy_baseline_and_empty_masks():
    prev, cur = _square_clip()
    # Copy-last-frame baseline: wrong on every moving pixel by a full step (error 1 in all channels).
    out = moving_region_mse(prev[None], cur[None], prev[None])
    assert out.mse.shape == (1,) and out.mse[0] == pytest.approx(1.0)
    assert out.fraction[0] == pytest.approx(16 / 256)
    # A perfect prediction scores 0; an error outside the moving region does not count.
    pred = cur.copy()
    pred[0, 0] = 255
    assert moving_region_mse(pred, cur, prev).mse == pytest.approx(0.0)
    # No motion: NaN (not 0), so aggregations must use nanmean.
    static = moving_region_mse(cur[None], cur[None], cur[None])
    assert np.isnan(static.mse[0]) and static.fraction[0] == 0.0
    t = moving_region_mse(torch.from_numpy(prev), torch.from_numpy(cur), torch.from_numpy(prev))
    assert torch.is_tensor(t.mse) and t.mse.item() == pytest.approx(1.0)


# ------------------------------------------------------------------------------------ action sensitivity


@pytest.mark.parametrize("batch", [2, 3, 5, 16])
def test_shuffle_is_a_derangement_of_whole_sequences(batch):
    actions = np.arange(batch * 6).reshape(batch, 6)  # every row unique
    for seed in range(20):
        shuffled, perm = shuffle_actions_across_clips(actions, np.random.default_rng(seed))
        assert sorted(perm.tolist()) == list(range(batch))
        assert not np.any(perm == np.arange(batch))
        assert np.array_equal(shuffled, actions[perm])
        # Rows move whole: each shuffled row is some original row, never a mix in time.
        assert all(any(np.array_equal(row, orig) for orig in actions) for row in shuffled)
        assert not np.any(np.all(shuffled == actions, axis=1))


def test_shuffle_with_torch_generator_and_single_clip():
    actions = torch.arange(12).reshape(4, 3)
    s1, p1 = shuffle_actions_across_clips(actions, torch.Generator().manual_seed(0))
    s2, p2 = shuffle_actions_across_clips(actions, torch.Generator().manual_seed(0))
    assert torch.equal(s1, s2) and np.array_equal(p1, p2) and torch.equal(s1, actions[torch.from_numpy(p1)])
    assert not np.any(p1 == np.arange(4))
    one, perm = shuffle_actions_across_clips(np.array([[1, 2, 3]]), 0)
    assert np.array_equal(one, [[1, 2, 3]]) and perm.tolist() == [0]
    with pytest.raises(ValueError, match=r"actions must be a \(B, T, \.\.\.\) .*got \(5,\)"):
        shuffle_actions_across_clips(np.arange(5), 0)


def test_action_sensitivity():
    out = action_sensitivity([0.5, 1.0, 0.0, 1.0], [1.0, 1.0, 0.5, 0.0])
    assert np.allclose(out[:3], [0.5, 0.0, 1.0]) and np.isnan(out[3])


# ------------------------------------------------------------------------------- reward / termination


def test_precision_recall_and_reward_classes():
    pr = precision_recall([True, True, False, False, True], [True, False, False, True, True])
    assert (pr.precision, pr.recall, pr.support, pr.predicted) == (2 / 3, 2 / 3, 3, 3)
    none = precision_recall([False, False], [False, True])
    assert math.isnan(none.precision) and none.recall == 0.0
    classes = reward_sign_precision_recall([1.0, 0.0, -2.0, 0.0, 3.0], [2.0, 0.0, -1.0, 1.0, 0.0])
    assert classes[-1].precision == 1.0 and classes[-1].recall == 1.0
    assert classes[1].precision == 0.5 and classes[1].recall == 0.5
    assert classes[0].precision == 0.5 and classes[0].recall == 0.5
    table = reward_termination_table([1, 0, -1], [1, 0, 0], [True, False, False], [True, True, False])
    assert [r["target"] for r in table.rows] == ["reward<0", "reward=0", "reward>0", "terminated"]
    md = table.to_markdown()
    assert "| terminated | 1 | 0.5 | 2 | 1 |" in md
    assert "| reward<0 | 0 | nan | 0 | 1 |" in md


# --------------------------------------------------------------------------------------------- tables


def test_rollout_table_renders_model_copy_and_shuffled_columns():
    rng = np.random.default_rng(0)
    n, horizon = 6, 3
    model = {
        "psnr": 25 + rng.random((n, horizon)),
        "moving_mse": np.full((n, horizon), 0.01),
    }
    model["moving_mse"][0, 0] = np.nan  # an empty moving region in one sample
    copy = {"psnr": np.full((n, horizon), np.inf), "moving_mse": np.full((n, horizon), 0.04)}
    shuffled = {"psnr": 24 + rng.random((n, horizon)), "moving_mse": np.tile([0.02, 0.04, 0.08], (n, 1))}
    table = rollout_table(model, copy, shuffled, title="Breakout held-out")
    assert isinstance(table, HeldOutTable)
    assert table.columns == [
        "h",
        "psnr model",
        "psnr copy",
        "psnr shuffled",
        "moving_mse model",
        "moving_mse copy",
        "moving_mse shuffled",
        "action_sensitivity",
    ]
    assert table.column("h") == [1, 2, 3, "mean"]
    assert np.allclose(table.column("psnr model")[:3], model["psnr"].mean(axis=0))
    assert table.column("psnr copy")[0] == 100.0  # exact copies capped, not inf
    assert table.column("moving_mse model")[0] == pytest.approx(0.01)  # NaN sample skipped
    assert table.column("action_sensitivity")[0] == pytest.approx(0.5)
    mean = table.rows[-1]  # the mean row's sensitivity follows from its own mean errors
    assert mean["action_sensitivity"] == pytest.approx(1 - mean["moving_mse model"] / mean["moving_mse shuffled"])
    assert mean["action_sensitivity"] == pytest.approx(1 - 0.01 / (0.14 / 3))  # not the mean of 0.5, 0.75, 0.875
    md = table.to_markdown()
    lines = md.splitlines()
    assert lines[0] == "**Breakout held-out**"
    assert lines[2].startswith("| h | psnr model | psnr copy |")
    assert len(lines) == 2 + 2 + horizon + 1
    assert "| mean |" in md and "inf" not in md
    # Already aggregated (H,) inputs pass through; mismatched horizons are rejected.
    assert rollout_table({"ssim": np.array([0.9, 0.8])}, mean_row=False).column("ssim model") == [0.9, 0.8]
    with pytest.raises(ValueError, match="horizons"):
        rollout_table({"ssim": np.zeros(2)}, {"ssim": np.zeros(3)})
    with pytest.raises(ValueError, match="model metrics are empty"):
        rollout_table({})


# --------------------------------------------------------------------------------------------- LPIPS


def test_lpips_distance_explains_the_missing_dependency():
    try:
        import lpips  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover - only on machines with lpips + torchvision
        pytest.skip("lpips is installed here")
    with pytest.raises(ImportError, match="lpips.*torchvision"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lpips_distance(np.zeros((1, 16, 16, 3)), np.zeros((1, 16, 16, 3)))
