"""Where :func:`~aimz_io.loo` writes pointwise results, and how (see :mod:`aimz_io._loo`).

The target is checked before any work; the group is written under a temporary name
next to its destination and renamed into place once complete, so a failure leaves
nothing behind and an earlier result is replaced only by a complete one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
from aimz_core.backend import is_url

#: Group attribute holding the summary of a written LOO result.
LOO_ATTR = "aimz_loo"
#: Pointwise arrays: ``(name, row of the PSIS output)``.
POINTWISE = (("elpd_i", 0), ("pareto_k", 1), ("p_loo_i", 2))


@dataclass(frozen=True)
class _WritePlan:
    """``tmp``: written first (group at ``inner``); renamed to ``dst``; read at ``final``."""

    tmp: Path
    inner: Path
    dst: Path
    final: Path


def write_target(write: Any, store: Path | None, name: str) -> _WritePlan | None:
    """Where pointwise results go (checked before any work), or ``None``."""
    if write is None or write is False:
        return None
    tag = uuid.uuid4().hex[:12]
    if write is True:
        if store is None:
            raise ValueError(
                "`write=True` needs `data` read from a local aimz store (a path, or a "
                "tree from `open_tree` / a persistent call); pass `write=<path>` instead."
            )
        loo_dir = store / "loo"
        if not loo_dir.exists():
            tmp = store / f".loo.tmp-{tag}"
            return _WritePlan(tmp, tmp / name, loo_dir, loo_dir / name)
        if not (loo_dir / "zarr.json").exists():
            raise ValueError(f"{str(loo_dir)!r} exists and is not a Zarr group; move it away.")
        tmp = loo_dir / f".{name}.tmp-{tag}"
        return _WritePlan(tmp, tmp, loo_dir / name, loo_dir / name)
    if not isinstance(write, (str, os.PathLike)) or is_url(write):
        raise ValueError(f"`write` must be True, None or a local path, got {write!r}.")
    target = Path(write).expanduser().resolve()
    if target.exists() and not _is_loo_output(target):
        raise ValueError(
            f"`write` path {str(target)!r} exists and is not a LOO result; choose a new path."
        )
    if not target.parent.is_dir():
        raise ValueError(f"`write`: the parent directory of {str(target)!r} does not exist.")
    tmp = target.parent / f".{target.name}.tmp-{tag}"
    return _WritePlan(tmp, tmp, target, target)


def _is_loo_output(path: Path) -> bool:
    try:
        return LOO_ATTR in zarr.open_group(str(path), mode="r").attrs
    except Exception:
        return False


def create_outputs(
    plan: _WritePlan, variable: xr.DataArray, obs_dims: tuple[Hashable, ...], slab_rows: int
) -> tuple[Any, dict[str, Any]]:
    """The group and Zarr arrays of the pointwise results, under ``plan.tmp``; without
    Dask, chunks along the first observation dim hold ``slab_rows`` (the slabs)."""
    if plan.inner != plan.tmp:
        zarr.open_group(str(plan.tmp), mode="w", zarr_format=3)
    group = zarr.open_group(str(plan.inner), mode="w", zarr_format=3)
    shape = variable.shape[2:]
    if variable.chunks is not None and shape:
        chunks = tuple(max(c) for c in variable.chunks[2:])
    else:  # slab writes align with chunks along the first observation dim
        chunks = tuple(max(1, s) for s in shape)
        if shape:
            chunks = (min(chunks[0], slab_rows), *chunks[1:])
    arrays = {
        key: group.create_array(
            key,
            shape=shape,
            dtype="float64",
            chunks=chunks,
            fill_value=float("nan"),
            dimension_names=tuple(str(d) for d in obs_dims),
        )
        for key, _ in POINTWISE
    }
    for dim in obs_dims:
        coord = variable.coords.get(dim)
        values = np.asarray(coord.values) if coord is not None else np.arange(variable.sizes[dim])
        group.create_array(str(dim), data=values, dimension_names=(str(dim),))
    return group, arrays


def move_into_place(tmp: Path, dst: Path) -> None:
    """Rename the complete ``tmp`` to ``dst``, replacing an earlier result."""
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:12]}"
        dst.rename(old)
    try:
        tmp.rename(dst)
    except BaseException:
        if old is not None:
            old.rename(dst)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
