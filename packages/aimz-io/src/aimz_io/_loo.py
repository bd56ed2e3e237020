"""PSIS-LOO cross-validation of log-likelihood draws too large for memory.

:func:`loo` computes what ``arviz_stats.loo`` computes (same estimates, warnings and
result type) but reads the log-likelihood chunk by chunk: each chunk of an aimz
store holds every chain and draw of a block of rows, so Pareto-smoothed importance
sampling (:mod:`aimz_io._psis`) runs on each chunk alone and only sums and counts
cross chunks. Dask-backed data run as one Dask graph (chunk-parallel, unchanged on
a Dask cluster; each chunk is passed to PSIS without a copy); other data are read in
slabs of about ``SLAB_BYTES``, ``WORKERS`` slabs at a time by a thread pool.

Pointwise results (``elpd_i``, ``pareto_k``, ``p_loo_i``) are lazy for Dask-backed
inputs (computing them reads the log-likelihood again) and in memory otherwise,
unless ``write`` stores them: then they are written during the same pass, as a
Zarr v3 group with arrays ``elpd_i``, ``pareto_k`` and ``p_loo_i`` (dims of the
observations, with their coordinates) and the summary in the group attribute
``aimz_loo``, and are returned lazily from there. ``write=True`` puts this group in
the aimz store itself, at ``<store>/loo/<var_name>`` (deleted with the store;
``open_tree`` and ``xr.open_zarr(store)`` ignore it); a path writes a standalone
store there. The group is written under a temporary name next to its destination
and renamed into place once complete, so a failure leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections import deque
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from aimz_core.backend import is_url

from aimz_io._loo_output import (
    LOO_ATTR,
    POINTWISE,
    create_outputs,
    move_into_place,
    write_target,
)
from aimz_io._psis import (
    OBS_BATCH,
    check_samples,
    good_k_threshold,
    psis_loo,
    relative_eff,
)
from aimz_io._psis import ess_mean as _ess_mean
from aimz_io.artifact import open_tree
from aimz_io.datatree import CHAIN, DRAW
from aimz_io.lazy_arrays import has_dask

#: Bytes of log-likelihood read at a time when the data are not Dask-backed.
SLAB_BYTES = 64 * 2**20
#: Threads processing slabs of data that are not Dask-backed (each holds one slab).
WORKERS = max(1, min(2, os.cpu_count() or 1))
PARETO_WARNING = (
    "Estimated shape parameter of Pareto distribution is greater than {good_k:.2f} for "
    "one or more samples."
)


@dataclass(frozen=True, kw_only=True)
class LooResult:
    """PSIS-LOO result where ``arviz_stats`` is missing (it needs Python >= 3.12).

    The fields are those of ``arviz_stats.utils.ELPDDataLOO``; with arviz-stats
    installed :func:`loo` returns that type instead, which ``arviz_stats.compare``
    and the ArviZ LOO plots accept.

    Example:
        >>> result = LooResult(
        ...     elpd=-12.5, se=1.5, p=0.8, n_samples=400, n_data_points=10,
        ...     scale="log", warning=False, good_k=0.62,
        ... )
        >>> result.kind, result.elpd / result.n_data_points
        ('loo', -1.25)
    """

    #: Expected log pointwise predictive density, summed over observations.
    elpd: float
    #: Standard error of ``elpd``.
    se: float
    #: Effective number of parameters (``p_loo``).
    p: float
    #: Draws (``chain x draw``).
    n_samples: int
    #: Observations.
    n_data_points: int
    #: Scale of ``elpd`` (``"log"``).
    scale: str
    #: Whether some Pareto k-hat exceeds ``good_k``.
    warning: bool
    #: Threshold of a reliable Pareto k-hat, ``min(1 - 1/log10(n_samples), 0.7)``.
    good_k: float
    #: Pointwise elpd, one value per observation (lazy when computed by Dask).
    elpd_i: Any = None
    #: Pareto k-hat per observation.
    pareto_k: Any = None
    #: Always ``False`` here (the draws are the posterior itself).
    approx_posterior: bool = False
    #: Not kept (``None``): smoothed weights are as large as the log-likelihood.
    log_weights: Any = None
    #: Pointwise ``p_loo``.
    p_loo_i: Any = None
    #: ``"loo"``.
    kind: str = "loo"


def loo(
    data: Any,
    *,
    var_name: str | None = None,
    group: str = "log_likelihood",
    reff: float | None = None,
    pointwise: bool = True,
    write: bool | str | os.PathLike | None = None,
) -> Any:
    """Pareto-smoothed importance sampling LOO, computed chunk by chunk.

    Args:
        data: An aimz output tree (in memory or read from a store), the path or URL
            of a store written by aimz (opened with :func:`~aimz_io.open_tree`), or
            a ``Dataset`` / ``DataArray`` of log-likelihood values with ``chain``
            and ``draw`` dims. Every other dim is an observation dim.
        var_name: The log-likelihood variable; needed when ``group`` has several.
        group: The group of a tree holding the log-likelihood.
        reff: Relative efficiency of the draws. Default: 1 for one chain; with
            several chains, ArviZ's value (mean ``ess(method="mean")`` of the
            ``posterior`` group's variables over the number of draws) when the tree
            has a ``posterior`` group, else the mean over observations of the
            relative ESS of ``exp(log_lik)`` (one more pass over the data).
        pointwise: Return ``elpd_i``, ``pareto_k`` and ``p_loo_i``.
        write: ``True``: write the pointwise results into the aimz store that
            ``data`` was read from, at ``<store>/loo/<var_name>`` (replacing an
            earlier one); a path: write them as a new Zarr store there. The
            returned arrays then read from it lazily.

    Returns:
        ``arviz_stats.utils.ELPDDataLOO`` (``kind="loo"``, ``scale="log"``) when
        arviz-stats is installed, else a :class:`LooResult` with the same fields.

    Raises:
        ValueError: No such group or variable, several variables and no
            ``var_name``, no ``chain``/``draw`` dims, too few draws, a bad ``reff``,
            or a ``write`` target that cannot be used.

    Warns:
        UserWarning: As ArviZ when a Pareto ``k`` exceeds ``good_k``; also when
            ``elpd`` is not finite or some ``k`` could not be estimated.

    Example:
        >>> from aimz_io.datatree import tree_from_arrays
        >>> rng = np.random.default_rng(0)
        >>> draws = 0.2 * rng.normal(size=(200, 5)) - 1
        >>> tree = tree_from_arrays({"log_likelihood": {"y": draws}})
        >>> result = loo(tree)
        >>> result.n_data_points, result.elpd_i.dims
        (5, ('y_dim_0',))
    """
    variable, posterior, store = _select(data, group, var_name)
    name = str(variable.name)
    obs_dims = tuple(d for d in variable.dims if d not in (CHAIN, DRAW))
    variable = variable.transpose(CHAIN, DRAW, *obs_dims)
    n_samples = variable.sizes[CHAIN] * variable.sizes[DRAW]
    if reff is not None:
        reff = _check_reff(reff)
    check_samples(n_samples, reff if reff is not None else 1.0)
    plan = write_target(write, store, name)
    if reff is None:
        reff = _default_reff(variable, posterior, n_samples)
    check_samples(n_samples, reff)

    lazy = variable.chunks is not None
    try:
        group, arrays = (
            create_outputs(plan, variable, obs_dims, _slab_rows(variable)) if plan else (None, None)
        )
        if lazy:
            totals, pw = _run_dask(variable, reff, arrays)
        else:
            totals, pw = _run_slabs(variable, reff, arrays, keep=pointwise and plan is None)
        summary = _summary(totals, n_samples)
        if plan is not None:
            group.attrs.update({LOO_ATTR: {**summary, "var_name": name, "reff": float(reff)}})
            move_into_place(plan.tmp, plan.dst)
    finally:
        if plan is not None and plan.tmp.exists():
            shutil.rmtree(plan.tmp, ignore_errors=True)
    outputs: dict[str, Any] = {}
    if pointwise:
        if plan is not None:
            opened = xr.open_zarr(
                plan.final, consolidated=False, zarr_format=3, chunks={} if has_dask() else None
            )
            outputs = {key: opened[key].rename(name) for key, _ in POINTWISE}
        else:
            coords = _obs_coords(variable, obs_dims)
            outputs = {
                key: xr.DataArray(pw[row], dims=obs_dims, coords=coords, name=name)
                for key, row in POINTWISE
            }
    _warn(summary, totals, pointwise)
    return _result(summary, n_samples, outputs)


def _select(
    data: Any, group: str, var_name: str | None
) -> tuple[xr.DataArray, xr.Dataset | None, Path | None]:
    """The log-likelihood variable, the posterior (if any) and the local store path."""
    store = None
    if isinstance(data, (str, os.PathLike)):
        if not is_url(data):
            store = Path(data).expanduser().resolve()
        data = open_tree(data)
    posterior = None
    if isinstance(data, xr.DataTree):
        if group not in data.children:
            raise ValueError(
                f"`group` {group!r} is not in the tree; its groups: {sorted(data.children)}."
            )
        if "posterior" in data.children:
            posterior = data["posterior"].to_dataset()
        path = data.attrs.get("artifact_path")
        if store is None and path is not None and not is_url(path) and Path(path).is_dir():
            store = Path(path)
        data = data[group].to_dataset()
    if isinstance(data, xr.Dataset):
        sites = [str(v) for v in data.data_vars]
        if var_name is None:
            if len(sites) != 1:
                raise ValueError(
                    f"`var_name` is required: the log-likelihood has {len(sites)} sites "
                    f"{sites}; pass one of them."
                )
            var_name = sites[0]
        if var_name not in data.data_vars:
            raise ValueError(f"`var_name` {var_name!r} is not a site; choose one of {sites}.")
        data = data[var_name]
    if not isinstance(data, xr.DataArray):
        raise TypeError(
            "`data` must be a DataTree, a store path, a Dataset or a DataArray, got "
            f"{type(data).__name__}."
        )
    missing = [d for d in (CHAIN, DRAW) if d not in data.dims]
    if missing:
        raise ValueError(
            f"The log-likelihood needs dims 'chain' and 'draw' (missing {missing}; dims "
            f"{data.dims}); add them, e.g. `da.expand_dims('chain')`."
        )
    if data.name is None:
        data = data.rename(var_name or "log_likelihood")
    return data, posterior, store


def _check_reff(reff: Any) -> float:
    try:
        value = float(reff)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(reff, bool) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"`reff` must be a positive number (or None), got {reff!r}.")
    return value


def _default_reff(variable: xr.DataArray, posterior: xr.Dataset | None, n_samples: int) -> float:
    """ArviZ's reff from the posterior; else the mean relative ESS of ``exp(log_lik)``."""
    if variable.sizes[CHAIN] == 1:
        return 1.0
    if posterior is not None and posterior.data_vars:
        values = []
        for site in posterior.data_vars.values():
            site = site.transpose(..., CHAIN, DRAW)
            values.append(_ess_mean(np.asarray(site.values)).ravel())
        return float(np.hstack(values).mean()) / n_samples
    if variable.chunks is not None:
        import dask
        import dask.array as da

        data = variable.data
        index = tuple(range(2, data.ndim))
        per_obs = da.blockwise(
            _reff_block, index, data, (0, 1, *index), concatenate=True, dtype=np.float64
        )
        total, count = dask.compute(da.nansum(per_obs), da.sum(~da.isnan(per_obs)))
    else:
        total = count = 0.0
        for block in _slabs(variable):
            per_obs = _reff_block(block)
            total += np.nansum(per_obs)
            count += np.sum(~np.isnan(per_obs))
    return float(total) / float(count) if count else float("nan")


def _reff_block(block: np.ndarray) -> np.ndarray:
    """Relative ESS of ``exp(log_lik)`` per observation of a ``(chain, draw, ...)`` block."""
    chains, draws, *obs = block.shape
    flat = np.asarray(block).reshape(chains, draws, -1)
    out = np.empty(flat.shape[2])
    for lo in range(0, flat.shape[2], OBS_BATCH):  # bounds the FFT temporaries
        values = np.asarray(flat[:, :, lo : lo + OBS_BATCH], dtype=np.float64)
        values = np.exp(values - values.max(axis=(0, 1), keepdims=True))
        out[lo : lo + OBS_BATCH] = relative_eff(np.moveaxis(values, 2, 0))
    return out.reshape(obs)


def _psis_block(block: np.ndarray, reff: float) -> np.ndarray:
    """``(3, *obs)`` PSIS output of a ``(chain, draw, *obs)`` block."""
    chains, draws, *obs = block.shape
    return psis_loo(block.reshape(chains * draws, -1), reff).reshape(3, *obs)


def _psis_blocks(blocks: Any, reff: float) -> np.ndarray:
    """:func:`_psis_block` of Dask's ``[chain][draw]`` blocks (one block: no copy)."""
    if len(blocks) == 1 and len(blocks[0]) == 1:
        block = blocks[0][0]
    else:
        block = np.concatenate([np.concatenate(row, axis=1) for row in blocks], axis=0)
    return _psis_block(block, reff)


def _run_dask(
    variable: xr.DataArray, reff: float, arrays: dict[str, Any] | None
) -> tuple[dict[str, Any], Any]:
    """One Dask pass: pointwise results (lazy), their totals and optional writes."""
    import dask
    import dask.array as da

    data = variable.data
    if data.ndim == 2:
        data = data[:, :, None]
    index = tuple(range(2, data.ndim))
    pw = da.blockwise(
        _psis_blocks,
        (-1, *index),
        data,
        (0, 1, *index),
        new_axes={-1: 3},
        concatenate=False,
        dtype=np.float64,
        reff=reff,
    )
    if variable.ndim == 2:
        pw = pw[:, 0]
    elpd, k_hat = pw[0], pw[1]
    reductions = {
        "n": elpd.size,
        "elpd": elpd.sum(),
        "var": elpd.var(ddof=1) if elpd.size > 1 else 0.0,
        "p": pw[2].sum(),
        "bad_k": (k_hat > good_k_threshold(variable.sizes[CHAIN] * variable.sizes[DRAW])).sum(),
        "nan_k": da.isnan(k_hat).sum(),
        "bad_elpd": (~da.isfinite(elpd)).sum(),
    }
    stores = []
    if arrays is not None:
        if pw.ndim > 1:
            pw = pw.rechunk({i + 1: arrays["elpd_i"].chunks[i] for i in range(pw.ndim - 1)})
        sources = [pw[row] for _, row in POINTWISE]
        targets = [arrays[key] for key, _ in POINTWISE]
        stores.append(da.store(sources, targets, lock=False, compute=False))
    keys = list(reductions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        computed = dask.compute(*reductions.values(), *stores)
    totals = {key: float(value) for key, value in zip(keys, computed, strict=False)}
    return totals, pw


def _run_slabs(
    variable: xr.DataArray, reff: float, arrays: dict[str, Any] | None, *, keep: bool
) -> tuple[dict[str, Any], np.ndarray | None]:
    """Slab by slab over the first observation dim (NumPy or lazily indexed data)."""
    n_samples = variable.sizes[CHAIN] * variable.sizes[DRAW]
    obs_shape = variable.shape[2:]
    kept = np.empty((3, *obs_shape)) if keep else None
    good_k = good_k_threshold(n_samples)
    totals = dict.fromkeys(("n", "elpd", "m2", "p", "bad_k", "nan_k", "bad_elpd"), 0.0)
    for start, stop, out in _slab_outputs(variable, reff):
        region = (slice(start, stop),) if variable.ndim > 2 else ()
        if kept is not None:
            kept[(slice(None), *region)] = out
        if arrays is not None:
            for key, row in POINTWISE:
                arrays[key][region] = out[row]
        _accumulate(totals, out, good_k)
    n = totals["n"]
    totals["var"] = totals.pop("m2") / (n - 1) if n > 1 else 0.0
    return totals, kept


def _accumulate(totals: dict[str, float], out: np.ndarray, good_k: float) -> None:
    """Merge a block's sums into ``totals`` (Chan et al. for the sum of squares)."""
    elpd = out[0].ravel()
    n_b = elpd.size
    mean_b = elpd.mean()
    m2_b = float(((elpd - mean_b) ** 2).sum())
    n_a, mean_a = totals["n"], (totals["elpd"] / totals["n"] if totals["n"] else 0.0)
    delta = mean_b - mean_a
    totals["m2"] += m2_b + delta**2 * n_a * n_b / (n_a + n_b)
    totals["n"] = n_a + n_b
    totals["elpd"] += float(elpd.sum())
    totals["p"] += float(out[2].sum())
    with np.errstate(invalid="ignore"):
        totals["bad_k"] += float(np.sum(out[1] > good_k))
    totals["nan_k"] += float(np.isnan(out[1]).sum())
    totals["bad_elpd"] += float((~np.isfinite(elpd)).sum())


def _slab_outputs(variable: xr.DataArray, reff: float):
    """``(start, stop, (3, *obs) PSIS output)`` of each slab, in order.

    Slabs are read and processed by ``WORKERS`` threads (NumPy, XLA and Zarr release
    the GIL), at most ``WORKERS`` slabs in flight.
    """

    def job(start: int, stop: int) -> np.ndarray:
        block = np.asarray(variable.isel({variable.dims[2]: slice(start, stop)}).values)
        return _psis_block(block, reff).reshape(3, *block.shape[2:])

    if variable.ndim == 2:
        yield 0, 1, _psis_block(np.asarray(variable.values)[:, :, None], reff).reshape(3)
        return
    size, step = variable.sizes[variable.dims[2]], _slab_rows(variable)
    with ThreadPoolExecutor(WORKERS) as pool:
        pending: deque = deque()
        for start in range(0, size, step):
            stop = min(start + step, size)
            pending.append((start, stop, pool.submit(job, start, stop)))
            while len(pending) >= WORKERS or (pending and stop == size):  # drain at the end
                first, last, future = pending.popleft()
                yield first, last, future.result()


def _slabs(variable: xr.DataArray):
    """``(chain, draw, ...)`` NumPy blocks of about ``SLAB_BYTES`` along the first obs dim."""
    if variable.ndim == 2:
        yield np.asarray(variable.values)
        return
    dim = variable.dims[2]
    size, step = variable.sizes[dim], _slab_rows(variable)
    for start in range(0, size, step):
        yield np.asarray(variable.isel({dim: slice(start, start + step)}).values)


def _slab_rows(variable: xr.DataArray) -> int:
    """Entries of the first observation dim per slab (about ``SLAB_BYTES`` of input)."""
    size = variable.sizes[variable.dims[2]]
    row_bytes = variable.size // max(size, 1) * variable.dtype.itemsize
    return max(1, SLAB_BYTES // max(row_bytes, 1))


def _summary(totals: dict[str, float], n_samples: int) -> dict[str, Any]:
    n = int(totals["n"])
    return {
        "elpd": float(totals["elpd"]),
        "se": float(np.sqrt(n * totals["var"])) if n > 1 else 0.0,
        "p": float(totals["p"]),
        "n_samples": int(n_samples),
        "n_data_points": n,
        "warning": bool(totals["bad_k"] > 0),
        "good_k": float(good_k_threshold(n_samples)),
    }


def _warn(summary: dict[str, Any], totals: dict[str, float], pointwise: bool) -> None:
    n = summary["n_data_points"]
    if summary["warning"]:
        warnings.warn(
            PARETO_WARNING.format(good_k=summary["good_k"])
            + f" {int(totals['bad_k'])} of {n} observations exceed it: importance sampling "
            "is unreliable for them; consider a more robust model.",
            UserWarning,
            stacklevel=3,
        )
    if totals["nan_k"]:
        warnings.warn(
            f"The Pareto k of {int(totals['nan_k'])} of {n} observations could not be "
            "estimated (their largest importance ratios are tied or degenerate); their "
            "weights are not smoothed.",
            UserWarning,
            stacklevel=3,
        )
    if totals["bad_elpd"]:
        warnings.warn(
            f"elpd is not finite: {int(totals['bad_elpd'])} of {n} observations have a "
            "NaN or infinite elpd_i (NaN or infinite log-likelihood values?).",
            UserWarning,
            stacklevel=3,
        )
    if pointwise and n == 1:
        warnings.warn(
            "The point-wise LOO is the same as the total LOO (one observation); check that "
            "the log-likelihood is element-wise.",
            UserWarning,
            stacklevel=3,
        )


def _result(summary: dict[str, Any], n_samples: int, outputs: dict[str, Any]) -> Any:
    fields = {
        **summary,
        "scale": "log",
        "elpd_i": outputs.get("elpd_i"),
        "pareto_k": outputs.get("pareto_k"),
        "approx_posterior": False,
        "log_weights": None,
    }
    try:
        from arviz_stats.utils import ELPDDataLOO
    except ImportError:
        return LooResult(**fields, p_loo_i=outputs.get("p_loo_i"))
    result = ELPDDataLOO(**fields)
    result.p_loo_i = outputs.get("p_loo_i")
    return result


def _obs_coords(variable: xr.DataArray, obs_dims: tuple[Hashable, ...]) -> dict[Hashable, Any]:
    return {
        key: coord.variable
        for key, coord in variable.coords.items()
        if coord.dims and set(coord.dims) <= set(obs_dims)
    }
