"""Flag groups derived from config dataclasses (dws_gym.flags): fields, defaults, help, and the parse through tyro."""

from dataclasses import dataclass, field, fields
from typing import Literal

import pytest
import tyro

from dws_gym.flags import attribute_docs, build_config, config_flags
from dws_gym.models.unet import UNetConfig


@dataclass
class Toy:
    """A config.

    Attributes:
        size: Frame size, set from the data.
        width, depth: Network sizes; the second line of
            their shared help.
        mode: ``"a"`` or ``"b"``.

    Returns:
        nothing (a later section is not an attribute).
    """

    size: int = 64
    width: int = 8
    depth: int = 2
    mode: str = "a"
    sizes: tuple[int, ...] = field(default_factory=lambda: (1, 2))


def test_attribute_docs_reads_shared_and_continued_entries_and_stops_at_the_next_section():
    docs = attribute_docs(Toy)
    assert docs["width"] == docs["depth"] == "Network sizes; the second line of their shared help."
    assert docs["mode"] == '`"a"` or `"b"`.'
    assert set(docs) == {"size", "width", "depth", "mode"}


def test_config_flags_leaves_out_derived_fields_and_takes_overrides():
    Flags = config_flags(Toy, name="ToyFlags", derived=("size",), defaults={"width": 16},
                         choices={"mode": Literal["a", "b"]})
    assert [f.name for f in fields(Flags)] == ["width", "depth", "mode", "sizes"]
    flags = Flags()
    assert (flags.width, flags.depth, flags.mode, flags.sizes) == (16, 2, "a", (1, 2))
    config = build_config(Toy, flags, size=32)
    assert config == Toy(size=32, width=16, depth=2, mode="a", sizes=(1, 2))
    with pytest.raises(ValueError, match=r"\['width'\] are flags, not derived fields"):
        build_config(Toy, flags, width=3)
    with pytest.raises(ValueError, match=r"config_flags\(Toy\): no field\(s\) \['colour'\]"):
        config_flags(Toy, name="Bad", derived=("colour",))


def test_nested_flags_parse_with_help_from_the_docstring(capsys):
    Flags = config_flags(Toy, name="ToyFlags", derived=("size",), choices={"mode": Literal["a", "b"]})

    @dataclass
    class Args:
        seed: int = 1
        toy: Flags = field(default_factory=Flags)

    args = tyro.cli(Args, args=["--toy.width", "4", "--toy.mode", "b", "--toy.sizes", "3", "4", "5"])
    assert (args.toy.width, args.toy.mode, args.toy.sizes) == (4, "b", (3, 4, 5))
    with pytest.raises(SystemExit):
        tyro.cli(Args, args=["--toy.mode", "c"])  # outside the narrowed choices
    with pytest.raises(SystemExit):
        tyro.cli(Args, args=["--toy.size", "3"])  # derived: not a flag
    capsys.readouterr()
    with pytest.raises(SystemExit):
        tyro.cli(Args, args=["--help"])
    assert "Network sizes" in capsys.readouterr().out


def test_unet_flags_rebuild_the_config_they_come_from():
    Flags = config_flags(UNetConfig, name="UNetFlags",
                         derived=("frame_size", "channels", "num_actions", "action_text_dim", "format_version"))
    derived = dict(frame_size=32, channels=3, num_actions=4, action_text_dim=None)
    assert build_config(UNetConfig, Flags(), **derived) == UNetConfig(**derived)


def test_flag_given_finds_a_flag_in_every_form_tyro_accepts():
    from dws_gym.flags import flag_given

    assert flag_given(["--seed", "1", "--episodic_life"], "--episodic-life")
    assert flag_given(["--episode-ends=True"], "--episode-ends", "--no-episode-ends")
    assert not flag_given(["--episodic-life-x", "--seed", "1"], "--episodic-life")
    assert not flag_given([], "--no-episode-ends")
