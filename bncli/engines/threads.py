"""Threads for the local engine: a bounded ordered map and a read-ahead.

NumPy releases the GIL in its reductions and pyarrow decodes in its own
threads, so a pool of threads keeps every core busy without copying data
between processes.
"""

from __future__ import annotations

import collections
import concurrent.futures
import queue
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, TypeVar

from bncli.limits import available_cores

__all__ = ["default_workers", "ordered_map", "ordered_results", "prefetched"]

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """Every core this process may run on."""
    return available_cores()


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], workers: int
) -> Iterator[tuple[T, R]]:
    """``(item, fn(item))`` in order, computed by ``workers`` threads.

    At most ``2 * workers`` items are in flight, so memory stays bounded
    however long the stream.
    """
    return ordered_results(lambda item: (item, fn(item)), items, workers)


def ordered_results(
    fn: Callable[[T], R], items: Iterable[T], workers: int
) -> Generator[R, None, None]:
    """``fn(item)`` for each item, in order, computed by ``workers`` threads.

    Unlike :func:`ordered_map`, nothing here holds an item once it is handed
    to a worker: the item dies in the thread that computed it, as soon as
    its result is ready. Freeing it can be work (a window of a file mapping
    whose pages leave the resident set), which is then done by the workers
    side by side instead of by the calling thread in turn.
    """
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending: collections.deque[concurrent.futures.Future[R]]
        pending = collections.deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                del item
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def prefetched(items: Iterable[T], depth: int) -> Iterator[T]:
    """``items``, read ahead by up to ``depth`` items in a background thread.

    Reading (Parquet decoding, the copy of a batch's channels) then overlaps
    with the workers' computing and with the calling thread's bookkeeping,
    instead of alternating with them; the reader's errors are raised here,
    in order. Leaving early (an error, Ctrl-C) stops the reader at its next
    item. An item handed over is no longer held here (see
    :func:`ordered_results`).
    """
    # Entries are [done, value] lists, emptied of their value when handed on.
    slots: queue.Queue[list[Any]] = queue.Queue(maxsize=max(depth, 1))
    stop = threading.Event()

    def put(entry: list[Any]) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in items:
                if not put([False, item]):
                    return
            put([True, None])
        except BaseException as e:  # handed to the consumer, raised there
            put([True, e])

    reader = threading.Thread(target=read, name="bncli-reader", daemon=True)
    reader.start()
    try:
        while True:
            entry = slots.get()
            if entry[0]:
                if entry[1] is not None:
                    raise entry[1]
                return
            yield entry.pop()
    finally:
        stop.set()
        # Wait for the reader to leave its current item: a thread still inside
        # Arrow's C++ when the interpreter exits aborts the process.
        reader.join(timeout=10)
