"""Streaming through the persistent sink keeps memory flat (bounded blocks in flight).

On glibc the test pins ``M_MMAP_THRESHOLD`` (``mallopt``) so that large freed buffers
go back to the OS at once: the peak RSS then measures the sink's live working set
rather than the allocator's cache of freed blocks, which depends on how many threads
zarr happens to encode on and varies from run to run.
"""

from __future__ import annotations

import ctypes
import threading
import time

import numpy as np
import pytest
from aimz_core.streaming import SiteLayout, StreamInfo
from aimz_io.zarr_sink import ZarrSink

psutil = pytest.importorskip("psutil")

DRAWS, ROWS, BLOCK = 200, 400_000, 20_000  # 320 MB of float32 in 16 MB blocks
M_MMAP_THRESHOLD = -3


def pin_mmap_threshold() -> bool:
    """Make glibc serve (and return) allocations >= 1 MiB with mmap; False if not glibc."""
    try:
        return bool(ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 1 << 20))
    except (OSError, AttributeError):
        return False


class PeakRSS:
    """Samples this process's RSS in a thread; ``peak`` is the largest value seen."""

    def __init__(self, interval: float = 0.002) -> None:
        self.process = psutil.Process()
        self.interval = interval
        self.peak = self.process.memory_info().rss
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


@pytest.mark.slow
def test_streaming_memory_stays_flat(tmp_path):
    pinned = pin_mmap_threshold()
    layout = SiteLayout("y", (DRAWS, ROWS), np.dtype("float32"), 1, BLOCK, ("obs",))
    info = StreamInfo("posterior_predictive", "predict", 1, {"y": layout})
    rng = np.random.default_rng(0)
    sink = ZarrSink(tmp_path)
    sink.open(info)
    baseline = psutil.Process().memory_info().rss
    start = time.perf_counter()
    with PeakRSS() as rss:
        for offset in range(0, ROWS, BLOCK):
            sink.write("y", offset, rng.random((DRAWS, BLOCK), dtype=np.float32))
        sink._pool.join()  # every block written; the lazy read back is not measured
    seconds = time.perf_counter() - start
    tree = sink.commit()
    growth = rss.peak - baseline
    total = DRAWS * ROWS * 4
    print(
        f"\nstreamed {total / 1e6:.0f} MB in {seconds:.2f} s "
        f"({total / 1e6 / seconds:.0f} MB/s incl. generation); "
        f"peak RSS growth {growth / 1e6:.0f} MB (mmap threshold pinned: {pinned})"
    )
    assert growth < (120e6 if pinned else 200e6), f"peak RSS grew by {growth / 1e6:.0f} MB"
    tail = tree["posterior_predictive"]["y"].isel(obs=slice(ROWS - 3, ROWS)).values
    assert tail.shape == (1, DRAWS, 3) and np.isfinite(tail).all()
