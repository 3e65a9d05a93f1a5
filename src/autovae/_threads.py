"""Parallel work across cores as whole tasks, not inside each op.

torch splits one op over its intra-op threads; the small matmuls and elementwise ops of a
decoder scale poorly that way (69% of the two-core matmul peak where one core reaches 80% of
its own). :func:`ordered_map` instead runs whole tasks side by side, each in a thread whose
ops use one core (torch ops release the GIL), and gives the results in input order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

__all__ = ["ordered_map"]

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
