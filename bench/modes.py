"""The ways a case is run: the engine's modes, NumPyro ``Predictive`` and the floor."""

from __future__ import annotations

import shutil
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax import random
from numpyro import handlers
from numpyro.infer import Predictive

from bench.measure import dir_bytes

#: Mode name -> short description (table order).
MODES = {
    "zarr": "`predict(X)` to Zarr (store='persistent', output_dir in a temp dir)",
    "memory": "`predict(X, store='memory')` (in-memory DataTree)",
    "dict": "`predict(X, return_datatree=False)` (core MemorySink, dict of arrays)",
    "on_batch": "`predict_on_batch(X, return_datatree=False)` (one vmap over all draws)",
    "predictive": "NumPyro `Predictive(kernel, posterior_samples)(key, X=X)` on the full array",
    "floor": "compute floor: jitted vmap-over-draws forward pass, batch by batch, "
    "same batch size as the engine, copied to host and discarded",
}
ENGINE_MODES = ("zarr", "memory", "dict")


def _pad(x: np.ndarray, size: int) -> np.ndarray:
    n = x.shape[0]
    if n == size:
        return x
    return np.concatenate([x, np.repeat(x[-1:], size - n, axis=0)], axis=0)


class Floor:
    """The same per-draw forward pass as the engine, with no sink and no I/O.

    ``trace(seed(substitute(kernel, draw), key))`` for one draw, vmapped over the
    draws of a batch and jitted once; batches of the engine's size (the last one
    padded like the engine pads it), two in flight, each copied to host and dropped.
    """

    def __init__(
        self, kernel: Callable, post: dict[str, np.ndarray], shard_axis: str, site: str = "y"
    ) -> None:
        self.shard_axis = shard_axis
        self.post_host = post
        self.post_dev = jax.device_put(post)
        self.num_draws = next(iter(post.values())).shape[0]

        def one(key, draw, X):
            model = handlers.seed(handlers.substitute(kernel, data=draw), key)
            return handlers.trace(model).get_trace(X=X)[site]["value"]

        vone = jax.vmap(one, in_axes=(0, 0, None))
        if shard_axis == "obs":
            num_draws = self.num_draws

            def obs_fn(post, key, X):
                return vone(random.split(key, num_draws), post, X)

            self.fn = jax.jit(obs_fn)
        else:

            def draw_fn(post, key, idx, X):
                return vone(jax.vmap(random.fold_in, in_axes=(None, 0))(key, idx), post, X)

            self.fn = jax.jit(draw_fn)

    def temp_bytes(self, X: np.ndarray, size: int) -> int | None:
        """XLA's temporary buffer size for one batch (``memory_analysis``), if known."""
        try:
            if self.shard_axis == "obs":
                args = (self.post_dev, random.key(0), _pad(X[:size], size))
            else:
                chunk = {k: _pad(v[:size], size) for k, v in self.post_host.items()}
                args = (chunk, random.key(0), np.arange(size), X)
            analysis = self.fn.lower(*args).compile().memory_analysis()
            return int(analysis.temp_size_in_bytes)
        except Exception:  # not every backend reports it
            return None

    def __call__(self, X: np.ndarray, size: int, key: jax.Array, depth: int = 2) -> None:
        total = X.shape[0] if self.shard_axis == "obs" else self.num_draws
        ranges = [(s, min(s + size, total)) for s in range(0, total, size)]
        keys = random.split(key, len(ranges))
        X_dev = jax.device_put(X) if self.shard_axis == "draw" else None
        pending: deque = deque()
        for i, (start, stop) in enumerate(ranges):
            if self.shard_axis == "obs":
                out = self.fn(self.post_dev, keys[i], _pad(X[start:stop], size))
            else:
                chunk = {k: _pad(v[start:stop], size) for k, v in self.post_host.items()}
                out = self.fn(chunk, keys[i], np.arange(start, start + size), X_dev)
            out.copy_to_host_async()
            pending.append(out)
            if len(pending) >= depth:
                np.asarray(pending.popleft())
        while pending:
            np.asarray(pending.popleft())


def run_mode(
    mode: str,
    model: Any,
    X: np.ndarray,
    *,
    shard_axis: str,
    floor: Floor | None,
    batch_size: int | None,
    key: jax.Array,
) -> Callable[[], Any]:
    """A zero-argument callable running ``mode`` once (what gets measured)."""
    common = {"progress": False}
    if shard_axis != "obs":
        common["shard_axis"] = shard_axis
    if mode == "zarr":
        return lambda: model.predict(X, output_dir=_OUT.new(), **common)
    if mode == "memory":
        return lambda: model.predict(X, store="memory", **common)
    if mode == "dict":
        return lambda: model.predict(X, return_datatree=False, **common)
    if mode == "on_batch":
        return lambda: model.predict_on_batch(X, return_datatree=False)
    if mode == "predictive":
        predictive = Predictive(model.kernel, posterior_samples=model.posterior, return_sites=["y"])

        def run() -> dict[str, np.ndarray]:
            return {k: np.asarray(v) for k, v in predictive(key, X=X).items()}

        return run
    if mode == "floor":
        assert floor is not None and batch_size is not None
        return lambda: floor(X, batch_size, key)
    raise ValueError(mode)


class _OutputDirs:
    """Temp output directories for Zarr calls, measured and removed after each."""

    def __init__(self) -> None:
        self.root: Path | None = None
        self.current: Path | None = None

    def new(self) -> Path:
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="aimz_bench_"))
        self.current = Path(tempfile.mkdtemp(dir=self.root))
        return self.current

    def collect(self) -> int:
        """Bytes written under the last directory, which is then removed."""
        if self.current is None:
            return 0
        size = dir_bytes(self.current)
        shutil.rmtree(self.current, ignore_errors=True)
        self.current = None
        return size

    def cleanup(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


_OUT = _OutputDirs()


def chunk_write_seconds(path: Path) -> float | None:
    """Time to encode and write one stream chunk of every array of a Zarr output.

    Reads the first chunk of each array written under ``path`` and writes it to a
    fresh array with the same chunking and codecs (the cost of "one chunk write").
    """
    import time

    import zarr

    arrays = []
    for root, _, files in __import__("os").walk(path):
        if "zarr.json" in files and Path(root) != path:
            try:
                arr = zarr.open_array(zarr.storage.LocalStore(root), mode="r")
            except Exception:
                continue
            if arr.ndim >= 1 and arr.size > 0:
                arrays.append(arr)
    if not arrays:
        return None
    total = 0.0
    with tempfile.TemporaryDirectory(prefix="aimz_bench_chunk_") as tmp:
        for i, arr in enumerate(arrays):
            region = tuple(slice(0, c) for c in arr.chunks)
            block = arr[region]
            dst = zarr.create_array(
                zarr.storage.LocalStore(Path(tmp) / f"a{i}"),
                shape=arr.shape,
                chunks=arr.chunks,
                dtype=arr.dtype,
                compressors=arr.compressors,
                fill_value=arr.fill_value,
                config={"write_empty_chunks": True},
            )
            dst[region] = block  # warm the codec pipeline
            t0 = time.perf_counter()
            dst[region] = block
            total += time.perf_counter() - t0
    return total
