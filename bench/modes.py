"""The ways a case is run: the engine's modes, NumPyro ``Predictive`` and the floor."""

from __future__ import annotations

import shutil
import tempfile
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
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
    "on_batch": "`predict_on_batch(X, return_datatree=False)` (all rows at once; draws in the "
    "engine's blocks)",
    "predictive": "NumPyro `Predictive(kernel, posterior_samples)(key, X=X)` on the full array",
    "floor": "compute floor: the engine's per-draw forward pass (`forward_draw`) with the "
    "engine's plan (batch size and draw block: `lax.map(batch_size=block)`, plain for 1, as "
    "`planning.draw_block_size` picks it, one vmap when all draws fit), batch by batch, "
    "two in flight, copied to host and discarded",
    "floor_vmap": "reference only: the floor with one vmap over all draws of a batch "
    "(the pre-e6f432b floor; run when the engine blocks draws and the vmap is cheap)",
}
ENGINE_MODES = ("zarr", "memory", "dict")


def _pad(x: np.ndarray, size: int) -> np.ndarray:
    n = x.shape[0]
    if n == size:
        return x
    return np.concatenate([x, np.repeat(x[-1:], size - n, axis=0)], axis=0)


def _take(post: dict[str, jax.Array], start: Any, size: int) -> tuple[dict, jax.Array]:
    """Draws ``[start, start + size)`` and their indices: the engine's own jitted gather
    (``aimz_core.engine.take_draws``; past the last draw it repeats the last one)."""
    from aimz_core.engine import take_draws

    return take_draws(post, start, size)


def _one_draw(kernel: Callable, site: str) -> Callable:
    """The engine's per-draw forward pass (``aimz_core.sampling.forward_draw``)."""
    try:
        from aimz_core.sampling import forward_draw
    except ImportError:  # engine being refactored: the same pass, spelled out
        forward_draw = None

    if forward_draw is not None:

        def one(key, draw, X):
            return forward_draw(kernel, key, draw, {"X": X}, return_sites=(site,))

    else:

        def one(key, draw, X):
            model = handlers.substitute(handlers.mask(kernel, mask=False), data=dict(draw))
            tr = handlers.trace(handlers.seed(model, key)).get_trace(X=X)
            return {site: tr[site]["value"]}

    return one


def floor_draw_block(
    kernel: Callable,
    post: dict[str, Any],
    X: np.ndarray,
    size: int,
    shard_axis: str,
    site: str = "y",
) -> int | None:
    """The draw block the engine picks for this plan (``planning.draw_block_size``).

    Called with the same arguments as the engine's ``ImpactModel._blocked``: one
    draw, the probe batch (``size`` padded rows on the obs path, every row on the
    draw path) and the draws vectorised per batch (all of them on the obs path,
    ``size`` on the draw path).
    """
    from aimz_core.planning import draw_block_size

    one = _one_draw(kernel, site)
    num_draws = next(iter(post.values())).shape[0]
    first = {k: jnp.asarray(v[0]) for k, v in post.items()}
    if shard_axis == "obs":
        Xb, nd = _pad(X[:size], size), num_draws
    else:
        Xb, nd = X, size
    return draw_block_size(one, (random.key(0), first, jnp.asarray(Xb)), nd)


class Floor:
    """The same per-draw forward pass and plan as the engine, with no sink and no I/O.

    ``aimz_core.sampling.forward_draw`` for one draw, over the draws of a batch the
    way the engine does it: ``jax.lax.map(..., batch_size=block)`` with the engine's
    draw block (``planning.draw_block_size``, see :func:`floor_draw_block`; a plain
    ``lax.map`` for a block of 1), or one ``vmap`` when the block is ``None`` (all
    draws fit). Keys are derived like the
    engine's (obs: ``fold_in(key, batch)`` split per draw; draw: ``fold_in(key,
    draw)``); the draw path takes each chunk of the device posterior with the
    engine's jitted gather. Batches of the engine's size (the last one padded), two
    in flight, each copied to host and dropped.
    """

    def __init__(
        self,
        kernel: Callable,
        post: dict[str, np.ndarray],
        shard_axis: str,
        block: int | None,
        site: str = "y",
    ) -> None:
        self.shard_axis = shard_axis
        self.block = block
        self.post_dev = jax.device_put(post)
        self.num_draws = next(iter(post.values())).shape[0]
        one = _one_draw(kernel, site)

        def over_draws(keys, draws, X):
            if block is None or block >= keys.shape[0]:
                return jax.vmap(one, in_axes=(0, 0, None))(keys, draws, X)
            return jax.lax.map(
                lambda kd: one(kd[0], kd[1], X),
                (keys, draws),
                batch_size=None if block == 1 else block,  # as the engine: a plain loop
            )

        if shard_axis == "obs":
            num_draws = self.num_draws

            def obs_fn(post, key_index, X):
                key, index = key_index
                keys = random.split(random.fold_in(key, index), num_draws)
                return over_draws(keys, post, X)

            self.fn = jax.jit(obs_fn)
        else:

            def draw_fn(post, key_idx, X):
                key, idx = key_idx
                keys = jax.vmap(random.fold_in, in_axes=(None, 0))(key, idx)
                return over_draws(keys, post, X)

            self.fn = jax.jit(draw_fn)

    def _args(self, X: Any, size: int, start: int, stop: int, i: int, key, padded=None) -> tuple:
        if self.shard_axis == "obs":
            return (self.post_dev, (key, i), _pad(X[start:stop], size))
        chunk, idx = _take(padded, start, size)
        return (chunk, (key, idx), X)

    def _padded(self, size: int) -> dict[str, jax.Array]:
        return self.post_dev  # the gather pads the last chunk itself

    def temp_bytes(self, X: np.ndarray, size: int) -> int | None:
        """XLA's temporary buffer size for one batch (``memory_analysis``), if known."""
        try:
            key = random.key(0)
            if self.shard_axis == "obs":
                args = self._args(X, size, 0, min(size, len(X)), 0, key)
            else:
                args = self._args(jnp.asarray(X), size, 0, size, 0, key, self._padded(size))
            analysis = self.fn.lower(*args).compile().memory_analysis()
            return int(analysis.temp_size_in_bytes)
        except Exception:  # not every backend reports it
            return None

    def __call__(self, X: np.ndarray, size: int, key: jax.Array, depth: int = 2) -> None:
        total = X.shape[0] if self.shard_axis == "obs" else self.num_draws
        ranges = [(s, min(s + size, total)) for s in range(0, total, size)]
        padded = None
        if self.shard_axis == "draw":
            X = jnp.asarray(X)
            padded = self._padded(size)
        pending: deque = deque()
        for i, (start, stop) in enumerate(ranges):
            out = self.fn(*self._args(X, size, start, stop, i, key, padded))
            for v in out.values():
                v.copy_to_host_async()
            pending.append(out)
            if len(pending) >= depth:
                [np.asarray(v) for v in pending.popleft().values()]
        while pending:
            [np.asarray(v) for v in pending.popleft().values()]


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
    if mode in ("floor", "floor_vmap"):
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
