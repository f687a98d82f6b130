"""Command-line flag groups derived from the library's config dataclasses.

A script that builds a model from a config (``UNetConfig``, ``FlowConfig``) should not re-declare the config's
fields as its own flags: the copies drift (names, defaults, help) and every new field has to be added twice.
:func:`config_flags` makes a dataclass with the config's user-settable fields, their defaults and the help text of
the config's ``Attributes:`` docstring, for tyro to nest under a prefix (``--unet.widths``); the fields a script
derives from its data (frame size, number of actions, ...) are left out, and :func:`build_config` puts them back.
:func:`usage_error` ends a command line on a value its types cannot rule out, as argparse would;
:func:`flag_given` tells a flag the user gave from its default.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, NoReturn, TypeVar

C = TypeVar("C")

_ATTRIBUTE = re.compile(r"^(\s*)([A-Za-z_][\w, ]*):\s*(.*)$")


def attribute_docs(cls: type) -> dict[str, str]:
    """Field help from the ``Attributes:`` section of ``cls``'s Google-style docstring.

    A line ``name: text`` (or ``a, b: text`` for several fields) starts an entry; more-indented lines continue it.
    Double-backtick literals lose their backticks (the help is plain text).
    """
    docs: dict[str, str] = {}
    lines = (cls.__doc__ or "").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return docs
    names: list[str] = []
    indent = None
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        m = _ATTRIBUTE.match(line)
        if m and (indent is None or len(m.group(1)) == indent):
            indent = len(m.group(1))
            names = [n.strip() for n in m.group(2).split(",")]
            for n in names:
                docs[n] = m.group(3).strip()
        elif indent is not None and len(line) - len(line.lstrip()) > indent:
            for n in names:
                docs[n] += " " + line.strip()
        else:
            break  # a new section
    return {k: v.replace("``", "`") for k, v in docs.items()}


def config_flags(config_cls: type, *, name: str, derived: Sequence[str], defaults: Mapping[str, Any] | None = None,
                 choices: Mapping[str, Any] | None = None, help: Mapping[str, str] | None = None) -> type:
    """A dataclass of ``config_cls``'s user-settable fields, for a script's ``Args`` to nest.

    Args:
        config_cls: A config dataclass whose docstring documents its fields in an ``Attributes:`` section.
        name: The new class's name (shown in ``--help``).
        derived: Fields the script sets from its data or other flags; they are not flags.
        defaults: Defaults that differ from the config's for this script (e.g. a recipe's values).
        choices: Narrower types for the command line, e.g. ``{"action_mode": Literal["frame", "none"]}`` where the
            config holds a plain ``str``.
        help: Help that replaces the docstring's for a field.
    """
    defaults, choices, help = dict(defaults or {}), dict(choices or {}), dict(help or {})
    all_fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = (set(derived) | set(defaults) | set(choices) | set(help)) - set(all_fields)
    if unknown:
        raise ValueError(f"config_flags({config_cls.__name__}): no field(s) {sorted(unknown)}")
    hints = typing.get_type_hints(config_cls)
    docs = {**attribute_docs(config_cls), **help}
    import tyro  # the command line's library; the configs themselves do not depend on it

    spec = []
    for fname, f in all_fields.items():
        if fname in derived:
            continue
        ftype = choices.get(fname, hints[fname])
        if fname in defaults:
            default = dataclasses.field(default=defaults[fname])
        elif f.default is not dataclasses.MISSING:
            default = dataclasses.field(default=f.default)
        else:
            default = dataclasses.field(default_factory=f.default_factory)
        spec.append((fname, Annotated[ftype, tyro.conf.arg(help=docs.get(fname, ""))], default))
    flags = dataclasses.make_dataclass(name, spec)
    flags.__doc__ = f"{config_cls.__name__} fields settable from the command line (the rest come from the data)."
    flags.__module__ = config_cls.__module__
    return flags


def build_config(config_cls: type[C], flags: Any, **derived: Any) -> C:
    """``config_cls`` from a :func:`config_flags` instance plus the derived fields (which must not be flags)."""
    values = {f.name: getattr(flags, f.name) for f in dataclasses.fields(flags)}
    clash = set(values) & set(derived)
    if clash:
        raise ValueError(f"build_config({config_cls.__name__}): {sorted(clash)} are flags, not derived fields")
    return config_cls(**values, **derived)


def usage_error(message: str) -> NoReturn:
    """Stop a command line the way argparse does on bad input: ``error: message`` on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def flag_given(argv: Sequence[str], *names: str) -> bool:
    """Whether any of the flags ``names`` (``--episodic-life``) appears on the command line ``argv``, in any form tyro
    accepts (``--episodic_life``, ``--flag=value``): to tell a flag the user gave from its default."""
    wanted = {n.replace("_", "-") for n in names}
    return any(a.split("=")[0].replace("_", "-") in wanted for a in argv)
