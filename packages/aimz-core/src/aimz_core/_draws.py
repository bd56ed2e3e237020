"""Per-draw functions of a kernel: forward sampling and pointwise log-likelihood.

Handlers are applied inside the function that is vmapped and jitted, never around
it from outside. Each function runs one posterior draw; callers vmap over draws.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
from numpyro import handlers

from aimz_core._locks import TRACE_LOCK


def site_dims(site: Mapping[str, Any], value_ndim: int) -> dict[int, str]:
    """Map axis index -> plate name for one traced site (axes of a single draw)."""
    fn = site.get("fn")
    event_dim = getattr(fn, "event_dim", 0) if fn is not None else 0
    batch_ndim = value_ndim - event_dim
    names: dict[int, str] = {}
    for frame in site.get("cond_indep_stack", ()):
        axis = batch_ndim + frame.dim
        if 0 <= axis < value_ndim:
            names[axis] = frame.name
    return names


def forward_draw(
    kernel: Callable,
    key: jax.Array,
    draw: Mapping[str, jax.Array],
    args: Mapping[str, Any],
    *,
    return_sites: tuple[str, ...],
    intervention: Mapping[str, Any] | None = None,
    condition: Mapping[str, Any] | None = None,
    dims_out: dict[str, dict[int, str]] | None = None,
) -> dict[str, jax.Array]:
    """Run the kernel once with latent sites substituted by one posterior draw.

    Sites of ``draw`` are substituted, ``intervention`` sites are fixed with
    :func:`numpyro.handlers.do`, ``condition`` sites with
    :func:`numpyro.handlers.condition`; every other site is drawn fresh.

    Returns:
        ``{site: value}`` for the requested sites the kernel recorded.
    """
    model = kernel
    if condition:
        model = handlers.condition(model, data=dict(condition))
    if intervention:
        model = handlers.do(model, data=dict(intervention))
    model = handlers.substitute(handlers.mask(model, mask=False), data=dict(draw))
    with TRACE_LOCK:  # NumPyro's handler stack is per process, not per thread
        trace = handlers.trace(handlers.seed(model, key)).get_trace(**args)
    out = {name: trace[name]["value"] for name in return_sites if name in trace}
    if dims_out is not None:
        for name, value in out.items():
            dims_out[name] = site_dims(trace[name], jax.numpy.ndim(value))
    return out


def loglik_draw(
    kernel: Callable,
    key: jax.Array,
    draw: Mapping[str, jax.Array],
    args: Mapping[str, Any],
    *,
    param_output: str,
    dims_out: dict[str, dict[int, str]] | None = None,
) -> dict[str, jax.Array]:
    """Pointwise log-density of the observed output under one posterior draw.

    Subsampling plates are pinned to ``arange(subsample_size)``: the rows of the batch
    are the data, in order, not a random subsample of them.
    """
    model = handlers.substitute(
        handlers.substitute(kernel, substitute_fn=pin_subsample), data=dict(draw)
    )
    with TRACE_LOCK:
        trace = handlers.trace(handlers.seed(model, key)).get_trace(**args)
    site = trace[param_output]
    value = site["fn"].log_prob(site["value"])
    if dims_out is not None:
        dims_out[param_output] = {
            axis: name for axis, name in site_dims({**site, "fn": None}, value.ndim).items()
        }
    return {param_output: value}


def pin_subsample(msg: Mapping[str, Any]) -> Any:
    """``substitute_fn`` that fixes a subsampling plate's indices to ``arange``."""
    if msg["type"] == "plate":
        size, subsample_size = msg["args"][:2]
        if subsample_size is not None and subsample_size < size:
            return jax.numpy.arange(subsample_size)
    return None


def check_subsample_plates(trace: Mapping[str, Mapping[str, Any]], rows: int) -> None:
    """Refuse a batch with more rows than a subsampling plate's full size.

    Raises:
        ValueError: Naming the plate, its size and the batch size.
    """
    for name, site in trace.items():
        if site["type"] != "plate":
            continue
        size, subsample_size = site["args"][:2]
        if subsample_size is not None and subsample_size < size and rows > size:
            raise ValueError(
                f"The batch has {rows} rows but the subsampling plate {name!r} has size "
                f"{size}; pass a `batch_size` of at most {size}."
            )


def global_trace(
    kernel: Callable, key: jax.Array, args: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Trace the kernel once (no jit) and return its sites."""
    with TRACE_LOCK:
        return dict(handlers.trace(handlers.seed(kernel, key)).get_trace(**args))
