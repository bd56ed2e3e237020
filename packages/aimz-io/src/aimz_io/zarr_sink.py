"""The persistent sink: stream blocks into one Zarr v3 group per call.

``open`` creates the per-call directory and preallocates one array per site,
chunked along the stream axis by the batch length (full extent elsewhere). Each
``write`` hands its block to a :class:`~aimz_io.writer_pool.WriterPool` and returns:
compression and file IO run on background threads while the caller computes the
next batch. Blocks are chunk-aligned, so writers never touch the same chunk and
need no locks. ``open`` writes the group attributes with the group and builds the
lazy result tree from the metadata (the engine opens the sink after dispatching
the first batch, so this overlaps computation). ``commit`` waits for the writers
and then writes ``aimz_complete``: after the last batch computes, what is left is
its chunk write plus one small metadata write.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr
from aimz_core.streaming import Sink, SiteLayout, StreamInfo
from aimz_core.streaming.sinks import output_attrs
from zarr.codecs import BloscCodec

from aimz_io.artifact import COMPLETE_ATTR, PLAN_ATTR, create_call_dir, tree_from_store
from aimz_io.datatree import DRAW, resolve_dims, storage_dtype
from aimz_io.provenance import base_attrs
from aimz_io.regions import block_region, stream_chunk
from aimz_io.writer_pool import WriterPool

#: Blocks in flight per site (queued or being written) before ``write`` waits.
BLOCKS_IN_FLIGHT = 1
#: Upper bound on writer threads.
MAX_WRITERS = 4
#: Blocks smaller than this are gathered into one chunk of about this size before
#: they are written: each chunk write costs ~5-7 ms of CPU in Zarr's write path
#: however small the chunk (measured: 49 chunks of 160 KB cost the MLP benchmark
#: 0.3 CPU s), so tiny batches are written about 1 MiB at a time.
COALESCE_BYTES = 2**20


def choose_compressors(dtype: np.dtype) -> tuple[BloscCodec, ...]:
    """Compressor for a stored array, chosen by dtype: compress only where it pays.

    Float draws are noise in their low bits: Blosc LZ4 with bit shuffling shrinks
    them only 1.07-1.26x while costing ~30% of the compute floor's CPU in the
    I/O-bound benchmark (110-290 ms per 32 MiB chunk), so floats are stored raw.
    Integer and boolean draws (counts, classes) shrink ~7.7x at ~790 MB/s with
    LZ4 + bit shuffle, so they are compressed.

    Example:
        >>> choose_compressors(np.dtype("float32"))
        ()
        >>> choose_compressors(np.dtype("int32"))[0].to_dict()["configuration"]["cname"]
        'lz4'
    """
    if np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.complexfloating):
        return ()
    return (BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"),)


def fill_value(dtype: np.dtype) -> Any:
    """NaN for floats (unwritten data never passes for zeros), else 0.

    Example:
        >>> fill_value(np.dtype("float32"))
        nan
    """
    return float("nan") if np.issubdtype(dtype, np.floating) else 0


class ZarrSink(Sink):
    """Writes the blocks of one streamed call to ``<base_dir>/<timestamp>_<caller>/``.

    Once ``write`` or ``commit`` raises, the sink has aborted: the per-call
    directory is gone. ``abort`` is idempotent, safe before ``open``, and a no-op
    after a successful ``commit`` (the artifact then belongs to the caller).

    Blocks smaller than ``coalesce_bytes`` are copied into a chunk buffer of several
    blocks (along the stream axis) and written when the buffer is full; larger
    blocks are written as they come, one chunk each.

    Args:
        base_dir: Directory that holds the per-call directories.
        num_writers: Writer threads; default ``min(cpu_count, 4)``.
        coalesce_bytes: Target size of a chunk made of small blocks (``0``: one
            chunk per block).
        fingerprint: The call's plan fingerprint (or a function that returns it,
            called once at ``open``), recorded as ``aimz_plan`` so that
            ``resume=True`` can adopt the store if the process is killed. The core
            passes :meth:`~aimz_core.streaming.StreamPlan.fingerprint`.

    Example:
        >>> import tempfile
        >>> from aimz_core.streaming import SiteLayout, StreamInfo
        >>> layout = SiteLayout("y", (4, 3), np.dtype("float32"), 1, 2, ("obs",))
        >>> sink = ZarrSink(Path(tempfile.mkdtemp()))
        >>> sink.open(StreamInfo("predictions", "predict", 1, {"y": layout}))
        >>> sink.write("y", 2, np.ones((4, 1), "float32"))
        >>> sink.write("y", 0, np.zeros((4, 2), "float32"))
        >>> tree = sink.commit()
        >>> float(tree["predictions"]["y"].sum())
        4.0
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        num_writers: int | None = None,
        coalesce_bytes: int = COALESCE_BYTES,
        fingerprint: str | Callable[[], str] | None = None,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.fingerprint = fingerprint
        self.coalesce_bytes = int(coalesce_bytes)
        self._chunk_len: dict[str, int] = {}
        self._buffers: dict[str, dict[int, list[Any]]] = {}
        self.path: Path | None = None
        self._num_writers = num_writers or min(os.cpu_count() or 1, MAX_WRITERS)
        self._info: StreamInfo | None = None
        self._arrays: dict[str, Any] = {}
        self._written: dict[str, int] = {}
        self._pool: WriterPool | None = None
        self._group: Any = None
        self._tree: xr.DataTree | None = None
        self._state = "new"

    def open(self, info: StreamInfo) -> None:
        """Create the per-call directory and preallocate every site's array."""
        if self._state != "new":
            raise RuntimeError(f"ZarrSink.open() called on a sink that is {self._state}.")
        self._state = "open"
        self._info = info
        try:
            self.path = create_call_dir(self.base_dir, info.caller).resolve()
            attrs = store_attrs(info)
            fingerprint = self.fingerprint() if callable(self.fingerprint) else self.fingerprint
            if fingerprint is not None:
                # A killed process leaves the store without `aimz_complete`: the
                # fingerprint lets `resume=True` adopt it and `list_incomplete`
                # name its call.
                attrs[PLAN_ATTR] = fingerprint
            self._group = zarr.open_group(
                zarr.storage.LocalStore(self.path),
                mode="w",
                zarr_format=3,
                attributes=attrs,
            )
            self._chunk_len = {
                name: coalesced_chunk(layout, self.coalesce_bytes)
                for name, layout in info.sites.items()
            }
            self._arrays = create_site_arrays(self._group, info, self._chunk_len)
            self._written = dict.fromkeys(self._arrays, 0)
            self._buffers = {name: {} for name in self._arrays}
            self._pool = WriterPool(
                num_threads=self._num_writers,
                max_bytes=BLOCKS_IN_FLIGHT
                * sum(
                    _block_bytes(layout, self._chunk_len[name])
                    for name, layout in info.sites.items()
                ),
            )
            # The result tree needs only the metadata written above; it is handed
            # out by `commit` once every chunk is written and the store is marked.
            self._tree = tree_from_store(
                zarr.storage.LocalStore(self.path, read_only=True),
                self.path,
                attrs,
                list(self._arrays),
                posterior=info.posterior,
                posterior_dims=info.posterior_dims,
            )
        except BaseException:
            self.abort()
            raise

    def write(self, site: str, start: int, block: np.ndarray) -> None:
        """Queue ``block`` for writing at ``start``; returns before it is written.

        Raises:
            ValueError: unknown site, or a block of the wrong shape / misaligned.
            BaseException: the first error of a background write.
        """
        try:
            self._require_open("write")
            if site not in self._arrays:
                raise ValueError(f"Unknown site {site!r}; expected one of {list(self._arrays)}.")
            layout = self._info.sites[site]
            # Checked here, converted (only to another dtype) on the writer thread.
            region, values = block_region(layout, start, block, aligned=True, convert=False)
            length = values.shape[layout.stream_axis]
            if self._chunk_len[site] > stream_chunk(layout):
                self._gather(site, start, values)
            else:
                self._submit(site, region, values)
            self._written[site] += length
        except BaseException:
            self.abort()
            raise

    def _submit(self, site: str, region: tuple[slice, ...], values: np.ndarray) -> None:
        array = self._arrays[site]
        dtype = storage_dtype(self._info.sites[site].dtype)

        def job() -> None:
            # Zarr copies a trimmed (strided) block once as it encodes the chunk, and
            # a partial last chunk once into a whole one; a contiguous copy made here
            # would come on top (a second batch of memory at the call's peak).
            array[region] = values if values.dtype == dtype else values.astype(dtype)

        self._pool.submit(job, values.nbytes)

    def _gather(self, site: str, start: int, values: np.ndarray) -> None:
        """Copy a small block into its chunk's buffer; write the chunk once it is full."""
        layout = self._info.sites[site]
        axis, total = layout.stream_axis, layout.shape[layout.stream_axis]
        clen = self._chunk_len[site]
        index = start // clen
        lo, hi = index * clen, min((index + 1) * clen, total)
        entry = self._buffers[site].get(index)
        if entry is None:
            shape = list(layout.shape)
            shape[axis] = hi - lo
            entry = [np.empty(shape, dtype=storage_dtype(layout.dtype)), 0]
            self._buffers[site][index] = entry
        length = values.shape[axis]
        target = [slice(None)] * values.ndim
        target[axis] = slice(start - lo, start - lo + length)
        entry[0][tuple(target)] = values
        entry[1] += length
        if entry[1] == hi - lo:
            del self._buffers[site][index]
            region = [slice(None)] * values.ndim
            region[axis] = slice(lo, hi)
            self._submit(site, tuple(region), entry[0])

    def commit(self) -> xr.DataTree:
        """Wait for the writers, mark the store complete and return the lazy tree."""
        try:
            self._require_open("commit")
            self._pool.join()
            self._pool.close()
            self._check_complete()
            self._group.attrs.update({COMPLETE_ATTR: True})
        except BaseException:
            self.abort()
            raise
        self._state = "committed"
        tree, self._tree = self._tree, None
        return tree

    def abort(self) -> None:
        """Stop the writers and delete the per-call directory. Idempotent."""
        if self._state == "committed":
            return
        self._state = "aborted"
        if self._pool is not None:
            self._pool.close()
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
        self._arrays = {}
        self._buffers = {}
        self._group = None
        self._tree = None

    def _require_open(self, method: str) -> None:
        if self._state != "open":
            raise RuntimeError(f"ZarrSink.{method}() called on a sink that is {self._state}.")

    def _check_complete(self) -> None:
        for name, layout in self._info.sites.items():
            size = layout.shape[layout.stream_axis]
            if self._written[name] != size:
                raise RuntimeError(
                    f"Site {name!r} received {self._written[name]} of {size} entries "
                    f"along axis {layout.stream_axis}; the output would be incomplete."
                )


def store_attrs(info: StreamInfo) -> dict[str, Any]:
    """Group attributes of a call's store (all but the completion marker): the
    call's attributes (pairing and posterior digest, see
    :func:`~aimz_core.streaming.sinks.output_attrs`), provenance, group and caller."""
    return {
        **output_attrs(info),
        **base_attrs(info.num_chains),
        "group": info.group,
        "caller": info.caller,
    }


def coalesced_chunk(layout: SiteLayout, coalesce_bytes: int = COALESCE_BYTES) -> int:
    """Chunk length along the stream axis: a whole number of blocks of about
    ``coalesce_bytes`` (one block when a block is already that large).

    Example:
        >>> layout = SiteLayout("y", (10, 200_000), np.dtype("int32"), 1, 4096, ("obs",))
        >>> coalesced_chunk(layout, 2**20), coalesced_chunk(layout, 0)
        (24576, 4096)
    """
    block = stream_chunk(layout)
    blocks = max(1, int(coalesce_bytes) // max(1, _block_bytes(layout, block)))
    return min(block * blocks, layout.shape[layout.stream_axis])


def create_site_arrays(
    group: Any, info: StreamInfo, chunk_lengths: dict[str, int] | None = None
) -> dict[str, Any]:
    """Preallocate one array per site of ``info`` in ``group``, chunked by batch.

    Used by :class:`ZarrSink` and by distributed runs (:mod:`aimz_io.distributed`).
    ``chunk_lengths`` overrides the chunk length along the stream axis per site.
    """
    dims = resolve_dims(
        {name: layout.shape[1:] for name, layout in info.sites.items()},
        {name: layout.dims for name, layout in info.sites.items()},
    )
    lengths = chunk_lengths or {}
    return {
        name: _create_array(group, layout, dims[name], lengths.get(name))
        for name, layout in info.sites.items()
    }


def _block_bytes(layout: SiteLayout, length: int | None = None) -> int:
    shape = list(layout.shape)
    shape[layout.stream_axis] = stream_chunk(layout) if length is None else length
    return int(np.prod(shape)) * storage_dtype(layout.dtype).itemsize


def _create_array(
    group: Any, layout: SiteLayout, dims: tuple[str, ...], length: int | None = None
) -> Any:
    dtype = storage_dtype(layout.dtype)
    chunks = [max(1, size) for size in layout.shape]
    chunks[layout.stream_axis] = stream_chunk(layout) if length is None else length
    return group.create_array(
        layout.name,
        shape=tuple(layout.shape),
        dtype=dtype,
        chunks=tuple(chunks),
        compressors=choose_compressors(dtype),
        fill_value=fill_value(dtype),
        dimension_names=(DRAW, *dims),
        config={"write_empty_chunks": True},
    )
