"""The plan of one streamed call: what every batch computes, without the batches.

:func:`resolve_inputs` reads (and advances) the model's state once: it binds the
arguments, builds the kernel spec a prior call needs and draws the call's key.
:func:`plan_call`, a function of those explicit inputs, then fixes the streamed
axis, the batch size, the batch function's config and the output layout, and
builds the :class:`StreamPlan` once, complete and frozen. A plan is all a process
needs (besides the fitted model) to compute any batch with
:meth:`~aimz_core.model.ImpactModel.compute_block`: the single-process stream runs
the batches in order, a distributed run ships the plan to workers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import random

from aimz_core._draws import check_subsample_plates
from aimz_core._posterior import first_draw, fitted_params
from aimz_core._row_dependence import with_params
from aimz_core._sizing import (
    auto_batch_size,
    balanced_batch_size,
    bucket_batch_size,
    row_buckets_enabled,
    rows_for_intermediates,
)
from aimz_core.arguments import KernelArgs, as_jax_tree, streaming_arguments
from aimz_core.batched import BatchConfig, BatchFunction
from aimz_core.exceptions import PerformanceWarning
from aimz_core.kernel_spec import KernelSpec, check_handler_sites, ensure_traced
from aimz_core.rng import pack_keys, unpack_keys
from aimz_core.streaming.axis import check_rows, choose_axis, pinned_plates
from aimz_core.streaming.blocks import BlockRunner, dim_names
from aimz_core.streaming.options import StreamOptions
from aimz_core.streaming.sinks import SiteLayout, StreamInfo, pairing_attrs

if TYPE_CHECKING:
    from aimz_core.model import ImpactModel


def split_range(total: int, size: int) -> list[tuple[int, int]]:
    """Cut ``range(total)`` into ``(start, stop)`` pieces of ``size``.

    Example:
        >>> split_range(5, 2)
        [(0, 2), (2, 4), (4, 5)]
    """
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def _digest(values: dict[str, Any]) -> str:
    """SHA-256 of every value whole, read in place (a ``tobytes`` copy of the
    benchmark MLP's 176 MiB posterior doubled the digest's 0.15 s)."""
    h = hashlib.sha256()
    for name in sorted(values):
        arr = np.ascontiguousarray(np.asarray(values[name]))
        h.update(f"{name}:{arr.dtype.str}:{arr.shape};".encode())
        h.update(arr.tobytes() if arr.dtype.hasobject else arr.data)
    return h.hexdigest()


@dataclasses.dataclass(frozen=True, eq=False)
class StreamPlan:
    """Everything needed to compute any batch of one streamed call.

    Attributes:
        kind: ``"predict"``, ``"prior"`` or ``"loglik"``.
        caller: Public method that started the call.
        group: Output group.
        shard_axis: ``"obs"`` (batches of input rows) or ``"draw"`` (of draws).
        config: The batch function's config (memory-safe draw block included).
        extras: Static (non-array) kernel arguments.
        key: The call's typed PRNG key. Batch ``i`` of the ``"obs"`` path uses
            ``fold_in(key, i)``; draw ``d`` of the ``"draw"`` path uses
            ``fold_in(key, d)``.
        size: Padded batch length along the stream axis.
        total: Length of the stream axis (rows or draws).
        ranges: ``(start, stop)`` of every batch.
        stream_axis: Axis of the outputs the batches follow (1 for rows, 0 for draws).
        global_post: Input-independent prior draws shared by every batch (prior
            predictive on the ``"obs"`` path only).
        intervention: ``do`` values.
        condition: ``condition`` values.
        info: Output layout (on a copy made for workers: without the posterior).
        desc: Progress bar description.
        arrays: The input arrays (NumPy, JAX or lazy arrays such as Dask or Zarr);
            dropped by :meth:`for_workers`.
        runtime: Device buffers of this process (not pickled).
        auto_batch: Whether the planner chose the batch size (no ``batch_size``, no
            data loader): only such calls may be autotuned
            (:mod:`~aimz_core.streaming._autotune`).
    """

    kind: str
    caller: str
    group: str
    shard_axis: str
    config: BatchConfig
    extras: dict[str, Any]
    key: jax.Array
    size: int
    total: int
    ranges: list[tuple[int, int]]
    stream_axis: int
    global_post: dict[str, Any]
    intervention: dict[str, Any]
    condition: dict[str, Any]
    info: StreamInfo
    desc: str
    arrays: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    runtime: dict[Any, Any] = dataclasses.field(default_factory=dict, repr=False)
    auto_batch: bool = False

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["runtime"] = {}  # device buffers, rebuilt where the plan is used
        # The key travels as data plus implementation name (see `aimz_core.rng`).
        return pack_keys(state)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(unpack_keys(state))  # frozen: no __setattr__

    def for_workers(self) -> StreamPlan:
        """A light copy to ship to workers: no input arrays, no posterior copy."""
        info = dataclasses.replace(self.info, posterior={}, posterior_dims={})
        return dataclasses.replace(self, arrays={}, info=info, runtime={})

    def fingerprint(self, posterior: dict[str, Any] | None = None) -> str:
        """A digest of what the outputs depend on (except the input values).

        Two calls with the same fingerprint write the same regions with the same
        values (given the same input data), so a store started by one can be
        finished by the other.
        """
        sites = {
            name: [list(lay.shape), lay.dtype.str, lay.stream_axis, lay.chunk]
            for name, lay in self.info.sites.items()
        }
        described = {
            "kind": self.kind,
            "caller": self.caller,
            "group": self.group,
            "shard_axis": self.shard_axis,
            "size": self.size,
            "total": self.total,
            "num_draws": self.config.num_draws,
            "return_sites": list(self.config.return_sites),
            "extras": repr(sorted(self.extras.items())),
            "key": np.asarray(jax.random.key_data(self.key)).tolist(),
            "key_impl": str(jax.random.key_impl(self.key)),
            "sites": sites,
            "inputs": {k: [list(v.shape), np.dtype(v.dtype).str] for k, v in self.arrays.items()},
            "row_handlers": _digest({k: v for k, v in self.arrays.items() if k.startswith("\x00")}),
            "intervention": _digest(self.intervention),
            "condition": _digest(self.condition),
            "global_post": _digest(self.global_post),
            "posterior": _digest(posterior or {}),
        }
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class CallInputs:
    """What a streamed call reads from the model, resolved once by :func:`resolve_inputs`.

    Attributes:
        bound: The call's arguments, split into batched arrays and static extras.
        loader_batch: Batch size of a data loader input (``None`` for arrays).
        sites: Sites to return.
        intervention: ``do`` values as JAX arrays.
        condition: ``condition`` values as JAX arrays.
        key: The call's key (already split from the model's key when drawn).
        num_draws: Posterior draws, or prior draws of a prior call.
        num_chains: Chains of the output's draw axis.
        posterior: The model's posterior as host arrays (``{}`` when unfitted).
        kernel_spec: The model's kernel spec.
        trace_key: The model's key, used (never split) by planning traces.
        dask_client: The resolved Dask client of a distributed call, else ``None``.
        params: Fitted values of the kernel's ``numpyro.param`` sites (SVI), which
            replace their initial values in every batch.
    """

    bound: KernelArgs
    loader_batch: int | None
    sites: tuple[str, ...]
    intervention: dict[str, jax.Array]
    condition: dict[str, jax.Array]
    key: jax.Array
    num_draws: int
    num_chains: int
    posterior: dict[str, np.ndarray]
    kernel_spec: KernelSpec | None
    trace_key: jax.Array
    dask_client: Any = None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)


def resolve_inputs(model: ImpactModel, X: Any, y: Any, options: StreamOptions) -> CallInputs:
    """Validate a call against the model and read the model state it needs.

    This is the one step of planning that touches the model: it checks that the
    model is fitted (predictive and log-likelihood calls), builds the kernel spec
    a prior or predictive call needs (:func:`~aimz_core.kernel_spec.ensure_traced`)
    and draws the call's key from the model's key.

    Example:
        >>> import numpy as np
        >>> from aimz_core.testing import fitted_linreg
        >>> model = fitted_linreg()
        >>> opts = StreamOptions(kind="predict", caller="predict", store="memory")
        >>> resolve_inputs(model, np.ones((4, 2)), None, opts).sites
        ('y', 'mu')
    """
    from aimz_core.backend import io_backend

    kind = options.kind
    if kind == "prior":
        from aimz_core.data import check_batch_size

        check_batch_size(options.num_samples, "num_samples")
    else:
        model._check_fitted()
    options.validate(X)
    dask_client = None
    if options.client is not None:
        dask_client = io_backend("Distributed runs").resolve_client(options.client)
    interv = as_jax_tree(options.intervention, "intervention")
    cond = as_jax_tree(options.condition, "condition")
    bound, loader_batch = streaming_arguments(
        model.kernel, model.param_input, model.param_output, X, y, options.kwargs
    )
    if kind == "loglik" and model.param_output not in bound.arrays and loader_batch is not None:
        raise ValueError(
            "Log likelihood requires the observed output field "
            f"{model.param_output!r} in each batch. The data loader's batches have no "
            f"{model.param_output!r} field; add it to the loader's dataset."
        )
    if kind == "loglik" and model.param_output not in bound.arrays:
        raise ValueError(
            f"`{model.param_output}` is required for `log_likelihood()` when "
            f"`{model.param_input}` is array-like. Provide `{model.param_output}`, or give "
            f"`{model.param_input}` as a data loader that carries it."
        )
    if options.return_datatree:
        io_backend()
    if kind != "loglik":  # a real trace (one row) before the site checks and defaults
        ensure_traced(model, bound=bound)
    spec = model.kernel_spec
    sites = (model.param_output,) if kind == "loglik" else model._sites_for(options.return_sites)
    check_handler_sites(spec, interv, "intervention")
    check_handler_sites(spec, cond, "condition")
    rows, _, _ = check_rows(  # refusals of the per-row analysis, before the key moves
        model._runner(),
        model.rng_key,
        bound,
        kind,
        model._host_posterior(),
        options.batch_size or loader_batch,
        options.shard_axis if model._posterior or kind == "prior" else "obs",
        int(bound.arrays[model.param_input].shape[0]),
    )
    # `log_likelihood` never consumes the internal key (spec 4.3).
    if kind == "loglik" and options.rng_key is None:
        key = model.rng_key
    else:
        key = model._next_key(options.rng_key)
    return CallInputs(
        bound=bound,
        loader_batch=loader_batch,
        sites=sites,
        intervention=interv,
        condition=cond,
        key=key,
        num_draws=int(options.num_samples) if kind == "prior" else model._num_samples,
        num_chains=1 if kind == "prior" else model._num_chains,
        posterior=model._host_posterior(),
        kernel_spec=spec,
        trace_key=model.rng_key,
        dask_client=dask_client,
        params={} if kind == "prior" else fitted_params(model, rows.params),
    )


def plan_call(
    options: StreamOptions,
    inputs: CallInputs,
    runner: BlockRunner,
    *,
    param_input: str,
) -> StreamPlan:
    """Plan a streamed call: streamed axis, batch size, batch function and layout.

    A function of its explicit inputs (the batch functions it traces are cached
    in ``runner``). The plan is built once, complete.

    Example:
        >>> import numpy as np
        >>> from aimz_core.testing import fitted_linreg
        >>> model = fitted_linreg()
        >>> opts = StreamOptions(kind="predict", caller="predict", batch_size=4,
        ...                      store="memory", return_datatree=False)
        >>> inputs = resolve_inputs(model, np.ones((10, 2)), None, opts)
        >>> plan = plan_call(opts, inputs, model._runner(), param_input="X")
        >>> plan.ranges
        [(0, 4), (4, 8), (8, 10)]
    """
    kind, bound = options.kind, inputs.bound
    ndev = runner.layout.num_devices
    post = runner.placed() if kind != "prior" else {}
    num_draws, key = inputs.num_draws, inputs.key
    n_obs = int(bound.arrays[param_input].shape[0])
    choice = choose_axis(options, inputs, runner, post, param_input=param_input)
    shard_axis, batch_size = choice.shard_axis, choice.batch_size
    if (
        shard_axis == "obs"
        and options.batch_size is not None
        and inputs.loader_batch is None
        and options.batch_size % ndev
    ):
        warnings.warn(
            f"The `batch_size` ({options.batch_size}) is not divisible by the number of "
            f"devices ({ndev}). Use a multiple of {ndev} for optimal performance. "
            f"Each batch is padded to a multiple of {ndev} rows.",
            PerformanceWarning,
            stacklevel=4,
        )
    arrays = choice.arrays
    global_post: dict[str, jax.Array] = {}
    if kind == "prior" and shard_axis == "obs":
        assert inputs.kernel_spec is not None
        key, prior_key = random.split(key)
        global_post = runner.global_prior(
            bound, inputs.kernel_spec, inputs.sites, num_draws, prior_key
        )
        post = global_post
    config = BatchConfig(
        kind=kind,
        shard_axis=shard_axis,
        return_sites=inputs.sites,
        extras_key=bound.extras_key(),
        num_draws=num_draws,
        sharded=ndev > 1,
        plate_modes=choice.plate_modes,
    )
    total = n_obs if shard_axis == "obs" else num_draws
    interv = with_params(choice.intervention, inputs.params, bound.whole)
    cond = choice.condition

    def args_for(size: int, chunked: bool = False) -> tuple:
        return runner.abstract_block_args(
            post,
            shard_axis=shard_axis,
            key=key,
            arrays=arrays,
            intervention=interv,
            condition=cond,
            chunked=chunked,
            size=size,
        )

    auto_batch = batch_size is None
    if batch_size is None:
        entry = runner.function(config, bound.extras)
        batch_size = _auto_size(entry, args_for, total, ndev, key, shard_axis == "obs")
        size = batch_size  # may exceed `total`: rows beyond it are padding
    else:
        size = max(ndev, math.ceil(min(batch_size, total) / ndev) * ndev)
    # The chunk convention of the draw path follows the batch size (`config_for`).
    config = runner.config_for(config, size, shard_axis)
    if shard_axis == "obs":
        check_subsample_plates(pinned_plates(choice.plate_sizes), min(size, total))
    probe_args = args_for(size, chunked=config.chunk is not None)
    config = runner.blocked_config(
        config,
        bound.extras,
        (key, first_draw(probe_args[0]), probe_args[2], interv, cond),
        num_draws=num_draws if shard_axis == "obs" else size,
    )
    entry = runner.function(config, bound.extras)
    layouts = _layouts(entry.fn.eval_shape(*probe_args), entry.dims, shard_axis, size, total)
    info = StreamInfo(
        group=options.group,
        caller=options.caller,
        num_chains=inputs.num_chains,
        sites=layouts,
        posterior=inputs.posterior,
        posterior_dims={k: dim_names(k, v.ndim - 1, {}) for k, v in inputs.posterior.items()},
        # What pairs the draws of two calls (compared by `estimate_effect`).
        attrs=pairing_attrs(inputs.key, shard_axis=shard_axis, num_devices=ndev, batch_size=size),
    )
    return StreamPlan(
        kind=kind,
        caller=options.caller,
        group=options.group,
        shard_axis=shard_axis,
        config=config,
        extras=bound.extras,
        key=key,
        size=size,
        total=total,
        ranges=split_range(total, size),
        stream_axis=1 if shard_axis == "obs" else 0,
        global_post=global_post,
        intervention=interv,
        condition=cond,
        info=info,
        desc=f"{options.desc} [{', '.join(layouts)}]",
        arrays=arrays,
        auto_batch=auto_batch,
    )


def _auto_size(
    entry: BatchFunction,
    args_for: Callable[[int], tuple],
    total: int,
    ndev: int,
    key: jax.Array,
    by_rows: bool,
) -> int:
    """Batch size from the output bytes of a probe batch (see :mod:`~aimz_core._sizing`).

    With ``by_rows`` (the ``"obs"`` path) rows are also bounded by intermediates: a
    wide layer over many rows can need far more memory per draw than the draw's
    output.
    """
    probe_size = max(ndev, min(total, ndev))
    shapes = entry.fn.eval_shape(*args_for(probe_size))
    size = auto_batch_size(shapes, probe_size, total, ndev)
    cap = auto_batch_size(shapes, probe_size, 2**62, ndev)  # not bounded by the input
    if by_rows and total > ndev:
        measured = []
        for rows in (min(total, max(ndev, 256)), min(total, max(ndev, 2048))):
            rows = math.ceil(rows / ndev) * ndev
            one = args_for(rows)
            one_args = (key, first_draw(one[0]), one[2], one[3], one[4])
            measured.extend((entry.draw_bytes(one_args), rows))
        limit = rows_for_intermediates(*measured)
        if limit is not None:
            size, cap = min(size, max(ndev, limit)), min(cap, max(ndev, limit))
    size = balanced_batch_size(size, total, ndev)
    # Rows: a few padded sizes, so inputs of many sizes share compiled programs.
    if by_rows and row_buckets_enabled():
        return bucket_batch_size(size, total, cap, ndev)
    return size


def _layouts(
    shapes: Mapping[str, Any],
    dims: Mapping[str, Mapping[int, str]],
    shard_axis: str,
    size: int,
    total: int,
) -> dict[str, SiteLayout]:
    """The full output layout of every site from the shapes of one batch."""
    stream_axis = 1 if shard_axis == "obs" else 0
    layouts: dict[str, SiteLayout] = {}
    for name, sds in shapes.items():
        if shard_axis == "obs" and (len(sds.shape) < 2 or sds.shape[1] != size):
            raise NotImplementedError(
                f"Site {name!r} has shape {tuple(sds.shape[1:])} per draw, which does "
                "not follow the input's rows; slice writing requires each site's "
                "axis-1 size to match the input batch size. Leave it out of "
                "`return_sites` or use `shard_axis='draw'`."
            )
        full = list(sds.shape)
        full[stream_axis] = total
        layouts[name] = SiteLayout(
            name=name,
            shape=tuple(full),
            dtype=np.dtype(jnp.float32 if sds.dtype == jnp.bfloat16 else sds.dtype),
            stream_axis=stream_axis,
            chunk=min(size, total),
            dims=dim_names(name, len(sds.shape) - 1, dims),
        )
    return layouts


__all__ = ["CallInputs", "StreamPlan", "plan_call", "resolve_inputs", "split_range"]
