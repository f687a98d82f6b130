"""Argument checks shared across the package (one wording for the same mistake everywhere)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_positive_int", "is_positive_int"]


def is_positive_int(value: Any) -> bool:
    """True for a Python or numpy integer ``>= 1`` (``bool`` is not an integer here)."""
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= 1


def check_positive_int(name: str, value: Any) -> int:
    """``int(value)``, or ``ValueError("<name> must be a positive int, got <value>")``."""
    if not is_positive_int(value):
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)
