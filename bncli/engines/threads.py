"""Threads for the local engine: a bounded ordered map and a read-ahead.

NumPy releases the GIL in its reductions and pyarrow decodes in its own
threads, so a pool of threads keeps every core busy without copying data
between processes.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

__all__ = ["default_workers", "ordered_map", "prefetched"]

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """Every core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], workers: int
) -> Iterator[tuple[T, R]]:
    """``(item, fn(item))`` in order, computed by ``workers`` threads.

    At most ``2 * workers`` items are in flight, so memory stays bounded
    however long the stream.
    """
    if workers <= 1:
        for item in items:
            yield item, fn(item)
        return
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending: collections.deque[tuple[T, concurrent.futures.Future[R]]]
        pending = collections.deque()
        try:
            for item in items:
                pending.append((item, pool.submit(fn, item)))
                if len(pending) >= 2 * workers:
                    head, future = pending.popleft()
                    yield head, future.result()
            while pending:
                head, future = pending.popleft()
                yield head, future.result()
        finally:
            for _, future in pending:
                future.cancel()


def prefetched(items: Iterable[T], depth: int) -> Iterator[T]:
    """``items``, read ahead by up to ``depth`` items in a background thread.

    Reading (Parquet decoding, the copy of a batch's channels) then overlaps
    with the workers' computing and with the calling thread's bookkeeping,
    instead of alternating with them; the reader's errors are raised here,
    in order. Leaving early (an error, Ctrl-C) stops the reader at its next
    item.
    """
    slots: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=max(depth, 1))
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
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
                if not put((False, item)):
                    return
            put((True, None))
        except BaseException as e:  # handed to the consumer, raised there
            put((True, e))

    reader = threading.Thread(target=read, name="bncli-reader", daemon=True)
    reader.start()
    try:
        while True:
            done, value = slots.get()
            if done:
                if value is not None:
                    raise value
                return
            yield value
    finally:
        stop.set()
        # Wait for the reader to leave its current item: a thread still inside
        # Arrow's C++ when the interpreter exits aborts the process.
        reader.join(timeout=10)
