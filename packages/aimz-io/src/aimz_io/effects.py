"""Effect trees: ``intervention - baseline`` of two scenario outputs.

The effect is computed per variable after an inner join on the coordinates, so it
stays lazy when the scenarios are lazy: Dask arithmetic when they are Dask-backed,
a :class:`~aimz_io.lazy_arrays.DifferenceArray` read region by region otherwise.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr
from aimz_core.exceptions import OutputWarning

from aimz_io.datatree import CHAIN, assemble_tree, dataset_from_arrays, tree_from_arrays
from aimz_io.lazy_arrays import DifferenceArray, lazily_indexed
from aimz_io.provenance import PATH_ATTRS, base_attrs

#: Groups an effect can be computed on, in order of preference.
EFFECT_GROUPS = ("predictions", "posterior_predictive", "prior_predictive")

Scenario = xr.DataTree | Mapping[str, np.ndarray]


def select_group(baseline: xr.DataTree, intervention: xr.DataTree) -> str:
    """The group to compare: the first of :data:`EFFECT_GROUPS` in ``baseline``.

    Raises:
        ValueError: ``baseline`` has none of them, or ``intervention`` lacks it.

    Example:
        >>> tree = tree_from_arrays({"predictions": {"y": np.zeros((2, 3))}})
        >>> select_group(tree, tree)
        'predictions'
    """
    name = next((g for g in EFFECT_GROUPS if g in baseline.children), None)
    if name is None:
        raise ValueError(
            f"The baseline output has none of the groups {list(EFFECT_GROUPS)}; "
            f"available groups: {list(baseline.children)}."
        )
    if name not in intervention.children:
        raise ValueError(
            f"Group {name!r} (selected from the baseline) is missing from the "
            f"intervention output; available groups: {list(intervention.children)}."
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

    Returns:
        A DataTree named ``"root"``: ``posterior`` (if any) then the effect group.
        Root attrs include ``artifact_path_baseline`` / ``artifact_path_intervention``
        (and ``output_dir_*``) when the scenarios carry them.

    Raises:
        ValueError: the compared group is missing (the message lists the groups).

    Warns:
        OutputWarning: dim sizes, coordinates, variables or posteriors differ.

    Example:
        >>> base = {"y": np.zeros((4, 3))}
        >>> effect = effect_tree(base, {"y": np.ones((4, 3))}, posterior=None,
        ...                      num_chains=1)
        >>> float(effect["posterior_predictive"]["y"].mean())
        1.0
    """
    trees = {
        "baseline": _as_tree(baseline, group, num_chains),
        "intervention": _as_tree(intervention, group, num_chains),
    }
    name = select_group(trees["baseline"], trees["intervention"])
    base_ds = trees["baseline"][name].to_dataset()
    intv_ds = trees["intervention"][name].to_dataset()
    _warn_on_mismatch(base_ds, intv_ds)

    differences = {}
    for site in sorted(set(base_ds.data_vars) & set(intv_ds.data_vars)):
        minuend, subtrahend = xr.align(intv_ds[site], base_ds[site], join="inner")
        differences[site] = _difference(minuend, subtrahend)
    effect = xr.Dataset(differences)
    chains = int(effect.sizes.get(CHAIN, num_chains))
    attrs = base_attrs(chains)
    effect.attrs = dict(attrs)

    groups: dict[str, xr.Dataset] = {}
    posterior_ds = _posterior(trees, posterior, num_chains, posterior_dims)
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


def _warn_on_mismatch(baseline: xr.Dataset, intervention: xr.Dataset) -> None:
    problems = []
    for dim in sorted(set(baseline.sizes) & set(intervention.sizes)):
        a, b = baseline.sizes[dim], intervention.sizes[dim]
        if a != b:
            kind = "unpaired draws: " if dim in ("chain", "draw") else ""
            problems.append(
                f"{kind}dim {dim!r} has size {a} in the baseline, {b} in the intervention"
            )
        elif (
            dim in baseline.coords
            and dim in intervention.coords
            and not np.array_equal(baseline[dim].values, intervention[dim].values)
        ):
            problems.append(f"coordinates of dim {dim!r} differ")
    only = set(baseline.data_vars) ^ set(intervention.data_vars)
    if only:
        problems.append(f"variables {sorted(only)} are in one scenario only and are dropped")
    if problems:
        warnings.warn(
            "Baseline and intervention outputs differ: "
            + "; ".join(problems)
            + ". The effect is computed on the overlap (inner join on coordinates).",
            OutputWarning,
            stacklevel=3,
        )


def _posterior(
    trees: Mapping[str, xr.DataTree],
    posterior: Mapping[str, np.ndarray] | None,
    num_chains: int,
    posterior_dims: Mapping[str, Sequence[str]] | None,
) -> xr.Dataset | None:
    if posterior:
        return dataset_from_arrays(posterior, num_chains=num_chains, dims=posterior_dims)
    found = [t["posterior"].to_dataset() for t in trees.values() if "posterior" in t.children]
    if not found:
        return None
    if len(found) == 2 and not found[0].drop_attrs().identical(found[1].drop_attrs()):
        warnings.warn(
            "Baseline and intervention outputs have different posteriors; the effect "
            "tree keeps the baseline's.",
            OutputWarning,
            stacklevel=3,
        )
    return found[0]
