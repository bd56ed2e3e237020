"""Per-draw functions of a kernel: forward sampling and pointwise log-likelihood.

Handlers are applied inside the function that is vmapped and jitted, never around
it from outside. Each function runs one posterior draw; callers vmap over draws.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
from numpyro import handlers
from numpyro.primitives import Messenger

from aimz_core._locks import TRACE_LOCK
from aimz_core.exceptions import OutputWarning


def site_dims(site: Mapping[str, Any], value_ndim: int) -> dict[int, str]:
    """Map axis index -> dim name for one traced site (axes of a single draw).

    Plates name the batch axes they cover. A sample site's distribution tells its
    event axes apart; a deterministic site has none, so its plates go on the
    leftmost axes whose sizes match the plates' (ArviZ's convention: trailing
    axes are event axes). ``infer={"event_dims": [...]}`` on a sample site names
    its event axes; names that cannot apply (not one string per event axis) are
    dropped with an :class:`~aimz_core.exceptions.OutputWarning`. When
    ``value_ndim`` is not the ndim of the site's value (a log-density, whose event
    axes are summed out) only the plates name axes. Axes left unnamed get the
    default names later (:func:`~aimz_core.streaming.dim_names`).

    Example:
        >>> import numpy as np
        >>> from numpyro.primitives import CondIndepStackFrame
        >>> obs = CondIndepStackFrame("obs", -1, 5)
        >>> site_dims({"value": np.zeros((5, 3)), "cond_indep_stack": [obs]}, 2)
        {0: 'obs'}
    """
    value = site.get("value")
    shape = tuple(jax.numpy.shape(value)) if value is not None else None
    frames = list(site.get("cond_indep_stack", ()))
    fn = site.get("fn")
    event_names: tuple[str, ...] = ()
    if shape is None or len(shape) != value_ndim or ("fn" in site and fn is None):
        event_dim = 0  # a log-density (or a value of unknown shape): batch axes only
    elif fn is not None:
        event_dim = getattr(fn, "event_dim", 0)
        event_names = _event_names(site, event_dim)
    else:  # a deterministic site: place the plates where their sizes fit
        fitting = _plate_event_dim(shape, frames)
        if fitting is None:
            return {}
        event_dim = fitting
    batch_ndim = value_ndim - event_dim
    names: dict[int, str] = {}
    for frame in frames:
        axis = batch_ndim + frame.dim
        if 0 <= axis < value_ndim:
            names[axis] = frame.name
    for offset, name in enumerate(event_names):
        names[batch_ndim + offset] = name
    return names


def _plate_event_dim(shape: tuple[int, ...], frames: list[Any]) -> int | None:
    """The most trailing (event) axes of a value that leave its plates on axes of
    their size; ``None`` when no split fits."""
    if not frames:
        return 0
    for event_dim in range(len(shape), -1, -1):
        batch_ndim = len(shape) - event_dim
        axes = [batch_ndim + frame.dim for frame in frames]
        if all(
            0 <= axis < batch_ndim and (frame.size is None or shape[axis] == frame.size)
            for axis, frame in zip(axes, frames, strict=True)
        ):
            return event_dim
    return None


def _event_names(site: Mapping[str, Any], event_dim: int) -> tuple[str, ...]:
    """The ``infer={"event_dims": [...]}`` names of a sample site (warns when unusable)."""
    names = (site.get("infer") or {}).get("event_dims")
    if names is None:
        return ()
    if isinstance(names, str):
        names = [names]
    names = list(names) if isinstance(names, (list, tuple)) else names
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        problem = f"it must be a list of strings, got {names!r}"
    elif len(names) != event_dim:
        problem = f"the site has {event_dim} event axes, `event_dims` names {len(names)}"
    else:
        return tuple(names)
    warnings.warn(
        f"`event_dims` of site {site.get('name')!r} cannot apply ({problem}); its event "
        "axes keep the default names.",
        OutputWarning,
        stacklevel=2,
    )
    return ()


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
    plate_modes: tuple[tuple[str, str], ...] = (),
) -> dict[str, jax.Array]:
    """Pointwise log-density of the observed output under one posterior draw.

    Subsampling plates are evaluated on the rows given, never on a random
    subsample of them (see :class:`SubsamplePlates` for ``plate_modes``).
    """
    model = handlers.substitute(SubsamplePlates(kernel, modes=plate_modes), data=dict(draw))
    with TRACE_LOCK:
        trace = handlers.trace(handlers.seed(model, key)).get_trace(**args)
    site = trace[param_output]
    value = site["fn"].log_prob(site["value"])
    if dims_out is not None:
        dims_out[param_output] = {
            axis: name for axis, name in site_dims({**site, "fn": None}, value.ndim).items()
        }
    return {param_output: value}


class SubsamplePlates(Messenger):
    """Evaluate subsampling plates on the data given, in order.

    A plate declared with ``subsample_size`` draws random indices when it runs; to
    evaluate a log-likelihood every row must be used once, in order. ``modes`` maps
    a plate name to ``"pin"`` (the rows given *are* the subsample: indices
    ``arange(subsample_size)``, as in ``plate("obs", N, subsample_size=len(X))``) or
    ``"full"`` (the kernel subsamples its rows itself: the plate runs on all
    ``size`` indices, as in ``plate("obs", len(X), subsample_size=k)``). Plates
    without a mode pin when ``subsample_size < size`` and run in full otherwise.

    Example:
        >>> import numpyro
        >>> def k():
        ...     with numpyro.plate("p", 4, subsample_size=2) as idx:
        ...         return idx
        >>> SubsamplePlates(k)().tolist(), SubsamplePlates(k, modes=(("p", "full"),))().tolist()
        ([0, 1], [0, 1, 2, 3])
    """

    def __init__(self, fn: Callable | None = None, modes: tuple[tuple[str, str], ...] = ()):
        self.modes = dict(modes)
        #: ``(size, subsample_size)`` of every plate as the kernel declared it.
        self.declared: dict[str, tuple[int, int | None]] = {}
        super().__init__(fn)

    def process_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] != "plate":
            return
        size, sub = msg["args"][:2]
        self.declared[msg["name"]] = (size, sub)
        if sub is None or sub == size:
            return
        mode = self.modes.get(msg["name"], "pin" if sub < size else "full")
        if mode == "full":
            msg["args"] = (size, None, *msg["args"][2:])
            msg["value"] = jax.numpy.arange(size)
        else:
            msg["value"] = jax.numpy.arange(sub)


def pin_subsample(msg: Mapping[str, Any]) -> Any:
    """``substitute_fn`` that fixes a subsampling plate's indices to ``arange``."""
    if msg["type"] == "plate":
        size, subsample_size = msg["args"][:2]
        if subsample_size is not None and subsample_size < size:
            return jax.numpy.arange(subsample_size)
    return None


def check_subsample_plates(plates: Mapping[str, tuple[int, str]], rows: int) -> None:
    """Refuse evaluating ``rows`` observations against subsampling plates that
    cannot hold them.

    ``plates`` maps a plate to its declared (constant) size and its mode (see
    :class:`SubsamplePlates`): a pinned plate takes at most ``size`` rows, a plate
    of constant size evaluated in full takes exactly ``size``.

    Raises:
        ValueError: Naming the plate, its size and the number of rows.

    Example:
        >>> check_subsample_plates({"data": (100, "pin")}, 60)
        >>> check_subsample_plates({"data": (100, "pin")}, 600)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: Plate site 'data' declares size=100, but the evaluated batch has 600 observations. ...
    """  # noqa: E501
    for name, (size, mode) in plates.items():
        if rows > size or (mode == "full" and rows != size):
            raise ValueError(
                f"Plate site {name!r} declares size={size}, but the evaluated batch has "
                f"{rows} observations. Evaluate at most `size` observations per batch, or "
                "declare a plate size covering the data. (Subsampling plates are "
                "evaluated on the rows given, in order"
                + (
                    f"; this plate draws its own subsample of all {size} rows, so the "
                    f"input must have exactly {size} rows.)"
                    if mode == "full"
                    else f"; pass a `batch_size` of at most {size}.)"
                )
            )


def global_trace(
    kernel: Callable, key: jax.Array, args: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Trace the kernel once (no jit) and return its sites."""
    with TRACE_LOCK:
        return dict(handlers.trace(handlers.seed(kernel, key)).get_trace(**args))
