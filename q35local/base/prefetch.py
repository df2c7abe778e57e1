"""The bridge from a producer thread to a consumer's iterator (the converter's read-ahead, the engine's
token stream)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterator
from typing import TypeVar

T_ = TypeVar("T_")


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _Done:
    """The producer's last item: the iterator is exhausted."""


def prefetch(
    it: Iterator[T_], depth: int, start: Callable[[Callable[[], None]], Callable[[], object]] | None = None
) -> Generator[T_, None, None]:
    """Run an iterator on another thread, `depth` items ahead (0: unbounded); errors re-raise in the
    consumer. `start(work)` runs the producer somewhere else than a new daemon thread (an executor
    that owns a library's thread) and returns how to wait for it. If the consumer leaves early, a
    generator is closed on the producer's thread, so its cleanup runs where its work did."""
    q: queue.Queue[T_ | _Failed | _Done] = queue.Queue(depth)
    stop = threading.Event()

    def put(x: T_ | _Failed | _Done) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer has gone

    def work() -> None:
        try:
            for x in it:
                if not put(x):
                    if isinstance(it, Generator):  # its finally blocks run here, not at GC
                        it.close()
                    return
            put(_Done())
        except BaseException as e:  # handed to the consumer, re-raised there
            put(_Failed(e))

    if start is None:
        th = threading.Thread(target=work, daemon=True)
        th.start()
        join: Callable[[], object] = th.join
    else:
        join = start(work)
    try:
        while True:
            x = q.get()
            if isinstance(x, _Done):
                return
            if isinstance(x, _Failed):
                raise x.exc
            yield x
    finally:
        stop.set()
        join()
