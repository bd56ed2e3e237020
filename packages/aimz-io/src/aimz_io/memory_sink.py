"""The memory sink: collect blocks in preallocated arrays, return a tree over them.

The tree is the same kind as the persistent sink's: with Dask installed its
variables are Dask arrays chunked by batch (over the arrays in memory), otherwise
NumPy arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from aimz_core.streaming import Sink, SiteLayout, StreamInfo
from aimz_core.streaming.sinks import output_attrs

from aimz_io.datatree import (
    assemble_tree,
    dataset_from_arrays,
    make_dataset,
    resolve_dims,
    split_chains,
    storage_dtype,
)
from aimz_io.lazy_arrays import chain_draw_chunks, has_dask
from aimz_io.provenance import base_attrs
from aimz_io.regions import block_region, stream_chunk


class MemoryTreeSink(Sink):
    """Keeps every site in a preallocated NumPy array; writes nothing to disk.

    ``commit`` returns a DataTree (``posterior`` first when the model has one, then
    the call's group) without ``output_dir`` / ``artifact_path`` attributes. Like
    the persistent tree, the group's variables are Dask arrays chunked by batch
    along the streamed axis when Dask is installed (NumPy arrays otherwise).

    Example:
        >>> from aimz_core.streaming import SiteLayout, StreamInfo
        >>> layout = SiteLayout("y", (2, 3), np.dtype("float32"), 1, 2, ("obs",))
        >>> sink = MemoryTreeSink()
        >>> sink.open(StreamInfo("predictions", "predict", 1, {"y": layout}))
        >>> sink.write("y", 0, np.ones((2, 2), "float32"))
        >>> sink.write("y", 2, np.ones((2, 1), "float32"))
        >>> float(sink.commit()["predictions"]["y"].sum())
        6.0
    """

    def __init__(self) -> None:
        self._info: StreamInfo | None = None
        self._arrays: dict[str, np.ndarray] | None = None
        self._written: dict[str, int] = {}

    def open(self, info: StreamInfo) -> None:
        """Preallocate one array per site."""
        self._info = info
        self._arrays = {
            name: np.empty(layout.shape, dtype=storage_dtype(layout.dtype))
            for name, layout in info.sites.items()
        }
        self._written = dict.fromkeys(info.sites, 0)

    def write(self, site: str, start: int, block: np.ndarray) -> None:
        """Copy ``block`` into its region (any order, no alignment needed)."""
        if self._arrays is None or self._info is None:
            raise RuntimeError("MemoryTreeSink.write() called before open() or after abort().")
        if site not in self._arrays:
            raise ValueError(f"Unknown site {site!r}; expected one of {list(self._arrays)}.")
        layout = self._info.sites[site]
        region, values = block_region(layout, start, block)
        self._arrays[site][region] = values
        self._written[site] += values.shape[layout.stream_axis]

    def commit(self) -> xr.DataTree:
        """Return the in-memory tree and release the sink's references."""
        if self._arrays is None or self._info is None:
            raise RuntimeError("MemoryTreeSink.commit() called before open() or after abort().")
        info, arrays = self._info, self._arrays
        missing = [
            f"site {name!r} received {self._written[name]} of "
            f"{layout.shape[layout.stream_axis]} entries along axis {layout.stream_axis}"
            for name, layout in info.sites.items()
            if self._written[name] != layout.shape[layout.stream_axis]
        ]
        if missing:
            self.abort()
            raise RuntimeError(f"Incomplete output: {'; '.join(missing)}.")
        self.abort()
        attrs = {**output_attrs(info), **base_attrs(info.num_chains)}
        groups = {}
        if info.posterior:
            groups["posterior"] = dataset_from_arrays(
                info.posterior,
                num_chains=info.num_chains,
                dims=info.posterior_dims,
                attrs=attrs,
            )
        dims = resolve_dims(
            {name: layout.shape[1:] for name, layout in info.sites.items()},
            {name: layout.dims for name, layout in info.sites.items()},
        )
        split = {
            name: batch_chunked(split_chains(arrays[name], info.num_chains), layout)
            for name, layout in info.sites.items()
        }
        groups[info.group] = make_dataset(split, dims, attrs)
        return assemble_tree(groups, attrs)

    def abort(self) -> None:
        """Drop the partial arrays. Idempotent."""
        self._arrays = None
        self._written = {}


def batch_chunked(array: np.ndarray, layout: SiteLayout) -> Any:
    """``array`` (shaped ``(chain, draw, ...)``) as a Dask array chunked by the
    batches of ``layout`` along its streamed axis; unchanged without Dask.

    Example:
        >>> from aimz_core.streaming import SiteLayout
        >>> layout = SiteLayout("y", (4, 10), np.dtype("float32"), 1, 4, ("obs",))
        >>> data = batch_chunked(np.zeros((1, 4, 10), "float32"), layout)
        >>> data.shape
        (1, 4, 10)
    """
    if not has_dask():
        return array
    import dask.array as da

    flat = [max(1, size) for size in layout.shape]
    flat[layout.stream_axis] = stream_chunk(layout)
    # `name=False`: a random name, instead of hashing the whole array.
    return da.from_array(array, chunks=chain_draw_chunks(array.shape, tuple(flat)), name=False)
