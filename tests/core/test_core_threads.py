"""Thread safety of one model (and of several models) called from many threads.

* Calls without ``rng_key`` each take their own key (never a shared one).
* The model's temporary output directory is created once, mode 0700.
* Tracing NumPyro kernels (first calls, new shapes, new site sets) is serialized
  process-wide, so concurrent first calls do not corrupt NumPyro's handler stack.
"""

from __future__ import annotations

import stat
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from aimz_core.testing import fitted_linreg, linreg_data

from ..aimz_testing import assert_close_float

THREADS = 4
CALLS = 25


def _run_threads(n: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(i)`` in ``n`` threads that start together; re-raise any error."""
    barrier = threading.Barrier(n)

    def go(i: int) -> Any:
        barrier.wait()
        return work(i)

    with ThreadPoolExecutor(n) as pool:
        return [f.result() for f in [pool.submit(go, i) for i in range(n)]]


def test_keyless_calls_never_share_a_key() -> None:
    X, _ = linreg_data(n=8)
    model = fitted_linreg(num_draws=10)
    model.predict_on_batch(X, return_datatree=False)  # compile outside the race

    def work(_: int) -> list[np.ndarray]:
        return [model.predict_on_batch(X, return_datatree=False)["y"] for _ in range(CALLS)]

    draws = [d for chunk in _run_threads(THREADS, work) for d in chunk]
    assert len(draws) == THREADS * CALLS
    seen = {d.tobytes() for d in draws}
    assert len(seen) == len(draws), f"{len(draws) - len(seen)} calls reused another's key"
    # Each call advanced the model's key once: the next key-less call is fresh too.
    nxt = model.predict_on_batch(X, return_datatree=False)["y"]
    assert nxt.tobytes() not in seen


def test_first_calls_create_one_private_temp_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("aimz_io")  # the temp dir holds Zarr stores
    X, _ = linreg_data(n=8)
    model = fitted_linreg(num_draws=10)
    created: list[str] = []
    real = tempfile.TemporaryDirectory

    def counting(*args: Any, **kwargs: Any) -> tempfile.TemporaryDirectory:
        temp = real(*args, **kwargs)
        created.append(temp.name)
        return temp

    monkeypatch.setattr(tempfile, "TemporaryDirectory", counting)
    try:
        results = _run_threads(3, lambda i: model.predict(X, batch_size=8, progress=False))
        assert len(results) == 3
        assert len(created) == 1, f"{len(created)} temp dirs created"
        assert model.temp_dir == created[0]
        temp = Path(model.temp_dir)
        assert stat.S_IMODE(temp.stat().st_mode) == 0o700
        # Every call wrote under the one directory.
        assert len([p for p in temp.iterdir() if p.is_dir()]) == 3
    finally:
        model.cleanup()
    assert model.temp_dir is None
    leaked = [c for c in created if Path(c).exists()]
    assert not leaked, f"{len(leaked)} temp dirs leaked"


def test_concurrent_first_calls_with_new_shapes_trace_safely() -> None:
    # Two model objects, fresh caches: every call below traces a new shape.
    models = [fitted_linreg(num_draws=6, seed=s) for s in (1, 2)]
    rows = [3, 5, 7, 9, 11, 13]
    sites = [None, ("y", "mu")]
    jobs = [(m, r, s) for m in range(2) for r in rows[:3] for s in sites]
    jobs += [(m, r, None) for m in range(2) for r in rows[3:]]
    X, _ = linreg_data(n=max(rows))
    key = jax.random.key(7)

    def call(job: tuple[int, int, Any]) -> dict[str, np.ndarray]:
        m, r, s = job
        return models[m].predict_on_batch(X[:r], rng_key=key, return_sites=s, return_datatree=False)

    n = len(jobs)
    concurrent = _run_threads(n, lambda i: call(jobs[i]))
    serial = [call(job) for job in jobs]
    for job, got, want in zip(jobs, concurrent, serial, strict=True):
        assert set(got) == set(want), job
        for site in want:
            assert_close_float(got[site], want[site], err_msg=f"{job} {site}")
