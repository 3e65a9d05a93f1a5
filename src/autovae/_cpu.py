"""CPU work at the matmul peak: whole tasks across cores, and memory reused, not re-faulted.

torch splits one op over its intra-op threads; the small matmuls and elementwise ops of a
decoder scale poorly that way (69% of the two-core matmul peak where one core reaches 80% of
its own). :func:`ordered_map` instead runs whole tasks side by side, each in a thread whose
ops use one core (torch ops release the GIL), and gives the results in input order.

glibc's malloc gives the pages of a freed block of a few MiB back to the system, so that the
next chunk of the same size page-faults them in again: about 2000 faults per chunk of the NLL,
18% of its time. :func:`keep_freed_memory` makes it keep them.
"""

from __future__ import annotations

import ctypes
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

__all__ = ["keep_freed_memory", "ordered_map"]

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``fn(item)`` for each of ``items``, in order, on ``workers`` single-core threads.

    ``items`` is consumed in the calling thread, one item ahead of what the workers need, so
    anything it draws (random numbers) comes in the same order for any ``workers``; at most
    ``2 * workers`` items are in flight. ``workers == 1`` is a plain loop in the calling thread
    with torch's threads as they are. The caller's grad mode holds in the workers; torch's
    thread count is restored after."""
    if workers == 1:
        yield from map(fn, items)
        return
    threads, grad = torch.get_num_threads(), torch.is_grad_enabled()

    def run(item: T) -> R:
        with torch.set_grad_enabled(grad):
            return fn(item)

    pool = ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,))
    try:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(run, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(cancel_futures=True)  # (after an error: drop what has not started)
        torch.set_num_threads(threads)  # (the workers' setting reaches threads started later)


_MALLOC_SETTINGS = {-3: 32 << 20, -1: 64 << 20}  # M_MMAP_THRESHOLD (its largest), M_TRIM_THRESHOLD
_kept = False


def keep_freed_memory() -> bool:
    """Make glibc's malloc, for the rest of this process, serve blocks up to 32 MiB from its
    heap and keep up to 64 MiB of freed memory there, so that loops allocating blocks of a few
    MiB reuse warm pages. Does nothing where malloc is not glibc's, or where the user tuned it
    (a ``MALLOC_*_`` environment variable). True when the settings are in force."""
    global _kept
    if not _kept and not any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ):
        try:
            mallopt = ctypes.CDLL("libc.so.6").mallopt
        except (OSError, AttributeError):  # not glibc
            return False
        _kept = all(mallopt(option, value) == 1 for option, value in _MALLOC_SETTINGS.items())
    return _kept
