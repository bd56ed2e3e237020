"""Per-batch device arguments and :meth:`BlockRunner.compute_block`.

A :class:`BlockRunner` bundles what computes a batch of a planned call on this
host: the kernel, its cached jitted batch functions and the local devices. The
driver of a streamed call and every worker of a distributed run use it the same
way: ``launch`` dispatches one batch asynchronously, ``compute_block`` returns it
as trimmed host arrays (the unit a Dask worker runs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from aimz_core._draws import global_trace
from aimz_core._locks import TRACE_LOCK
from aimz_core._posterior import take_draws
from aimz_core._row_dependence import with_params
from aimz_core._sizing import block_for_draw_bytes
from aimz_core.arguments import KernelArgs, host_rows, pad_rows
from aimz_core.batched import BatchConfig, BatchFunction, FunctionCache
from aimz_core.kernel_spec import KernelSpec
from aimz_core.sharding import DeviceLayout
from aimz_core.streaming.loop import trim_block

if TYPE_CHECKING:
    from aimz_core.streaming.plan import StreamPlan


def dim_names(site: str, ndim: int, dims: Mapping[str, Mapping[int, str]]) -> tuple[str, ...]:
    """Names of the axes after the draw axis: plate (or event) names where known, and
    ``<site>_dim_0``, ``<site>_dim_1``, ... numbering only the other axes.

    Example:
        >>> dim_names("y", 3, {"y": {1: "obs"}})
        ('y_dim_0', 'obs', 'y_dim_1')
    """
    known = dims.get(site, {})
    names, unnamed = [], 0
    for axis in range(ndim):
        if axis in known:
            names.append(known[axis])
        else:
            names.append(f"{site}_dim_{unnamed}")
            unnamed += 1
    return tuple(names)


@dataclasses.dataclass(frozen=True, eq=False)
class BlockRunner:
    """What computes the batches of a model's streamed calls on this host.

    Attributes:
        kernel: The NumPyro kernel.
        param_output: Name of the kernel's output parameter.
        layout: Local devices.
        functions: The model's cache of jitted batch functions.
        placed: Returns the substitutable posterior placed on the default device.

    Example:
        >>> from aimz_core.testing import fitted_linreg
        >>> model = fitted_linreg()
        >>> runner = model._runner()
        >>> runner.layout.num_devices >= 1
        True
    """

    kernel: Callable
    param_output: str
    layout: DeviceLayout
    functions: FunctionCache
    placed: Callable[[], dict[str, jax.Array]]

    def function(self, config: BatchConfig, extras: dict[str, Any]) -> BatchFunction:
        """The cached batch function of ``config``."""
        return self.functions.get(self.kernel, config, extras, self.param_output, self.layout)

    def blocked_config(
        self,
        config: BatchConfig,
        extras: dict[str, Any],
        one_args: tuple,
        num_draws: int | None = None,
    ) -> BatchConfig:
        """``config`` with the memory-safe draw block size set (when one is needed)."""
        entry = self.function(config, extras)
        block = block_for_draw_bytes(entry.draw_bytes(one_args), num_draws or config.num_draws)
        if block is None:
            return config
        return dataclasses.replace(config, draw_block=block)

    def blocked(
        self, config: BatchConfig, extras: dict[str, Any], one_args: tuple
    ) -> BatchFunction:
        """The batch function for ``config``, vectorising draws in memory-safe blocks."""
        return self.function(self.blocked_config(config, extras, one_args), extras)

    def plan_config(self, plan: StreamPlan) -> BatchConfig:
        """The plan's batch config, adapted to this host's devices (workers may differ)."""
        return self.config_for(plan.config, plan.size, plan.shard_axis)

    def config_for(self, config: BatchConfig, size: int, shard_axis: str) -> BatchConfig:
        """``config`` for batches of ``size`` on this host's devices.

        The draw path of an unsharded call gathers its own chunk of ``size`` draws.
        """
        ndev = self.layout.num_devices
        sharded = ndev > 1 and size % ndev == 0
        chunk = size if shard_axis == "draw" and not sharded else None
        if (config.sharded, config.chunk) == (sharded, chunk):
            return config
        return dataclasses.replace(config, sharded=sharded, chunk=chunk)

    def posterior(self, plan: StreamPlan) -> Mapping[str, Any]:
        """Draws the plan's batches substitute: shared prior draws or the posterior."""
        return plan.global_post if plan.kind == "prior" else self.placed()

    def block_args(self, plan: StreamPlan, i: int, start: int, rows: Mapping[str, Any]) -> tuple:
        """Arguments of the batch function for batch ``i`` (rows already sliced on "obs")."""
        size = plan.size
        config = self.plan_config(plan)
        sharded = config.sharded
        post = self.posterior(plan)
        if plan.shard_axis == "obs":
            batch = {k: pad_rows(host_rows(v), size) for k, v in rows.items()}
            if sharded:
                batch = jax.device_put(batch, self.layout.partitioned)
            return (post, (plan.key, i), batch, plan.intervention, plan.condition)
        cache = plan.runtime
        ident = ("inputs", tuple(id(v) for v in rows.values()), sharded)
        if ident not in cache:
            dev = {k: jnp.asarray(host_rows(v)) for k, v in rows.items()}
            if sharded:
                dev = jax.device_put(dev, self.layout.replicated)
            cache[ident] = (dev, rows)
        dev_arrays = cache[ident][0]
        if config.chunk is not None:  # the batch function gathers its own chunk
            return (post, (plan.key, start), dev_arrays, plan.intervention, plan.condition)
        # One jitted gather per chunk (the last one repeats the last draw as
        # padding): no padded copy of the posterior, no eager slice per site.
        chunk, idx = take_draws(post, start, size)
        if sharded:  # shard_map on an explicit mesh needs inputs laid out as P("obs")
            chunk, idx = jax.device_put((chunk, idx), self.layout.partitioned)
        return (chunk, (plan.key, idx), dev_arrays, plan.intervention, plan.condition)

    def abstract_block_args(
        self,
        post: Mapping[str, Any],
        *,
        shard_axis: str,
        key: jax.Array,
        arrays: Mapping[str, Any],
        intervention: dict[str, Any],
        condition: dict[str, Any],
        chunked: bool,
        size: int,
    ) -> tuple:
        """Shapes-only arguments of the batch function for a batch of ``size``.

        Planning traces the batch function with these (``jax.eval_shape``, one-draw
        jaxprs): no input rows are read or padded and no posterior is copied.
        The avals equal those of :meth:`block_args`, so the trace is reused by
        the first real dispatch. With ``chunked`` (the config's ``chunk`` is set)
        the draw path passes the whole posterior and the first draw's index.
        """
        sharded = self.layout.num_devices > 1
        layout = self.layout

        def spec(value: Any, shape: tuple[int, ...], sharding: Any) -> jax.ShapeDtypeStruct:
            dtype = jax.dtypes.canonicalize_dtype(value.dtype)
            return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding if sharded else None)

        if shard_axis == "obs":
            batch = {
                k: spec(v, (size, *v.shape[1:]), layout.partitioned) for k, v in arrays.items()
            }
            return (post, (key, 0), batch, intervention, condition)
        inputs = {k: spec(v, tuple(v.shape), layout.replicated) for k, v in arrays.items()}
        if chunked:
            return (post, (key, 0), inputs, intervention, condition)
        chunk = {k: spec(v, (size, *v.shape[1:]), layout.partitioned) for k, v in post.items()}
        idx = spec(np.empty(0, np.int32), (size,), layout.partitioned)
        return (chunk, (key, idx), inputs, intervention, condition)

    def launch(
        self, plan: StreamPlan, i: int, start: int, rows: Mapping[str, Any]
    ) -> dict[str, jax.Array]:
        """Dispatch batch ``i`` (asynchronously); device outputs, padded."""
        entry = self.function(self.plan_config(plan), plan.extras)
        return entry.fn(*self.block_args(plan, i, start, rows))

    def compute_block(
        self,
        plan: StreamPlan,
        i: int,
        start: int,
        stop: int,
        rows: Mapping[str, Any] | None = None,
    ) -> dict[str, np.ndarray]:
        """Batch ``i`` of ``plan`` as trimmed host arrays (see
        :meth:`~aimz_core.model.ImpactModel.compute_block`)."""
        if rows is None:
            if plan.shard_axis == "obs":
                rows = {k: host_rows(v, start, stop) for k, v in plan.arrays.items()}
            else:
                rows = plan.arrays
        out = self.launch(plan, i, start, rows)
        return {
            k: trim_block(np.asarray(v), plan.stream_axis, stop - start) for k, v in out.items()
        }

    def global_prior(
        self,
        bound: KernelArgs,
        spec: KernelSpec,
        sites: tuple[str, ...],
        num_draws: int,
        key: jax.Array,
    ) -> dict[str, jax.Array]:
        """Draw the input-independent prior sites once, to share across batches."""
        candidates = tuple(
            s for s in spec.sample_sites if s not in sites and s != self.param_output
        )
        if not candidates:
            return {}
        # Two and three rows (padded when the input is shorter): a kernel with a lag
        # plate of `n - 1` values cannot run on one row.
        args = {**{k: pad_rows(host_rows(v, 0, 2), 2) for k, v in bound.arrays.items()}}
        args2 = {**{k: pad_rows(host_rows(v, 0, 2), 3) for k, v in bound.arrays.items()}}
        args, args2 = {**args, **bound.kernel_extras()}, {**args2, **bound.kernel_extras()}

        def shapes_for(a: Mapping[str, Any]) -> dict[str, Any]:
            return jax.eval_shape(
                lambda k: {
                    n: s["value"]
                    for n, s in global_trace(self.kernel, k, a).items()
                    if n in candidates
                },
                key,
            )

        with TRACE_LOCK:
            one, two = shapes_for(args), shapes_for(args2)
        globals_ = tuple(n for n in candidates if n in one and one[n].shape == two[n].shape)
        if not globals_:
            return {}
        config = BatchConfig(
            kind="prior",
            shard_axis="draw",
            return_sites=globals_,
            extras_key=bound.extras_key(),
            num_draws=num_draws,
            sharded=False,
        )
        entry = self.function(config, bound.extras)
        probe = {k: jnp.asarray(pad_rows(host_rows(v, 0, 2), 2)) for k, v in bound.arrays.items()}
        whole = with_params({}, {}, bound.whole)  # whole arguments ride with `do` values
        return entry.fn({}, (key, jnp.arange(num_draws)), probe, whole, {})


__all__ = ["BlockRunner", "dim_names"]
