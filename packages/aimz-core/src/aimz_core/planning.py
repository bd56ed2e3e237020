"""Batch-size planning: how many rows (or draws) one batch should hold."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

#: Output bytes one batch aims for: large enough to amortise dispatch and I/O,
#: small enough that a few batches in flight keep memory flat.
OUTPUT_BYTES_PER_BATCH = 32 * 2**20


def auto_batch_size(
    shapes: Mapping[str, Any],
    probe_size: int,
    total: int,
    num_devices: int,
    budget: int = OUTPUT_BYTES_PER_BATCH,
) -> int:
    """Pick a batch size from the output shapes of a probe batch.

    Args:
        shapes: ``{site: ShapeDtypeStruct}`` of a probe batch of ``probe_size``.
        probe_size: Items (rows or draws) in the probe batch.
        total: Items to stream in all.
        num_devices: The batch is a multiple of this.
        budget: Output bytes per batch.

    Returns:
        A batch size between ``num_devices`` and ``total`` (rounded to devices).

    Example:
        >>> import jax, numpy as np
        >>> s = {"y": jax.ShapeDtypeStruct((1000, 2), np.float32)}
        >>> auto_batch_size(s, 2, 10**6, 1, budget=4_000_000)
        1000
    """
    probe_bytes = sum(math.prod(s.shape) * np.dtype(s.dtype).itemsize for s in shapes.values())
    per_item = max(1, probe_bytes // max(1, probe_size))
    size = max(1, budget // per_item)
    size = min(size, total)
    size = max(num_devices, (size // num_devices) * num_devices)
    return size
