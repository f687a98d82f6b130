"""Evaluation metrics for world simulators: fidelity, motion, action sensitivity, reward / termination.

Everything here receives arrays and runs no model, so the same functions score a simulator, the
copy-last-frame baseline and a shuffled-action rollout.

Conventions:

* Images are ``numpy.ndarray`` or ``torch.Tensor`` (any device); the result has the input's kind (numpy in,
  numpy out). ``uint8`` inputs are first scaled to ``[0, 1]`` (divided by 255), so ``data_range=1.0`` is right for
  both ``uint8`` frames and float frames in ``[0, 1]``. Arithmetic is in ``float64``.
* Layout: PSNR reduces the last three axes and so works for ``(..., H, W, C)`` and ``(..., C, H, W)`` alike. SSIM
  and the moving-region error need the channel axis: ``channels_last=True`` (default, the env / trajectory-store
  layout ``(..., H, W, 3)``) or ``False`` for ``(..., C, H, W)``. Leading axes (batch, horizon, ...) are kept:
  a ``(N, T, H, W, 3)`` input gives ``(N, T)`` scores, per sample and per frame.
* Empty moving regions give NaN; aggregate with ``nanmean`` (as :func:`rollout_table` does).

Not included: FVD (needs the I3D network's weights) and LPIPS (the ``lpips`` package needs torchvision, which
these test machines cannot import); :func:`lpips_distance` runs LPIPS when ``lpips`` is installed and otherwise
raises an ``ImportError`` that says so.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "SSIM_WINDOW",
    "SSIM_SIGMA",
    "SSIM_K1",
    "SSIM_K2",
    "MOVING_THRESHOLD",
    "psnr",
    "ssim",
    "moving_mask",
    "MovingRegionError",
    "moving_region_mse",
    "shuffle_actions_across_clips",
    "action_sensitivity",
    "PrecisionRecall",
    "precision_recall",
    "reward_sign_precision_recall",
    "HeldOutTable",
    "rollout_table",
    "reward_termination_table",
    "lpips_distance",
]

ArrayLike = Union[np.ndarray, torch.Tensor]

# SSIM constants of Wang et al. (2004). An 11-tap window with sigma 1.5 is scikit-image's
# `gaussian_weights=True, sigma=1.5` window: it truncates at 3.5 sigma, radius int(3.5 * 1.5 + 0.5) = 5.
SSIM_WINDOW: int = 11
SSIM_SIGMA: float = 1.5
SSIM_K1: float = 0.01
SSIM_K2: float = 0.03
# A pixel "moves" when some channel changes by more than 5 % of the pixel range.
MOVING_THRESHOLD: float = 0.05


# ----------------------------------------------------------------------------------------------- helpers


def _to_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    """float64 tensor in [0, 1] units for uint8; float64 copy of float inputs otherwise."""
    if isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    if t.dtype == torch.uint8:
        return t.to(torch.float64) / 255.0
    if not t.is_floating_point():
        raise ValueError(f"{name} must be uint8 (0..255) or floating point pixels, got dtype {t.dtype}")
    return t.to(torch.float64)


def _like(result: torch.Tensor, reference: ArrayLike) -> ArrayLike:
    """Return numpy for numpy inputs, a tensor otherwise."""
    if isinstance(reference, np.ndarray):
        out = result.cpu().numpy()
        return out if out.ndim else out[()]
    return result


def _check_pair(pred: ArrayLike, target: ArrayLike, min_ndim: int) -> None:
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    if len(pred.shape) < min_ndim:
        raise ValueError(
            f"images need at least {min_ndim} axes (..., H, W, C) or (..., C, H, W), got {tuple(pred.shape)}"
        )


def _check_data_range(data_range: float) -> None:
    if not (isinstance(data_range, (int, float)) and math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"data_range must be a finite number > 0 (1.0 for [0, 1] or uint8 pixels), got {data_range!r}")


def _to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, (np.ndarray, list, tuple, float, int)):
        return np.asarray(x)
    raise ValueError(f"{name} must be an array, tensor or sequence, got {type(x).__name__}")


# ------------------------------------------------------------------------------------------ PSNR / SSIM


def psnr(pred: ArrayLike, target: ArrayLike, data_range: float = 1.0) -> ArrayLike:
    """Peak signal-to-noise ratio in dB, per image.

    Args:
        pred, target: Images of the same shape ``(..., H, W, C)`` or ``(..., C, H, W)`` (the last three axes are
            averaged, so the layout does not matter); ``uint8`` or float in ``[0, data_range]``.
        data_range: Peak value after ``uint8`` scaling (1.0 for ``uint8`` and ``[0, 1]`` floats).

    Returns:
        ``float64`` scores with the leading shape ``(...)``; ``inf`` where the images are identical.
    """
    _check_pair(pred, target, 3)
    _check_data_range(data_range)
    p, t = _to_tensor(pred, "pred"), _to_tensor(target, "target")
    mse = ((p - t) ** 2).mean(dim=(-3, -2, -1))
    return _like(10.0 * torch.log10(data_range**2 / mse), pred)


def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def ssim(
    pred: ArrayLike,
    target: ArrayLike,
    data_range: float = 1.0,
    *,
    channels_last: bool = True,
) -> ArrayLike:
    """Structural similarity (Wang et al. 2004), per image, averaged over channels.

    Gaussian window of 11 taps with sigma 1.5 (normalised to sum 1), K1 = 0.01, K2 = 0.03, population
    (not sample) covariances, computed per channel on the "valid" region (no padding: the SSIM map is averaged
    over the ``(H - 10) x (W - 10)`` positions whose window fits in the image), then averaged over channels.
    This equals ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=data_range, channel_axis=-1)``. Note that scikit-image's *default*
    (7x7 uniform window, sample covariance) gives different numbers.

    Args:
        pred, target: ``(..., H, W, C)`` (``channels_last=True``) or ``(..., C, H, W)``, ``H, W >= 11``;
            ``uint8`` or float in ``[0, data_range]``.
        data_range: Dynamic range after ``uint8`` scaling (1.0 for ``uint8`` and ``[0, 1]`` floats).
        channels_last: Layout of the inputs.

    Returns:
        ``float64`` scores with the leading shape ``(...)``; 1 for identical images.
    """
    _check_pair(pred, target, 3)
    _check_data_range(data_range)
    p, t = _to_tensor(pred, "pred"), _to_tensor(target, "target")
    if channels_last:
        p, t = p.movedim(-1, -3), t.movedim(-1, -3)
    lead, (channels, height, width) = p.shape[:-3], p.shape[-3:]
    if height < SSIM_WINDOW or width < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {height}x{width}")
    # Every (image, channel) becomes one single-channel image for a separable depthwise blur.
    p = p.reshape(-1, 1, height, width)
    t = t.reshape(-1, 1, height, width)
    g = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA, p.dtype, p.device)

    def blur(x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, g.view(1, 1, -1, 1))
        return F.conv2d(x, g.view(1, 1, 1, -1))

    mu_p, mu_t = blur(p), blur(t)
    var_p = blur(p * p) - mu_p**2
    var_t = blur(t * t) - mu_t**2
    cov = blur(p * t) - mu_p * mu_t
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_p * mu_t + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_t**2 + c1) * (var_p + var_t + c2))
    per_channel = ssim_map.mean(dim=(-2, -1)).reshape(*lead, channels)
    return _like(per_channel.mean(dim=-1), pred)


# ---------------------------------------------------------------------------------------- moving region


def moving_mask(
    frame: ArrayLike,
    prev_frame: ArrayLike,
    threshold: float = MOVING_THRESHOLD,
    *,
    channels_last: bool = True,
) -> ArrayLike:
    """Pixels where a real frame changed: ``max over channels |frame - prev_frame| > threshold``.

    The channel *max* (not mean) is used so a change of colour in any one channel counts as motion.

    Args:
        frame, prev_frame: Consecutive real frames ``(..., H, W, C)`` (or ``(..., C, H, W)`` with
            ``channels_last=False``), ``uint8`` or float in ``[0, 1]``.
        threshold: In ``[0, 1]`` pixel units (0.05 is about 13 levels of a ``uint8`` channel).
        channels_last: Layout of the inputs.

    Returns:
        bool mask ``(..., H, W)``.
    """
    _check_pair(frame, prev_frame, 3)
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"threshold must be a finite number >= 0 in [0, 1] pixel units, got {threshold!r}")
    f, pf = _to_tensor(frame, "frame"), _to_tensor(prev_frame, "prev_frame")
    change = (f - pf).abs().amax(dim=-1 if channels_last else -3)
    return _like(change > threshold, frame)


@dataclass(frozen=True)
class MovingRegionError:
    """Result of :func:`moving_region_mse`.

    Attributes:
        mse: Per-image mean squared error over the moving pixels (all channels), ``[0, 1]`` units, shape
            ``(...)``; NaN where no pixel moved.
        fraction: Per-image fraction of pixels that moved, shape ``(...)``.
    """

    mse: ArrayLike
    fraction: ArrayLike


def moving_region_mse(
    pred: ArrayLike,
    target: ArrayLike,
    prev_target: ArrayLike,
    threshold: float = MOVING_THRESHOLD,
    *,
    channels_last: bool = True,
) -> MovingRegionError:
    """MSE of a predicted frame restricted to where the real frame moved.

    The mask comes from the real frames only (:func:`moving_mask` of ``target`` vs ``prev_target``), so a model
    and the copy-last-frame baseline are scored on the same pixels. Report it next to full-frame error and
    action sensitivity: a model that erases moving objects can beat copying on this number alone.

    Args:
        pred: Predicted frame ``x_{t+h}``, ``(..., H, W, C)`` (or ``(..., C, H, W)``), ``uint8`` or ``[0, 1]``.
        target: Real frame ``x_{t+h}``, same shape.
        prev_target: Real frame ``x_{t+h-1}``, same shape.
        threshold: Motion threshold in ``[0, 1]`` pixel units (channel max).
        channels_last: Layout of the inputs.

    Returns:
        :class:`MovingRegionError` with ``mse`` (NaN where the mask is empty; use ``nanmean`` to aggregate) and
        the mask ``fraction``, both of the leading shape ``(...)``.
    """
    _check_pair(pred, target, 3)
    _check_pair(target, prev_target, 3)
    mask = moving_mask(
        _to_tensor(target, "target"), _to_tensor(prev_target, "prev_target"), threshold, channels_last=channels_last
    )
    p, t = _to_tensor(pred, "pred"), _to_tensor(target, "target")
    sq = ((p - t) ** 2).mean(dim=-1 if channels_last else -3)  # per pixel, averaged over channels
    m = mask.to(sq.dtype)
    count = m.sum(dim=(-2, -1))
    total = (sq * m).sum(dim=(-2, -1))
    mse = torch.where(count > 0, total / count.clamp_min(1.0), torch.full_like(total, float("nan")))
    fraction = count / (mask.shape[-2] * mask.shape[-1])
    return MovingRegionError(mse=_like(mse, pred), fraction=_like(fraction, pred))


# ------------------------------------------------------------------------------------ action sensitivity


def _derangement(n: int, draw) -> np.ndarray:
    """Uniformly random permutation without fixed points (rejection sampling, ~e draws on average)."""
    while True:
        perm = np.asarray(draw(n), dtype=np.int64)
        if not np.any(perm == np.arange(n)):
            return perm


def shuffle_actions_across_clips(
    actions: ArrayLike,
    rng: np.random.Generator | torch.Generator | int | None = None,
) -> tuple[ArrayLike, np.ndarray]:
    """Give each clip another clip's whole action sequence (a control for action sensitivity).

    Sequences are permuted across the batch axis, never within time, so each shuffled sequence is still a
    plausible one. With ``B > 1`` the permutation is a uniformly random derangement: no clip keeps its own
    sequence (two clips may still happen to share identical actions). With ``B == 1`` nothing can be swapped and
    the identity is returned.

    Args:
        actions: ``(B, T)`` discrete actions or ``(B, T, ...)`` continuous ones; numpy or torch.
        rng: ``numpy.random.Generator``, ``torch.Generator`` (CPU), an int seed, or None (fresh entropy).

    Returns:
        ``(shuffled, perm)``: ``shuffled[i] = actions[perm[i]]`` (same kind, dtype and device as ``actions``) and
        the permutation as an ``int64`` numpy array.
    """
    if not isinstance(actions, (np.ndarray, torch.Tensor)) or actions.ndim < 2:
        shape = tuple(actions.shape) if hasattr(actions, "shape") else type(actions).__name__
        raise ValueError(f"actions must be a (B, T, ...) numpy array or tensor, got {shape}")
    n = actions.shape[0]
    if isinstance(rng, torch.Generator):
        def draw(k: int) -> np.ndarray:
            return torch.randperm(k, generator=rng).numpy()
    else:
        if rng is None or isinstance(rng, (int, np.integer)):
            rng = np.random.default_rng(rng)
        elif not isinstance(rng, np.random.Generator):
            raise ValueError(
                f"rng must be a numpy Generator, torch Generator, int seed or None, got {type(rng).__name__}"
            )
        draw = rng.permutation
    perm = np.arange(n, dtype=np.int64) if n < 2 else _derangement(n, draw)
    if isinstance(actions, torch.Tensor):
        return actions[torch.from_numpy(perm).to(actions.device)], perm
    return actions[perm], perm


def action_sensitivity(err_true: ArrayLike, err_shuffled: ArrayLike) -> np.ndarray:
    """Relative error reduction from conditioning on the true actions: ``1 - err_true / err_shuffled``.

    Args:
        err_true: Error (lower is better, e.g. moving-region MSE) of rollouts with the real actions, per horizon
            ``(H,)`` or any shape.
        err_shuffled: The same error with actions shuffled across clips, same shape.

    Returns:
        ``float64`` array of the same shape: 0 when actions make no difference, up to 1 when the true actions
        remove all the error, negative when shuffled actions do better; NaN where ``err_shuffled`` is 0 or NaN.
    """
    a = _to_numpy(err_true, "err_true").astype(np.float64)
    b = _to_numpy(err_shuffled, "err_shuffled").astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"err_true {a.shape} and err_shuffled {b.shape} must have the same shape")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, 1.0 - a / np.where(b > 0, b, 1.0), np.nan)


# ------------------------------------------------------------------------------- reward / termination


@dataclass(frozen=True)
class PrecisionRecall:
    """Binary detection scores.

    Attributes:
        precision: ``tp / predicted``; NaN when nothing was predicted positive.
        recall: ``tp / support``; NaN when there are no true positives to find.
        support: Number of true positives in the data.
        predicted: Number of positive predictions.
    """

    precision: float
    recall: float
    support: int
    predicted: int


def precision_recall(pred: ArrayLike, true: ArrayLike) -> PrecisionRecall:
    """Precision and recall of boolean predictions (e.g. termination) over all elements.

    Args:
        pred, true: Arrays of the same shape, bool or 0/1.

    Returns:
        :class:`PrecisionRecall`; undefined ratios are NaN rather than 0 so they are not mistaken for failures.
    """
    p, t = _to_numpy(pred, "pred"), _to_numpy(true, "true")
    if p.shape != t.shape:
        raise ValueError(f"pred {p.shape} and true {t.shape} must have the same shape")
    p, t = p.astype(bool), t.astype(bool)
    tp = int(np.sum(p & t))
    predicted, support = int(p.sum()), int(t.sum())
    precision = tp / predicted if predicted else float("nan")
    recall = tp / support if support else float("nan")
    return PrecisionRecall(precision=precision, recall=recall, support=support, predicted=predicted)


def reward_sign_precision_recall(pred_reward: ArrayLike, true_reward: ArrayLike) -> dict[int, PrecisionRecall]:
    """Per-class precision / recall of the reward sign (the 3 classes -1, 0, +1 of clipped-reward games).

    Args:
        pred_reward, true_reward: Rewards (any real values; only their sign is compared), same shape.

    Returns:
        ``{-1: ..., 0: ..., 1: ...}`` one-vs-rest :class:`PrecisionRecall` per sign class.
    """
    p, t = np.sign(_to_numpy(pred_reward, "pred_reward")), np.sign(_to_numpy(true_reward, "true_reward"))
    if p.shape != t.shape:
        raise ValueError(f"pred_reward {p.shape} and true_reward {t.shape} must have the same shape")
    return {k: precision_recall(p == k, t == k) for k in (-1, 0, 1)}


# --------------------------------------------------------------------------------------------- tables


def _format_cell(value: Any, float_format: str) -> str:
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else float_format.format(float(value))
    return str(value)


@dataclass
class HeldOutTable:
    """A small results table: ordered columns and one dict per row.

    Attributes:
        columns: Column names in display order.
        rows: One ``{column: value}`` dict per row (missing keys render empty).
        title: Optional caption rendered above the markdown table.
    """

    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    title: str | None = None

    def to_markdown(self, float_format: str = "{:.4g}") -> str:
        """Render as a GitHub-flavoured markdown table; floats use ``float_format``, NaN shows as ``nan``."""
        lines = [] if self.title is None else [f"**{self.title}**", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("|" + "|".join("---" for _ in self.columns) + "|")
        for row in self.rows:
            cells = [_format_cell(row[c], float_format) if c in row else "" for c in self.columns]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def column(self, name: str) -> list[Any]:
        """Values of one column, row by row (``None`` where a row lacks it)."""
        if name not in self.columns:
            raise ValueError(f"no column {name!r}; columns are {self.columns}")
        return [row.get(name) for row in self.rows]


@contextmanager
def _quiet_nanmean() -> Iterator[None]:
    """Silence numpy's 'Mean of empty slice' warning: an all-NaN column is a legitimate NaN here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        yield


def _per_horizon(values: ArrayLike, name: str, cap: float | None) -> np.ndarray:
    """(N, H) per-sample values -> (H,) nanmean over samples; (H,) passes through. Values above cap -> cap."""
    arr = _to_numpy(values, name).astype(np.float64)
    if arr.ndim not in (1, 2):
        raise ValueError(f"{name} must be (N, H) per-sample values or (H,) means, got shape {arr.shape}")
    if cap is not None:
        arr = np.minimum(arr, cap)  # NaN stays NaN
    if arr.ndim == 1:
        return arr
    with _quiet_nanmean():
        return np.nanmean(arr, axis=0)


def rollout_table(
    model: Mapping[str, ArrayLike],
    copy_last: Mapping[str, ArrayLike] | None = None,
    shuffled: Mapping[str, ArrayLike] | None = None,
    *,
    sensitivity_metric: str | None = "moving_mse",
    first_horizon: int = 1,
    mean_row: bool = True,
    caps: Mapping[str, float] | None = None,
    title: str | None = None,
) -> HeldOutTable:
    """Per-horizon held-out rollout table: the model next to copy-last-frame and shuffled-action baselines.

    Args:
        model: ``{metric: values}`` for the simulator with the true actions; values are per-sample per-horizon
            ``(N, H)`` (aggregated with ``nanmean`` over N) or already aggregated ``(H,)``. Typical metrics:
            ``psnr``, ``ssim``, ``mse``, ``moving_mse``, ``moving_fraction``.
        copy_last: The same metrics for the copy-last-context-frame baseline (optional).
        shuffled: The same metrics for the simulator fed actions shuffled across clips (optional).
        sensitivity_metric: A lower-is-better metric in both ``model`` and ``shuffled``; adds an
            ``action_sensitivity`` column ``1 - model / shuffled`` computed on the per-horizon means (a ratio of
            means, robust to single near-zero samples). ``None`` or a missing metric skips the column.
        first_horizon: Label of the first horizon row (steps are ``first_horizon, first_horizon + 1, ...``).
        mean_row: Append a ``mean`` row averaging each column over horizons (its ``action_sensitivity`` is
            computed from that row's mean errors, so the row is consistent with itself).
        caps: Per-metric upper bound applied to per-sample values before averaging. Default
            ``{"psnr": 100.0}``: an exact copy has PSNR ``inf``, which would make any mean ``inf``; 100 dB is
            above every non-identical 8-bit image (one level of error in one 64x64x3 pixel is ~89 dB), so the
            cap keeps exact copies the best possible score without drowning the average. Pass ``{}`` for none.
        title: Optional caption.

    Returns:
        :class:`HeldOutTable` with columns ``h``, then ``{metric} model``, ``{metric} copy``,
        ``{metric} shuffled`` per metric (in ``model``'s order, then metrics only the baselines have), then
        ``action_sensitivity``; NaN samples (empty moving regions) are skipped by the means.
    """
    if not model:
        raise ValueError("model metrics are empty; pass at least one {metric: (N, H) values}")
    caps = {"psnr": 100.0} if caps is None else dict(caps)
    methods = [("model", model), ("copy", copy_last or {}), ("shuffled", shuffled or {})]
    metric_names: list[str] = []
    for _, metrics in methods:
        metric_names.extend(name for name in metrics if name not in metric_names)
    series: dict[str, np.ndarray] = {}
    columns = ["h"]
    horizon = None
    for name in metric_names:
        for label, metrics in methods:
            if name not in metrics:
                continue
            values = _per_horizon(metrics[name], name, caps.get(name))
            if horizon is None:
                horizon = values.shape[0]
            elif values.shape[0] != horizon:
                raise ValueError(f"{name} {label} has {values.shape[0]} horizons, expected {horizon} like the others")
            column = f"{name} {label}"
            series[column] = values
            columns.append(column)
    if sensitivity_metric and sensitivity_metric in model and shuffled and sensitivity_metric in shuffled:
        series["action_sensitivity"] = action_sensitivity(
            series[f"{sensitivity_metric} model"], series[f"{sensitivity_metric} shuffled"]
        )
        columns.append("action_sensitivity")
    rows: list[dict[str, Any]] = [
        {"h": first_horizon + i, **{c: float(v[i]) for c, v in series.items()}} for i in range(horizon or 0)
    ]
    if mean_row and rows:
        with _quiet_nanmean():
            mean = {c: float(np.nanmean(v)) for c, v in series.items()}
        if "action_sensitivity" in mean:  # from the row's own mean errors, not a mean of per-horizon ratios
            mean["action_sensitivity"] = float(action_sensitivity(
                np.asarray([mean[f"{sensitivity_metric} model"]]), np.asarray([mean[f"{sensitivity_metric} shuffled"]])
            )[0])
        rows.append({"h": "mean", **mean})
    return HeldOutTable(columns=columns, rows=rows, title=title)


def reward_termination_table(
    pred_reward: ArrayLike | None = None,
    true_reward: ArrayLike | None = None,
    pred_terminated: ArrayLike | None = None,
    true_terminated: ArrayLike | None = None,
    *,
    title: str | None = None,
) -> HeldOutTable:
    """Precision / recall of the reward-sign classes and of termination, one row per target.

    Args:
        pred_reward, true_reward: Predicted and real rewards of the same transitions (both or neither).
        pred_terminated, true_terminated: Predicted and real termination flags (both or neither).
        title: Optional caption.

    Returns:
        :class:`HeldOutTable` with columns ``target, precision, recall, support, predicted`` and rows
        ``reward<0``, ``reward=0``, ``reward>0``, ``terminated`` (those given).
    """
    if (pred_reward is None) != (true_reward is None) or (pred_terminated is None) != (true_terminated is None):
        raise ValueError("pass predicted and true values together: pred_reward with true_reward, "
                         "pred_terminated with true_terminated")
    results: list[tuple[str, PrecisionRecall]] = []
    if pred_reward is not None:
        names = {-1: "reward<0", 0: "reward=0", 1: "reward>0"}
        results += [(names[k], pr) for k, pr in reward_sign_precision_recall(pred_reward, true_reward).items()]
    if pred_terminated is not None:
        results.append(("terminated", precision_recall(pred_terminated, true_terminated)))
    if not results:
        raise ValueError("nothing to tabulate: pass rewards and / or termination flags")
    columns = ["target", "precision", "recall", "support", "predicted"]
    rows = [
        {"target": name, "precision": pr.precision, "recall": pr.recall, "support": pr.support,
         "predicted": pr.predicted}
        for name, pr in results
    ]
    return HeldOutTable(columns=columns, rows=rows, title=title)


# --------------------------------------------------------------------------------------------- LPIPS

_LPIPS_MODELS: dict[tuple[str, str], torch.nn.Module] = {}


def lpips_distance(
    pred: ArrayLike,
    target: ArrayLike,
    *,
    net: str = "alex",
    channels_last: bool = True,
) -> ArrayLike:
    """LPIPS distance (Zhang et al. 2018) per image, via the optional ``lpips`` package.

    ``lpips`` depends on torchvision and downloads its backbone weights at first use; neither is available on
    every machine, so it is not a dependency of dws-gym. PSNR, SSIM and the moving-region error need nothing
    extra.

    Args:
        pred, target: ``(N, H, W, 3)`` (``channels_last=True``) or ``(N, 3, H, W)``, ``uint8`` or ``[0, 1]`` floats.
        net: LPIPS backbone, ``"alex"`` (the paper's usual choice), ``"vgg"`` or ``"squeeze"``.
        channels_last: Layout of the inputs.

    Returns:
        ``(N,)`` distances (lower is more similar), numpy for numpy inputs.

    Raises:
        ImportError: when ``lpips`` (or torchvision) cannot be imported.
    """
    try:
        import lpips  # noqa: PLC0415 - optional dependency, imported only when asked for
    except ImportError as err:
        raise ImportError(
            "lpips_distance needs the optional 'lpips' package, which depends on torchvision; install both "
            "(`pip install lpips torchvision` with a torchvision build matching your torch) to use it. "
            "PSNR, SSIM and moving_region_mse work without it."
        ) from err
    _check_pair(pred, target, 4)
    p, t = _to_tensor(pred, "pred"), _to_tensor(target, "target")
    if channels_last:
        p, t = p.movedim(-1, -3), t.movedim(-1, -3)
    device = p.device
    key = (net, str(device))
    if key not in _LPIPS_MODELS:
        _LPIPS_MODELS[key] = lpips.LPIPS(net=net, verbose=False).to(device).eval()
    with torch.no_grad():
        # LPIPS expects inputs in [-1, 1].
        d = _LPIPS_MODELS[key](p.float() * 2 - 1, t.float() * 2 - 1).reshape(p.shape[0])
    return _like(d.to(torch.float64), pred)
