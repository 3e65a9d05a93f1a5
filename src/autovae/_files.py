"""Writing files so that a crash never leaves a partial one."""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path

__all__ = ["atomic_path", "atomic_write"]


def atomic_write(path: Path, write) -> Path:
    """Call ``write(file)`` on a new temp file beside ``path``, fsync it, then rename it over
    ``path``: readers see the old file or the new one, never a partial one."""
    with atomic_path(path) as tmp, open(tmp, "xb") as f:  # "x": never clobbers
        write(f)
    return Path(path)


@contextlib.contextmanager
def atomic_path(path: Path):
    """A temp path beside ``path`` for a writer that wants a file name (a figure, NetCDF);
    on leaving, the file is fsynced and renamed over ``path``; on an error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if _disk_full(err):
            raise OSError(errno.ENOSPC, f"no space left on the device of {path.parent}: could "
                          f"not write {path.name} (the previous one, if any, is intact); free "
                          "some space there and run again") from None
        raise


def _disk_full(err: BaseException) -> bool:
    """Whether ``err`` means the disk is full: an OSError ENOSPC/EDQUOT, or torch.save's
    RuntimeError that buries "No space left on device" in its text."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(err, RuntimeError) and "No space left on device" in str(err)
