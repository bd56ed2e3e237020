"""Summaries across rows: mean, sd, HDI (and P(value > 0)) of per-draw averages.

What is summarized, per site, is a per-draw quantity:

* ``by=None``: the average over every non-``chain``/``draw`` dim (e.g. the
  average over all rows), one value per draw;
* ``by=dim``: the average over every other dim, one value per draw and per
  coordinate of ``dim`` (one row each).

The statistics are taken across all ``chain x draw`` values: ``mean``, ``sd``
(``ddof=1``), the highest-density interval ``[hdi_low, hdi_high]`` (shortest
interval holding ``ceil(hdi_prob * n)`` draws) and, for effects,
``prob_positive``, the share of draws above zero. :func:`summarize_group` works
on any group with draws (``posterior_predictive``, ``predictions``,
``log_likelihood``, ...); :func:`summarize_effect` is the same table plus
``prob_positive``. The per-draw averages never hold all draws x all rows:
Dask-backed data are reduced chunk by chunk by Dask; other data are read in slabs
of about 64 MB along the first site dim.

Per-row (per-observation) summaries are
:func:`aimz_io.predictive_summary.summarize_predictive`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import xarray as xr

from aimz_io.datatree import CHAIN, DRAW
from aimz_io.effects import EFFECT_GROUPS

#: Bytes of one slab read at a time when the data are not Dask-backed.
SLAB_BYTES = 64 * 2**20
STAT_COLUMNS = ("mean", "sd", "hdi_low", "hdi_high", "prob_positive")
#: Columns of :func:`summarize_group` (no ``prob_positive``).
GROUP_COLUMNS = STAT_COLUMNS[:4]


def summarize_effect(
    effect: xr.DataTree,
    *,
    group: str | None = None,
    hdi_prob: float = 0.94,
    by: str | None = None,
    var_names: str | Sequence[str] | None = None,
) -> Any:
    """Summarize the per-draw effect of every site of an effect tree.

    Args:
        effect: Output of ``estimate_effect`` (or any tree with draws).
        group: Group to summarize; default the first of ``predictions``,
            ``posterior_predictive``, ``prior_predictive`` present.
        hdi_prob: Probability mass of the HDI, in ``(0, 1]``.
        by: A dim to break the summary down by (one row per coordinate); sites
            without it are skipped. ``None`` averages over every site dim.
        var_names: Sites to summarize (default: all).

    Returns:
        A ``pandas.DataFrame`` with columns ``site``, [``by``], ``mean``, ``sd``,
        ``hdi_low``, ``hdi_high``, ``prob_positive`` when pandas is installed,
        else a dict of lists with the same keys. See the module docstring for
        what is computed.

    Example:
        >>> from aimz_io.datatree import tree_from_arrays
        >>> tree = tree_from_arrays({"predictions": {"y": np.ones((10, 3))}})
        >>> table = summarize_effect(tree)
        >>> float(table["prob_positive"][0])
        1.0
    """
    return _summarize(effect, group, var_names, hdi_prob, by, STAT_COLUMNS)


def summarize_group(
    tree: xr.DataTree,
    *,
    group: str | None = None,
    var_names: str | Sequence[str] | None = None,
    hdi_prob: float = 0.94,
    by: str | None = None,
) -> Any:
    """Mean, sd and HDI of the per-draw average over rows of any group with draws.

    Args:
        tree: An aimz output tree (``predict``, ``sample_prior_predictive``,
            ``log_likelihood``, ``estimate_effect``, ...), lazy or in memory.
        group: Group to summarize (``posterior_predictive``, ``predictions``,
            ``prior_predictive``, ``log_likelihood``, ``posterior``, ...); default
            the first of ``predictions``, ``posterior_predictive``,
            ``prior_predictive`` present.
        var_names: Sites to summarize (default: all).
        hdi_prob: Probability mass of the HDI, in ``(0, 1]``.
        by: A dim to break the summary down by (one row per coordinate); sites
            without it are skipped. ``None`` averages over every site dim.

    Returns:
        A ``pandas.DataFrame`` with columns ``site``, [``by``], ``mean``, ``sd``,
        ``hdi_low``, ``hdi_high`` when pandas is installed, else a dict of lists.
        It is :func:`summarize_effect`'s table without ``prob_positive``.

    Example:
        >>> from aimz_io.datatree import tree_from_arrays
        >>> y = np.arange(20.0).reshape(10, 2)  # per-draw row averages 0.5, 2.5, ...
        >>> tree = tree_from_arrays({"log_likelihood": {"y": y}})
        >>> table = summarize_group(tree, group="log_likelihood")
        >>> float(table["mean"][0]), float(table["hdi_high"][0])
        (9.5, 18.5)
    """
    return _summarize(tree, group, var_names, hdi_prob, by, GROUP_COLUMNS)


def _summarize(
    tree: xr.DataTree,
    group: str | None,
    var_names: str | Sequence[str] | None,
    hdi_prob: float,
    by: str | None,
    columns: Sequence[str],
) -> Any:
    """The table of :func:`summarize_effect` / :func:`summarize_group` with ``columns``."""
    check_hdi_prob(hdi_prob)
    dataset = tree[default_group(tree, group)].to_dataset()
    sites = select_sites(dataset, var_names)
    rows: dict[str, list[Any]] = {"site": []}
    if by is not None:
        if not any(by in dataset[v].dims for v in sites):
            raise ValueError(f"No variable has dim {by!r}; dims: {sorted(map(str, dataset.dims))}.")
        rows[by] = []
    rows.update({column: [] for column in columns})
    for site in sites:
        variable = dataset[site]
        if by is not None and by not in variable.dims:
            continue
        values = per_draw_average(variable, by)  # (n_draws, n_columns)
        stats = describe(values, hdi_prob)
        labels = variable[by].values if by is not None else [None]
        for j, label in enumerate(labels):
            rows["site"].append(str(site))
            if by is not None:
                rows[by].append(label.item() if hasattr(label, "item") else label)
            for column in columns:
                rows[column].append(float(stats[column][j]))
    return _table(rows)


def check_hdi_prob(hdi_prob: float) -> None:
    """Raise ``ValueError`` unless ``0 < hdi_prob <= 1``.

    Example:
        >>> check_hdi_prob(0.94)
    """
    if isinstance(hdi_prob, bool) or not isinstance(hdi_prob, (int, float, np.floating)):
        raise TypeError(f"`hdi_prob` must be a number in (0, 1], got {hdi_prob!r}.")
    if not 0 < hdi_prob <= 1:
        raise ValueError(f"`hdi_prob` must be in (0, 1], got {hdi_prob!r}.")


def select_sites(dataset: xr.Dataset, var_names: str | Sequence[str] | None) -> list[str]:
    """The sites named by ``var_names`` (all when ``None``), checked to exist.

    Example:
        >>> select_sites(xr.Dataset({"y": ("obs", [1.0]), "mu": ("obs", [2.0])}), "y")
        ['y']
    """
    available = [str(v) for v in dataset.data_vars]
    if var_names is None:
        return available
    names = [var_names] if isinstance(var_names, str) else [str(v) for v in var_names]
    missing = [v for v in names if v not in available]
    if missing or not names:
        raise ValueError(
            f"`var_names` must name variables of the group; {missing or 'none given'} "
            f"not among {available}."
        )
    return names


def per_draw_average(variable: xr.DataArray, by: str | None = None) -> np.ndarray:
    """Per-draw average over every site dim except ``by``, read slab by slab.

    Returns:
        Array ``(chain * draw, n)``: ``n = 1`` without ``by``, else ``len(by)``.

    Example:
        >>> da = xr.DataArray(np.arange(6.0).reshape(1, 2, 3), dims=("chain", "draw", "obs"))
        >>> per_draw_average(da).ravel().tolist()
        [1.0, 4.0]
    """
    variable = variable.transpose(CHAIN, DRAW, ...)
    draws = variable.sizes[CHAIN] * variable.sizes[DRAW]
    site_dims = variable.dims[2:]
    if not site_dims:
        return np.asarray(variable.values, dtype=np.float64).reshape(draws, 1)
    by_axis = variable.dims.index(by) if by is not None else None
    width = variable.sizes[by] if by is not None else 1
    count = variable.size / draws / width
    if variable.chunks is not None:  # Dask reduces chunk by chunk, reading each once
        averaged = variable.astype(np.float64).mean([d for d in site_dims if d != by])
        return np.asarray(averaged.values).reshape(draws, width)
    slab_dim = site_dims[0]
    totals = np.zeros((draws, width))
    for start, stop in slabs(variable, slab_dim):
        block = np.asarray(variable.isel({slab_dim: slice(start, stop)}).values, np.float64)
        axes = tuple(a for a in range(2, block.ndim) if a != by_axis)
        sums = block.sum(axis=axes).reshape(draws, -1)
        if by == slab_dim:
            totals[:, start:stop] += sums
        else:
            totals += sums
    return totals / count


def slabs(variable: xr.DataArray, dim: str) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` ranges along ``dim`` of about :data:`SLAB_BYTES` of float64 each.

    Example:
        >>> list(slabs(xr.DataArray(np.zeros((2, 5)), dims=("draw", "obs")), "obs"))
        [(0, 5)]
    """
    size = variable.sizes[dim]
    row_bytes = variable.size // max(size, 1) * 8
    step = max(1, SLAB_BYTES // max(row_bytes, 1))
    for start in range(0, size, step):
        yield start, min(start + step, size)


def describe(values: np.ndarray, hdi_prob: float = 0.94) -> dict[str, np.ndarray]:
    """Column-wise mean, sd (``ddof=1``), HDI and share of positive values.

    Args:
        values: ``(n_draws, n_columns)``.
        hdi_prob: HDI probability mass.

    Example:
        >>> stats = describe(np.arange(100.0)[:, None], 0.9)
        >>> float(stats["hdi_low"][0]), float(stats["hdi_high"][0])
        (0.0, 89.0)
    """
    n = values.shape[0]
    low, high = hdi_bounds(np.sort(values, axis=0), hdi_prob)
    return {
        "mean": values.mean(axis=0),
        "sd": values.std(axis=0, ddof=1) if n > 1 else np.full(values.shape[1], np.nan),
        "hdi_low": low,
        "hdi_high": high,
        "prob_positive": (values > 0).mean(axis=0),
    }


def hdi_bounds(ordered: np.ndarray, hdi_prob: float) -> tuple[np.ndarray, np.ndarray]:
    """HDI along axis 0 of values already sorted along axis 0.

    The HDI is the shortest interval ``[ordered[i], ordered[i + k - 1]]`` holding
    ``k = ceil(hdi_prob * n)`` of the ``n`` values (the first such interval on
    ties; widths are compared in float64).

    Args:
        ordered: ``(n, ...)``, sorted along axis 0 (NaN last, as ``np.sort`` does).
        hdi_prob: Probability mass, in ``(0, 1]``.

    Returns:
        ``(low, high)``, each of shape ``ordered.shape[1:]`` and dtype ``ordered.dtype``.

    Example:
        >>> low, high = hdi_bounds(np.array([0.0, 1.0, 1.5, 2.0, 9.0]), 0.6)
        >>> float(low), float(high)
        (1.0, 2.0)
    """
    n = ordered.shape[0]
    kept = min(n, max(1, int(np.ceil(hdi_prob * n))))
    widths = np.subtract(ordered[kept - 1 :], ordered[: n - kept + 1], dtype=np.float64)
    first = np.argmin(widths, axis=0)[np.newaxis]
    low = np.take_along_axis(ordered, first, axis=0)[0]
    high = np.take_along_axis(ordered, first + kept - 1, axis=0)[0]
    return low, high


def format_summary(table: Any, digits: int = 3) -> str:
    """Plain-text table of a :func:`summarize_effect` result (DataFrame or dict).

    Example:
        >>> print(format_summary({"site": ["y"], "mean": [0.5]}))
        site   mean
           y  0.500
    """
    columns = {str(k): list(table[k]) for k in table}
    cells = {
        name: [f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in values]
        for name, values in columns.items()
    }
    widths = {name: max([len(name), *map(len, cells[name])]) for name in cells}
    lines = ["  ".join(name.rjust(widths[name]) for name in cells)]
    for i in range(len(next(iter(cells.values()), []))):
        lines.append("  ".join(cells[name][i].rjust(widths[name]) for name in cells))
    return "\n".join(lines)


def default_group(tree: xr.DataTree, group: str | None) -> str:
    """``group`` checked to be in ``tree``, or the first of ``EFFECT_GROUPS`` present.

    Example:
        >>> from aimz_io.datatree import tree_from_arrays
        >>> default_group(tree_from_arrays({"predictions": {"y": np.ones((2, 3))}}), None)
        'predictions'
    """
    if group is not None:
        if group not in tree.children:
            raise ValueError(f"Group {group!r} not found; available: {list(tree.children)}.")
        return group
    for name in EFFECT_GROUPS:
        if name in tree.children:
            return name
    raise ValueError(
        f"No group to summarize among {list(EFFECT_GROUPS)}; available: "
        f"{list(tree.children)}. Pass `group=`."
    )


def _table(rows: dict[str, list[Any]]) -> Any:
    if importlib.util.find_spec("pandas") is None:
        return rows
    import pandas as pd

    return pd.DataFrame(rows)
