"""Where a streamed block lands: checks shared by the persistent and memory sinks."""

from __future__ import annotations

import numpy as np
from aimz_core.streaming import SiteLayout

from aimz_io.datatree import storage_dtype


def stream_chunk(layout: SiteLayout) -> int:
    """Chunk length along the stream axis (at least 1, at most the axis size).

    Example:
        >>> import numpy as np
        >>> stream_chunk(SiteLayout("y", (4, 10), np.dtype("f4"), 1, 32, ("obs",)))
        10
    """
    return max(1, min(int(layout.chunk), layout.shape[layout.stream_axis]))


def block_region(
    layout: SiteLayout,
    start: int,
    block: np.ndarray,
    *,
    aligned: bool = False,
    convert: bool = True,
) -> tuple[tuple[slice, ...], np.ndarray]:
    """Validate ``block`` for offset ``start`` and return its region and values.

    Args:
        layout: The site's full layout.
        start: Offset of the block along ``layout.stream_axis``.
        block: The values (any array-like; cast to the storage dtype).
        aligned: Also require chunk alignment: ``start`` a multiple of the chunk
            and the block ending on a chunk boundary or at the end of the axis.
            Aligned writes touch whole chunks only, so they can run in parallel.
        convert: Return the block as a C-contiguous array in the storage dtype.
            With ``False`` it is returned as given (checked, not copied), so a
            background writer can do the conversion off the caller's thread.

    Returns:
        ``(index, values)``: the region as a tuple of slices and the block.

    Raises:
        ValueError: wrong shape, out of bounds, or (``aligned``) misaligned.

    Example:
        >>> layout = SiteLayout("y", (2, 5), np.dtype("f4"), 1, 2, ("obs",))
        >>> block_region(layout, 4, np.ones((2, 1)))[0]
        (slice(None, None, None), slice(4, 5, None))
    """
    values = np.asarray(block)
    target = storage_dtype(layout.dtype)
    if values.dtype.name != "bfloat16" and not np.can_cast(values.dtype, target, "same_kind"):
        raise ValueError(
            f"Block for site {layout.name!r} has dtype {values.dtype}, which cannot be "
            f"stored as {target}."
        )
    if convert:
        values = np.ascontiguousarray(values, dtype=target)
    axis = layout.stream_axis
    size = layout.shape[axis]
    length = values.shape[axis] if values.ndim > axis else -1
    expected = list(layout.shape)
    expected[axis] = length
    if values.ndim != len(layout.shape) or values.shape != tuple(expected):
        raise ValueError(
            f"Block for site {layout.name!r} has shape {values.shape}; expected "
            f"{tuple(layout.shape)} with any length along axis {axis}."
        )
    stop = start + length
    if start < 0 or stop > size or isinstance(start, bool):
        raise ValueError(
            f"Block for site {layout.name!r} covers [{start}, {stop}) along axis "
            f"{axis}, outside [0, {size})."
        )
    chunk = stream_chunk(layout)
    if aligned and (start % chunk or (stop % chunk and stop != size)):
        raise ValueError(
            f"Block for site {layout.name!r} covers [{start}, {stop}) along axis "
            f"{axis}, which is not aligned to the chunk length {chunk}."
        )
    index = [slice(None)] * len(layout.shape)
    index[axis] = slice(start, stop)
    return tuple(index), values
