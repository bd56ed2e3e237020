"""Bounded compile and cache growth: automatic row batches are bucketed, the
in-memory function cache is LRU-bounded and the executable cache has a byte bound."""

from __future__ import annotations

import os
import time

import jax
import numpy as np
import pytest
from aimz_core._jit_cache import PersistentJit, evict_executables
from aimz_core._sizing import bucket_batch_size
from aimz_core.batched import BatchConfig, FunctionCache
from aimz_core.testing import fitted_linreg, linreg

from ..aimz_testing import assert_close_float

KEY = jax.random.key(3)


def _compiled(model) -> int:
    return model._functions.compiled()


def test_distinct_small_sizes_share_a_few_programs(monkeypatch):
    """With row buckets (the default), 30 requests of 5..34 rows compile at most 4 row
    buckets (8, 16, 32, 64), not one program per row count; results are the
    unpadded ones."""
    monkeypatch.setenv("AIMZ_ROW_BUCKETS", "1")
    model = fitted_linreg(num_draws=20)
    X = np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32)
    checked = []
    for n in range(5, 35):
        out = model.predict(
            X[:n], rng_key=KEY, return_datatree=False, store="memory", progress=False
        )
        assert out["y"].shape == (20, n)
        if n in (5, 9, 17, 34):
            checked.append((n, out))
    assert _compiled(model) <= 4  # 30 before bucketing
    for n, out in checked:
        ref = model.predict_on_batch(X[:n], rng_key=KEY, return_datatree=False)
        assert_close_float(out["mu"], ref["mu"])
    # The padded batch is still batch 0 with the same key: the unpadded program
    # (an explicit batch size of n rows) draws the same noise for the n rows.
    for n, out in checked:
        exact = model.predict(
            X[:n], rng_key=KEY, batch_size=n, return_datatree=False, progress=False
        )
        assert_close_float(out["y"], exact["y"])


def test_explicit_batch_size_is_not_bucketed():
    model = fitted_linreg(num_draws=10)
    X = np.ones((5, 2), np.float32)
    before = model._functions.compiled()
    out = model.predict(X, batch_size=5, return_datatree=False, store="memory", progress=False)
    assert out["y"].shape == (10, 5)
    shapes = {
        leaf[0]
        for e in model._functions._entries.values()
        for sig, _precision in e.fn._compiled
        for leaf in sig[1]
    }
    assert model._functions.compiled() == before + 1
    assert (5, 2) in shapes and (8, 2) not in shapes  # the rows of X: not padded


def test_row_buckets_are_on_by_default_and_can_be_turned_off(monkeypatch):
    """Kernels that compute across rows stream draws (see test_core_row_dependence),
    so padding is safe and on by default; AIMZ_ROW_BUCKETS=0 turns it off."""

    def shapes_after(env: str | None) -> set:
        if env is None:
            monkeypatch.delenv("AIMZ_ROW_BUCKETS", raising=False)
        else:
            monkeypatch.setenv("AIMZ_ROW_BUCKETS", env)
        model = fitted_linreg(num_draws=10)
        for n in (5, 6, 7):
            X = np.ones((n, 2), np.float32)
            model.predict(X, return_datatree=False, store="memory", progress=False)
        return {
            leaf[0]
            for e in model._functions._entries.values()
            for sig, _precision in e.fn._compiled
            for leaf in sig[1]
        }

    on = shapes_after(None)
    assert (8, 2) in on and not {(5, 2), (6, 2), (7, 2)} & on
    off = shapes_after("0")
    assert {(5, 2), (6, 2), (7, 2)} <= off and (8, 2) not in off


def test_bucket_keeps_batch_count():
    assert bucket_batch_size(5, 5, 10**6, 1) == 8
    assert bucket_batch_size(33, 33, 10**6, 1) == 64
    assert bucket_batch_size(500, 500, 10**6, 1) == 512  # one batch: eighths above 256 rows
    assert bucket_batch_size(334, 334, 10**6, 1) == 352
    # Several batches (a bulk job pays padding in every batch): 64ths of an octave.
    assert bucket_batch_size(500, 1000, 10**6, 1) == 504
    assert bucket_batch_size(334, 1000, 10**6, 1) == 336
    assert bucket_batch_size(3334, 10_000, 10**6, 1) == 3360
    assert bucket_batch_size(200, 1000, 10**6, 1) == 200  # 256 would make 4 batches, not 5
    assert bucket_batch_size(40, 40, 40, 1) == 40  # over the memory cap
    assert bucket_batch_size(5, 5, 10**6, 4) == 8
    assert bucket_batch_size(3, 3, 10**6, 3) == 9


def _config(i: int) -> BatchConfig:
    return BatchConfig(
        kind="predict", shard_axis="obs", return_sites=(f"s{i}",), extras_key=(), num_draws=1
    )


def test_function_cache_is_lru(monkeypatch):
    model = fitted_linreg(num_draws=4)
    runner = model._runner()
    cache = FunctionCache(max_entries=2)
    get = lambda i: cache.get(linreg, _config(i), {}, "y", runner.layout)  # noqa: E731
    first = get(0)
    get(1)
    assert get(0) is first  # a hit makes 0 the most recent
    get(2)  # evicts 1
    assert len(cache) == 2
    assert set(cache._entries) == {_config(0), _config(2)}
    assert get(0) is first  # 2 is now the oldest
    get(1)
    assert set(cache._entries) == {_config(0), _config(1)}
    monkeypatch.setenv("AIMZ_FUNCTION_CACHE_SIZE", "3")
    assert FunctionCache().max_entries == 3
    monkeypatch.setenv("AIMZ_FUNCTION_CACHE_SIZE", "0")  # no bound
    unbounded = FunctionCache()
    for i in range(70):
        unbounded.get(linreg, _config(i), {}, "y", runner.layout)
    assert len(unbounded) == 70


def test_executables_in_memory_are_lru(tmp_path):
    jit = PersistentJit(jax.jit(lambda x: x - 1.0), directory=tmp_path)
    jit.max_executables = 2
    for n in (1, 2, 3, 2):
        assert float(jit(np.ones(n, np.float32))[0]) == 0.0
    assert len(jit._compiled) == 2
    assert [sig[1][0][0] for sig, _precision in jit._compiled] == [(3,), (2,)]


def test_disk_cache_stays_under_its_byte_bound(tmp_path, monkeypatch):
    directory = tmp_path / "executables"
    limit = 30_000
    monkeypatch.setenv("AIMZ_EXECUTABLE_CACHE_BYTES", str(limit))
    written = 0
    for n in range(1, 9):
        fresh = float(time.time_ns() % 10**6)  # a program no earlier run compiled
        jit = PersistentJit(jax.jit(lambda x, n=n, c=fresh: (x * n + c).sum()), directory=directory)
        jit(np.ones(n, np.float32))
        assert jit.sources == ["compiled"]
        files = {p: p.stat() for p in directory.glob("*.bin")}
        newest = max(files, key=lambda p: files[p].st_mtime_ns)
        written += files[newest].st_size
        assert sum(st.st_size for st in files.values()) <= limit
    assert written > limit  # more than the bound was written
    assert 0 < len(list(directory.glob("*.bin"))) < 8


def test_evict_oldest_first(tmp_path):
    now = time.time()
    for i in range(4):
        path = tmp_path / f"{i}.bin"
        path.write_bytes(b"x" * 100)
        os.utime(path, (now - 100 + i, now - 100 + i))
    (tmp_path / "other.txt").write_bytes(b"y" * 1000)  # not an entry: kept
    assert evict_executables(tmp_path, 250, keep=tmp_path / "0.bin") == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.bin", "3.bin", "other.txt"]
    assert evict_executables(tmp_path, 0) == 0  # 0: no bound


@pytest.mark.parametrize("bound", ["0"])
def test_zero_bound_keeps_everything(tmp_path, monkeypatch, bound):
    monkeypatch.setenv("AIMZ_EXECUTABLE_CACHE_BYTES", bound)
    directory = tmp_path / "executables"
    for n in range(1, 4):
        fresh = float(time.time_ns() % 10**6)
        PersistentJit(jax.jit(lambda x, n=n, c=fresh: x * n + c), directory=directory)(np.ones(n))
    assert len(list(directory.glob("*.bin"))) == 3
