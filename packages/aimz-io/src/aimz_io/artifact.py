"""Persistent artifacts: the per-call Zarr v3 directory and how to read it back.

One streamed call writes ``<base_dir>/<UTC %Y%m%dT%H%M%S%fZ>_<caller>/``: a single
Zarr v3 group with one array per site (``dimension_names = ("draw", *dims)``, the
draw axis flattened over chains) and group attributes ``num_chains``, ``created_at``,
``aimz_version``, ``group`` and, written last, ``aimz_complete = True``. Plain
``xr.open_zarr(path)`` reads it without aimz; :func:`open_tree` rebuilds the aimz
tree lazily and refuses incomplete or deleted artifacts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
from aimz_core.backend import is_url

from aimz_io.datatree import (
    assemble_tree,
    dataset_from_arrays,
    make_dataset,
)
from aimz_io.lazy_arrays import (
    ChainDrawArray,
    chain_draw_chunks,
    chunked,
    has_dask,
    lazily_indexed,
)
from aimz_io.provenance import base_attrs, path_attrs, utc_now

#: Group attribute written last by a successful commit.
COMPLETE_ATTR = "aimz_complete"
#: Array of per-region completion flags of a distributed or resumable run.
REGIONS_ARRAY = "_aimz_regions"
#: Group attribute with the plan fingerprint of a distributed or resumable run.
PLAN_ATTR = "aimz_plan"
#: Group attributes that describe the store rather than the results.
STORE_ATTRS = (COMPLETE_ATTR, "group", PLAN_ATTR)

_CALLER = re.compile(r"^[A-Za-z0-9_.-]+$")


def store_for(
    location: str | Path,
    *,
    read_only: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> Any:
    """The Zarr store at ``location``: a ``LocalStore`` or, for a URL, an ``FsspecStore``.

    Args:
        location: A local directory or an fsspec URL such as ``s3://bucket/prefix``
            (S3 needs ``pip install "aimz-io[s3]"``).
        read_only: Open read-only.
        storage_options: Options of the fsspec file system (credentials,
            ``client_kwargs={"endpoint_url": ...}``); URLs only.
    """
    if is_url(location):
        return zarr.storage.FsspecStore.from_url(
            str(location), storage_options=dict(storage_options or {}), read_only=read_only
        )
    return zarr.storage.LocalStore(Path(location), read_only=read_only)


def call_location(base: str | Path, caller: str) -> str | Path:
    """A new per-call location under ``base``: a created directory, or a URL prefix."""
    if is_url(base):
        if not _CALLER.match(caller):
            raise ValueError(f"`caller` must be a plain name, got {caller!r}.")
        return f"{str(base).rstrip('/')}/{utc_now():%Y%m%dT%H%M%S%fZ}_{caller}"
    return create_call_dir(Path(base), caller)


def create_call_dir(base_dir: Path, caller: str) -> Path:
    """Create the new, empty ``<UTC timestamp>_<caller>`` directory of one call.

    Args:
        base_dir: Parent directory (created with its parents if missing).
        caller: Public method that started the call, e.g. ``"predict"``.

    Returns:
        The created directory. It never existed before.

    Example:
        >>> import tempfile
        >>> create_call_dir(Path(tempfile.mkdtemp()), "predict").name.endswith(
        ...     "Z_predict")
        True
    """
    if not _CALLER.match(caller):
        raise ValueError(f"`caller` must be a plain name, got {caller!r}.")
    base_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        path = base_dir / f"{utc_now():%Y%m%dT%H%M%S%fZ}_{caller}"
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"Could not create a new output directory in {base_dir}.")


def open_tree(path: str | Path, *, storage_options: Mapping[str, Any] | None = None) -> xr.DataTree:
    """Reopen a persistent artifact written by the ``"persistent"`` sink, lazily.

    Args:
        path: The per-call directory (the ``artifact_path`` attribute of a result),
            or its URL (``s3://bucket/prefix/<timestamp>_<caller>``).
        storage_options: fsspec options for a URL (credentials, endpoint).

    Returns:
        A DataTree named ``"root"`` with the call's group (``posterior`` is kept in
        memory by the model, not on disk). Arrays are read on access (Dask-backed
        when Dask is installed).

    Raises:
        FileNotFoundError: ``path`` does not exist (e.g. removed by ``cleanup()``).
        ValueError: ``path`` is not an aimz artifact, or is incomplete (its call
            failed or is still running).

    Example:
        >>> tree = open_tree(result.attrs["artifact_path"])  # doctest: +SKIP
    """
    return read_artifact(path, storage_options=storage_options)


def read_artifact(
    path: str | Path,
    *,
    posterior: Mapping[str, np.ndarray] | None = None,
    posterior_dims: Mapping[str, Sequence[str]] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> xr.DataTree:
    """Lazy DataTree of a complete artifact, with an in-memory ``posterior`` group.

    Args:
        path: The per-call directory, or its URL.
        posterior: Posterior samples (flattened draw axis) to put first in the tree.
        posterior_dims: Dims of the posterior sites after the draw axis.

    Returns:
        The tree; root and groups carry ``created_at``, ``aimz_version``,
        ``num_chains``, ``output_dir`` and ``artifact_path``.

    Example:
        >>> tree = read_artifact(Path(result.attrs["artifact_path"]))  # doctest: +SKIP
    """
    url = is_url(path)
    if url:
        path = str(path).rstrip("/")
        store = store_for(path, read_only=True, storage_options=storage_options)
    else:
        path = Path(path).expanduser().resolve()
        if not path.is_dir():
            raise FileNotFoundError(
                f"No aimz artifact at {str(path)!r}: the directory does not exist (was "
                "it removed by `ImpactModel.cleanup()`?)."
            )
        store = zarr.storage.LocalStore(path, read_only=True)
    group = _open_group(store, path)
    stored = dict(group.attrs)
    if stored.get(COMPLETE_ATTR) is not True:
        detail = ""
        if REGIONS_ARRAY in set(group.array_keys()):
            flags = np.asarray(zarr.open_array(store, path=REGIONS_ARRAY, mode="r")[...])
            detail = (
                f" {int(flags.sum())} of {flags.size} regions are written; rerun the same "
                "call with `resume=True` to compute the missing ones."
            )
        raise ValueError(
            f"The aimz artifact {str(path)!r} is incomplete (no {COMPLETE_ATTR!r} "
            f"marker): the call that wrote it failed or has not finished.{detail}"
        )
    names = [name for name in sorted(group.array_keys()) if name != REGIONS_ARRAY]
    return tree_from_store(
        store,
        path,
        stored,
        names,
        posterior=posterior,
        posterior_dims=posterior_dims,
    )


def tree_from_store(
    store: Any,
    path: str | Path,
    stored: Mapping[str, Any],
    names: Sequence[str],
    *,
    posterior: Mapping[str, np.ndarray] | None = None,
    posterior_dims: Mapping[str, Sequence[str]] | None = None,
) -> xr.DataTree:
    """Lazy DataTree over the arrays ``names`` of ``store``, given its group attributes.

    Reads only each array's metadata; no chunk is read. The caller has checked
    completeness (or, like :class:`~aimz_io.zarr_sink.ZarrSink`, is the writer and
    builds the tree while its last chunks are still being written).

    Args:
        store: The Zarr store of the artifact.
        path: Its directory or URL (recorded as ``output_dir`` / ``artifact_path``).
        stored: The group attributes (``num_chains``, ``group``, ``created_at``, ...).
        names: Arrays to include, one variable each.
        posterior: Posterior samples (flattened draw axis) to put first in the tree.
        posterior_dims: Dims of the posterior sites after the draw axis.
    """
    url = is_url(path)
    num_chains = int(stored["num_chains"])
    attrs = {k: v for k, v in stored.items() if k not in STORE_ATTRS}
    attrs.update(base_attrs(num_chains, created_at=stored.get("created_at")))
    attrs["aimz_version"] = stored.get("aimz_version", attrs["aimz_version"])
    attrs.update(path_attrs(path))

    arrays, dims = {}, {}
    for name in sorted(names):
        array = _open_array(store, name)
        stored_dims = tuple(array.metadata.dimension_names or ())
        dims[name] = stored_dims[1:]
        arrays[name] = _lazy_data(array, num_chains, None if url else Path(path))
    datasets = {}
    if posterior:
        datasets["posterior"] = dataset_from_arrays(
            posterior, num_chains=num_chains, dims=posterior_dims, attrs=attrs
        )
    datasets[str(stored["group"])] = make_dataset(arrays, dims, attrs)
    return assemble_tree(datasets, attrs)


def _open_group(store: Any, path: str | Path) -> Any:
    try:
        group = zarr.open_group(store, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
        raise ValueError(f"{str(path)!r} is not a Zarr group written by aimz.") from err
    if group.metadata.zarr_format != 3 or "num_chains" not in group.attrs:
        raise ValueError(f"{str(path)!r} is not a Zarr v3 group written by aimz.")
    return group


def _open_array(store: Any, name: str) -> Any:
    try:
        return zarr.open_array(store, path=name, mode="r", config={"read_missing_chunks": False})
    except TypeError:  # zarr without `read_missing_chunks`: the path check remains
        return zarr.open_array(store, path=name, mode="r")


def _lazy_data(array: Any, num_chains: int, path: Path | None) -> Any:
    """Dask array over the stored chunks, or a lazily indexed array without Dask."""
    reader = ChainDrawArray(array, num_chains, path)
    if not has_dask():
        return lazily_indexed(reader)
    return chunked(reader, chain_draw_chunks(reader.shape, tuple(array.chunks)))
