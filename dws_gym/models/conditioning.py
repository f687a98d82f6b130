"""The DWS action-conditioned module (paper Eq. 1), and hooks that inject it into transformers' Llama-style decoders.

Before every transformer block's feed-forward network the normed activations of frame ``i`` become

    LN(x_i) * (1 + alpha_i) + beta_i,        (alpha_i, beta_i) = W2 SiLU(W1 c_i + b1) + b2

where ``c_i`` is frame ``i``'s action embedding and ``W2, b2`` start at zero, so a freshly conditioned model computes
exactly what the base model computes.

Two ways to apply it:

* As an argument. A backbone whose block forward is our own code takes the per-frame ``(alpha, beta)`` from a
  :class:`BlockActionModulation` (one :class:`ActionModulation` per block) as explicit inputs; the world model's Wan
  backbone does so (:mod:`dws_gym.models.causal_wan`). Nothing is stored between calls.
* With forward hooks (:func:`inject_action_conditioning`), for a pre-trained decoder whose code is not forked:
  transformers 5.x ``LlamaDecoderLayer.forward`` computes ``mlp(post_attention_layernorm(h))``, an RMSNorm with a
  learned weight, so ``layer.post_attention_layernorm`` is hooked. Any decoder layer exposing
  ``post_attention_layernorm`` and ``mlp`` (Mistral, Qwen2, ...) is found the same way. The condition is state on the
  :class:`ActionConditioner`, set with :meth:`ActionConditioner.set_condition` before the call.

Token-to-frame mapping of the hooks: frame-major token layouts pass ``tokens_per_frame``; autoregressive token streams
interleave slot and frame tokens, so they pass ``frame_ids`` (``(B, L)`` long, ``-1`` for tokens that no action
modulates, e.g. a BOS token).

Gradient checkpointing recomputes each block, and with it the hooks, during ``backward``. The condition is therefore
read at call time and must still be set when ``backward`` runs: either call ``backward`` inside the
``with conditioner.set_condition(...)`` block, or use ``set_condition`` without ``with`` (it stays set until
replaced or cleared). Recomputing with no condition, or with a different condition than the last grad-enabled
forward, raises instead of silently producing wrong gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

__all__ = [
    "CONDITIONER_ATTR",
    "ActionConditioner",
    "ActionModulation",
    "BlockActionModulation",
    "ConditioningMode",
    "find_prefn_norms",
    "freeze_base",
    "get_action_conditioner",
    "inject_action_conditioning",
    "modulate",
]

ConditioningMode = Literal["frame", "global", "none"]
Family = Literal["auto", "llama", "custom"]

#: Attribute under which the conditioner is registered on the conditioned model (so it is part of its state_dict).
CONDITIONER_ATTR = "dws_action"

_MODES = ("frame", "global", "none")


def modulate(normed: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Return ``normed * (1 + alpha) + beta`` in ``normed``'s dtype (shapes must broadcast)."""
    return normed * (1 + alpha.to(normed.dtype)) + beta.to(normed.dtype)


class ActionModulation(nn.Module):
    """Regresses per-frame scale and shift ``(alpha, beta)`` from action embeddings (two linear layers).

    Args:
        cond_dim: size ``C`` of an action embedding.
        dim: width ``D`` of the normed activations being modulated.
        hidden_dim: width of the hidden layer (default ``cond_dim``).

    The output layer is zero-initialised, so ``alpha = beta = 0`` until trained.
    """

    def __init__(self, cond_dim: int, dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        if cond_dim <= 0 or dim <= 0:
            raise ValueError(f"cond_dim and dim must be positive, got cond_dim={cond_dim}, dim={dim}")
        hidden_dim = cond_dim if hidden_dim is None else hidden_dim
        if hidden_dim <= 0:
            raise ValueError(f"hidden_dim must be positive, got {hidden_dim}")
        self.cond_dim = cond_dim
        self.dim = dim
        self.linear1 = nn.Linear(cond_dim, hidden_dim)
        self.act = nn.SiLU()
        self.linear2 = nn.Linear(hidden_dim, 2 * dim)
        nn.init.zeros_(self.linear2.weight)
        nn.init.zeros_(self.linear2.bias)

    def forward(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map ``emb`` ``(B, F, C)`` (any float dtype/device) to ``(alpha, beta)``, each ``(B, F, D)``.

        The computation runs in this module's dtype and on its device.
        """
        w = self.linear1.weight
        out = self.linear2(self.act(self.linear1(emb.to(device=w.device, dtype=w.dtype))))
        alpha, beta = out.chunk(2, dim=-1)
        return alpha, beta


class BlockActionModulation(nn.Module):
    """The DWS module of a whole backbone: one :class:`ActionModulation` per transformer block.

    It only holds the regressors; the backbone's block forward applies them, taking ``(alpha, beta)`` as arguments
    (see :func:`dws_gym.models.causal_wan.wan_forward`). :class:`ActionConditioner` adds forward hooks for backbones
    whose code is not ours.

    Args:
        cond_dim: action embedding size ``C``.
        dims: width ``D`` of each block's normed pre-FFN activations, one per block.
        hidden_dim: hidden width of every :class:`ActionModulation` (default ``cond_dim``).
        mode: ``"frame"`` (paper: frame ``i``'s tokens modulated by frame ``i``'s embedding), ``"global"`` (ablation:
            the trajectory's mean embedding modulates every token, like a static prompt) or ``"none"`` (no-op: no
            parameters; the model computes exactly the base model).
    """

    def __init__(
        self,
        cond_dim: int,
        dims: Sequence[int],
        hidden_dim: int | None = None,
        mode: ConditioningMode = "frame",
    ) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if cond_dim <= 0:
            raise ValueError(f"cond_dim must be positive, got {cond_dim}")
        self.cond_dim = cond_dim
        self.mode: ConditioningMode = mode
        self.dims = [int(d) for d in dims]
        self.modulations = nn.ModuleList(
            [] if mode == "none" else [ActionModulation(cond_dim, d, hidden_dim) for d in self.dims]
        )

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, cond_dim={self.cond_dim}, blocks={len(self.dims)}"

    def check_embedding(self, emb: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``emb`` is a float ``(B, F, cond_dim)`` tensor with ``B, F >= 1`` (shapes only:
        no device sync)."""
        if not isinstance(emb, torch.Tensor) or emb.ndim != 3 or not emb.is_floating_point():
            got = f"{tuple(emb.shape)} {emb.dtype}" if isinstance(emb, torch.Tensor) else type(emb).__name__
            raise ValueError(f"emb must be a float tensor of shape (B, F, cond_dim), got {got}")
        if emb.shape[-1] != self.cond_dim:
            raise ValueError(f"emb has {emb.shape[-1]} features but the module expects cond_dim={self.cond_dim}")
        if emb.shape[0] < 1 or emb.shape[1] < 1:
            raise ValueError(f"emb must have at least one batch element and one frame, got shape {tuple(emb.shape)}")


def _norm_width(norm: nn.Module) -> int:
    """The feature width a norm normalises over."""
    shape = getattr(norm, "normalized_shape", None)
    if shape is not None:
        return int(shape[-1]) if isinstance(shape, Sequence) else int(shape)
    weight = getattr(norm, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.ndim == 1:
        return int(weight.shape[0])
    raise ValueError(
        f"cannot infer the width of {type(norm).__name__}: it has neither `normalized_shape` nor a 1-D `weight`; "
        "pass `dim=` to inject_action_conditioning"
    )


def find_prefn_norms(model: nn.Module, family: Family = "auto") -> tuple[Literal["llama"], list[tuple[str, nn.Module]]]:
    """Find the norm whose output feeds each decoder layer's FFN.

    Args:
        model: a transformers decoder (``LlamaModel`` / ``LlamaForCausalLM`` or any module with decoder layers
            exposing ``post_attention_layernorm`` and ``mlp``).
        family: ``"llama"`` or ``"auto"`` (the same: the only family found by name).

    Returns:
        The resolved family and ``(qualified_name, norm_module)`` pairs in layer order.
    """
    if family not in ("auto", "llama"):
        raise ValueError(f"family must be 'auto' or 'llama', got {family!r}")
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if name.split(".")[0] == CONDITIONER_ATTR:
            continue
        prefix = f"{name}." if name else ""
        if all(isinstance(getattr(module, a, None), nn.Module) for a in ("post_attention_layernorm", "mlp")):
            found.append((prefix + "post_attention_layernorm", module.post_attention_layernorm))
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no Llama-style decoder layers (with `post_attention_layernorm` and `mlp`) "
            "to condition; pass the pre-FFN norms explicitly with norms=[...]"
        )
    return "llama", found


@dataclass
class _Condition:
    emb: torch.Tensor  # (B, F, C); F == 1 in global mode
    tokens_per_frame: int | None
    gather_ids: torch.Tensor | None  # (B or 1, L) long, -1 already replaced by F (a zero row)
    version: int


class _ConditionScope:
    """Returned by ``set_condition``; used with ``with`` it restores the previous condition on exit."""

    def __init__(self, conditioner: ActionConditioner, previous: _Condition | None) -> None:
        self._conditioner = conditioner
        self._previous = previous

    def __enter__(self) -> ActionConditioner:
        return self._conditioner

    def __exit__(self, *exc: object) -> None:
        self._conditioner._condition = self._previous


class _PreFFNHook:
    """Forward hook on one pre-FFN norm. A callable object (not a closure) so ``copy.deepcopy(model)``, e.g. for an
    EMA copy, rebinds the copied hooks to the copied conditioner."""

    def __init__(self, conditioner: ActionConditioner, index: int) -> None:
        self.conditioner = conditioner
        self.index = index

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        return self.conditioner._modulate_output(self.index, output)


def _in_backward() -> bool:
    """True while autograd runs a backward pass (where checkpointed blocks are recomputed)."""
    task_id = getattr(torch._C, "_current_graph_task_id", None)
    return task_id is not None and task_id() != -1


class ActionConditioner(BlockActionModulation):
    """A :class:`BlockActionModulation` applied by forward hooks on each block's pre-FFN norm.

    Create it with :func:`inject_action_conditioning`, which registers it on the model as ``model.dws_action`` so it
    is saved, loaded and moved with the model. Supply actions with :meth:`set_condition` before calling the model.

    Args:
        cond_dim: action embedding size ``C``.
        dims: width ``D`` of each hooked norm's output, one per block.
        hidden_dim: hidden width of every :class:`ActionModulation` (default ``cond_dim``).
        mode: ``"frame"``, ``"global"`` or ``"none"`` (see :class:`BlockActionModulation`; ``"none"`` adds no hooks).
        family: the family the norms were found in (informational).
    """

    def __init__(
        self,
        cond_dim: int,
        dims: Sequence[int],
        hidden_dim: int | None = None,
        mode: ConditioningMode = "frame",
        family: str = "custom",
    ) -> None:
        super().__init__(cond_dim, dims, hidden_dim, mode)
        self.family = family
        self._condition: _Condition | None = None
        self._version = 0
        self._grad_forward_version: int | None = None
        self._enabled = True
        self._targets: list[nn.Module] = []  # hooked norms; a plain list, so they are not submodules
        self._hooks: list[_PreFFNHook] = []

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, family={self.family!r}, cond_dim={self.cond_dim}, blocks={len(self.dims)}"

    # ----------------------------------------------------------------------------------------------- condition
    @property
    def condition_set(self) -> bool:
        """Whether a condition is currently set."""
        return self._condition is not None

    def set_condition(
        self,
        emb: torch.Tensor,
        *,
        tokens_per_frame: int | None = None,
        frame_ids: torch.Tensor | None = None,
    ) -> _ConditionScope:
        """Supply the per-frame action embeddings for the following model calls.

        Args:
            emb: ``(B, F, C)`` float action embeddings, one per frame (``B`` may be 1 to broadcast over the batch).
                Frame ``i`` is modulated by ``emb[:, i]``; see ``DiscreteActionEmbedder.embed_for_frames`` for
                the frame alignment (frame 0 gets the null embedding, frame ``i + 1`` gets ``a_i``).
            tokens_per_frame: for frame-major token layouts (frame ``i`` is the ``i``-th run of this many tokens);
                the model's sequence length must then be ``F * tokens_per_frame``.
            frame_ids: ``(B, L)`` or ``(L,)`` integer tensor mapping each token to its frame in ``[0, F)``, or
                ``-1`` for tokens left unmodulated (interleaved autoregressive streams; with a KV cache, the ids of
                the tokens in the current call only).

        In ``"frame"`` mode exactly one of ``tokens_per_frame`` / ``frame_ids`` is required; ``"global"`` and
        ``"none"`` ignore both. The condition stays set until replaced or cleared; used as
        ``with conditioner.set_condition(...):`` the previous condition is restored on exit.
        """
        self.check_embedding(emb)
        gather_ids = None
        if self.mode == "global":
            emb = emb.mean(dim=1, keepdim=True)
            tokens_per_frame = None
        elif self.mode == "frame":
            if (tokens_per_frame is None) == (frame_ids is None):
                raise ValueError("pass exactly one of tokens_per_frame= (frame-major tokens) or frame_ids= (B, L)")
            if tokens_per_frame is not None and (not isinstance(tokens_per_frame, int) or tokens_per_frame <= 0):
                raise ValueError(f"tokens_per_frame must be a positive int, got {tokens_per_frame!r}")
            if frame_ids is not None:
                gather_ids = self._check_frame_ids(frame_ids, emb)
        else:
            tokens_per_frame = None
        previous = self._condition
        self._version += 1
        self._condition = _Condition(emb, tokens_per_frame, gather_ids, self._version)
        return _ConditionScope(self, previous)

    @staticmethod
    def _check_frame_ids(frame_ids: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        integer = isinstance(frame_ids, torch.Tensor) and not frame_ids.is_floating_point()
        if not integer or frame_ids.dtype == torch.bool:
            raise ValueError("frame_ids must be an integer tensor of shape (B, L) or (L,)")
        if frame_ids.ndim == 1:
            frame_ids = frame_ids.unsqueeze(0)
        if frame_ids.ndim != 2:
            raise ValueError(f"frame_ids must have shape (B, L) or (L,), got {tuple(frame_ids.shape)}")
        if frame_ids.shape[0] not in (1, emb.shape[0]) and emb.shape[0] != 1:
            raise ValueError(f"frame_ids has batch {frame_ids.shape[0]} but emb has batch {emb.shape[0]}")
        n_frames = emb.shape[1]
        if frame_ids.numel() and (int(frame_ids.min()) < -1 or int(frame_ids.max()) >= n_frames):
            raise ValueError(
                f"frame_ids must lie in [-1, {n_frames}) (emb has {n_frames} frames; -1 = unmodulated), got "
                f"range [{int(frame_ids.min())}, {int(frame_ids.max())}]"
            )
        # -1 points at an extra all-zero row appended to (alpha, beta), i.e. the identity modulation.
        return torch.where(frame_ids < 0, torch.full_like(frame_ids, n_frames), frame_ids).long()

    def clear_condition(self) -> None:
        """Forget the current condition (calling the model with conditioning active then raises)."""
        self._condition = None

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Within this context the hooks are inactive and the model computes its base function."""
        previous, self._enabled = self._enabled, False
        try:
            yield
        finally:
            self._enabled = previous

    # ----------------------------------------------------------------------------------------------- hooks
    def _modulate_output(self, index: int, out: torch.Tensor) -> torch.Tensor | None:
        if not self._enabled or self.mode == "none":
            return None
        recompute = _in_backward()
        cond = self._condition
        if cond is None:
            hint = (
                " This call is a gradient-checkpointing recompute during backward: keep the condition set until "
                "backward finishes (call backward inside the `with set_condition(...)` block)."
                if recompute
                else ""
            )
            raise RuntimeError(
                "the model is action-conditioned but no condition is set: call "
                f"model.{CONDITIONER_ATTR}.set_condition(emb, ...) before the forward pass, or wrap base-model calls "
                f"in `with model.{CONDITIONER_ATTR}.disabled():`.{hint}"
            )
        if recompute:
            if self._grad_forward_version is not None and cond.version != self._grad_forward_version:
                raise RuntimeError(
                    "gradient checkpointing recomputes the blocks during backward, but the action condition was "
                    "replaced after the forward pass; call backward before setting the next condition"
                )
        elif torch.is_grad_enabled():
            self._grad_forward_version = cond.version
        if not isinstance(out, torch.Tensor) or out.ndim != 3:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the hooked norm must output (B, L, D) tokens, got {got}")
        batch, length, width = out.shape
        if width != self.dims[index]:
            raise ValueError(f"block {index}: norm output width {width} != conditioner width {self.dims[index]}")
        if cond.emb.shape[0] not in (1, batch):
            raise ValueError(f"the condition has batch {cond.emb.shape[0]} but the model was called with batch {batch}")
        alpha, beta = self.modulations[index](cond.emb)  # (Be, F, D)
        if self.mode == "global":
            return modulate(out, alpha, beta)
        n_frames = alpha.shape[1]
        if cond.gather_ids is not None:
            ids = cond.gather_ids.to(out.device)
            if ids.shape[1] != length:
                raise ValueError(f"frame_ids covers {ids.shape[1]} tokens but the model's sequence has {length}")
            if ids.shape[0] not in (1, batch):
                raise ValueError(f"frame_ids has batch {ids.shape[0]} but the model was called with batch {batch}")
            zero = alpha.new_zeros(alpha.shape[0], 1, width)
            table = torch.cat([alpha, beta], dim=-1)
            table = torch.cat([table, torch.cat([zero, zero], dim=-1)], dim=1).expand(batch, -1, -1)
            per_token = torch.gather(table, 1, ids.expand(batch, -1).unsqueeze(-1).expand(-1, -1, 2 * width))
            a_tok, b_tok = per_token.chunk(2, dim=-1)
            return modulate(out, a_tok, b_tok)
        per_frame = cond.tokens_per_frame
        assert per_frame is not None
        if length != n_frames * per_frame:
            raise ValueError(
                f"the model's sequence has {length} tokens but the condition covers {n_frames} frames x "
                f"{per_frame} tokens per frame = {n_frames * per_frame}"
            )
        grid = out.reshape(batch, n_frames, per_frame, width)
        return modulate(grid, alpha.unsqueeze(2), beta.unsqueeze(2)).reshape(batch, length, width)

    def _attach(self, norms: Sequence[nn.Module]) -> None:
        if self._targets:
            raise RuntimeError("this conditioner is already attached")
        if self.mode == "none":
            return
        for index, norm in enumerate(norms):
            hook = _PreFFNHook(self, index)
            norm.register_forward_hook(hook)
            self._targets.append(norm)
            self._hooks.append(hook)

    def remove(self) -> None:
        """Detach every hook (the model then computes its base function). The parameters stay in place; use
        ``del model.dws_action`` as well to drop them from the model's state_dict."""
        for norm, hook in zip(self._targets, self._hooks):
            for key, registered in list(norm._forward_hooks.items()):
                if registered is hook:
                    del norm._forward_hooks[key]
        self._targets = []
        self._hooks = []
        self._condition = None


def get_action_conditioner(model: nn.Module) -> BlockActionModulation | None:
    """The DWS module registered on ``model`` as ``model.dws_action`` (an :class:`ActionConditioner` from
    :func:`inject_action_conditioning`, or a :class:`BlockActionModulation` a backbone applies itself), or ``None``."""
    conditioner = getattr(model, CONDITIONER_ATTR, None) if CONDITIONER_ATTR in model._modules else None
    return conditioner if isinstance(conditioner, BlockActionModulation) else None


def inject_action_conditioning(
    model: nn.Module,
    cond_dim: int,
    hidden_dim: int | None = None,
    family: Family = "auto",
    mode: ConditioningMode = "frame",
    norms: Sequence[nn.Module] | None = None,
) -> ActionConditioner:
    """Add the DWS action-conditioned module to every layer of a pre-trained decoder, in place, with hooks.

    Args:
        model: a transformers Llama-style decoder (see :func:`find_prefn_norms`), or any model when ``norms`` is
            given.
        cond_dim: action embedding size ``C``.
        hidden_dim: hidden width of each block's two-layer regressor (default ``cond_dim``).
        family: ``"auto"`` or ``"llama"``; ignored when ``norms`` is given.
        mode: ``"frame"`` (DWS), ``"global"`` or ``"none"`` (ablations; see :class:`ActionConditioner`).
        norms: hook these norm modules instead of searching (``family`` becomes ``"custom"``); each must output
            ``(B, L, D)`` and feed its block's FFN.

    Returns:
        The :class:`ActionConditioner`, also registered as ``model.dws_action`` (so ``model.state_dict()``,
        ``load_state_dict`` and ``.to()`` include it). Its parameters are created in the dtype and on the device of
        the model's first parameter.
    """
    if get_action_conditioner(model) is not None or hasattr(model, CONDITIONER_ATTR):
        raise ValueError(
            f"{type(model).__name__} already has `{CONDITIONER_ATTR}`; call model.{CONDITIONER_ATTR}.remove() and "
            f"`del model.{CONDITIONER_ATTR}` first"
        )
    if norms is not None:
        targets = list(norms)
        if not targets:
            raise ValueError("norms= is empty")
        resolved: str = "custom"
    else:
        resolved, named = find_prefn_norms(model, family)
        targets = [norm for _, norm in named]
    conditioner = ActionConditioner(cond_dim, [_norm_width(n) for n in targets], hidden_dim, mode, resolved)
    reference = next(model.parameters(), None)
    if reference is not None:
        conditioner.to(device=reference.device, dtype=reference.dtype if reference.is_floating_point() else None)
    conditioner._attach(targets)
    setattr(model, CONDITIONER_ATTR, conditioner)
    return conditioner


def freeze_base(model: nn.Module, *trainable: nn.Module) -> list[nn.Parameter]:
    """Freeze every parameter of ``model`` except its DWS module (``model.dws_action``) and the given extra modules.

    Args:
        model: a model conditioned with :func:`inject_action_conditioning`, or a backbone carrying a
            :class:`BlockActionModulation` as ``dws_action`` (the world model's Wan transformer).
        *trainable: further modules to keep trainable (e.g. the action embedder), inside ``model`` or not.

    Returns:
        The trainable parameters (conditioner first, no duplicates), ready for an optimizer.
    """
    conditioner = get_action_conditioner(model)
    if conditioner is None:
        raise ValueError(
            f"{type(model).__name__} has no action conditioner; call inject_action_conditioning(model, ...) first"
        )
    for param in model.parameters():
        param.requires_grad_(False)
    params: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in (conditioner, *trainable):
        for param in module.parameters():
            param.requires_grad_(True)
            if id(param) not in seen:
                seen.add(id(param))
                params.append(param)
    return params

