"""The two scenarios of :meth:`~aimz_core.ImpactModel.estimate_effect`: checked, then run.

Both scenarios are checked before either runs, and so are the groups of precomputed
outputs, so a refused call leaves no store and does not move the model's key.
Scenarios run here share one key (unless a scenario names its own ``rng_key``), and
their outputs record what pairs their draws (``rng_key``, ``shard_axis``,
``num_devices``, ``batch_size``), which the effect compares.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np

from aimz_core.arguments import as_jax_tree, bind_arguments, check_aligned, streaming_arguments
from aimz_core.backend import io_backend
from aimz_core.data import ArrayLoader, is_loader
from aimz_core.kernel_spec import check_handler_sites, check_return_sites, ensure_traced
from aimz_core.streaming.options import StreamOptions
from aimz_core.streaming.sinks import pairing_attrs

#: Groups an effect can compare, in order of preference (as ``aimz_io.effects``).
EFFECT_GROUPS = ("predictions", "posterior_predictive", "prior_predictive")


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
    """Run one scenario of ``estimate_effect``, given as ``predict`` arguments.

    An on-batch scenario always runs with a key (``shared_key`` or its own), which
    its tree records with ``shard_axis="draw"`` (on-batch draws are keyed by their
    index, like the streamed ``"draw"`` path).
    """
    call = dict(args)
    if shared_key is not None:
        call.setdefault("rng_key", shared_key)
    if on_batch:
        out = model.predict_on_batch(**call)
        key = call.get("rng_key")
        if key is not None and hasattr(out, "children"):  # a DataTree
            attrs = pairing_attrs(key, shard_axis="draw")
            out.attrs.update(attrs)
            for name, node in out.children.items():
                if name != "posterior":
                    node.attrs.update(attrs)
        return out
    X, options = StreamOptions.from_mapping(
        "predict", "estimate_effect", call, param_input=model._param_input, progress=False
    )
    if X is None:
        raise ValueError(f"Scenario arguments must include {model._param_input!r}.")
    return model._stream(X, None, options)


def scenario_group(args: Mapping[str, Any] | None) -> str:
    """The group a scenario run with ``args`` writes.

    Example:
        >>> scenario_group({"in_sample": False})
        'predictions'
    """
    return "predictions" if (args or {}).get("in_sample", True) is False else "posterior_predictive"


def check_outputs(
    output_baseline: Any,
    output_intervention: Any,
    args_baseline: Mapping[str, Any] | None,
    args_intervention: Mapping[str, Any] | None,
) -> None:
    """Refuse outputs the effect could not use, before any scenario runs.

    Mirrors the effect's group selection on the groups each scenario has (a
    precomputed tree) or will have (a scenario still to run, or a dict, which is
    placed under the group ``in_sample`` implies): the first of
    :data:`EFFECT_GROUPS` in the baseline, which the intervention must have too.

    Raises:
        TypeError: An output is neither a DataTree nor a dict of arrays.
        ValueError: The group is missing (the message lists the available groups).

    Example:
        >>> check_outputs({"y": np.zeros((2, 3))}, None, None, {"X": np.zeros((3, 2))})
    """
    everything = (args_baseline, args_intervention)
    combined = scenario_group(
        {"in_sample": all(scenario_group(a) != "predictions" for a in everything)}
    )
    available = {}
    for name, out, args in (
        ("baseline", output_baseline, args_baseline),
        ("intervention", output_intervention, args_intervention),
    ):
        if out is None:
            as_dict = (args or {}).get("return_datatree", True) is False
            available[name] = [combined if as_dict else scenario_group(args)]
        elif hasattr(out, "children"):  # a DataTree
            available[name] = list(out.children)
        elif isinstance(out, Mapping):
            available[name] = [combined]
        else:
            raise TypeError(
                f"`output_{name}` must be an xarray.DataTree or a dict of arrays, got "
                f"{type(out).__name__!r}."
            )
    group = next((g for g in EFFECT_GROUPS if g in available["baseline"]), None)
    if group is None:
        raise ValueError(
            "Group 'posterior_predictive' not found in `dt_baseline`. Available groups: "
            f"{_listed(available['baseline'])}. An effect compares one of the groups "
            f"{_listed(EFFECT_GROUPS)}."
        )
    if group not in available["intervention"]:
        raise ValueError(
            f"Group {group!r} not found in `dt_intervention`. Available groups: "
            f"{_listed(available['intervention'])}. (The group is the baseline's; a "
            "scenario run from `args_*` writes `predictions` with `in_sample=False`, "
            "else `posterior_predictive`.)"
        )


def estimate(
    model: Any,
    output_baseline: Any,
    output_intervention: Any,
    args_baseline: Mapping[str, Any] | None,
    args_intervention: Mapping[str, Any] | None,
    *,
    on_batch: bool = False,
) -> Any:
    """The body of :meth:`~aimz_core.ImpactModel.estimate_effect`.

    Every check (scenario arguments, precomputed outputs and their groups) runs
    before any scenario runs or any key is drawn. Scenarios run here share one key
    when neither names an ``rng_key``; otherwise a keyless scenario gets its own.
    All keys are drawn before the first run, and a call that fails while running
    puts the model's key back (unless another call moved it since).

    Example:
        >>> from aimz_core.testing import fitted_linreg, linreg_data
        >>> X, _ = linreg_data()
        >>> model = fitted_linreg()
        >>> base = model.predict_on_batch(X, return_datatree=False)
        >>> out = estimate(model, base, {k: v + 2.0 for k, v in base.items()}, None, None)
        >>> float(out["posterior_predictive"]["y"].mean())
        2.0
    """
    scenarios = (
        ("baseline", output_baseline, args_baseline),
        ("intervention", output_intervention, args_intervention),
    )
    to_run = [(name, args) for name, out, args in scenarios if out is None]
    if to_run:
        model._check_fitted()
        for name, args in to_run:  # every scenario before either runs or a key is drawn
            if args is None:
                raise ValueError(f"Either `output_{name}` or `args_{name}` must be provided.")
            if not isinstance(args, Mapping):
                raise TypeError(f"`args_{name}` must be a dict of predict arguments.")
            check_scenario(model, args, on_batch)
    check_outputs(output_baseline, output_intervention, args_baseline, args_intervention)
    # Every key is drawn here, before any run: one shared key unless a scenario
    # names its own, else one per keyless scenario (what `predict` would draw).
    before = model._rng_key
    keys: dict[str, Any] = {}
    if to_run and not any("rng_key" in args for _, args in to_run):
        keys = dict.fromkeys((name for name, _ in to_run), model._next_key(None))
    else:
        keys = {name: model._next_key(None) for name, args in to_run if "rng_key" not in args}
    after = model._rng_key
    try:
        return _run_and_subtract(model, scenarios, keys, on_batch, args_baseline, args_intervention)
    except BaseException:
        with model._lock:  # a failed call leaves the key as it found it (unless moved since)
            if model._rng_key is after:
                model._rng_key = before
        raise


def _run_and_subtract(
    model: Any,
    scenarios: tuple[tuple[str, Any, Mapping[str, Any] | None], ...],
    keys: Mapping[str, Any],
    on_batch: bool,
    args_baseline: Mapping[str, Any] | None,
    args_intervention: Mapping[str, Any] | None,
) -> Any:
    outputs = []
    for name, out, args in scenarios:
        if out is None:
            out = run_scenario(model, args, keys.get(name), on_batch)
        outputs.append(out)
    baseline, intervention = outputs
    if not any(hasattr(out, "children") for out in outputs):
        try:
            backend = io_backend()
        except ImportError:
            return {k: np.asarray(intervention[k]) - np.asarray(baseline[k]) for k in baseline}
    else:
        backend = io_backend()
    in_sample = all(
        (args or {}).get("in_sample", True) for args in (args_baseline, args_intervention)
    )
    return backend.effect_tree(
        baseline,
        intervention,
        posterior=model._host_posterior() or None,
        num_chains=model._num_chains,
        group="posterior_predictive" if in_sample else "predictions",
        stacklevel=5,  # _run_and_subtract -> estimate -> ImpactModel.estimate_effect -> caller
    )


def _listed(names: Iterable[Any]) -> str:
    return ", ".join(repr(str(n)) for n in names) or "none"


__all__ = ["check_outputs", "check_scenario", "estimate", "run_scenario", "scenario_group"]
