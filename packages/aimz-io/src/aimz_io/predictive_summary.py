"""Per-observation summaries of predictive draws: mean, sd, HDI and quantiles per row.

:func:`summarize_predictive` reduces the ``chain x draw`` values of every other
coordinate (every row, and every label of further site dims) of a group to a few
statistics, without ever holding more than one block of rows:

* Dask-backed input (persistent outputs when Dask is installed) is reduced chunk
  by chunk with :func:`dask.array.blockwise`; the result stays lazy. Every chunk of
  an aimz store streamed along ``obs`` holds all draws of its rows, so no work
  crosses chunks. Chunks that split the draws (``shard_axis="draw"``) are first
  rechunked to whole draws per block of rows by Dask.
* Other input (in-memory outputs, or persistent ones without Dask) is read in
  slabs of rows of about :data:`~aimz_io.summary.SLAB_BYTES`; the result, which
  has ``len(stat)`` values per row instead of one per draw, is held in memory.

The statistics, along a ``stat`` dim placed first, are ``mean``, ``sd``
(``ddof=1``), ``hdi_low`` / ``hdi_high`` (shortest interval holding
``ceil(hdi_prob * n)`` of the ``n`` draws, as :func:`~aimz_io.summary.summarize_effect`)
and one ``q<percent>`` per quantile (NumPy's default ``"linear"`` method, as
ArviZ's ``eti``), all as float64.

ArviZ's ``hdi`` (``method="nearest"``) holds ``floor(prob * n) + 1`` draws: the
same interval unless ``prob * n`` is a whole number below ``n``, where ArviZ's
holds one draw more.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from aimz_io.datatree import CHAIN, DRAW
from aimz_io.lazy_arrays import has_dask
from aimz_io.summary import check_hdi_prob, default_group, hdi_bounds, select_sites, slabs

#: Name of the dim holding the statistics.
STAT_DIM = "stat"
#: Statistics before the quantiles, in order along :data:`STAT_DIM`.
MOMENT_STATS = ("mean", "sd", "hdi_low", "hdi_high")
DEFAULT_QUANTILES = (0.05, 0.5, 0.95)
#: Attribute holding the ``stat`` labels in a written store.
LABELS_ATTR = "stat_labels"


def summarize_predictive(
    tree: xr.DataTree | xr.Dataset,
    *,
    group: str | None = None,
    var_names: str | Sequence[str] | None = None,
    hdi_prob: float = 0.94,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    output: str | Path | None = None,
) -> xr.Dataset:
    """Per-row mean, sd, HDI and quantiles over all ``chain x draw`` values.

    Args:
        tree: An aimz output tree (lazy or in memory), or one group as a Dataset.
        group: Group to summarize (any group with ``chain``/``draw`` dims:
            ``posterior_predictive``, ``predictions``, ``prior_predictive``,
            ``log_likelihood``, ...); default the first of ``predictions``,
            ``posterior_predictive``, ``prior_predictive`` present. Ignored for a
            Dataset.
        var_names: Sites to summarize (default: all).
        hdi_prob: Probability mass of the HDI, in ``(0, 1]``.
        quantiles: Quantile levels in ``[0, 1]``, each labelled ``q<percent>``
            (``0.05`` is ``"q5"``, ``0.025`` is ``"q2.5"``); may be empty.
        output: A new local directory to write the result to as a Zarr v3 store
            (``xr.open_zarr`` reads it). It is written to a temporary sibling
            directory renamed to ``output`` once complete, so a failure leaves
            nothing at ``output``. The result is then returned read lazily from
            there (the ``stat`` labels are stored as the attribute ``stat_labels``).

    Returns:
        A Dataset with one float64 variable per site, dims ``("stat", *site_dims)``
        (the site's dims without ``chain``/``draw``) and the site's coordinates;
        ``stat`` holds ``mean``, ``sd``, ``hdi_low``, ``hdi_high`` and the quantile
        labels. Attributes: ``group``, ``hdi_prob``, ``quantiles``, ``num_draws``.
        Dask-backed unless the input is not (see the module docstring):
        ``result["y"].sel(stat="mean")`` is the posterior predictive mean per row,
        ``result.sel(stat="sd").compute()`` loads one statistic of every site.

    Raises:
        ValueError: Unknown group or site, a site without ``chain``/``draw``,
            ``hdi_prob`` or a quantile out of range, repeated quantile labels, a
            site dim named ``stat``, ``output`` existing or an URL.
        TypeError: A site with a non-numeric dtype.

    Example:
        >>> from aimz_io.datatree import tree_from_arrays
        >>> y = np.arange(20.0).reshape(10, 2)  # 10 draws of 2 rows
        >>> tree = tree_from_arrays({"posterior_predictive": {"y": y}}, dims={"y": ("obs",)})
        >>> stats = summarize_predictive(tree, quantiles=(0.5,))
        >>> stats["y"].sel(stat=["mean", "q50"]).values.tolist()
        [[9.0, 10.0], [9.0, 10.0]]
        >>> summarize_predictive(tree, quantiles=(2.0,))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: `quantiles` must be levels in [0, 1], got (2.0,)...
    """
    check_hdi_prob(hdi_prob)
    levels = _check_quantiles(quantiles)
    labels = stat_labels(levels)
    if isinstance(tree, xr.Dataset):
        dataset, name = tree, group
    else:
        name = default_group(tree, group)
        dataset = tree[name].to_dataset()
    sites = select_sites(dataset, var_names)
    for site in sites:
        _check_site(dataset[site], site)
    target = _check_output(output) if output is not None else None

    variables = {}
    num_draws = None
    for site in sites:
        variable = dataset[site].transpose(CHAIN, DRAW, ...)
        num_draws = variable.sizes[CHAIN] * variable.sizes[DRAW]
        if variable.chunks is not None:
            data = _dask_stats(variable.data, hdi_prob, levels)
        else:
            data = _slab_stats(variable, hdi_prob, levels)
        site_dims = variable.dims[2:]
        coords = {
            key: coord.variable
            for key, coord in variable.coords.items()
            if CHAIN not in coord.dims and DRAW not in coord.dims
        }
        variables[site] = xr.DataArray(data, dims=(STAT_DIM, *site_dims), coords=coords)
    attrs = {
        **({"group": name} if name is not None else {}),
        "hdi_prob": float(hdi_prob),
        "quantiles": [float(q) for q in levels],
        "num_draws": num_draws,
    }
    result = xr.Dataset(variables, attrs=attrs).assign_coords({STAT_DIM: list(labels)})
    if target is None:
        return result
    return write_atomically(result, target)


def stat_labels(quantiles: Sequence[float]) -> tuple[str, ...]:
    """Labels along ``stat``: the moment statistics then ``q<percent>`` per quantile.

    Example:
        >>> stat_labels((0.025, 0.5))
        ('mean', 'sd', 'hdi_low', 'hdi_high', 'q2.5', 'q50')
    """
    return (*MOMENT_STATS, *(f"q{100 * float(q):.10g}" for q in quantiles))


def block_stats(block: np.ndarray, hdi_prob: float, quantiles: Sequence[float]) -> np.ndarray:
    """Statistics of one block ``(chain, draw, *rows)`` over its draws.

    Returns:
        float64 ``(len(stat_labels(quantiles)), *rows)``.

    Example:
        >>> block = np.arange(12.0).reshape(2, 3, 2)  # 6 draws of 2 rows
        >>> block_stats(block, 0.5, (0.5,))[:, 0].tolist()
        [5.0, 3.7416573867739413, 0.0, 4.0, 5.0]
    """
    n = block.shape[0] * block.shape[1]
    values = np.asarray(block, dtype=np.float64).reshape(n, *block.shape[2:])
    ordered = np.sort(values, axis=0)
    low, high = hdi_bounds(ordered, hdi_prob)
    sd = values.std(axis=0, ddof=1) if n > 1 else np.full(values.shape[1:], np.nan)
    stats = [values.mean(axis=0), sd, low, high]
    if len(quantiles):
        stats.extend(np.quantile(ordered, list(quantiles), axis=0))
    return np.stack(stats)


def write_atomically(dataset: xr.Dataset, target: Path) -> xr.Dataset:
    """Write ``dataset`` to a new Zarr v3 store at ``target`` through a temporary
    sibling directory, then open it lazily (Dask-backed when Dask is installed).

    The ``stat`` labels are stored as the attribute ``stat_labels`` (Zarr v3 has no
    specified string dtype yet) and restored as the coordinate on opening.

    Example:
        >>> import tempfile
        >>> ds = xr.Dataset({"a": ("stat", [1.0])}, coords={"stat": ["mean"]})
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     write_atomically(ds, Path(tmp) / "s.zarr")["a"].sel(stat="mean").values.tolist()
        1.0
    """
    temporary = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    dataset = dataset.copy()
    if STAT_DIM in dataset.coords:
        labels = [str(label) for label in dataset[STAT_DIM].values]
        dataset = dataset.drop_vars(STAT_DIM)
        dataset.attrs[LABELS_ATTR] = labels
    for variable in dataset.variables.values():
        variable.encoding = {}
    for name, variable in dataset.data_vars.items():
        if variable.chunks is not None:
            dataset[name] = variable.chunk(_uniform_chunks(variable))
    # Explicit chunks for every variable (older xarray passes ``chunks=None`` to zarr
    # for NumPy-backed variables, which zarr 3.1 refuses) and no ``_FillValue``
    # attribute (xarray 2025.1 cannot decode it from a zarr 3.1 store; NaN stays NaN).
    encoding = {
        name: {
            "chunks": tuple(max(1, c[0]) for c in variable.chunks)
            if variable.chunks is not None
            else tuple(max(1, n) for n in variable.shape),
            "_FillValue": None,
        }
        for name, variable in dataset.variables.items()
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        dataset.to_zarr(temporary, mode="w-", zarr_format=3, consolidated=False, encoding=encoding)
        temporary.rename(target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    opened = xr.open_zarr(target, consolidated=False, chunks={} if has_dask() else None)
    if LABELS_ATTR in opened.attrs:
        opened = opened.assign_coords({STAT_DIM: list(opened.attrs.pop(LABELS_ATTR))})
    return opened


def _uniform_chunks(variable: xr.DataArray) -> dict[Any, int]:
    """Chunks Zarr can store: the largest chunk of every dim (all equal but the last)."""
    return {dim: max(sizes) for dim, sizes in zip(variable.dims, variable.chunks, strict=True)}


def _dask_stats(data: Any, hdi_prob: float, quantiles: Sequence[float]) -> Any:
    """Lazy ``(stat, *rows)`` of a Dask array ``(chain, draw, *rows)``, block by block."""
    import dask.array as da

    if data.numblocks[0] > 1 or data.numblocks[1] > 1:  # draws split: whole draws per block
        data = data.rechunk({0: -1, 1: -1, **{axis: "auto" for axis in range(2, data.ndim)}})
    rows = tuple(f"row{axis}" for axis in range(2, data.ndim))
    return da.blockwise(
        block_stats,
        (STAT_DIM, *rows),
        data,
        (CHAIN, DRAW, *rows),
        new_axes={STAT_DIM: len(MOMENT_STATS) + len(quantiles)},
        concatenate=True,
        dtype=np.float64,
        meta=np.empty((0,) * (len(rows) + 1), dtype=np.float64),
        hdi_prob=hdi_prob,
        quantiles=tuple(quantiles),
    )


def _slab_stats(variable: xr.DataArray, hdi_prob: float, quantiles: Sequence[float]) -> np.ndarray:
    """``(stat, *rows)`` of a non-Dask ``(chain, draw, *rows)`` variable, read in slabs."""
    if variable.ndim == 2:
        return block_stats(np.asarray(variable.values), hdi_prob, quantiles)
    dim = variable.dims[2]
    shape = (len(MOMENT_STATS) + len(quantiles), *variable.shape[2:])
    result = np.empty(shape, dtype=np.float64)
    for start, stop in slabs(variable, dim):
        block = np.asarray(variable.isel({dim: slice(start, stop)}).values)
        result[:, start:stop] = block_stats(block, hdi_prob, quantiles)
    return result


def _check_quantiles(quantiles: Sequence[float]) -> tuple[float, ...]:
    if isinstance(quantiles, (str, bytes)) or not isinstance(quantiles, (Sequence, np.ndarray)):
        raise TypeError(
            f"`quantiles` must be a sequence of levels in [0, 1] such as (0.05, 0.5, 0.95), "
            f"got {quantiles!r}."
        )
    levels = tuple(quantiles)
    try:
        valid = all(0 <= float(q) <= 1 for q in levels)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(
            f"`quantiles` must be levels in [0, 1], got {levels!r}; e.g. (0.05, 0.5, 0.95)."
        )
    labels = stat_labels(levels)
    if len(set(labels)) != len(labels):
        raise ValueError(f"`quantiles` must be distinct levels, got {levels!r}.")
    return tuple(float(q) for q in levels)


def _check_site(variable: xr.DataArray, site: Any) -> None:
    missing = [d for d in (CHAIN, DRAW) if d not in variable.dims]
    if missing:
        raise ValueError(
            f"Site {site!r} has no {missing[0]!r} dim (dims {variable.dims}); only variables "
            "with draws can be summarized. Leave it out with `var_names`."
        )
    if STAT_DIM in variable.dims:
        raise ValueError(f"Site {site!r} has a dim named {STAT_DIM!r}, used for the statistics.")
    kind = variable.dtype.kind
    if kind not in "biuf":
        raise TypeError(
            f"Site {site!r} has dtype {variable.dtype}; only real numbers can be summarized. "
            "Leave it out with `var_names`."
        )


def _check_output(output: str | Path) -> Path:
    if isinstance(output, str) and "://" in output:
        raise ValueError(
            f"`output` must be a local directory, got the URL {output!r}; write the returned "
            "Dataset with `to_zarr` to an object store instead."
        )
    if not isinstance(output, (str, Path)) or not str(output):
        raise ValueError(f"`output` must be a new local directory path, got {output!r}.")
    target = Path(output)
    if target.exists():
        raise ValueError(
            f"`output` {str(target)!r} already exists; pass a new path or remove it first."
        )
    return target
