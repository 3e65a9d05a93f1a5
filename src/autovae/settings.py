"""One settings engine for every settings record: :class:`~autovae.config.Config` (training),
:class:`~autovae.inverse.config.InverseConfig` (inversion) and the MCMC kernels' options.

A setting is declared once, with :func:`setting` on a dataclass field (or :func:`option` for a
keyword argument of a class, such as a kernel's constructor), and becomes at once a config key
(``batch_size``), a flag (``--batch-size``) and a checked value:

* ``help`` -- the text of ``--help``;
* ``choices`` -- the allowed values, or a callable returning them (a registry read when
  asked, so that the choices never drift from what is registered);
* ``domain`` -- a numeric domain of :data:`autovae._checks.DOMAINS` (positive, count, ...);
* ``least`` -- a lower bound of a number;
* ``positional`` -- a positional argument instead of a flag.

:class:`Settings` coerces values of type int, float, bool and str (``X | None`` allowing
none), refuses each bad value in one line that names the setting, refuses unknown keys with
the closest known one, and adds the flags to an ``argparse`` parser.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import math
import os
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ._checks import check

__all__ = ["BoolFlag", "Settings", "Spec", "option", "setting", "specs_of_signature"]

_MISSING = dataclasses.MISSING


def setting(default: Any = _MISSING, help: str = "", *, choices=None, domain: str | None = None,
            least: float | None = None, positional: bool = False,
            default_factory: Any = _MISSING):
    """A dataclass field that is a setting (see the module docstring)."""
    meta = {"help": help, "choices": choices, "domain": domain, "least": least,
            "positional": positional}
    if default_factory is not _MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def option(help: str, *, choices=None, domain: str | None = None,
           least: float | None = None) -> dict[str, Any]:
    """A class's keyword argument declared as a setting; its type and default are read from
    the class's signature (:func:`specs_of_signature`)."""
    return {"help": help, "choices": choices, "domain": domain, "least": least,
            "positional": False}


_WORDS = {"true": True, "yes": True, "1": True, "on": True,
          "false": False, "no": False, "0": False, "off": False}


@dataclass(frozen=True)
class Spec:
    """One setting: its name, type (int, float, bool or str), whether None is allowed, its
    default and its declaration."""

    name: str
    type: type
    optional: bool
    default: Any
    help: str = ""
    choices: tuple | Callable[[], Iterable] | None = None
    domain: str | None = None
    least: float | None = None
    positional: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def allowed(self) -> tuple | None:
        """The allowed values (a registry's names are read now), or None for any."""
        if self.choices is None:
            return None
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def coerce(self, value, label: str | None = None):
        """``value`` as this setting's type, checked; ValueError naming ``label``."""
        label = label or self.name
        if value is None or (self.optional and isinstance(value, str)
                             and value.strip().lower() in ("none", "")):
            if not self.optional:
                raise ValueError(f"{label} cannot be empty")
            return None
        value = self._typed(value, label)
        allowed = self.allowed()
        if allowed is not None and value not in allowed:
            names = [str(c) for c in allowed if c is not None]
            close = difflib.get_close_matches(str(value), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{label} must be one of {', '.join(names)}, got {value!r}{hint}")
        if self.domain is not None:
            value = check(label, value, self.domain)
        if self.least is not None and value < self.least:
            raise ValueError(f"{label} must be >= {self.least:g}, got {value!r}")
        return value

    def _typed(self, value, label: str):
        tp = self.type
        kind = {bool: "true or false", int: "an integer", float: "a number"}.get(tp, "text")
        bad = ValueError(f"{label} must be {kind}, got {value!r}")
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _WORDS:
                return _WORDS[value.strip().lower()]
            raise bad
        if isinstance(value, bool):  # YAML's yes/no/true: not a count, a number or a name
            raise bad
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise bad
            try:
                return int(value)
            except (TypeError, ValueError, OverflowError):
                raise bad from None
        if tp is float:
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise bad from None
            if self.domain is None and not math.isfinite(value):
                raise ValueError(f"{label} must be finite, got {value!r}")
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if not isinstance(value, str):  # an array, a number or a list is not a name
            raise bad
        return value

    def help_text(self, note: str = "") -> str:
        """The flag's help: the declared text, the registry's choices, the default."""
        text = self.help
        if callable(self.choices):
            text += f" (one of {', '.join(str(c) for c in self.allowed() if c is not None)})"
        return f"{text} ({note}default: {self.default})"


def _base(tp) -> tuple[type, bool]:
    """(type, optional) of an annotation: the non-None type of ``X | None``."""
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return next(a for a in args if a is not type(None)), type(None) in args
    return tp, False


def specs_of_dataclass(cls) -> dict[str, Spec]:
    """The settings of a dataclass: its fields declared with :func:`setting`."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        tp, optional = _base(hints[f.name])
        default = f.default if f.default is not _MISSING else f.default_factory()
        out[f.name] = Spec(f.name, tp, optional, default, **f.metadata)
    return out


def specs_of_signature(cls, declared: dict[str, dict[str, Any]]) -> dict[str, Spec]:
    """The settings a class declares (``name -> option(...)``), typed and defaulted by its
    constructor's signature; a declared name the constructor does not take is an error of the
    class (TypeError), not of the user."""
    params = inspect.signature(cls.__init__).parameters
    hints = typing.get_type_hints(cls.__init__)
    out = {}
    for name, meta in declared.items():
        if name not in params or params[name].default is inspect.Parameter.empty:
            raise TypeError(f"{cls.__name__} declares option {name!r}, which its constructor "
                            "does not take with a default")
        tp, optional = _base(hints[name])
        out[name] = Spec(name, tp, optional, params[name].default, **meta)
    return out


class Settings:
    """The engine for one settings record: ``specs`` by name, what a key is called in
    messages (``what``: "config key", "invert setting") and whether a value is named by its
    flag (``--chains``) or its key (``chains``)."""

    def __init__(self, specs: dict[str, Spec], what: str, by_flag: bool = False):
        self.specs, self.what, self.by_flag = specs, what, by_flag

    @classmethod
    def of(cls, record, what: str, by_flag: bool = False) -> Settings:
        return cls(specs_of_dataclass(record), what, by_flag)

    def label(self, name: str) -> str:
        return self.specs[name].flag if self.by_flag else name

    def coerce(self, name: str, value):
        """``value`` checked as the setting ``name``."""
        return self.specs[name].coerce(value, self.label(name))

    def coerce_fields(self, record) -> None:
        """Coerce every setting of a (frozen) dataclass instance in place."""
        for name in self.specs:
            object.__setattr__(record, name, self.coerce(name, getattr(record, name)))

    def unknown(self, keys: Iterable[str], also: Iterable[str] = ()) -> None:
        """Refuse keys that are no setting (nor in ``also``), suggesting the closest one."""
        known = [*self.specs, *also]
        for key in keys:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown {self.what} {key!r}{hint} (valid keys: "
                                 f"{', '.join(known)})")

    def add_flags(self, parser, note: Callable[[Spec], str] | None = None) -> None:
        """A flag (``--name``, default None: not given) or positional per setting; booleans
        take ``--x``, ``--no-x`` and ``--x yes|no``."""
        for spec in self.specs.values():
            help_text = spec.help_text(note(spec) if note else "")
            if spec.positional:
                parser.add_argument(spec.name, nargs="?", default=None, help=help_text)
            elif spec.type is bool:
                parser.add_argument(spec.flag, dest=spec.name, action=BoolFlag, default=None,
                                    help=f"{help_text}; also --no-{spec.flag[2:]}, or "
                                         f"{spec.flag} yes|no")
            else:
                parser.add_argument(spec.flag, dest=spec.name, default=None,
                                    metavar=spec.name.upper(), help=help_text)

    def given(self, namespace: argparse.Namespace) -> dict[str, Any]:
        """The settings given as flags (not None) in a parsed namespace."""
        return {name: getattr(namespace, name) for name in self.specs
                if getattr(namespace, name, None) is not None}


class BoolFlag(argparse.BooleanOptionalAction):
    """``--flag``, ``--no-flag``, and ``--flag yes|no|true|false|1|0`` (the words a config file
    takes; ``--spectral-norm no`` must not be read as "unrecognized argument: no")."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.nargs, self.metavar = "?", "yes|no"

    def __call__(self, parser, namespace, values, option_string=None):
        if values is None:
            super().__call__(parser, namespace, None, option_string)
            return
        word = _WORDS.get(str(values).strip().lower())
        if word is None:
            raise argparse.ArgumentError(self, f"must be yes or no (or true/false), got "
                                               f"{values!r}")
        if option_string.startswith("--no-"):
            raise argparse.ArgumentError(self, f"{option_string} takes no value; write "
                                               f"{option_string} alone, or "
                                               f"--{option_string[5:]} {values}")
        setattr(namespace, self.dest, word)
