"""The writer pool: bounded bytes in flight, first error wins."""

from __future__ import annotations

import threading
import time

import pytest
from aimz_io.writer_pool import WriterPool


def test_bytes_in_flight_stay_within_budget():
    pool = WriterPool(num_threads=2, max_bytes=100)
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    def job(n):
        def run():
            with lock:
                state["now"] += n
                state["peak"] = max(state["peak"], state["now"])
            time.sleep(0.005)
            with lock:
                state["now"] -= n

        return run

    for _ in range(20):
        pool.submit(job(40), 40)
    pool.submit(job(500), 500)  # larger than the budget: runs alone
    pool.join()
    pool.close()
    assert state["peak"] <= 500 and state["now"] == 0


def test_first_error_is_reraised_and_later_jobs_skipped():
    pool = WriterPool(num_threads=1, max_bytes=10)
    ran = []

    def boom():
        raise KeyError("first")

    pool.submit(boom, 1)
    with pytest.raises(KeyError, match="first"):
        for i in range(100):
            pool.submit(lambda i=i: ran.append(i), 1)
        pool.join()
    assert pool.error is not None
    pool.close()
    pool.close()


def test_closed_pool_refuses_jobs():
    pool = WriterPool(num_threads=1, max_bytes=1)
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(lambda: None, 1)
