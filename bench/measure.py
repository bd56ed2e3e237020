"""Measuring one call: wall, CPU, sampled peak RSS, and engine instrumentation.

The engine is observed, never changed: :class:`EngineProbe` swaps the ``stream``
function of ``aimz_core.streaming.loop`` (which ``run_plan`` calls) for a wrapper
that timestamps every ``launch`` (dispatch of one batch), every host wait
(``np.asarray`` inside that module) and every sink call, then calls the real ``stream``. Each of
these also records the main thread's CPU time (``time.thread_time``), so the
engine's Python per batch is measured apart from waits, and the Zarr writer
pool's jobs are timed to count the chunk writes still running when the last
batch is ready.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import statistics
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

_PROC = psutil.Process()

try:  # returning freed heap pages to the OS makes "RSS before" comparable
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # pragma: no cover - non-glibc platforms
    _LIBC = None


def trim_heap() -> None:
    """``malloc_trim(0)`` where available (glibc), so RSS baselines are honest."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def rss() -> int:
    return _PROC.memory_info().rss


class RssSampler:
    """Samples this process's RSS every ``interval`` seconds in a daemon thread."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.base = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self.base = self.peak = rss()
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-rss")
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            value = rss()
            if value > self.peak:
                self.peak = value

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.peak = max(self.peak, rss())

    @property
    def increase(self) -> int:
        return max(0, self.peak - self.base)


@dataclass
class StreamRecord:
    """What one streamed engine call did (filled by :class:`EngineProbe`)."""

    t_call: float = 0.0
    t_stream: float = 0.0  # engine.stream entered (planning done)
    t_end: float = 0.0
    n_batches: int = 0
    chunk: int = 0
    stream_axis: int = 0
    batch_out_bytes: int = 0
    out_bytes: int = 0
    launches: list[tuple[float, float]] = field(default_factory=list)
    waits: list[tuple[float, float]] = field(default_factory=list)
    writes: list[tuple[float, float]] = field(default_factory=list)
    #: Main-thread CPU seconds: in the whole loop, in host copies, in sink.write.
    loop_cpu: tuple[float, float] = (0.0, 0.0)
    copy_cpu: float = 0.0
    write_cpu: float = 0.0
    open_cpu: float = 0.0
    #: Writer-pool jobs: (submitted, started, finished) wall times.
    jobs: list[tuple[float, float, float]] = field(default_factory=list)
    open_s: float = 0.0
    commit: tuple[float, float] = (0.0, 0.0)
    sink: Any = None

    def summary(self) -> dict[str, float]:
        """Fixed costs of the call, in milliseconds."""
        if not self.launches:
            return {}
        wait = sum(b - a for a, b in self.waits)
        launch = sum(b - a for a, b in self.launches)
        write = sum(b - a for a, b in self.writes)
        commit = self.commit[1] - self.commit[0]
        loop = (self.commit[0] or self.t_end) - self.launches[0][0]
        host = loop - wait  # Python time in the batch loop (not waiting for the device)
        last_ready = self.waits[-1][1] if self.waits else self.launches[-1][1]
        loop_cpu = self.loop_cpu[1] - self.loop_cpu[0]
        extra: dict[str, float] = {}
        if loop_cpu > 0:
            # sink.open runs inside the loop (after the first dispatch): not per batch
            python = loop_cpu - self.copy_cpu - self.open_cpu
            extra = {
                "python_ms_per_batch": 1e3 * python / self.n_batches,
                "copy_cpu_ms_per_batch": 1e3 * self.copy_cpu / self.n_batches,
                "write_cpu_ms_per_batch": 1e3 * self.write_cpu / self.n_batches,
            }
        if self.jobs:
            extra["writes_after_last_batch"] = float(
                sum(1 for _, _, done in self.jobs if done > last_ready)
            )
            extra["chunk_write_ms"] = 1e3 * statistics.median(
                done - started for _, started, done in self.jobs
            )
        return extra | {
            "first_dispatch_ms": 1e3 * (self.launches[0][0] - self.t_call),
            "planning_ms": 1e3 * (self.t_stream - self.t_call),
            "open_ms": 1e3 * self.open_s,
            "launch_ms_per_batch": 1e3 * launch / self.n_batches,
            "write_ms_per_batch": 1e3 * write / self.n_batches,
            "host_ms_per_batch": 1e3 * host / self.n_batches,
            "commit_ms": 1e3 * commit,
            "tail_ms": 1e3 * (self.t_end - last_ready),
        }


class _TimedNumpy(types.ModuleType):
    """``numpy`` for ``aimz_core.streaming.loop`` whose ``asarray`` records its wait."""

    def __init__(self, probe: EngineProbe) -> None:
        super().__init__("numpy")
        self._probe = probe

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    def asarray(self, *args: Any, **kwargs: Any) -> np.ndarray:
        t0, c0 = time.perf_counter(), time.thread_time()
        out = np.asarray(*args, **kwargs)
        rec = self._probe.record
        if rec is not None:
            rec.waits.append((t0, time.perf_counter()))
            rec.copy_cpu += time.thread_time() - c0
        return out


class _TimedSink:
    def __init__(self, inner: Any, rec: StreamRecord) -> None:
        self.inner = inner
        self.rec = rec

    def open(self, info: Any) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        self.inner.open(info)
        self.rec.open_s = time.perf_counter() - t0
        self.rec.open_cpu = time.thread_time() - c0

    def write(self, site: str, start: int, block: np.ndarray) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        self.inner.write(site, start, block)
        self.rec.writes.append((t0, time.perf_counter()))
        self.rec.write_cpu += time.thread_time() - c0

    def commit(self) -> Any:
        self.rec.loop_cpu = (self.rec.loop_cpu[0], time.thread_time())
        t0 = time.perf_counter()
        out = self.inner.commit()
        self.rec.commit = (t0, time.perf_counter())
        return out

    def abort(self) -> None:
        self.inner.abort()


class EngineProbe:
    """Context manager that instruments every streamed call made inside it."""

    def __init__(self) -> None:
        self.record: StreamRecord | None = None
        self.records: list[StreamRecord] = []

    def __enter__(self) -> EngineProbe:
        import aimz_core.streaming.loop as engine

        im = engine

        self._im, self._engine = im, engine
        self._orig_stream = im.stream
        self._orig_np = engine.np
        real_stream = engine.stream
        probe = self

        # `wraps`: the signature (the `depth` default the report reads) stays the real one.
        @functools.wraps(real_stream)
        def stream(ranges, launch, *, stream_axis, sink, info, **kwargs):
            rec = probe.record if probe.record is not None else StreamRecord()
            rec.t_stream = time.perf_counter()
            rec.n_batches = len(ranges)
            rec.stream_axis = stream_axis
            layouts = list(info.sites.values())
            rec.chunk = layouts[0].chunk if layouts else 0
            rec.out_bytes = sum(int(np.prod(s.shape)) * s.dtype.itemsize for s in layouts)
            total = layouts[0].shape[stream_axis] if layouts else 1
            rec.batch_out_bytes = int(rec.out_bytes * rec.chunk / max(1, total))

            def timed_launch(i, start, stop):
                if i == 0:
                    rec.loop_cpu = (time.thread_time(), 0.0)
                t0 = time.perf_counter()
                out = launch(i, start, stop)
                rec.launches.append((t0, time.perf_counter()))
                return out

            rec.sink = sink
            try:
                return real_stream(
                    ranges,
                    timed_launch,
                    stream_axis=stream_axis,
                    sink=_TimedSink(sink, rec),
                    info=info,
                    **kwargs,
                )
            finally:
                rec.t_end = time.perf_counter()

        im.stream = stream
        engine.np = _TimedNumpy(self)
        self._pool_cls = None
        try:
            from aimz_io.writer_pool import WriterPool
        except ImportError:
            return self
        self._pool_cls, self._orig_submit = WriterPool, WriterPool.submit
        orig_submit = WriterPool.submit

        def submit(pool, job, nbytes):
            rec, queued = probe.record, time.perf_counter()

            def timed() -> None:
                started = time.perf_counter()
                job()
                if rec is not None:
                    rec.jobs.append((queued, started, time.perf_counter()))

            orig_submit(pool, timed, nbytes)

        WriterPool.submit = submit
        return self

    def start(self) -> StreamRecord:
        self.record = StreamRecord(t_call=time.perf_counter())
        return self.record

    def stop(self) -> StreamRecord | None:
        rec, self.record = self.record, None
        if rec is not None and rec.launches:
            self.records.append(rec)
            return rec
        return None

    def __exit__(self, *exc: Any) -> None:
        self._im.stream = self._orig_stream
        self._engine.np = self._orig_np
        if self._pool_cls is not None:
            self._pool_cls.submit = self._orig_submit


@dataclass
class CallResult:
    wall: float
    cpu: float
    rss_increase: int
    rss_peak: int
    stream: dict[str, float] = field(default_factory=dict)
    record: StreamRecord | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def measure(fn: Callable[[], Any], probe: EngineProbe | None = None) -> tuple[CallResult, Any]:
    """Run ``fn()`` once; return its figures and its result."""
    trim_heap()
    with RssSampler() as sampler:
        if probe is not None:
            probe.start()
        c0, t0 = time.process_time(), time.perf_counter()
        if probe is not None:
            probe.record.t_call = t0
        out = fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        rec = probe.stop() if probe is not None else None
    res = CallResult(wall, cpu, sampler.increase, sampler.peak)
    if rec is not None:
        res.record = rec
        res.stream = rec.summary()
    return res, out


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def dir_bytes(path: str | Path) -> int:
    """Apparent size of every file under ``path`` (what was written)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total
