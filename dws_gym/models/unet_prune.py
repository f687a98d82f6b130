"""Structured pruning of a pixel U-Net world model to narrower widths: the starting point of a faster student.

A U-Net trained from scratch at narrower widths loses fidelity at the budget this project affords; a student that
starts from a trained model's own channels starts from its function. :func:`prune_unet_state` keeps, in every set of
channels the network indexes together, the channels that matter most and drops the rest, so the result loads into a
:class:`~dws_gym.models.unet.UNetWorldModel` with the narrower ``widths``. The pruned model is not yet a good
simulator (every removed channel changes what the remaining ones see); it is the initialisation that distillation
from the full model (``train_world_model.py --init-from SIM --distill-from SIM --unet.widths ...``) fine-tunes.

Channel sets. A channel set is a group of channels that several tensors index together and that must be kept or
dropped as one: a level's residual stream (the stem or down-sampling conv that writes it, the block that adds to
it, every layer that reads it), each block's hidden channels (its first conv's outputs, second group norm, DWS
scale and shift, second conv's inputs), and each up-block's output. Skip connections and up-sampled inputs are
concatenations of two sets, so their slices are built from both.

Which channels to keep. A channel's importance is the norm of the weights that write it times the norm of the weights
that read it (a channel written large and read large carries the most signal; one either side near zero carries
little), a data-free rule in the spirit of filter-norm pruning (Li et al., 2017). The selection is made per group-norm
group of each set (the same number kept in each of its ``groups`` contiguous groups), so the group norms over one set
keep their grouping. The two over skip concatenations (``up1`` and ``up0``'s first norms) do not: their groups
straddle the two sets' groups, so their statistics move more, and the fine-tuning that follows absorbs it.
"""

from __future__ import annotations

import torch

from .unet import UNetConfig

__all__ = ["prune_unet_state", "pruned_config"]

# One tensor's channel layout along one dimension: consecutive segments, each (channel set, its width's level).
_Segment = tuple[str, int]


def _layout() -> list[tuple[str, int, list[_Segment], bool]]:
    """Every (parameter, dim, segments, scored) the pruning slices; ``scored`` marks weights that write (dim 0) or
    read (dim 1) channels and so count towards importance. A segment's level indexes ``widths``: ("A", 0) is w0 wide."""
    specs: list[tuple[str, int, list[_Segment], bool]] = []

    def block(prefix: str, inputs: list[_Segment], hidden: _Segment, output: _Segment, shortcut: bool) -> None:
        b = f"{prefix}.block"
        specs.extend([
            (f"{b}.norm1.weight", 0, inputs, False), (f"{b}.norm1.bias", 0, inputs, False),
            (f"{b}.conv1.weight", 1, inputs, True), (f"{b}.conv1.weight", 0, [hidden], True),
            (f"{b}.conv1.bias", 0, [hidden], False),
            (f"{b}.norm2.weight", 0, [hidden], False), (f"{b}.norm2.bias", 0, [hidden], False),
            # scale rows then shift rows: the hidden set twice
            (f"{b}.time_emb_proj.weight", 0, [hidden, hidden], False),
            (f"{b}.time_emb_proj.bias", 0, [hidden, hidden], False),
            (f"{b}.conv2.weight", 1, [hidden], True), (f"{b}.conv2.weight", 0, [output], True),
            (f"{b}.conv2.bias", 0, [output], False),
        ])
        if shortcut:
            specs.extend([(f"{b}.conv_shortcut.weight", 1, inputs, True),
                          (f"{b}.conv_shortcut.weight", 0, [output], True),
                          (f"{b}.conv_shortcut.bias", 0, [output], False)])

    specs.extend([("stem.weight", 0, [("A", 0)], True), ("stem.bias", 0, [("A", 0)], False)])
    block("down0", [("A", 0)], ("down0.h", 0), ("A", 0), False)
    specs.extend([("pool0.weight", 1, [("A", 0)], True), ("pool0.weight", 0, [("C", 1)], True),
                  ("pool0.bias", 0, [("C", 1)], False)])
    block("down1", [("C", 1)], ("down1.h", 1), ("C", 1), False)
    specs.extend([("pool1.weight", 1, [("C", 1)], True), ("pool1.weight", 0, [("M", 2)], True),
                  ("pool1.bias", 0, [("M", 2)], False)])
    block("mid0", [("M", 2)], ("mid0.h", 2), ("M", 2), False)
    block("mid1", [("M", 2)], ("mid1.h", 2), ("M", 2), False)
    block("up1", [("M", 2), ("C", 1)], ("up1.h", 1), ("E", 1), True)
    block("up0", [("E", 1), ("A", 0)], ("up0.h", 0), ("B", 0), True)
    specs.extend([("out_norm.weight", 0, [("B", 0)], False), ("out_norm.bias", 0, [("B", 0)], False),
                  ("out.weight", 1, [("B", 0)], True)])
    return specs


def pruned_config(source: UNetConfig, widths: tuple[int, int, int] | list[int]) -> UNetConfig:
    """``source`` with narrower ``widths`` (``ValueError`` if a width grows or does not fit the group norms)."""
    widths = tuple(int(w) for w in widths)
    if len(widths) != 3:
        raise ValueError(f"a U-Net has 3 widths, got {widths}")
    if any(v > w for v, w in zip(widths, source.widths)):
        raise ValueError(f"pruning keeps or narrows every width: {tuple(source.widths)} cannot become {widths}")
    data = source.to_dict()
    data["widths"] = list(widths)
    return UNetConfig.from_dict(data)  # validates the group-norm divisibility


def _keep_per_group(score: torch.Tensor, keep: int, groups: int) -> torch.Tensor:
    """Indices (ascending) of the ``keep // groups`` highest scores in each of ``groups`` contiguous groups."""
    size = score.numel() // groups
    per = keep // groups
    top = score.view(groups, size).topk(per, dim=1).indices.sort(dim=1).values
    return (top + torch.arange(groups, device=score.device)[:, None] * size).flatten()


def prune_unet_state(state: dict[str, torch.Tensor], source: UNetConfig,
                     widths: tuple[int, int, int] | list[int]) -> tuple[dict[str, torch.Tensor], UNetConfig]:
    """Prune a U-Net world model's weights to narrower ``widths``.

    Args:
        state: The source model's ``state_dict`` (a :class:`~dws_gym.models.unet.UNetWorldModel` of ``source``).
        source: Its config.
        widths: The three narrower (or equal) widths, multiples of ``source.groups``.

    Returns:
        ``(state, config)``: weights that load strictly into ``UNetWorldModel(config)``, and that config (the source's
        with the new widths). Tensors outside the channel sets (action embeddings, the DWS first layers) are copied.
    """
    config = pruned_config(source, widths)
    old, new = tuple(source.widths), tuple(config.widths)
    specs = _layout()
    missing = sorted({name for name, *_ in specs} - set(state))
    if missing:
        raise ValueError(f"not the weights of a pixel U-Net world model: missing {missing[:4]}")
    # Importance: norm of the writing weights (dim 0) times norm of the reading weights (dim 1), per channel set.
    written: dict[str, torch.Tensor] = {}
    read: dict[str, torch.Tensor] = {}
    for name, dim, segments, scored in specs:
        if not scored:
            continue
        per_channel = state[name].detach().float().transpose(0, dim).flatten(1).pow(2).sum(dim=1)
        into = written if dim == 0 else read
        start = 0
        for set_name, level in segments:
            into[set_name] = into.get(set_name, 0.0) + per_channel[start: start + old[level]]
            start += old[level]
    levels = {set_name: level for _, _, segments, _ in specs for set_name, level in segments}
    keep = {}
    for set_name, level in levels.items():
        score = written[set_name].sqrt() * read[set_name].sqrt()
        keep[set_name] = _keep_per_group(score, new[level], source.groups)
    out = {name: value.clone() for name, value in state.items()}
    for name, dim, segments, _ in specs:
        index, start = [], 0
        for set_name, level in segments:
            index.append(keep[set_name] + start)
            start += old[level]
        # A tensor can appear twice (conv weights: dim 1 then dim 0); slice the already-sliced copy.
        out[name] = out[name].index_select(dim, torch.cat(index)).contiguous()
    return out, config
