"""The ``AUTOVAE_*`` environment variables: read when used, and checked like flags.

A bad value is refused with one line that names the variable, its value and what is allowed
(a ValueError: exit 2 from the CLI), never at import and never silently replaced by the default.
An empty or unset variable means the default.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["env_folder", "env_number"]


def env_number(name: str, default: float, low: float, high: float, integer: bool = False,
               unit: str = "") -> float:
    """``$name`` as a number in ``[low, high]`` (``default`` when unset or empty)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        unit = f" {unit}" if unit else ""
        raise ValueError(f"environment variable {name}={text!r}: must be {kind} in "
                         f"[{low:g}, {high:g}]{unit} (default {default:g}); fix it or unset it")
    return value


def env_folder(name: str, default: str) -> Path:
    """``$name`` as a folder path (``default`` when unset or empty); refused if it names
    something that exists and is not a folder."""
    text = os.environ.get(name, "").strip()
    path = Path(text or default).expanduser()
    if text and path.exists() and not path.is_dir():
        raise ValueError(f"environment variable {name}={text!r} is not a folder; point it at a "
                         f"folder (default {default}) or unset it")
    return path
