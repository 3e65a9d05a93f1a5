"""Checking user input where it enters: numeric domains, paths and storage-safe folders.

Every numeric setting has a declared domain (a key of :data:`DOMAINS`); :func:`check` refuses a
value outside it with one line that names the setting, the value and what is allowed. Settings
declare theirs with ``setting(..., domain=...)`` (:mod:`autovae.settings`), CLI-only flags use
:func:`flag_type`, and library functions call :func:`check` on their arguments.
"""

from __future__ import annotations

import argparse
import math
import numbers
import os
from pathlib import Path

__all__ = ["DOMAINS", "StudyFault", "check", "check_folder", "check_output_file",
           "check_memory", "check_readable", "flag_type", "load_yaml", "syntax_error"]


class StudyFault(RuntimeError):
    """A fault of the machine or the database, not of the input (a database that stays down,
    a worker that died before the budget was met): said in one line, exit code 1."""


# domain -> (integers only, test, what is allowed)
DOMAINS: dict[str, tuple[bool, object, str]] = {
    "positive": (False, lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    "nonnegative": (False, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "finite": (False, math.isfinite, "a finite number"),
    "real": (False, lambda v: not math.isnan(v), "a number (-inf and inf allowed, not NaN)"),
    "count": (True, lambda v: v >= 1, "an integer >= 1"),
    "index": (True, lambda v: v >= 0, "an integer >= 0"),
    # what numpy's and torch's generators both accept (numpy: [0, 2**32 - 1] for RandomState)
    "seed": (True, lambda v: 0 <= v <= 2**32 - 1, "an integer in [0, 4294967295] (2**32 - 1)"),
}


def check(name: str, value, domain: str):
    """``value`` if it lies in ``domain`` (see :data:`DOMAINS`), else ValueError naming ``name``.

    Integer domains accept integral floats (``3.0``) and return an int; booleans are refused.
    """
    integer, ok, allowed = DOMAINS[domain]
    number = value
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # 0-d tensors and arrays
        number = value.item()
    good = isinstance(number, numbers.Real) and not isinstance(number, bool) and \
        not isinstance(value, bool)
    if good and integer:
        good = isinstance(number, numbers.Integral) or (math.isfinite(number)
                                                        and float(number).is_integer())
    if not good or not ok(float(number)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(number) if integer else number


def flag_type(flag: str, domain: str, integer: bool | None = None):
    """An argparse ``type=`` that parses a flag's text and checks its domain; argparse then
    reports ``argument --flag: must be ..., got ...`` with the command's usage (exit 2)."""
    integer = DOMAINS[domain][0] if integer is None else integer

    def parse(text: str):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {'an integer' if integer else 'a number'}, got {text!r}") from None
        try:
            return check(flag, value, domain)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {DOMAINS[domain][2]}, got {text}") from None

    parse.__name__ = DOMAINS[domain][2]
    return parse


def check_folder(path, what: str) -> Path:
    """``path`` as a folder that exists or can be made: refuses a file in its place, a file
    among its parents, and a parent that cannot be written. Creates nothing."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file, not a folder; name a folder")
    parent = path
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if parent != path:
        if not parent.is_dir():
            raise ValueError(f"{what} {path} cannot be made: {parent} is a file, not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ValueError(f"{what} {path} cannot be made: {parent} is not writable")
    elif not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path} is not writable")
    return path


def check_readable(path, what: str) -> Path:
    """``path`` as an existing, readable file: one clear line if it is missing, a folder or
    unreadable."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"{what} {path} not found")
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder, not a file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{what} {path} is not readable (permissions)")
    return path


def syntax_error(path, kind: str, err: Exception) -> ValueError:
    """A ValueError naming ``path`` and the line (and column) of a YAML/TOML/JSON parse error."""
    line = col = None
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    if mark is not None:  # yaml
        line, col = mark.line + 1, mark.column + 1
    elif getattr(err, "lineno", None) is not None:  # json, tomllib (3.14+)
        line, col = err.lineno, getattr(err, "colno", None)
    else:  # tomllib before 3.14: "... (at line 3, column 7)"
        import re

        found = re.search(r"at line (\d+), column (\d+)", str(err))
        if found:
            line, col = int(found.group(1)), int(found.group(2))
    where = f" at line {line}" + (f", column {col}" if col else "") if line else ""
    reason = getattr(err, "problem", None) or getattr(err, "msg", None) or str(err)
    reason = str(reason).split(" (at line")[0]
    return ValueError(f"{path} is not valid {kind}{where}: {reason}")


def load_yaml(text: str):
    """``yaml.safe_load`` that refuses a mapping with a key given twice (PyYAML keeps the last
    one silently), raising a YAMLError that marks the line of the second one."""
    import yaml

    class _Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (which one was meant?)",
                    key_node.start_mark)
            seen.add(key)
        return loader.construct_mapping(node, deep)

    _Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def check_output_file(path, what: str) -> Path:
    """``path`` as a file that can be written: refuses a folder in its place, a file among its
    parents, a read-only file and a parent folder that cannot be written or made. Creates
    nothing; call it before the work whose result goes there."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; name a file")
    check_folder(path.parent, f"the folder of {what}")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{what} {path} is not writable (permissions)")
    return path


def memory_bytes() -> int:
    """This machine's physical memory in bytes (0 when the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 0


def gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_memory(parts: dict[str, int], what: str, limit: int | None = None,
                 lower: dict[str, str] | None = None) -> int:
    """The total of ``parts`` ({part: bytes}); a ValueError naming the largest part, its bytes
    and the settings to lower (``lower[part]``, else the ``--flags`` the part's name holds)
    when the total exceeds ``limit`` (default: this machine's memory), before anything is
    allocated."""
    need = sum(parts.values())
    limit = memory_bytes() if limit is None else limit
    if limit and need > limit and parts:
        biggest = max(parts, key=parts.get)
        fix = (lower or {}).get(biggest) or " and ".join(
            w for w in biggest.split() if w.startswith("--"))
        raise ValueError(f"{what} would need about {gib(need)} of memory ({biggest}: "
                         f"{gib(parts[biggest])}), more than this machine's {gib(limit)}; "
                         f"lower {fix or 'the sizes'}")
    return need
