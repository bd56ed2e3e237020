"""Lazily indexed arrays that xarray reads piece by piece (with or without Dask).

:class:`ChainDrawArray` shows a stored array with a flattened draw axis as
``(chain, draw, ...)`` and reads only the requested region from Zarr.
:class:`DifferenceArray` is ``minuend - subtrahend`` evaluated on the region asked
for, which keeps effects lazy when Dask is not installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing


def has_dask() -> bool:
    """Whether ``dask.array`` can be imported.

    Example:
        >>> isinstance(has_dask(), bool)
        True
    """
    return importlib.util.find_spec("dask") is not None


def lazily_indexed(array: BackendArray) -> indexing.LazilyIndexedArray:
    """Wrap ``array`` so that xarray indexes it lazily (reads happen on ``.values``)."""
    return indexing.LazilyIndexedArray(array)


def chunked(array: BackendArray, chunks: tuple[int, ...]) -> Any:
    """A Dask array reading ``array`` chunk by chunk (needs Dask)."""
    dims = tuple(f"dim_{i}" for i in range(len(array.shape)))
    return xr.Variable(dims, lazily_indexed(array)).chunk(chunks).data


def chain_draw_chunks(shape: tuple[int, ...], flat_chunks: tuple[int, ...]) -> tuple[int, ...]:
    """Dask chunks for ``(chain, draw, ...)`` that follow the chunks of the flattened
    ``(chain * draw, ...)`` array (its chunks on disk, or its batches in memory).

    Example:
        >>> chain_draw_chunks((2, 6, 10), (4, 5))
        (1, 4, 5)
    """
    chains, draws = shape[:2]
    step = flat_chunks[0]
    if step >= chains * draws:
        lead = (chains, draws)
    elif step >= draws:
        lead = (max(1, step // draws), draws)
    else:
        lead = (1, step)
    return (*lead, *flat_chunks[1:])


def _positions(key: Any, size: int) -> np.ndarray:
    return np.arange(size)[key]


def _scalar_to_zero(key: Any) -> int | slice:
    """Index that drops an axis read for an integer key and keeps it otherwise."""
    return 0 if not isinstance(key, slice) and np.ndim(key) == 0 else slice(None)


def _refuses_missing_chunks(array: Any) -> bool:
    """Whether zarr itself raises on missing chunks (``read_missing_chunks=False``).

    Older zarr releases (the last ones for Python 3.11) lack the option; there the
    reader counts the stored chunks instead.
    """
    config = getattr(array, "config", None) or getattr(
        getattr(array, "_async_array", None), "config", None
    )
    return getattr(config, "read_missing_chunks", True) is False


class ChainDrawArray(BackendArray):
    """A Zarr array ``(chain * draw, ...)`` presented lazily as ``(chain, draw, ...)``.

    Reads check that the artifact directory still exists, so data removed by
    ``cleanup()`` raises :class:`FileNotFoundError` instead of reading as fill values.

    Example:
        >>> import zarr
        >>> z = zarr.zeros((6, 2), store=zarr.storage.MemoryStore())
        >>> ChainDrawArray(z, num_chains=2).shape
        (2, 3, 2)
    """

    def __init__(self, array: Any, num_chains: int, path: Path | None = None) -> None:
        total = array.shape[0]
        self.array = array
        self.path = path
        self.shape = (num_chains, total // num_chains, *array.shape[1:])
        self.dtype = np.dtype(array.dtype)

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.OUTER, self._read
        )

    def _read(self, key: tuple[Any, ...]) -> np.ndarray:
        chain_key, draw_key, *rest = key
        chains = np.atleast_1d(_positions(chain_key, self.shape[0]))
        draws = np.atleast_1d(_positions(draw_key, self.shape[1]))
        flat = (chains[:, None] * self.shape[1] + draws[None, :]).ravel()
        if flat.size and np.array_equal(flat, np.arange(flat[0], flat[0] + flat.size)):
            rows: Any = slice(int(flat[0]), int(flat[0]) + flat.size)
        else:
            rows = flat
        values = self._fetch((rows, *rest)) if flat.size else self._empty(rest)
        values = values.reshape(chains.size, draws.size, *values.shape[1:])
        return values[_scalar_to_zero(chain_key), _scalar_to_zero(draw_key)]

    def _empty(self, rest: list[Any]) -> np.ndarray:
        template = np.empty((0, *self.shape[2:]), dtype=self.dtype)
        return template[(slice(None), *rest)]

    def _fetch(self, key: tuple[Any, ...]) -> np.ndarray:
        if self.path is not None and not self.path.is_dir():
            raise FileNotFoundError(
                f"The aimz artifact {str(self.path)!r} no longer exists (it was "
                "deleted, e.g. by `ImpactModel.cleanup()`); its values cannot be "
                "read. Load results (`.load()`) or write them to an explicit "
                "`output_dir` before cleaning up."
            )
        try:
            values = np.asarray(self.array.oindex[key])
            if not _refuses_missing_chunks(self.array) and (
                self.array.nchunks_initialized < self.array.nchunks
            ):
                raise FileNotFoundError(
                    f"Part of the aimz artifact {str(self.path)!r} is missing: the store "
                    f"has {self.array.nchunks_initialized} of {self.array.nchunks} chunks "
                    "(incomplete or partly deleted)."
                )
            return values
        except Exception as err:
            if type(err).__name__ == "ChunkNotFoundError":
                raise FileNotFoundError(
                    f"Part of the aimz artifact {str(self.path)!r} is missing: the "
                    f"store is incomplete or was partly deleted ({err})."
                ) from err
            raise


class DifferenceArray(BackendArray):
    """``minuend - subtrahend`` of two same-shaped Variables, computed per region.

    Example:
        >>> a = xr.Variable(("x",), np.arange(3.0))
        >>> diff = xr.Variable(("x",), lazily_indexed(DifferenceArray(a, a * 0 + 1)))
        >>> diff[1:].values.tolist()
        [0.0, 1.0]
    """

    def __init__(self, minuend: xr.Variable, subtrahend: xr.Variable) -> None:
        if minuend.shape != subtrahend.shape:
            raise ValueError(f"Shapes differ: {minuend.shape} and {subtrahend.shape}.")
        self.minuend = minuend
        self.subtrahend = subtrahend
        self.shape = minuend.shape
        self.dtype = np.result_type(minuend.dtype, subtrahend.dtype)

    def __getitem__(self, key: indexing.ExplicitIndexer) -> np.ndarray:
        return indexing.explicit_indexing_adapter(
            key, self.shape, indexing.IndexingSupport.OUTER, self._read
        )

    def _read(self, key: tuple[Any, ...]) -> np.ndarray:
        return np.asarray(self.minuend[key].values - self.subtrahend[key].values)
