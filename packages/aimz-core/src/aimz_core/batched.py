"""Jitted, sharded batch functions of a kernel, built once and cached per config."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import jax
from jax import random
from numpyro import handlers

from aimz_core._draws import forward_draw, loglik_draw
from aimz_core._jit_cache import PersistentJit, call_signature
from aimz_core._posterior import take_draws
from aimz_core._precision import with_bf16_matmuls
from aimz_core._row_dependence import split_params, split_row_handlers
from aimz_core._sizing import per_draw_bytes
from aimz_core.sharding import DeviceLayout, shard_draws, shard_obs

Kind = Literal["predict", "prior", "loglik"]


@dataclass(frozen=True)
class BatchConfig:
    """Static description of one batched function (the cache key).

    Attributes:
        kind: ``"predict"`` (posterior predictive), ``"prior"`` or ``"loglik"``.
        shard_axis: ``"obs"`` (one key per batch, draws split inside) or ``"draw"``
            (one key per draw, passed in).
        return_sites: Sites to return (ignored for ``"loglik"``).
        extras_key: Hashable view of the static keyword arguments.
        num_draws: Draws per batch on the ``"obs"`` path.
        draw_block: Draws vectorised at once (``None``: all of them).
        sharded: Whether to shard over local devices.
        chunk: On the unsharded ``"draw"`` path of a streamed call: the draws per
            batch. The function then takes the whole posterior and the chunk's first
            draw, ``f(post, (key, start), ...)``, and gathers the chunk itself, so no
            chunk-sized copy of the posterior is made per batch.
        plate_modes: How ``"loglik"`` evaluates subsampling plates: ``(plate, mode)``
            pairs (see :class:`~aimz_core._draws.SubsamplePlates`).
    """

    kind: Kind
    shard_axis: Literal["obs", "draw"]
    return_sites: tuple[str, ...]
    extras_key: tuple
    num_draws: int
    draw_block: int | None = None
    sharded: bool = True
    chunk: int | None = None
    plate_modes: tuple[tuple[str, str], ...] = ()


@dataclass
class BatchFunction:
    """A jitted batch function plus the plate names its first trace recorded."""

    fn: Callable[..., dict[str, jax.Array]]
    one: Callable[..., dict[str, jax.Array]]
    dims: dict[str, dict[int, str]] = field(default_factory=dict)
    _draw_bytes: dict[tuple, int] = field(default_factory=dict, repr=False)

    def draw_bytes(self, args: tuple) -> int:
        """:func:`~aimz_core._sizing.per_draw_bytes` of ``one(*args)``, memoised by
        the shapes and dtypes of ``args`` (planning a repeated call traces nothing)."""
        key = call_signature(args)
        if key not in self._draw_bytes:
            self._draw_bytes[key] = per_draw_bytes(self.one, args)
        return self._draw_bytes[key]


def build_batch_function(
    kernel: Callable,
    config: BatchConfig,
    extras: dict[str, Any],
    param_output: str,
    layout: DeviceLayout,
) -> BatchFunction:
    """Build the jitted ``f(post, (key, index), arrays, intervention, condition)``.

    On the ``"obs"`` path ``index`` is the batch number: the batch key is
    ``fold_in(key, index)`` (and, when sharded, the device index is folded in too),
    split into ``num_draws`` draw keys. On the ``"draw"`` path ``index`` holds the
    global draw indices of the chunk and each draw's key is ``fold_in(key, draw)``.
    Outputs map each site to an array with the draw axis first.
    """
    dims: dict[str, dict[int, str]] = {}

    def one(key, draw, arrays, intervention, condition):
        # Per-row `do` / `condition` values ride with the rows (sliced like `X`).
        arrays, intervention, condition = split_row_handlers(arrays, intervention, condition)
        intervention, params, whole = split_params(intervention)
        # Fitted `numpyro.param` values replace the kernel's initial values.
        model_fn = handlers.substitute(kernel, data=params) if params else kernel
        args = {**arrays, **whole, **extras}
        if config.kind == "loglik":
            return loglik_draw(
                model_fn,
                key,
                draw,
                args,
                param_output=param_output,
                dims_out=dims,
                plate_modes=config.plate_modes,
            )
        return forward_draw(
            model_fn,
            key,
            draw,
            args,
            return_sites=config.return_sites,
            intervention=intervention,
            condition=condition,
            dims_out=dims,
        )

    def over_draws(keys, post, arrays, intervention, condition):
        if config.draw_block is None or config.draw_block >= config.num_draws:
            return jax.vmap(one, in_axes=(0, 0, None, None, None))(
                keys, post, arrays, intervention, condition
            )
        # A block of one draw is a plain loop over draws: `lax.map(batch_size=1)`
        # would `vmap` every operation over an axis of 1, which cost the benchmark
        # MLP 8% more CPU (5,000 rows, 1000 draws, 2 cores).
        return jax.lax.map(
            lambda kp: one(kp[0], kp[1], arrays, intervention, condition),
            (keys, post),
            batch_size=None if config.draw_block == 1 else config.draw_block,
        )

    if config.kind != "loglik":  # forward passes only: log-likelihoods stay float32
        one = with_bf16_matmuls(one)

    if config.shard_axis == "obs":

        def run(post, key, arrays, intervention, condition):
            keys = random.split(key, config.num_draws)
            return over_draws(keys, post, arrays, intervention, condition)

        def run_batch(post, key_index, arrays, intervention, condition):
            key, index = key_index
            return run(post, random.fold_in(key, index), arrays, intervention, condition)

        fn = shard_obs(run, layout) if config.sharded else run_batch
    else:

        def run(post, key_idx, arrays, intervention, condition):
            key, idx = key_idx
            keys = jax.vmap(random.fold_in, in_axes=(None, 0))(key, idx)
            return over_draws(keys, post, arrays, intervention, condition)

        if config.sharded:
            fn = shard_draws(run, layout)
        elif config.chunk is not None:
            size = config.chunk

            def fn(post, key_start, arrays, intervention, condition):
                key, start = key_start
                chunk, idx = take_draws(post, start, size)
                return run(chunk, (key, idx), arrays, intervention, condition)

        else:
            fn = run
    return BatchFunction(PersistentJit(jax.jit(fn)), one, dims)


#: Default of ``AIMZ_FUNCTION_CACHE_SIZE``.
DEFAULT_FUNCTION_CACHE_SIZE = 64


def function_cache_size() -> int:
    """Most batch functions a model keeps (``AIMZ_FUNCTION_CACHE_SIZE``, default 64;
    ``0`` or less: no bound), also the most executables one function keeps.

    Example:
        >>> function_cache_size() >= 0
        True
    """
    raw = os.environ.get("AIMZ_FUNCTION_CACHE_SIZE", "").strip()
    try:
        size = int(raw) if raw else DEFAULT_FUNCTION_CACHE_SIZE
    except ValueError:
        size = DEFAULT_FUNCTION_CACHE_SIZE
    return max(0, size)


class FunctionCache:
    """Per-model cache of batch functions keyed by :class:`BatchConfig`.

    Least recently used functions are dropped beyond ``max_entries`` (default
    :func:`function_cache_size`; ``0``: no bound).

    Example:
        >>> cache = FunctionCache(max_entries=1)
        >>> cache.max_entries
        1
    """

    def __init__(self, max_entries: int | None = None) -> None:
        self._entries: OrderedDict[BatchConfig, BatchFunction] = OrderedDict()
        self.max_entries = function_cache_size() if max_entries is None else max_entries
        self._lock = threading.Lock()
        #: Planning results that depend only on the kernel and the call's structure
        #: (see :func:`~aimz_core.streaming.axis.choose_axis`), bounded like the functions.
        self.memo: OrderedDict[Any, Any] = OrderedDict()

    def get(
        self,
        kernel: Callable,
        config: BatchConfig,
        extras: dict[str, Any],
        param_output: str,
        layout: DeviceLayout,
    ) -> BatchFunction:
        """Return the cached function for ``config``, building it on first use."""
        with self._lock:  # building only wraps the kernel: nothing is traced here
            entry = self._entries.get(config)
            if entry is None:
                entry = build_batch_function(kernel, config, extras, param_output, layout)
                entry.fn.max_executables = self.max_entries
                self._entries[config] = entry
                while self.max_entries > 0 and len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
            else:
                self._entries.move_to_end(config)
            return entry

    def compiled(self) -> int:
        """Number of compiled executables across entries (entries only traced for
        planning, such as the unblocked twin of a blocked function, count 0)."""
        return sum(entry.fn._cache_size() for entry in self._entries.values())

    def remember(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()``, memoised under ``key`` (least recently used dropped)."""
        with self._lock:
            if key in self.memo:
                self.memo.move_to_end(key)
                return self.memo[key]
        value = compute()  # may trace the kernel: not under the cache's lock
        with self._lock:
            self.memo[key] = value
            while self.max_entries > 0 and len(self.memo) > self.max_entries:
                self.memo.popitem(last=False)
        return value

    def put(self, key: Any, value: Any) -> None:
        """Memoise ``value`` under ``key``, replacing what was there."""
        with self._lock:
            self.memo[key] = value
            self.memo.move_to_end(key)
            while self.max_entries > 0 and len(self.memo) > self.max_entries:
                self.memo.popitem(last=False)

    def clear(self) -> None:
        """Forget every compiled function."""
        self._entries.clear()
        self.memo.clear()

    def __len__(self) -> int:
        return len(self._entries)
