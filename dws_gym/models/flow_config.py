"""The configuration of :class:`~dws_gym.models.flow.FlowWorldModel`, importable without diffusers.

``train_world_model.py`` builds its ``--flow.*`` flags from :class:`FlowConfig`; keeping the config apart from the
model lets every U-Net run (and ``--help``) start without importing diffusers' transformer package.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from dws_gym.checks import check_positive_int

from .motion import DEFAULT_C, DEFAULT_DELTA, DEFAULT_TAU

__all__ = ["FLOW_CONFIG_NAME", "FLOW_FORMAT_VERSION", "FLOW_WEIGHTS_NAME", "FlowConfig"]

#: Version of the on-disk format written by :meth:`FlowWorldModel.save_pretrained`.
FLOW_FORMAT_VERSION = 1
FLOW_CONFIG_NAME = "flow_config.json"
FLOW_WEIGHTS_NAME = "flow_model.safetensors"

_PARAMETRIZATIONS = ("residual", "v")
_T_SAMPLINGS = ("uniform", "logit_normal")
_SPACES = ("pixel", "latent")


# ================================================================================================== config
@dataclass
class FlowConfig:
    """Everything needed to rebuild a :class:`FlowWorldModel` (JSON-serialisable, see :meth:`to_dict`).

    The small-backbone sizes (``patch_size`` .. ``num_prompt_tokens``) describe the pixel-space default; a
    pre-trained backbone stores its own Wan config in ``wan_config``, which then takes precedence.

    Attributes:
        frame_size: Env frames are ``(frame_size, frame_size, channels)`` uint8.
        channels: Colour channels of an env frame (3).
        context_frames: ``K``, clean context frames per training clip and the default for stepping.
        space: ``"pixel"`` or ``"latent"`` (pre-trained Wan VAE latents; needs ``vae_config``).
        patch_size: Spatial patch ``p`` of the ``(1, p, p)`` patches (pixel space).
        num_heads, head_dim: Attention heads and their width; the model width is their product.
        num_layers: Transformer blocks.
        ffn_dim: Hidden width of each block's feed-forward network.
        freq_dim: Sinusoidal timestep features (Wan's ``freq_dim``).
        text_dim: Width of the cross-attention "prompt" tokens.
        num_prompt_tokens: Learned static prompt tokens (pixel space; no text).
        action_space: ``"discrete"`` or ``"continuous"``.
        num_actions: Size of a discrete action space.
        action_dim: Size of a continuous action vector.
        action_text_dim: Width of cached sentence embeddings of the actions; ``None`` uses a learned table.
        cond_dim: Action embedding size fed to the DWS module.
        cond_hidden_dim: Hidden width of the module's two linear layers (``None``: ``cond_dim``).
        action_mode: ``"frame"`` (DWS), ``"global"`` or ``"none"`` (ablations of the module).
        parametrization: ``"residual"`` (x0 = previous frame + correction, x0 loss) or ``"v"`` (v-prediction).
        prev_frame_input: Feed the previous frame as extra input channels.
        t_sampling: Target-frame noise levels, ``"uniform"`` or ``"logit_normal"`` (``sigmoid(N(mean, std))``).
        logit_mean, logit_std: Parameters of the logit-normal sampler.
        context_noise: Largest noise level of context-frame augmentation during training (``0`` disables it); each
            context frame gets ``t ~ U(0, context_noise)`` and the model is told that ``t``.
        motion_c, motion_tau, motion_delta: Motion-reinforced loss defaults; ``motion_c = 1`` is the plain loss.
        sampling_steps: Default Euler steps of :meth:`FlowWorldModel.sample_next`.
        sample_shift: Timestep shift of the sampling schedule, ``t -> s t / (1 + (s - 1) t)`` (1 = linear).
        keep_below: Pixel space only: after sampling, pixels whose change from the previous frame is below this (in
            ``[0, 1]`` units, largest over channels) keep their previous value. Low-amplitude output noise otherwise
            compounds over long open-loop rollouts of flat-coloured games; ``0`` disables it.
        kv_cache: Cache the context's keys / values while sampling (same result, fewer FLOPs).
        gradient_checkpointing: Recompute blocks in backward to save memory.
        working_resolution: Latent space only: env frames are resized to this square size before the VAE.
        prompt: The static prompt the latent-space model's cross-attention reads (its embedding is stored).
        prompt_max_length: Tokens the prompt is padded to (Wan uses 512).
        base_model: Where the pre-trained weights came from (provenance only).
        wan_config: Full ``WanTransformer3DModel`` config (pre-trained backbones).
        vae_config: Full ``AutoencoderKLWan`` config (latent space).
        format_version: On-disk format version.
    """

    frame_size: int = 64
    channels: int = 3
    context_frames: int = 4
    space: str = "pixel"
    patch_size: int = 8
    num_heads: int = 6
    head_dim: int = 32
    num_layers: int = 3
    ffn_dim: int = 768
    freq_dim: int = 64
    text_dim: int = 64
    num_prompt_tokens: int = 4
    action_space: str = "discrete"
    num_actions: int | None = 18
    action_dim: int | None = None
    action_text_dim: int | None = None
    cond_dim: int = 64
    cond_hidden_dim: int | None = None
    action_mode: str = "frame"
    parametrization: str = "residual"
    prev_frame_input: bool = True
    t_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    context_noise: float = 0.0
    motion_c: float = DEFAULT_C
    motion_tau: float = DEFAULT_TAU
    motion_delta: float = DEFAULT_DELTA
    sampling_steps: int = 4
    sample_shift: float = 1.0
    keep_below: float = 0.0
    kv_cache: bool = True
    gradient_checkpointing: bool = False
    working_resolution: int | None = None
    prompt: str | None = None
    prompt_max_length: int = 512
    base_model: str | None = None
    wan_config: dict[str, Any] | None = None
    vae_config: dict[str, Any] | None = None
    format_version: int = FLOW_FORMAT_VERSION

    def __post_init__(self) -> None:
        self.validate()

    # ---------------------------------------------------------------------------------------------- derived
    @property
    def width(self) -> int:
        """Model width (``num_heads * head_dim`` for the small backbone, the Wan config's otherwise)."""
        if self.wan_config is not None:
            return int(self.wan_config["num_attention_heads"]) * int(self.wan_config["attention_head_dim"])
        return self.num_heads * self.head_dim

    @property
    def state_channels(self) -> int:
        """Channels ``C`` of the flow state: colour channels in pixel space, VAE ``z_dim`` in latent space."""
        if self.space == "latent":
            return int((self.vae_config or {}).get("z_dim", 16))
        return self.channels

    @property
    def spatial_patch(self) -> tuple[int, int]:
        """``(p_h, p_w)`` of the transformer's patches."""
        if self.wan_config is not None:
            patch = self.wan_config["patch_size"]
            return int(patch[1]), int(patch[2])
        return self.patch_size, self.patch_size

    def wan_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of the ``WanTransformer3DModel`` this config describes."""
        in_channels = self.state_channels * (2 if self.prev_frame_input else 1)
        if self.wan_config is not None:
            kwargs = dict(self.wan_config)
        else:
            kwargs = {
                "patch_size": [1, self.patch_size, self.patch_size],
                "num_attention_heads": self.num_heads,
                "attention_head_dim": self.head_dim,
                "text_dim": self.text_dim,
                "freq_dim": self.freq_dim,
                "ffn_dim": self.ffn_dim,
                "num_layers": self.num_layers,
                "cross_attn_norm": True,
            }
        kwargs["in_channels"] = in_channels
        kwargs["out_channels"] = self.state_channels
        return kwargs

    # ---------------------------------------------------------------------------------------------- checks
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent field."""

        for name in ("frame_size", "channels", "context_frames", "patch_size", "num_heads", "head_dim",
                     "num_layers", "ffn_dim", "freq_dim", "text_dim", "num_prompt_tokens", "cond_dim",
                     "sampling_steps", "prompt_max_length"):  # fmt: skip
            check_positive_int(f"FlowConfig.{name}", getattr(self, name))
        if self.format_version > FLOW_FORMAT_VERSION:
            raise ValueError(
                f"this flow model was saved with format version {self.format_version}, newer than the "
                f"{FLOW_FORMAT_VERSION} this dws_gym reads; upgrade dws_gym"
            )
        if self.space not in _SPACES:
            raise ValueError(f"FlowConfig.space must be one of {_SPACES}, got {self.space!r}")
        if self.parametrization not in _PARAMETRIZATIONS:
            raise ValueError(
                f"FlowConfig.parametrization must be one of {_PARAMETRIZATIONS}, got {self.parametrization!r}"
            )
        if self.t_sampling not in _T_SAMPLINGS:
            raise ValueError(f"FlowConfig.t_sampling must be one of {_T_SAMPLINGS}, got {self.t_sampling!r}")
        if self.action_mode not in ("frame", "global", "none"):
            raise ValueError(f"FlowConfig.action_mode must be 'frame', 'global' or 'none', got {self.action_mode!r}")
        if self.action_space == "discrete":
            check_positive_int("FlowConfig.num_actions", self.num_actions)
            if self.action_text_dim is not None:
                check_positive_int("FlowConfig.action_text_dim", self.action_text_dim)
        elif self.action_space == "continuous":
            check_positive_int("FlowConfig.action_dim", self.action_dim)
        else:
            raise ValueError(f"FlowConfig.action_space must be 'discrete' or 'continuous', got {self.action_space!r}")
        if self.cond_hidden_dim is not None:
            check_positive_int("FlowConfig.cond_hidden_dim", self.cond_hidden_dim)
        if not (0.0 <= self.context_noise < 1.0):
            raise ValueError(f"FlowConfig.context_noise must be in [0, 1), got {self.context_noise!r}")
        if not (isinstance(self.keep_below, (int, float)) and 0.0 <= self.keep_below < 1.0):
            raise ValueError(f"FlowConfig.keep_below must be in [0, 1), got {self.keep_below!r}")
        if not (self.logit_std > 0 and math.isfinite(self.logit_mean)):
            raise ValueError("FlowConfig.logit_std must be > 0 and logit_mean finite")
        if not (self.sample_shift > 0 and math.isfinite(self.sample_shift)):
            raise ValueError(f"FlowConfig.sample_shift must be a finite number > 0, got {self.sample_shift!r}")
        if self.space == "latent":
            if self.vae_config is None or self.wan_config is None:
                raise ValueError("a latent-space FlowConfig needs vae_config and wan_config (use from_pretrained_wan)")
            check_positive_int("FlowConfig.working_resolution", self.working_resolution)
            factor = int(self.vae_config.get("scale_factor_spatial", 8)) * self.spatial_patch[0]
            if self.working_resolution % factor:
                raise ValueError(
                    f"working_resolution {self.working_resolution} must be a multiple of the VAE factor times the "
                    f"patch size ({factor})"
                )
            return
        if self.wan_config is None:
            if self.frame_size % self.patch_size:
                raise ValueError(f"patch_size {self.patch_size} must divide frame_size {self.frame_size}")
            if self.head_dim % 2 or self.head_dim < 6:
                raise ValueError(f"head_dim must be even and >= 6 (3-axis rotary embedding), got {self.head_dim}")
            # The output projection is the bottleneck: each token must emit its patch's values.
            values = self.patch_size**2 * self.channels
            if values > self.width:
                raise ValueError(
                    f"a {self.patch_size}x{self.patch_size} patch outputs {values} values but the width is only "
                    f"{self.width}; use a smaller patch_size or a larger num_heads * head_dim (a patch must fit "
                    "through the width: each token's output projection emits all of its patch's values)"
                )

    # ---------------------------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FlowConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown FlowConfig fields {unknown}; was this saved by a newer dws_gym?")
        return cls(**data)

    def to_json(self, path: str | os.PathLike) -> None:
        """Write the config to ``path`` as indented JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> FlowConfig:
        """Read a config written by :meth:`to_json`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no flow model config at {path}")
        return cls.from_dict(json.loads(path.read_text()))
