"""The two scenarios of :meth:`~aimz_core.ImpactModel.estimate_effect`: checked, then run.

Both scenarios are checked before either runs, so a refused call leaves no store and
does not move the model's key.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import jax

from aimz_core.arguments import as_jax_tree, bind_arguments, check_aligned, streaming_arguments
from aimz_core.backend import io_backend
from aimz_core.data import ArrayLoader, is_loader
from aimz_core.kernel_spec import check_handler_sites, check_return_sites, ensure_traced
from aimz_core.streaming.options import StreamOptions


def check_scenario(model: Any, args: Mapping[str, Any], on_batch: bool) -> None:
    """Refuse one scenario of ``estimate_effect`` before any scenario runs.

    Runs the checks ``predict`` (or ``predict_on_batch``) makes before drawing a
    key, without drawing one, consuming an iterator or writing.
    """
    call = dict(args)
    if on_batch:
        try:
            bound = inspect.signature(model.predict_on_batch).bind(**call)
        except TypeError as err:
            raise TypeError(f"Scenario arguments do not fit `predict_on_batch`: {err}") from None
        values = {**bound.arguments}
        kwargs = dict(values.pop("kwargs", {}))
        X = values.get("X")
        return_datatree = values.get("return_datatree", True)
        return_sites = values.get("return_sites")
        intervention, condition = values.get("intervention"), values.get("condition")
    else:
        X, options = StreamOptions.from_mapping(
            "predict", "estimate_effect", call, param_input=model._param_input
        )
        if X is None:
            raise ValueError(f"Scenario arguments must include {model._param_input!r}.")
        options.validate(X)
        kwargs = dict(options.kwargs)
        return_datatree, return_sites = options.return_datatree, options.return_sites
        intervention, condition = options.intervention, options.condition
    if return_datatree:
        io_backend()
    check_return_sites(return_sites)
    bound_args = None
    if not is_loader(X):  # a loader may be a one-shot iterator: leave it unread
        bound_args = bind_arguments(
            model._kernel, model._param_input, model._param_output, X, None, kwargs, lazy=True
        )
        check_aligned(bound_args.arrays, model._param_input)
    elif isinstance(X, ArrayLoader) or (isinstance(X, Iterable) and iter(X) is not X):
        with warnings.catch_warnings():  # the scenario's own call warns again
            warnings.simplefilter("ignore")
            bound_args, _ = streaming_arguments(
                model._kernel, model._param_input, model._param_output, X, None, kwargs
            )
    if bound_args is not None:  # a real trace for the site checks (the key stays)
        ensure_traced(model, bound=bound_args)
    check_handler_sites(
        model._kernel_spec, as_jax_tree(intervention, "intervention"), "intervention"
    )
    check_handler_sites(model._kernel_spec, as_jax_tree(condition, "condition"), "condition")


def run_scenario(
    model: Any, args: Mapping[str, Any], shared_key: jax.Array | None, on_batch: bool
) -> Any:
    """Run one scenario of ``estimate_effect``, given as ``predict`` arguments."""
    call = dict(args)
    if shared_key is not None:
        call.setdefault("rng_key", shared_key)
    if on_batch:
        return model.predict_on_batch(**call)
    X, options = StreamOptions.from_mapping(
        "predict", "estimate_effect", call, param_input=model._param_input, progress=False
    )
    if X is None:
        raise ValueError(f"Scenario arguments must include {model._param_input!r}.")
    return model._stream(X, None, options)


__all__ = ["check_scenario", "run_scenario"]
