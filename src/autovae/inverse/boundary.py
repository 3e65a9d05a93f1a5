"""Boundary conditions of the Darcy problem on the unit square, and their one spelling.

Each side -- ``left`` (x = 0), ``right`` (x = 1), ``bottom`` (y = 0), ``top`` (y = 1) -- is
either ``dirichlet:P`` (the pressure p = P there) or ``neumann:Q`` (the outward flux
Q = u . n = -k dp/dn through it, per unit length; 0 = no flux, Q > 0 = fluid leaves). The
spelling, on the command line (``--bc``) and in a config file (``bc:``), is comma-separated
``side=kind:value`` items; sides not named keep the default, which is the Darcy case's
``left=dirichlet:0,right=dirichlet:0,bottom=neumann:0,top=neumann:0``. With every side
Neumann the pressure is fixed only up to a constant (the system is singular): refused.

Kept free of numpy and torch: the config (and so every ``autovae`` command line) reads it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["DEFAULT_BC", "KINDS", "SIDES", "BoundaryConditions"]

SIDES = ("left", "right", "bottom", "top")
KINDS = ("dirichlet", "neumann")
FORM = "side=dirichlet:PRESSURE or side=neumann:OUTWARD_FLUX, sides left, right, bottom, top"


def _number(value: float) -> str:
    text = repr(float(value) + 0.0)  # + 0.0: -0.0 reads 0
    return text[:-2] if text.endswith(".0") else text


@dataclass(frozen=True)
class BoundaryConditions:
    """One (kind, value) per side; build it with :meth:`parse` (a string, a mapping or None).

    >>> str(BoundaryConditions.parse("left=dirichlet:1"))
    'left=dirichlet:1,right=dirichlet:0,bottom=neumann:0,top=neumann:0'
    """

    left: tuple[str, float] = ("dirichlet", 0.0)
    right: tuple[str, float] = ("dirichlet", 0.0)
    bottom: tuple[str, float] = ("neumann", 0.0)
    top: tuple[str, float] = ("neumann", 0.0)

    def __post_init__(self):
        for side in SIDES:
            given = getattr(self, side)
            if not isinstance(given, tuple) or len(given) != 2:
                raise ValueError(f"--bc {side}: give (kind, value), got {given!r}")
            kind, value = given
            if kind not in KINDS:
                raise ValueError(f"--bc {side}={kind}: unknown kind {kind!r}; give dirichlet "
                                 "(a pressure) or neumann (an outward flux)")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    raise ValueError(f"--bc {side}={kind}:{value}: the value must be a number"
                                     ) from None
            if not math.isfinite(value):
                raise ValueError(f"--bc {side}={kind}:{value}: the value must be finite")
            object.__setattr__(self, side, (kind, float(value) + 0.0))
        if all(getattr(self, s)[0] == "neumann" for s in SIDES):
            raise ValueError(f"--bc {self}: every side is Neumann, so the pressure is fixed only "
                             "up to a constant (the Darcy system is singular); make at least "
                             "one side Dirichlet, e.g. left=dirichlet:0")

    @classmethod
    def parse(cls, spec=None) -> BoundaryConditions:
        """``None`` (the default), a :class:`BoundaryConditions`, a string
        ``"left=dirichlet:1,right=neumann:0.5"`` or a mapping side -> ``"kind:value"`` or
        ``(kind, value)``; sides not given keep the default."""
        if spec is None:
            return cls()
        if isinstance(spec, cls):
            return spec
        if isinstance(spec, Mapping):
            items = list(spec.items())
        elif isinstance(spec, str):
            if not spec.strip():
                raise ValueError(f"--bc is empty; give {FORM}")
            items = []
            for item in spec.split(","):
                side, eq, rule = item.partition("=")
                if not eq or not side.strip() or not rule.strip():
                    raise ValueError(f"--bc {spec!r}: {item.strip()!r} is not side=kind:value; "
                                     f"give {FORM}")
                items.append((side.strip(), rule.strip()))
        else:
            raise ValueError(f"--bc must be a string such as 'left=dirichlet:1', got {spec!r}")
        sides: dict[str, tuple] = {}
        for side, rule in items:
            if side not in SIDES:
                raise ValueError(f"--bc: unknown side {side!r}; the sides are left (x = 0), "
                                 "right (x = 1), bottom (y = 0) and top (y = 1)")
            if side in sides:
                raise ValueError(f"--bc: side {side!r} is given twice; give each side once")
            if isinstance(rule, str):
                kind, colon, value = rule.partition(":")
                if not colon or not value.strip():
                    raise ValueError(f"--bc {side}={rule}: give kind:value, e.g. "
                                     f"{side}=dirichlet:0 or {side}=neumann:0")
                try:
                    number = float(value)
                except ValueError:
                    raise ValueError(f"--bc {side}={rule}: {value.strip()!r} is not a number"
                                     ) from None
                rule = (kind.strip(), number)
            elif not isinstance(rule, (tuple, list)):
                raise ValueError(f"--bc {side}: give 'kind:value' or (kind, value), got {rule!r}")
            sides[side] = tuple(rule)
        return cls(**sides)

    @property
    def default(self) -> bool:
        """True for the Darcy case's own conditions."""
        return self == BoundaryConditions()

    def __str__(self) -> str:
        return ",".join(f"{s}={getattr(self, s)[0]}:{_number(getattr(self, s)[1])}"
                        for s in SIDES)


DEFAULT_BC = str(BoundaryConditions())
