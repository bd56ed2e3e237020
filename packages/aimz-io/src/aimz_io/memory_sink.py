"""The memory sink: collect blocks in preallocated arrays, return an in-memory tree."""

from __future__ import annotations

import numpy as np
import xarray as xr
from aimz_core.streaming import Sink, StreamInfo

from aimz_io.datatree import assemble_tree, dataset_from_arrays, storage_dtype
from aimz_io.provenance import base_attrs
from aimz_io.regions import block_region


class MemoryTreeSink(Sink):
    """Keeps every site in a preallocated NumPy array; writes nothing to disk.

    ``commit`` returns a DataTree (``posterior`` first when the model has one, then
    the call's group) without ``output_dir`` / ``artifact_path`` attributes.

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
        attrs = {**info.attrs, **base_attrs(info.num_chains)}
        dims = {name: layout.dims for name, layout in info.sites.items()}
        groups = {}
        if info.posterior:
            groups["posterior"] = dataset_from_arrays(
                info.posterior,
                num_chains=info.num_chains,
                dims=info.posterior_dims,
                attrs=attrs,
            )
        groups[info.group] = dataset_from_arrays(
            arrays, num_chains=info.num_chains, dims=dims, attrs=attrs
        )
        return assemble_tree(groups, attrs)

    def abort(self) -> None:
        """Drop the partial arrays. Idempotent."""
        self._arrays = None
        self._written = {}
