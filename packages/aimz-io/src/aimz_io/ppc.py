"""Predictive checks at scale: a small, reproducible subsample of rows to plot.

Posterior (or prior) predictive checks compare the distribution of the observed
data with that of the predictive draws. Plotting every row of an output larger
than memory is neither possible nor needed: :func:`ppc_subsample` picks
``n_rows`` rows at random (without replacement, sorted, from
``numpy.random.default_rng(seed)``), reads only those rows of the lazy output and
returns a small in-memory DataTree that ArviZ accepts as it is::

    small = ppc_subsample(tree, n_rows=2000, seed=0, observed=y)
    arviz_plots.plot_ppc_dist(small)  # needs posterior_predictive + observed_data
    arviz_plots.plot_loo_pit(small)  # also needs log_likelihood

The chosen rows are recorded: the ``dim`` coordinate of every subsampled group
holds the original row numbers (positions along ``dim`` in the full output), and
the root and the predictive group carry the attributes ``subsample_rows``,
``subsample_seed``, ``subsample_dim`` and ``subsample_total_rows``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
from aimz_core.exceptions import OutputWarning
from aimz_core.streaming.sinks import POSTERIOR_ATTR

from aimz_io.datatree import CHAIN, DRAW
from aimz_io.summary import select_sites

OBSERVED_GROUP = "observed_data"
LOGLIK_GROUP = "log_likelihood"
#: Attributes recording the subsample on the root and the predictive group.
ROWS_ATTR, SEED_ATTR, DIM_ATTR, TOTAL_ATTR = (
    "subsample_rows",
    "subsample_seed",
    "subsample_dim",
    "subsample_total_rows",
)


def ppc_subsample(
    tree: xr.DataTree,
    *,
    n_rows: int = 1000,
    seed: int | None = None,
    observed: Any = None,
    group: str = "posterior_predictive",
    dim: str = "obs",
    var_names: str | Sequence[str] | None = None,
    log_likelihood: xr.DataTree | xr.Dataset | None = None,
) -> xr.DataTree:
    """A random subsample of rows of a predictive output, loaded, for predictive checks.

    Args:
        tree: An aimz output tree (lazy or in memory) with the group ``group``.
        n_rows: Rows to keep, at least 1. More than the output has keeps every row,
            with an :class:`~aimz_core.exceptions.OutputWarning`.
        seed: Seed of the NumPy generator choosing the rows; the same seed chooses
            the same rows. ``None`` draws a fresh seed (recorded in the result).
        observed: The observed data of the *full* output, to compare with: one
            array (when one site is checked) or ``{site: array}``; each array has
            the site's shape without ``chain``/``draw`` (NumPy, Dask, Zarr arrays,
            ``xarray.DataArray`` or pandas objects; only the chosen rows are read).
            Default: the tree's ``observed_data`` group, if any.
        group: The predictive group (``posterior_predictive``, ``predictions``,
            ``prior_predictive``).
        dim: The row dim to subsample.
        var_names: Sites to keep. Default: the sites with observed data, or every
            site with ``dim`` when there is none.
        log_likelihood: Pointwise log-likelihood of the same draws and rows (the
            output of ``model.log_likelihood(X, y)``, or its group as a Dataset),
            for LOO-PIT. Default: the tree's ``log_likelihood`` group, if any.

    Returns:
        An in-memory DataTree with ``posterior`` (if the tree has one; sites with
        ``dim`` subsampled too), the predictive ``group``, ``log_likelihood`` (if
        any) and ``observed_data`` (if any), restricted to the chosen rows. See the
        module docstring for how the rows are recorded.

    Raises:
        ValueError: A missing group or dim, ``n_rows`` below 1, an unknown site, a
            site without ``dim``, observed data or log-likelihood whose shape does
            not match the output, or one array for several sites.
        TypeError: ``n_rows`` or ``seed`` is not an integer.

    Warns:
        OutputWarning: ``n_rows`` exceeds the rows of the output, or the
            log-likelihood comes from another posterior than the predictions.

    Example:
        >>> from aimz_io.datatree import tree_from_arrays
        >>> y = np.arange(40.0).reshape(4, 10)  # 4 draws of 10 rows
        >>> tree = tree_from_arrays({"posterior_predictive": {"y": y}}, dims={"y": ("obs",)})
        >>> small = ppc_subsample(tree, n_rows=3, seed=1, observed=np.arange(10.0))
        >>> rows = small.attrs["subsample_rows"]
        >>> small["observed_data"]["y"].values.tolist() == [float(r) for r in rows]
        True
        >>> ppc_subsample(tree, n_rows=0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: `n_rows` must be at least 1, got 0...
    """
    if group not in tree.children:
        raise ValueError(
            f"Group {group!r} not found; available groups: {list(tree.children)}. "
            "Pass the predictive group as `group=`."
        )
    dataset = tree[group].to_dataset()
    if dim not in dataset.dims:
        raise ValueError(
            f"Group {group!r} has no dim {dim!r}; its dims: {[str(d) for d in dataset.dims]}. "
            "Pass the row dim as `dim=`."
        )
    total = int(dataset.sizes[dim])
    n_rows = _check_n_rows(n_rows)
    seed = _check_seed(seed)
    sources = _observed_sources(tree, dataset, observed, dim)
    sites = _sites(dataset, var_names, sources, dim)
    sources = {site: sources[site] for site in sites if site in sources}
    for site, source in sources.items():
        _check_observed(dataset[site], site, source, dim)
    loglik = _loglik(tree, log_likelihood, dataset, dim)
    if n_rows > total:
        warnings.warn(
            f"`n_rows={n_rows}` exceeds the {total} rows of the output; keeping all of them.",
            OutputWarning,
            stacklevel=2,
        )
        n_rows = total

    rows = np.sort(np.random.default_rng(seed).choice(total, size=n_rows, replace=False))
    record = {ROWS_ATTR: rows.tolist(), SEED_ATTR: seed, DIM_ATTR: dim, TOTAL_ATTR: total}
    groups: dict[str, xr.Dataset] = {}
    if "posterior" in tree.children:
        groups["posterior"] = _rows(tree["posterior"].to_dataset(), dim, rows)
    predictive = _rows(dataset[sites], dim, rows)
    predictive.attrs.update(record)
    groups[group] = predictive
    if loglik is not None:
        groups[LOGLIK_GROUP] = _rows(loglik, dim, rows)
    if sources:
        observed_data = {
            site: _observed_rows(dataset[site], source, dim, rows)
            for site, source in sources.items()
        }
        groups[OBSERVED_GROUP] = xr.Dataset(observed_data).assign_coords({dim: rows})
    nodes: dict[str, Any] = {"/": xr.Dataset(attrs={**tree.attrs, **record})}
    nodes.update({f"/{name}": value for name, value in groups.items()})
    return xr.DataTree.from_dict(nodes, name=tree.name or "root").load()


def _rows(dataset: xr.Dataset, dim: str, rows: np.ndarray) -> xr.Dataset:
    """``dataset`` at ``rows`` along ``dim`` (lazy), ``dim`` labelled by the row numbers."""
    if dim not in dataset.dims:
        return dataset.copy()
    return dataset.isel({dim: rows}).assign_coords({dim: rows})


def _check_n_rows(n_rows: int) -> int:
    if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)):
        raise TypeError(f"`n_rows` must be an integer, got {n_rows!r}.")
    if n_rows < 1:
        raise ValueError(f"`n_rows` must be at least 1, got {n_rows}.")
    return int(n_rows)


def _check_seed(seed: int | None) -> int:
    if seed is None:
        return int(np.random.SeedSequence().generate_state(1)[0])
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TypeError(f"`seed` must be a non-negative integer or None, got {seed!r}.")
    return int(seed)


def _observed_sources(
    tree: xr.DataTree, dataset: xr.Dataset, observed: Any, dim: str
) -> dict[str, Any]:
    """``{site: full observed data}`` from ``observed`` or the tree's ``observed_data``."""
    if observed is None:
        if OBSERVED_GROUP not in tree.children:
            return {}
        own = tree[OBSERVED_GROUP].to_dataset()
        return {str(s): own[s] for s in own.data_vars if s in dataset.data_vars}
    if isinstance(observed, Mapping):
        unknown = [str(s) for s in observed if s not in dataset.data_vars]
        if unknown:
            raise ValueError(
                f"`observed` has sites {unknown} that the predictive group lacks; its "
                f"sites: {[str(v) for v in dataset.data_vars]}."
            )
        return {str(s): value for s, value in observed.items()}
    return {"": observed}  # one array: its site is resolved by `_sites`


def _sites(dataset: xr.Dataset, var_names: Any, sources: dict[str, Any], dim: str) -> list[str]:
    candidates = [str(s) for s in dataset.data_vars if dim in dataset[s].dims]
    if "" in sources:  # one array: the one site of `var_names`, or the one site with `dim`
        named = select_sites(dataset, var_names) if var_names is not None else candidates
        if len(named) == 1:
            sources[named[0]] = sources.pop("")
    if "" in sources:
        raise ValueError(
            f"`observed` is one array but the group has several sites with dim {dim!r}: "
            f"{candidates}. Pass `observed={{site: array}}` or one site in `var_names`."
        )
    if var_names is not None:
        sites = select_sites(dataset, var_names)
    elif sources:
        sites = list(sources)
    else:
        sites = candidates
    lacking = [s for s in sites if dim not in dataset[s].dims]
    if lacking:
        raise ValueError(f"Sites {lacking} have no dim {dim!r}; leave them out of `var_names`.")
    return sites


def _site_shape(variable: xr.DataArray) -> tuple[tuple[str, ...], tuple[int, ...]]:
    dims = tuple(str(d) for d in variable.dims if d not in (CHAIN, DRAW))
    return dims, tuple(int(variable.sizes[d]) for d in dims)


def _check_observed(variable: xr.DataArray, site: str, source: Any, dim: str) -> None:
    dims, shape = _site_shape(variable)
    if isinstance(source, xr.DataArray):
        found = {str(d): int(n) for d, n in source.sizes.items()}
        if found != dict(zip(dims, shape, strict=True)):
            raise ValueError(
                f"Observed data of site {site!r} has sizes {found}; the output has "
                f"{dict(zip(dims, shape, strict=True))} (after chain/draw)."
            )
        return
    found_shape = tuple(int(n) for n in np.shape(source))
    if found_shape != shape:
        axis = dims.index(dim)
        raise ValueError(
            f"Observed data of site {site!r} has shape {found_shape}; the output's rows "
            f"need {shape} (dims {dims}: the full data, {shape[axis]} rows along axis {axis})."
        )


def _observed_rows(variable: xr.DataArray, source: Any, dim: str, rows: np.ndarray) -> Any:
    """The observed values of ``rows``, with the site's dims (read only those rows)."""
    dims, _ = _site_shape(variable)
    if isinstance(source, xr.DataArray):
        return xr.DataArray(source.isel({dim: rows}).transpose(*dims).values, dims=dims)
    axis = dims.index(dim)
    if hasattr(source, "iloc"):  # pandas: positions, not labels
        values = source.iloc[rows].to_numpy() if axis == 0 else np.asarray(source)[:, rows]
    elif isinstance(source, np.ndarray | list | tuple):
        values = np.take(np.asarray(source), rows, axis=axis)
    else:  # Dask, Zarr, ...: index lazily along the row axis
        key = (slice(None),) * axis + (rows,)
        oindex = getattr(source, "oindex", None)
        values = oindex[key] if oindex is not None else source[key]
    return xr.DataArray(np.asarray(values), dims=dims)


def _loglik(
    tree: xr.DataTree, given: xr.DataTree | xr.Dataset | None, dataset: xr.Dataset, dim: str
) -> xr.Dataset | None:
    """The log-likelihood group to subsample, checked against the predictive group."""
    if given is None:
        if LOGLIK_GROUP not in tree.children:
            return None
        loglik, attrs = tree[LOGLIK_GROUP].to_dataset(), tree.attrs
    elif isinstance(given, xr.DataTree):
        if LOGLIK_GROUP not in given.children:
            raise ValueError(
                f"`log_likelihood` has no {LOGLIK_GROUP!r} group; its groups: "
                f"{list(given.children)}. Pass the output of `model.log_likelihood`."
            )
        loglik, attrs = given[LOGLIK_GROUP].to_dataset(), given.attrs
    elif isinstance(given, xr.Dataset):
        loglik, attrs = given, given.attrs
    else:
        raise TypeError(
            f"`log_likelihood` must be a DataTree or a Dataset, got {type(given).__name__!r}."
        )
    for name in (CHAIN, DRAW, dim):
        expected = dataset.sizes[name] if name in dataset.dims else None
        if name in loglik.dims and loglik.sizes[name] != expected:
            raise ValueError(
                f"`log_likelihood` has {loglik.sizes[name]} entries along {name!r}; the "
                f"predictive group has {expected}. Compute both on the same rows and "
                "posterior."
            )
    if dim not in loglik.dims:
        raise ValueError(f"`log_likelihood` has no dim {dim!r}; its dims: {list(loglik.dims)}.")
    ours, theirs = tree.attrs.get(POSTERIOR_ATTR), attrs.get(POSTERIOR_ATTR)
    if ours is not None and theirs is not None and ours != theirs:
        warnings.warn(
            "The log-likelihood and the predictions were computed from different posterior "
            "samples (the model was refit in between); LOO-PIT values would be wrong.",
            OutputWarning,
            stacklevel=3,
        )
    return loglik
