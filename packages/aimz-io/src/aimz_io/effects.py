"""Effect trees: ``intervention - baseline`` of two scenario outputs.

The effect is computed per variable after an inner join on the coordinates, so it
stays lazy when the scenarios are lazy: Dask arithmetic when they are Dask-backed,
a :class:`~aimz_io.lazy_arrays.DifferenceArray` read region by region otherwise.

Before subtracting, the scenarios are compared, each problem with an
:class:`~aimz_core.exceptions.OutputWarning` whose first sentence is aimz 0.17's:
the attributes that pair their draws (:data:`~aimz_core.streaming.sinks.PAIRING_ATTRS`),
the posterior they were drawn from, dimension sizes and coordinate labels. Dim
names that differ between the scenarios for the same axes are reconciled (the
baseline's names win).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
from aimz_core.exceptions import OutputWarning
from aimz_core.streaming.sinks import POSTERIOR_ATTR, posterior_digest

from aimz_io.datatree import CHAIN, DRAW, assemble_tree, dataset_from_arrays, tree_from_arrays
from aimz_io.lazy_arrays import DifferenceArray, lazily_indexed
from aimz_io.provenance import PATH_ATTRS, base_attrs

#: Groups an effect can be computed on, in order of preference.
EFFECT_GROUPS = ("predictions", "posterior_predictive", "prior_predictive")

Scenario = xr.DataTree | Mapping[str, np.ndarray]


def select_group(baseline: xr.DataTree, intervention: xr.DataTree) -> str:
    """The group to compare: the first of :data:`EFFECT_GROUPS` in ``baseline``.

    Raises:
        ValueError: ``baseline`` has none of them (the message names
            ``posterior_predictive``), or ``intervention`` lacks the group.

    Example:
        >>> tree = tree_from_arrays({"predictions": {"y": np.zeros((2, 3))}})
        >>> select_group(tree, tree)
        'predictions'
    """
    name = next((g for g in EFFECT_GROUPS if g in baseline.children), None)
    if name is None:
        raise ValueError(
            f"Group 'posterior_predictive' not found in `dt_baseline`. Available groups: "
            f"{_listed(baseline.children)}. An effect compares one of the groups "
            f"{_listed(EFFECT_GROUPS)}."
        )
    if name not in intervention.children:
        raise ValueError(
            f"Group {name!r} not found in `dt_intervention`. Available groups: "
            f"{_listed(intervention.children)}. (The group is the baseline's: the first "
            f"of {_listed(EFFECT_GROUPS)} it has.)"
        )
    return name


def effect_tree(
    baseline: Scenario,
    intervention: Scenario,
    *,
    posterior: Mapping[str, np.ndarray] | None,
    num_chains: int,
    posterior_dims: Mapping[str, Sequence[str]] | None = None,
    group: str = "posterior_predictive",
    stacklevel: int = 2,
) -> xr.DataTree:
    """Tree of ``intervention - baseline`` for every variable of the compared group.

    Args:
        baseline: Baseline output: a DataTree, or ``{site: array}`` with a flattened
            leading draw axis (placed under ``group``).
        intervention: Intervention output, same forms.
        posterior: Posterior samples of the model (flattened draw axis) for the
            ``posterior`` group; when ``None`` the baseline's posterior is reused.
        num_chains: Chains of the flattened draw axis of dict inputs and ``posterior``.
        posterior_dims: Dims of the posterior sites after the draw axis.
        group: Group name for dict inputs.
        stacklevel: Stack level of the warnings, counted from the caller of this
            function (``2``: the caller).

    Returns:
        A DataTree named ``"root"``: ``posterior`` (if any) then the effect group.
        Root attrs include ``artifact_path_baseline`` / ``artifact_path_intervention``
        (and ``output_dir_*``) when the scenarios carry them.

    Raises:
        ValueError: the compared group is missing (the message lists the groups).

    Warns:
        OutputWarning: The scenarios' draws are not paired (different ``rng_key``,
            ``shard_axis`` or, on the ``"obs"`` path, ``batch_size`` /
            ``num_devices``), they come from different posteriors, or dim sizes,
            coordinate labels or variables differ.

    Example:
        >>> base = {"y": np.zeros((4, 3))}
        >>> effect = effect_tree(base, {"y": np.ones((4, 3))}, posterior=None,
        ...                      num_chains=1)
        >>> float(effect["posterior_predictive"]["y"].mean())
        1.0
    """
    level = stacklevel + 1
    trees = {
        "baseline": _as_tree(baseline, group, num_chains),
        "intervention": _as_tree(intervention, group, num_chains),
    }
    name = select_group(trees["baseline"], trees["intervention"])
    base_ds = trees["baseline"][name].to_dataset()
    intv_ds = trees["intervention"][name].to_dataset()
    attrs_of = {label: {**tree.attrs, **tree[name].attrs} for label, tree in trees.items()}
    common = sorted(set(base_ds.data_vars) & set(intv_ds.data_vars))
    warn_unpaired(attrs_of["baseline"], attrs_of["intervention"], name, common, level)
    pairs = _paired_variables(base_ds, intv_ds, common, level)
    _warn_on_mismatch(pairs, base_ds, intv_ds, name, level)

    differences = {}
    for site, (subtrahend, minuend) in pairs.items():
        minuend, subtrahend = xr.align(minuend, subtrahend, join="inner")
        differences[site] = _difference(minuend, subtrahend)
    effect = xr.Dataset(differences)
    chains = int(effect.sizes.get(CHAIN, num_chains))
    attrs = base_attrs(chains)
    effect.attrs = dict(attrs)

    groups: dict[str, xr.Dataset] = {}
    posterior_ds = _posterior(trees, attrs_of, posterior, num_chains, posterior_dims, level)
    if posterior_ds is not None:
        posterior_ds.attrs = dict(attrs)
        groups["posterior"] = posterior_ds
    groups[name] = effect

    root_attrs = dict(attrs)
    for label, tree in trees.items():
        for key in PATH_ATTRS:
            value = tree.attrs.get(key, tree[name].attrs.get(key))
            if value is not None:
                root_attrs[f"{key}_{label}"] = value
    return assemble_tree(groups, root_attrs)


def warn_unpaired(
    baseline: Mapping[str, Any],
    intervention: Mapping[str, Any],
    group: str,
    sites: Iterable[str],
    stacklevel: int = 2,
) -> list[str]:
    """Warn for each pairing attribute the two scenarios' attrs disagree on.

    ``rng_key`` and ``shard_axis`` always pair the draws; ``batch_size`` and
    ``num_devices`` only on the ``"obs"`` path (the ``"draw"`` path keys each
    draw by its index). Attributes missing from either side are not compared.
    ``stacklevel`` is that of :func:`warnings.warn` called here (``2``: the caller).

    Returns:
        The attributes that differ.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     warn_unpaired({"rng_key": [0, 1]}, {"rng_key": [0, 2]},
        ...                   "posterior_predictive", ["y"])
        ['rng_key']
        >>> print(caught[0].message)  # doctest: +ELLIPSIS
        Baseline and intervention differ in 'rng_key'; their draws of 'y' in group 'posterior_predictive' are not paired. ...
    """  # noqa: E501
    names = ["rng_key", "shard_axis"]
    if baseline.get("shard_axis") == "obs" == intervention.get("shard_axis"):
        names += ["batch_size", "num_devices"]
    differing = [
        attr
        for attr in names
        if attr in baseline
        and attr in intervention
        and _plain(baseline[attr]) != _plain(intervention[attr])
    ]
    for attr in differing:
        warnings.warn(
            f"Baseline and intervention differ in {attr!r}; their draws of "
            f"{_listed(sites)} in group {group!r} are not paired. Baseline: "
            f"{_plain(baseline[attr])!r}, intervention: {_plain(intervention[attr])!r}; "
            "make both with the same `rng_key`, `shard_axis` and `batch_size` "
            "(`estimate_effect` with `args_baseline` and `args_intervention` and no "
            "`rng_key` in either shares one key).",
            OutputWarning,
            stacklevel=stacklevel,
        )
    return differing


def _as_tree(value: Scenario, group: str, num_chains: int) -> xr.DataTree:
    if isinstance(value, xr.DataTree):
        return value
    if isinstance(value, Mapping):
        return tree_from_arrays({group: value}, num_chains=num_chains)
    raise TypeError(
        f"A scenario must be an xarray.DataTree or a dict of arrays, got {type(value).__name__!r}."
    )


def _difference(minuend: xr.DataArray, subtrahend: xr.DataArray) -> xr.DataArray:
    """``minuend - subtrahend``, lazy whenever an input is lazy."""
    in_memory = all(getattr(x.variable, "_in_memory", False) for x in (minuend, subtrahend))
    if in_memory or minuend.chunks is not None or subtrahend.chunks is not None:
        return minuend - subtrahend
    lazy = lazily_indexed(DifferenceArray(minuend.variable, subtrahend.variable))
    return xr.DataArray(lazy, dims=minuend.dims, coords=minuend.coords)


def _paired_variables(
    baseline: xr.Dataset, intervention: xr.Dataset, sites: list[str], stacklevel: int
) -> dict[str, tuple[xr.DataArray, xr.DataArray]]:
    """``{site: (baseline, intervention)}``, the intervention's dims renamed to the
    baseline's where only the names differ; sites of a different rank are left out."""
    pairs = {}
    for site in sites:
        base, intv = baseline[site], intervention[site]
        if base.dims != intv.dims:
            if base.ndim != intv.ndim:
                warnings.warn(
                    f"Site {site!r} has dims {base.dims} in the baseline and {intv.dims} "
                    "in the intervention; the effect leaves it out.",
                    OutputWarning,
                    stacklevel=stacklevel,
                )
                continue
            intv = _renamed(intv, base.dims)
        pairs[site] = (base, intv)
    return pairs


def _renamed(array: xr.DataArray, names: tuple[str, ...]) -> xr.DataArray:
    """``array`` with its dims (and their coordinates) renamed to ``names``, in order."""
    temporary = {old: f"__aimz_{i}" for i, old in enumerate(array.dims)}
    array = array.rename(temporary)
    return array.rename(dict(zip(temporary.values(), names, strict=True)))


def _warn_on_mismatch(
    pairs: Mapping[str, tuple[xr.DataArray, xr.DataArray]],
    baseline: xr.Dataset,
    intervention: xr.Dataset,
    group: str,
    stacklevel: int,
) -> None:
    level = stacklevel  # as `warnings.warn` called here
    base_sizes: dict[str, int] = {}
    intv_sizes: dict[str, int] = {}
    for base, intv in pairs.values():
        base_sizes.update({str(k): int(v) for k, v in base.sizes.items()})
        intv_sizes.update({str(k): int(v) for k, v in intv.sizes.items()})
    if base_sizes != intv_sizes:
        unpaired = [d for d in (CHAIN, DRAW) if base_sizes.get(d) != intv_sizes.get(d)]
        verb = "differs" if len(unpaired) == 1 else "differ"
        detail = f" Unpaired draws: {_listed(unpaired)} {verb} in size." if unpaired else ""
        warnings.warn(
            f"Baseline and intervention have different dimension sizes in group {group!r}: "
            f"{base_sizes} vs {intv_sizes}.{detail} The effect covers only the labels "
            "present in both (an inner join on the coordinates).",
            OutputWarning,
            stacklevel=level,
        )
    labelled: set[str] = set()
    for base, intv in pairs.values():
        for dim in base.dims:
            if dim in labelled or base.sizes[dim] != intv.sizes[dim]:
                continue
            labelled.add(dim)
            if (
                dim in base.coords
                and dim in intv.coords
                and not np.array_equal(base[dim].values, intv[dim].values)
            ):
                warnings.warn(
                    f"Baseline and intervention have different coordinate labels along "
                    f"{dim!r} in group {group!r}; the effect covers only the labels "
                    "present in both.",
                    OutputWarning,
                    stacklevel=level,
                )
    only = set(baseline.data_vars) ^ set(intervention.data_vars)
    if only:
        warnings.warn(
            f"Variables {sorted(only)} are in only one of baseline and intervention in "
            f"group {group!r}; the effect leaves them out.",
            OutputWarning,
            stacklevel=level,
        )


def _posterior(
    trees: Mapping[str, xr.DataTree],
    attrs_of: Mapping[str, Mapping[str, Any]],
    posterior: Mapping[str, np.ndarray] | None,
    num_chains: int,
    posterior_dims: Mapping[str, Sequence[str]] | None,
    stacklevel: int,
) -> xr.Dataset | None:
    """The effect's ``posterior`` group; warns when the scenarios' posteriors differ."""
    level = stacklevel  # as `warnings.warn` called here
    digests = [attrs.get(POSTERIOR_ATTR) for attrs in attrs_of.values()]
    found = [t["posterior"].to_dataset() for t in trees.values() if "posterior" in t.children]
    if None not in digests:
        differ = digests[0] != digests[1]
    else:
        differ = len(found) == 2 and not found[0].drop_attrs().identical(found[1].drop_attrs())
    if differ:
        kept = "the model's current one" if posterior else "the baseline's"
        warnings.warn(
            "Baseline and intervention have different posterior samples. One of them was "
            "drawn before the model was refit (or its posterior set), so their draws are "
            f"not paired; the effect's `posterior` group is {kept}.",
            OutputWarning,
            stacklevel=level,
        )
    elif (
        posterior
        and digests[0] is not None
        and digests[0] == digests[1]
        and posterior_digest(posterior) != digests[0]
    ):
        warnings.warn(
            "Baseline and intervention were drawn from a posterior other than the "
            "model's current one (the model was refit since); the effect's `posterior` "
            "group is the model's current one.",
            OutputWarning,
            stacklevel=level,
        )
    if posterior:
        return dataset_from_arrays(posterior, num_chains=num_chains, dims=posterior_dims)
    return found[0] if found else None


def _plain(value: Any) -> Any:
    """A comparable, printable form of an attribute (arrays and tuples as lists)."""
    if isinstance(value, (np.ndarray, tuple, list)):
        return np.asarray(value).tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _listed(names: Iterable[Any]) -> str:
    """``'a', 'b'`` (``none`` when empty)."""
    return ", ".join(repr(str(n)) for n in names) or "none"
