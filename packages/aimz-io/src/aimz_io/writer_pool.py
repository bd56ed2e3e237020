"""A small pool of background writer threads with a byte budget on queued work.

The caller submits write jobs together with their size in bytes. ``submit`` returns
at once unless the bytes in flight (queued plus running) would exceed the budget,
so producers never hold more than about ``max_bytes`` of pending blocks. The first
job error stops the pool: later jobs are skipped and the error is re-raised by the
next ``submit`` or by ``join``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

Job = Callable[[], None]


class WriterPool:
    """Background threads that run write jobs in submission order.

    Args:
        num_threads: Number of writer threads (at least 1).
        max_bytes: Budget of bytes in flight. A job larger than the budget is
            still accepted once nothing else is in flight.
        name: Thread name prefix.

    Example:
        >>> out = []
        >>> pool = WriterPool(num_threads=2, max_bytes=1024)
        >>> pool.submit(lambda: out.append(1), nbytes=8)
        >>> pool.join()
        >>> pool.close()
        >>> out
        [1]
    """

    def __init__(self, *, num_threads: int, max_bytes: int, name: str = "aimz-writer") -> None:
        self.max_bytes = max(1, int(max_bytes))
        self._jobs: queue.SimpleQueue[tuple[Job, int] | None] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._in_flight = 0
        self._pending = 0
        self._error: BaseException | None = None
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(max(1, num_threads))
        ]
        for thread in self._threads:
            thread.start()

    @property
    def error(self) -> BaseException | None:
        """The first error raised by a job, if any."""
        return self._error

    def submit(self, job: Job, nbytes: int) -> None:
        """Queue ``job``; wait while the byte budget is used up.

        Raises:
            BaseException: The first error of an earlier job (re-raised as is).
            RuntimeError: The pool is closed.
        """
        with self._cond:
            while True:
                self._raise_error()
                if self._closed:
                    raise RuntimeError("The writer pool is closed.")
                if self._in_flight == 0 or self._in_flight + nbytes <= self.max_bytes:
                    break
                self._cond.wait(0.1)
            self._in_flight += nbytes
            self._pending += 1
        self._jobs.put((job, nbytes))

    def join(self) -> None:
        """Wait until every submitted job ran; re-raise the first job error."""
        self._wait_idle()
        with self._cond:
            self._raise_error()

    def close(self) -> None:
        """Skip queued jobs, wait for running ones and stop the threads. Idempotent."""
        self._stop.set()
        self._wait_idle()
        with self._cond:
            if self._closed:
                return
            self._closed = True
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()

    def _wait_idle(self) -> None:
        with self._cond:
            while self._pending:
                self._cond.wait(0.1)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _work(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, nbytes = item
            try:
                if not self._stop.is_set():
                    job()
            except BaseException as err:
                with self._cond:
                    if self._error is None:
                        self._error = err
                self._stop.set()
            finally:
                del job, item
                with self._cond:
                    self._in_flight -= nbytes
                    self._pending -= 1
                    self._cond.notify_all()
