"""Distributed and resumable runs: batches on Dask workers, regions of one Zarr store.

A streamed call is planned once by the driver (:class:`aimz_core.streaming.StreamPlan`).
:func:`run_distributed` then

1. preallocates the per-call Zarr store (the same arrays as
   :class:`~aimz_io.zarr_sink.ZarrSink`), plus a ``_aimz_regions`` array of one
   completion flag per region (one chunk each) and the plan's fingerprint;
2. ships the fitted model and the plan once per worker (``client.scatter(...,
   broadcast=True)``);
3. submits one task per region that is not flagged yet: the task reads its input
   rows (a scattered NumPy slice, a Dask array block computed on the cluster, or a
   slice of any lazily indexed array such as a Zarr array, read on the worker),
   computes them with :meth:`~aimz_core.ImpactModel.compute_block`,
   writes its chunk-aligned region straight into the store and only then sets its
   flag;
4. marks the store complete (``aimz_complete``) once every flag is set, and
   returns the lazy DataTree read back from the store.

A run killed at any point leaves a store without ``aimz_complete``, which
:func:`~aimz_io.artifact.open_tree` refuses. ``resume=True`` finds the newest
incomplete store of the same plan in the output directory and computes only the
regions whose flags are missing. Without a client (``resume=True`` alone) the
regions run one after another in this process.

A killed single-process call (no client) leaves a store of
:class:`~aimz_io.zarr_sink.ZarrSink` instead: it records the same fingerprint but
has no region flags (its writes are gathered into larger chunks and may be torn), so
``resume=True`` adopts it by recomputing every region into the same directory.

Dask is an optional dependency (``pip install "aimz-io[dask]"``), imported only here
and only when a client is used.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import zarr
from aimz_core.arguments import host_rows
from aimz_core.backend import is_url
from tqdm.auto import tqdm

from aimz_io.artifact import (
    COMPLETE_ATTR,
    PLAN_ATTR,
    REGIONS_ARRAY,
    call_location,
    read_artifact,
    store_for,
)
from aimz_io.regions import block_region
from aimz_io.zarr_sink import create_site_arrays, store_attrs

logger = logging.getLogger("aimz")

DASK_HINT = 'Distributed runs need Dask: install it with `pip install "aimz-io[dask]"`.'

#: Test hook: when set (on a worker, e.g. with ``client.run``), called with the
#: region index after the region's data is written and before its flag is set.
_FAULT_HOOK: Callable[[int], None] | None = None


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as err:
        raise ImportError(DASK_HINT) from err
    return distributed


def resolve_client(client: Any) -> Any:
    """The ``dask.distributed`` client to run on: ``client`` itself, or the current one.

    Args:
        client: A ``distributed.Client``, or ``True`` for ``distributed.get_client()``.

    Raises:
        ImportError: Dask is not installed (names ``pip install "aimz-io[dask]"``).
        ValueError: ``client=True`` but no client is running.
        TypeError: ``client`` is neither.
    """
    distributed = _import_distributed()
    if client is True:
        try:
            return distributed.get_client()
        except ValueError as err:
            raise ValueError(
                "`client=True` uses the current dask.distributed Client, but none is "
                "running; create one (`distributed.Client(...)`) or pass it."
            ) from err
    if isinstance(client, distributed.Client):
        return client
    raise TypeError(
        "`client` must be a dask.distributed Client or True (use the current one), got "
        f"{type(client).__name__}."
    )


@dataclass(frozen=True)
class _Lazy:
    """An input read on the worker: rows ``[start, stop)`` (``"obs"``) or all of it."""

    source: Any


def _rows_of(source: Any, plan: Any, start: int, stop: int) -> Any:
    if isinstance(source, _Lazy):
        if plan.shard_axis == "obs":
            return host_rows(source.source, start, stop)
        return host_rows(source.source)
    return source


def _run_region(
    model: Any,
    plan: Any,
    path: str,
    i: int,
    inputs: Mapping[str, Any] | None,
    storage_options: Mapping[str, Any] | None = None,
) -> int:
    """Compute region ``i``, write it into the store at ``path``, then flag it.

    ``inputs=None`` slices the rows from ``plan.arrays`` (in-process runs).
    """
    start, stop = plan.ranges[i]
    rows = None
    if inputs is not None:
        rows = {k: _rows_of(v, plan, start, stop) for k, v in inputs.items()}
    out = model.compute_block(plan, i, start, stop, rows)
    store = store_for(path, storage_options=storage_options)
    for site, block in out.items():
        region, values = block_region(plan.info.sites[site], start, block, aligned=True)
        zarr.open_array(store, path=site, mode="r+")[region] = values
    if _FAULT_HOOK is not None:
        _FAULT_HOOK(i)
    zarr.open_array(store, path=REGIONS_ARRAY, mode="r+")[i] = 1
    return i


def _flags(path: str | Path, storage_options: Mapping[str, Any] | None) -> np.ndarray:
    store = store_for(path, read_only=True, storage_options=storage_options)
    return np.asarray(zarr.open_array(store, path=REGIONS_ARRAY, mode="r")[...]).astype(bool)


def _children(base: str | Path, caller: str, storage_options: Any) -> list[str | Path]:
    """Per-call locations of ``caller`` under ``base``, newest first."""
    if not is_url(base):
        return sorted(Path(base).glob(f"*_{caller}"), reverse=True)
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(base), **dict(storage_options or {}))
    try:
        names = [name.rstrip("/").rsplit("/", 1)[-1] for name in fs.ls(root, detail=False)]
    except FileNotFoundError:
        return []
    base = str(base).rstrip("/")
    return [f"{base}/{name}" for name in sorted(names, reverse=True) if name.endswith(f"_{caller}")]


def _find_resumable(
    base: str | Path, caller: str, fingerprint: str, storage_options: Any = None
) -> str | Path | None:
    """The newest incomplete store under ``base`` written by the same plan."""
    for path in _children(base, caller, storage_options):
        if not is_url(path) and Path(path).is_symlink():
            continue
        try:
            store = store_for(path, read_only=True, storage_options=storage_options)
            group = zarr.open_group(store, mode="r")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError):
            continue
        attrs = group.attrs
        if attrs.get(PLAN_ATTR) != fingerprint or attrs.get(COMPLETE_ATTR) is True:
            continue
        # Stores without region flags (single-process calls) are local only.
        if not is_url(path) or REGIONS_ARRAY in set(group.array_keys()):
            return path
    return None


def _has_flags(path: str | Path, storage_options: Any) -> bool:
    store = store_for(path, read_only=True, storage_options=storage_options)
    return REGIONS_ARRAY in set(zarr.open_group(store, mode="r").array_keys())


def _create_store(
    base: str | Path,
    plan: Any,
    fingerprint: str,
    storage_options: Any,
    path: str | Path | None = None,
) -> str | Path:
    """Preallocate the store of ``plan`` in a new call location (or at ``path``)."""
    info = plan.info
    path = call_location(base, plan.caller) if path is None else path
    store = store_for(path, storage_options=storage_options)
    group = zarr.open_group(store, mode="w", zarr_format=3)
    create_site_arrays(group, info)
    group.create_array(
        REGIONS_ARRAY,
        shape=(len(plan.ranges),),
        dtype="uint8",
        chunks=(1,),
        fill_value=0,
        dimension_names=("aimz_region",),
    )
    # No `aimz_complete` yet: readers refuse the store until every region is flagged.
    group.attrs.update({**store_attrs(info), PLAN_ATTR: fingerprint})
    return path


def run_distributed(
    model: Any,
    plan: Any,
    *,
    client: Any,
    base_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> Any:
    """Run a planned call region by region into one Zarr store; return its lazy tree.

    Args:
        model: The fitted :class:`~aimz_core.ImpactModel`.
        plan: Its :class:`~aimz_core.streaming.StreamPlan` for this call.
        client: A ``dask.distributed`` client, or ``None`` to compute the regions
            in this process.
        base_dir: Parent of the per-call store: a directory or an fsspec URL
            (``s3://bucket/prefix``).
        resume: Continue the newest incomplete store of the same plan in
            ``base_dir`` (a new store when there is none).
        progress: Show a progress bar over regions.
        storage_options: fsspec options for a URL ``base_dir`` (sent to workers).

    Returns:
        The lazy DataTree of the completed store (as a single-process call returns).

    Raises:
        RuntimeError: Some regions failed; the store stays incomplete (and is kept
            for ``resume=True``). The first task error is chained.
    """
    info = plan.info
    fingerprint = plan.fingerprint(info.posterior)
    so = storage_options
    if not is_url(base_dir):
        base_dir = Path(base_dir)
    path = _find_resumable(base_dir, plan.caller, fingerprint, so) if resume else None
    if path is not None and not _has_flags(path, so):
        # The store of a killed single-process call: no record of which chunks are
        # whole, so it is emptied and every region recomputed into it.
        logger.info("Adopting %s (left by a killed call): recomputing all regions.", path)
        shutil.rmtree(path)
        Path(path).mkdir()
        path = _create_store(base_dir, plan, fingerprint, so, path=path)
        todo = list(range(len(plan.ranges)))
    elif path is None:
        path = _create_store(base_dir, plan, fingerprint, so)
        todo = list(range(len(plan.ranges)))
    else:
        todo = [int(i) for i in np.flatnonzero(~_flags(path, so))]
        logger.info("Resuming %s: %d of %d regions left.", path, len(todo), len(plan.ranges))
    bar = tqdm(total=len(todo), desc=plan.desc, disable=not progress, leave=False)
    try:
        if client is None:
            for i in todo:
                _run_region(model, plan, str(path), i, None, so)
                bar.update(1)
        else:
            _run_on_cluster(client, model, plan, path, todo, bar, so)
    finally:
        bar.close()
    flags = _flags(path, so)
    if not flags.all():
        raise RuntimeError(
            f"{int((~flags).sum())} regions of {str(path)!r} are missing; the store is "
            "incomplete. Rerun the same call with `resume=True`."
        )
    group = zarr.open_group(store_for(path, storage_options=so), mode="r+")
    group.attrs.update({COMPLETE_ATTR: True})
    return read_artifact(
        path, posterior=info.posterior, posterior_dims=info.posterior_dims, storage_options=so
    )


def _task_inputs(client: Any, plan: Any, todo: list[int]) -> list[Any]:
    """Per-region input arguments: futures of NumPy slices or Dask blocks, or lazies."""
    from dask.array import Array as DaskArray

    per_region: list[dict[str, Any]] = [{} for _ in todo]
    for name, value in plan.arrays.items():
        if isinstance(value, DaskArray):
            if plan.shard_axis == "obs":
                parts = [value[slice(*plan.ranges[i])] for i in todo]
                futures = client.compute(parts)
            else:
                futures = [client.compute(value)] * len(todo)
        elif isinstance(value, (np.ndarray, jax.Array)):
            if plan.shard_axis == "obs":
                parts = [np.asarray(value[slice(*plan.ranges[i])]) for i in todo]
                futures = client.scatter(parts, hash=False)
            else:
                futures = [client.scatter(np.asarray(value), broadcast=True, hash=False)] * len(
                    todo
                )
        else:  # any other array (e.g. Zarr): sliced and read on the worker
            futures = [_Lazy(value)] * len(todo)
        for entry, future in zip(per_region, futures, strict=True):
            entry[name] = future
    return per_region


def _run_on_cluster(
    client: Any,
    model: Any,
    plan: Any,
    path: str | Path,
    todo: list[int],
    bar: Any,
    storage_options: Any = None,
) -> None:
    distributed = _import_distributed()
    if not todo:
        return
    model_f = client.scatter(model, broadcast=True, hash=False)
    plan_f = client.scatter(plan.for_workers(), broadcast=True, hash=False)
    inputs = _task_inputs(client, plan, todo)
    futures = [
        client.submit(_run_region, model_f, plan_f, str(path), i, rows, storage_options, pure=False)
        for i, rows in zip(todo, inputs, strict=True)
    ]
    errors: list[BaseException] = []
    try:
        for future in distributed.as_completed(futures):
            try:
                future.result()
            except Exception as err:  # keep going: finished regions are kept for resume
                errors.append(err)
            bar.update(1)
    except BaseException:
        client.cancel(futures)
        raise
    if errors:
        raise RuntimeError(
            f"{len(errors)} of {len(todo)} regions failed; the store {str(path)!r} is "
            "incomplete. Fix the cause and rerun the same call with `resume=True` to "
            "compute only the missing regions."
        ) from errors[0]


__all__ = ["DASK_HINT", "resolve_client", "run_distributed"]
