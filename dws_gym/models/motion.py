"""Motion-reinforced loss weights (DWS paper Eq. 2-3).

The paper weights the training loss per pixel by ``omega_{i+1} = c ** Softmax(|x_{i+1} - x_i|)``. Read
literally, a softmax over the ~4k pixels of a frame gives every pixel about 1/4096, so ``omega`` is about 1
everywhere and the loss is unchanged. We keep the intent (weights in ``[1, c]``, largest where the frame
changes most, exactly 1 where nothing changes) with a max-normalised, temperature-scaled exponential:

    d      = mean over channels of |x_{i+1} - x_i|              pixels in [0, 1]
    m      = max(max over the frame's pixels of d, delta)
    e      = (exp(d / tau) - 1) / (exp(m / tau) - 1)             in [0, 1]
    omega  = c ** e

Properties (all tested):

* ``omega == 1`` exactly where ``d == 0`` and ``omega == c`` exactly at the frame's largest change when that
  change is at least ``delta``; ``omega`` is continuous and monotone in ``d``.
* ``tau`` is a softmax temperature in pixel units: a pixel whose change is ``g`` below the frame's largest
  change gets about ``exp(-g / tau)`` of the log-weight, so faint changes (noise, flicker) stay near 1 while
  changes close to the largest one are strongly weighted. As ``tau`` grows, ``e`` tends to ``d / m``.
* ``delta`` is a floor on the normaliser: a frame whose largest change is below ``delta`` is treated as
  (almost) static instead of having its tiny changes blown up to weight ``c``. Because ``exp(x) - 1`` is
  convex and 0 at 0, ``e <= d / delta`` there, so every weight of such a frame is at most ``c ** (d_max / delta)``.
* ``c == 1`` gives weights that are exactly 1, and :func:`weighted_mean` then returns bitwise the plain loss.

Defaults: ``c = 4`` (moving pixels count up to 4x a static pixel: a clear emphasis without letting the few
moving pixels of an Atari frame dominate the gradient), ``tau = 0.2`` (in Breakout a ball moving on black
changes the channel mean by about 0.45; a destroyed brick by about 0.6; with ``tau = 0.2`` the ball still gets
about half of the log-weight, while a 2 % change gets under 1 %), ``delta = 0.05`` (5 % of the pixel range,
the same threshold the moving-region metric uses, :func:`dws_gym.metrics.moving_mask`).

Weights carry no gradient. They multiply the per-element loss before the plain mean (no re-normalisation by the
weights' sum). For losses on a coarser grid (VAE latents, patch tokens), :func:`pool_weights` max-pools the pixel
weights to that grid so a small moving object still lifts the weight of the latent / token that contains it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_C",
    "DEFAULT_TAU",
    "DEFAULT_DELTA",
    "MotionLossConfig",
    "frame_differences",
    "motion_weights",
    "pool_weights",
    "weighted_mean",
    "motion_weighted_mse",
]

DEFAULT_C: float = 4.0
DEFAULT_TAU: float = 0.2
DEFAULT_DELTA: float = 0.05


def _check_hyperparameters(c: float, tau: float, delta: float) -> None:
    # Written as `not (x > 0)` so NaN is rejected too.
    if not (isinstance(c, (int, float)) and math.isfinite(c) and c > 0):
        raise ValueError(f"motion weight strength c must be a finite number > 0 (c = 1 disables it), got {c!r}")
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"motion temperature tau must be a finite number > 0 (pixel units, e.g. 0.2), got {tau!r}")
    if not (isinstance(delta, (int, float)) and math.isfinite(delta) and delta > 0):
        raise ValueError(
            f"motion floor delta must be a finite number > 0 (pixel units, e.g. 0.05), got {delta!r}"
        )


@dataclass(frozen=True)
class MotionLossConfig:
    """Hyper-parameters of the motion-reinforced loss (see the module docstring for their meaning).

    Attributes:
        c: Weight at the largest change of each frame (``> 0``; ``1`` gives the plain loss, ``< 1`` would
            down-weight motion).
        tau: Temperature in pixel units (``> 0``); smaller concentrates weight on the largest changes.
        delta: Floor on each frame's largest change (``> 0``, pixel units); frames changing less are near 1.
    """

    c: float = DEFAULT_C
    tau: float = DEFAULT_TAU
    delta: float = DEFAULT_DELTA

    def __post_init__(self) -> None:
        _check_hyperparameters(self.c, self.tau, self.delta)

    @property
    def enabled(self) -> bool:
        """False when ``c == 1``: the weights are all exactly 1 and can be skipped."""
        return self.c != 1.0

    def weights(self, frames: torch.Tensor, **kwargs) -> torch.Tensor:
        """:func:`motion_weights` with this config's ``c``, ``tau`` and ``delta``; ``kwargs`` go through."""
        return motion_weights(frames, c=self.c, tau=self.tau, delta=self.delta, **kwargs)


def frame_differences(
    frames: torch.Tensor,
    *,
    channels_last: bool = True,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """Channel-mean absolute change between consecutive frames, in ``[0, 1]`` pixel units.

    Args:
        frames: ``(B, F, H, W, C)`` (``channels_last=True``, the env / trajectory-store layout) or
            ``(B, F, C, H, W)``; ``uint8`` (0..255) or floating point in ``value_range``.
        channels_last: Where the channel axis is.
        value_range: ``(low, high)`` of floating-point inputs, e.g. ``(-1, 1)`` for diffusion inputs; ignored
            for ``uint8`` (always 0..255).

    Returns:
        float tensor ``(B, F - 1, H, W)``: entry ``j`` is ``mean_c |x_{j+1} - x_j|`` scaled to ``[0, 1]``;
        ``float64`` for ``float64`` inputs, ``float32`` otherwise.
    """
    if not isinstance(frames, torch.Tensor):
        raise ValueError(f"frames must be a torch.Tensor, got {type(frames).__name__}")
    if frames.ndim != 5:
        layout = "(B, F, H, W, C)" if channels_last else "(B, F, C, H, W)"
        raise ValueError(f"frames must be 5-D {layout}, got shape {tuple(frames.shape)}")
    if frames.shape[1] < 1:
        raise ValueError("frames needs at least one frame along dim 1")
    channel_dim = -1 if channels_last else 2
    if frames.dtype == torch.uint8:
        # Differences of integers are exact; scale once afterwards.
        diff = (frames[:, 1:].to(torch.int16) - frames[:, :-1].to(torch.int16)).abs().to(torch.float32)
        return diff.mean(dim=channel_dim) / 255.0
    if not frames.is_floating_point():
        raise ValueError(f"frames must be uint8 or floating point, got dtype {frames.dtype}")
    low, high = value_range
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        raise ValueError(f"value_range must be finite (low, high) with high > low, got {value_range!r}")
    if torch.isnan(frames).any() or torch.isinf(frames).any():
        raise ValueError("frames contain NaN or inf; motion weights need finite pixel values")
    dtype = torch.float64 if frames.dtype == torch.float64 else torch.float32
    x = frames.to(dtype)
    diff = (x[:, 1:] - x[:, :-1]).abs().mean(dim=channel_dim)
    return diff / (high - low)


@torch.no_grad()
def motion_weights(
    frames: torch.Tensor,
    *,
    c: float = DEFAULT_C,
    tau: float = DEFAULT_TAU,
    delta: float = DEFAULT_DELTA,
    num_context: int = 1,
    channels_last: bool = True,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """Per-pixel motion-reinforced loss weights ``omega``, without gradient.

    Args:
        frames: Ground-truth clip, ``(B, F, H, W, C)`` (``channels_last=True``) or ``(B, F, C, H, W)``;
            ``uint8`` or floating point in ``value_range``. Must not require the weights to carry gradient:
            the result is computed under ``no_grad`` and detached.
        c: Weight at each frame's largest change (``> 0``; ``1`` disables the reweighting exactly).
        tau: Temperature in pixel units (``> 0``).
        delta: Floor on each frame's largest change, pixel units (``> 0``).
        num_context: Frames ``0 .. num_context - 1`` are conditioning frames and get weight 1 (``>= 1``; the
            first frame has no predecessor, so it is always 1).
        channels_last: Where the channel axis of ``frames`` is.
        value_range: ``(low, high)`` of floating-point frames; ignored for ``uint8``.

    Returns:
        ``(B, F, H, W)`` weights on ``frames.device``, in ``[1, c]`` (``[c, 1]`` if ``c < 1``); ``float32``
        (``float64`` for ``float64`` frames). Frame ``j >= num_context`` is weighted by the change from
        frame ``j - 1`` to frame ``j``, normalised per (clip, frame).
    """
    _check_hyperparameters(c, tau, delta)
    if not isinstance(num_context, int) or num_context < 1:
        raise ValueError(f"num_context must be an int >= 1, got {num_context!r}")
    if isinstance(frames, torch.Tensor) and frames.ndim == 5 and num_context > frames.shape[1]:
        raise ValueError(f"num_context={num_context} exceeds the {frames.shape[1]} frames given")
    d = frame_differences(frames, channels_last=channels_last, value_range=value_range)  # (B, F-1, H, W)
    batch, num_frames = frames.shape[0], frames.shape[1]
    weights = torch.ones((batch, num_frames) + tuple(d.shape[2:]), dtype=d.dtype, device=d.device)
    if c == 1.0 or num_frames == num_context:
        return weights
    d = d[:, num_context - 1 :]  # changes into frames num_context .. F-1
    peak = d.amax(dim=(-2, -1), keepdim=True).clamp_min(delta)
    # (exp(d/tau) - 1) / (exp(peak/tau) - 1) rewritten so it never overflows for small tau:
    # exp((d - peak)/tau) * (1 - exp(-d/tau)) / (1 - exp(-peak/tau)); d = 0 gives 0, d = peak gives 1 exactly.
    e = torch.exp((d - peak) / tau) * torch.expm1(-d / tau) / torch.expm1(-peak / tau)
    e = e.clamp(0.0, 1.0)
    omega = torch.pow(torch.as_tensor(c, dtype=d.dtype, device=d.device), e)
    # pow(c, 0) is 1 by IEEE, but a vectorised pow may be off by an ulp at e == 1; pin that endpoint.
    omega = torch.where(e == 1.0, torch.as_tensor(c, dtype=d.dtype, device=d.device), omega)
    weights[:, num_context:] = omega
    return weights.detach()


def pool_weights(weights: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Max-pool pixel weights to a coarser grid (VAE latents, patch tokens).

    Uses adaptive max pooling, which equals regular ``kernel = stride = H / h`` max pooling when the sizes
    divide (e.g. 64x64 pixels -> 8x8 patches of 8x8). For a token loss, ``pooled.flatten(2)`` gives the
    row-major token order ``(B, F, h * w)``.

    Args:
        weights: ``(B, F, H, W)`` weights from :func:`motion_weights`.
        size: Target grid ``(h, w)`` or ``h`` for a square grid; each must be ``<= `` the input size.

    Returns:
        ``(B, F, h, w)`` tensor of the same dtype and device; each cell is the largest weight it covers.
    """
    if not isinstance(weights, torch.Tensor) or weights.ndim != 4:
        shape = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ValueError(f"weights must be a 4-D tensor (B, F, H, W), got {shape}")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    height, width = weights.shape[-2:]
    if not (1 <= h <= height and 1 <= w <= width):
        raise ValueError(f"pool size {(h, w)} must be between 1 and the weight grid {(height, width)}")
    batch, frames = weights.shape[:2]
    flat = weights.reshape(batch * frames, 1, height, width)
    return F.adaptive_max_pool2d(flat, (h, w)).reshape(batch, frames, h, w)


def weighted_mean(
    per_element_loss: torch.Tensor,
    weights: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of ``weights * per_element_loss`` (Eq. 3), optionally over masked elements only.

    Args:
        per_element_loss: Unreduced loss, any shape, e.g. ``(B, F, C, H, W)`` squared errors or ``(B, F, L)``
            per-token cross-entropy.
        weights: Detached weights broadcastable to the loss (unsqueeze the channel axis of ``(B, F, H, W)``
            weights first, or pool / flatten them for tokens). ``None`` means all ones.
        mask: Optional bool / 0-1 tensor broadcastable to the loss (e.g. ``(B, F, 1, 1, 1)`` target frames of
            valid windows); the mean is over the elements where it is true.

    Returns:
        Scalar tensor. Without a mask: ``(weights * loss).mean()``. With a mask:
        ``sum(weights * loss * mask) / count(mask over the loss's shape)``; an all-false mask gives 0 (still
        connected to the graph). Weights that are exactly 1 give bitwise the unweighted result.
    """
    if weights is not None:
        if weights.requires_grad:
            raise ValueError("weights must not carry gradient; compute them with motion_weights or .detach() them")
        try:
            torch.broadcast_shapes(weights.shape, per_element_loss.shape)
        except RuntimeError as err:
            raise ValueError(
                f"weights {tuple(weights.shape)} do not broadcast to the loss {tuple(per_element_loss.shape)}; "
                "unsqueeze the channel axis or pool_weights() to the loss grid"
            ) from err
        loss = per_element_loss * weights.to(per_element_loss.dtype)
    else:
        loss = per_element_loss
    if mask is None:
        return loss.mean()
    try:
        mask = torch.broadcast_to(mask.to(device=loss.device), loss.shape)
    except RuntimeError as err:
        raise ValueError(f"mask {tuple(mask.shape)} does not broadcast to the loss {tuple(loss.shape)}") from err
    mask = mask.to(loss.dtype)
    count = mask.sum()
    return (loss * mask).sum() / count.clamp_min(1.0)


def motion_weighted_mse(
    pred: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None,
    mask: torch.Tensor | None = None,
    *,
    channels_last: bool = False,
) -> torch.Tensor:
    """Motion-reinforced MSE: mean of ``omega * (pred - target) ** 2`` (Eq. 3 with the flow-matching MSE).

    Args:
        pred, target: ``(B, F, C, H, W)`` (default, the model layout) or ``(B, F, H, W, C)`` with
            ``channels_last=True``; floating point, same shape. Only ``pred`` needs gradient.
        weights: ``(B, F, H, W)`` weights on the same frames and grid (slice or :func:`pool_weights` them
            first); ``None`` gives the plain MSE.
        mask: Optional mask broadcastable to ``pred``, see :func:`weighted_mean`.
        channels_last: Layout of ``pred`` / ``target``.

    Returns:
        Scalar loss. With ``weights`` all exactly 1 (``c == 1``) it equals ``((pred - target) ** 2).mean()``
        bitwise.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    if pred.ndim != 5:
        raise ValueError(f"pred / target must be 5-D (B, F, C, H, W) or (B, F, H, W, C), got {tuple(pred.shape)}")
    if weights is not None:
        expected = pred.shape[:2] + (pred.shape[2:4] if channels_last else pred.shape[3:5])
        if tuple(weights.shape) != tuple(expected):
            raise ValueError(
                f"weights must be (B, F, H, W) = {tuple(expected)} to match pred {tuple(pred.shape)}, got "
                f"{tuple(weights.shape)}; slice the context frames or pool_weights() to this grid"
            )
        weights = weights.unsqueeze(-1 if channels_last else 2)
    return weighted_mean((pred - target) ** 2, weights, mask)


def changed_pixels(frames: torch.Tensor, *, threshold: float = 0.04, dilate: int = 1) -> torch.Tensor:
    """Where anything moved around a predicted frame: a mask ``(B, H, W)`` for the loss's changed-pixel share.

    Args:
        frames: ``(B, 3, C, H, W)`` floats in ``[-1, 1]``: the second-to-last context frame, the last context frame
            and the target. A pixel counts as changed where the channel-mean change between either consecutive pair
            exceeds ``threshold`` (pixel units, ``[0, 1]``), so both where a small object was and where it went
            are covered.
        threshold: Change threshold in ``[0, 1]`` pixel units.
        dilate: Grow the mask by this many pixels (a 2-pixel ball then covers its neighbourhood, where a blurred
            prediction would put its error).

    Returns:
        bool ``(B, H, W)``, without gradient.
    """
    if frames.ndim != 5 or frames.shape[1] != 3:
        raise ValueError(f"frames must be (B, 3, C, H, W), got {tuple(frames.shape)}")
    with torch.no_grad():
        d = (frames[:, 1:] - frames[:, :-1]).abs().mean(dim=2) * 0.5  # (B, 2, H, W) in [0, 1] units
        mask = (d > threshold).any(dim=1, keepdim=True).float()
        if dilate > 0:
            mask = F.max_pool2d(mask, 2 * dilate + 1, stride=1, padding=dilate)
        return mask[:, 0] > 0


def changed_share_mean(err: torch.Tensor, changed: torch.Tensor, share: float) -> torch.Tensor:
    """Per-sample loss where changed pixels carry a fixed ``share`` of the total.

    With a 2-pixel ball in a 4096-pixel frame, a plain (or ``c = 4`` motion-weighted) mean gives the ball well
    under 1% of the loss, so a model learns the static frame and leaves the ball where it was. Splitting the loss
    as ``(1 - share) * mean(err) + share * mean(err over changed pixels)`` makes the moving pixels count whatever
    their number; frames where nothing changed get the plain mean.

    Args:
        err: ``(B, H, W)`` per-pixel error (already motion-weighted if wanted).
        changed: ``(B, H, W)`` bool mask (:func:`changed_pixels`).
        share: Weight of the changed-pixel mean, in ``[0, 1)``; ``0`` gives the plain mean exactly.

    Returns:
        ``(B,)`` per-sample loss.
    """
    if not 0.0 <= share < 1.0:
        raise ValueError(f"share must lie in [0, 1), got {share!r}")
    plain = err.flatten(1).mean(dim=1)
    if share == 0.0:
        return plain
    m = changed.flatten(1).to(err.dtype)
    count = m.sum(dim=1)
    moving = (err.flatten(1) * m).sum(dim=1) / count.clamp_min(1.0)
    return torch.where(count > 0, (1.0 - share) * plain + share * moving, plain)
