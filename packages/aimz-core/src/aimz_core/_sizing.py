"""Batch-size planning: how many rows (or draws) one batch should hold."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from aimz_core._locks import TRACE_LOCK

#: Output bytes one batch aims for: large enough to amortise dispatch and I/O,
#: small enough that a few batches in flight keep memory flat. Measured on the
#: benchmark MLP (1000 draws x 10K rows, `lax.map` over draws, 2 CPU cores, one
#: process, alternating): 2 batches of 5,000 rows (19 MiB of output each) took 15.1
#: CPU-s, 3 batches of 3,334 (13 MiB) 17.2: every launch and every step of the loop
#: over draws has a fixed cost, so larger batches pay until memory says stop.
#:
#: It is 40 MiB rather than 32 because of glibc's allocator: a freed block of up to
#: 32 MiB that was mapped on its own raises the size below which later blocks come
#: from the heap, and heap blocks freed out of order stay resident. Batch buffers
#: just under 32 MiB therefore piled up, and those over it are unmapped when freed.
#: Linear model, 1000 draws, streamed to Zarr, fresh processes, peak RSS increase:
#: 31.8 MiB batches 231-298 MiB at 500K rows and 302 at 1M; 33.6 MiB batches 78-81
#: at 500K; 39.7 MiB batches 86 / 92-98 / 98 MiB at 125K / 500K / 1M rows.
#: Evened out over 5 or more batches a batch keeps over 32 MiB (5/6 of 40).
OUTPUT_BYTES_PER_BATCH = 40 * 2**20


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


def balanced_batch_size(size: int, total: int, num_devices: int) -> int:
    """Even out batches so the last one is not mostly padding.

    Keeps the number of batches ``ceil(total / size)`` and spreads ``total`` over
    them (rounded up to a multiple of ``num_devices``).

    Example:
        >>> balanced_batch_size(838, 1000, 1)
        500
    """
    batches = math.ceil(total / max(1, size))
    even = math.ceil(total / batches)
    return max(num_devices, math.ceil(even / num_devices) * num_devices)


#: Bytes of intermediate values one vectorised block of draws may allocate.
TEMP_BYTES_PER_BLOCK = 32 * 2**20
#: Working set one block aims for: small enough to stay in the CPU caches. Measured
#: on 1000 draws x 100K rows (bench.blocksweep): the linear model runs 1.8x faster
#: with 16 draws per block (~1 MiB) than with 503 (~32 MiB), the observation-level
#: latent model 1.7x faster with 2-4 draws (~3-6 MiB) than with 20.
CACHE_BYTES_PER_BLOCK = 4 * 2**20
#: Rows per batch leave room for at least this many draws per block within the
#: memory budget (:func:`rows_for_intermediates`). The block itself follows the
#: cache budget down to single draws: the benchmark MLP (about 2 MB per draw at
#: 3,584 rows, 1000 x 10K on an idle 2-core machine) took 12.8 s with blocks of 4,
#: 11.3 s with 2 and 10.7 s with single draws (`python -m bench.blocksweep`), so
#: room for more draws than 2 only made its batches smaller (see
#: :data:`OUTPUT_BYTES_PER_BATCH`).
MIN_DRAWS_PER_BLOCK = 2
#: Larger blocks stopped paying in every measured case.
MAX_DRAWS_PER_BLOCK = 16
#: Intermediates assumed alive at once, relative to the largest one.
LIVE_FACTOR = 4


def _largest_value_bytes(jaxpr: Any) -> int:
    from jax.extend.core import jaxprs_in_params

    largest = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            aval = var.aval
            shape = getattr(aval, "shape", None)
            dtype = getattr(aval, "dtype", None)
            if shape is None or dtype is None:
                continue
            try:
                itemsize = np.dtype(dtype).itemsize
            except TypeError:  # PRNG key dtypes
                itemsize = 8
            largest = max(largest, math.prod(shape) * itemsize)
        for sub in jaxprs_in_params(eqn.params):
            largest = max(largest, _largest_value_bytes(sub))
    return largest


def per_draw_bytes(one_draw: Any, args: tuple) -> int:
    """Estimated live intermediate bytes of one draw (``LIVE_FACTOR`` x the largest).

    Example:
        >>> import jax.numpy as jnp
        >>> per_draw_bytes(lambda x: {"y": x * 2.0}, (jnp.ones(1000),))
        16000
    """
    with TRACE_LOCK:  # traces the kernel under NumPyro handlers
        closed = jax.make_jaxpr(one_draw)(*args)
    return max(1, LIVE_FACTOR * _largest_value_bytes(closed.jaxpr))


def rows_for_intermediates(
    bytes_small: int,
    rows_small: int,
    bytes_big: int,
    rows_big: int,
    budget: int = TEMP_BYTES_PER_BLOCK,
) -> int | None:
    """Most rows per batch that let ``MIN_DRAWS_PER_BLOCK`` draws fit ``budget``.

    Per-draw intermediates measured at two row counts give the part that grows with
    the rows (weights and other row-independent values cancel out). ``None`` when
    nothing grows with the rows.

    Example:
        >>> rows_for_intermediates(256_000 + 2_048 * 100, 100, 256_000 + 2_048 * 1100, 1100)
        8192
    """
    if rows_big <= rows_small:
        return None
    per_row = (bytes_big - bytes_small) / (rows_big - rows_small)
    if per_row <= 0:
        return None
    return max(1, int(budget // MIN_DRAWS_PER_BLOCK // per_row))


def draw_block_size(
    one_draw: Any, args: tuple, num_draws: int, budget: int = TEMP_BYTES_PER_BLOCK
) -> int | None:
    """How many draws to vectorise at once.

    Traces ``one_draw(*args)`` (a single draw, no compilation) and finds its largest
    intermediate value. A block holds as many draws as fit in
    :data:`CACHE_BYTES_PER_BLOCK` (1 to ``MAX_DRAWS_PER_BLOCK``) and never more than
    fit in ``budget``; when every draw together fits in :data:`CACHE_BYTES_PER_BLOCK`
    they all run at once (a few rows per request: one ``vmap`` instead of a loop of
    blocks). Returns ``None``
    when one block covers every draw (plain ``vmap``), otherwise the block size for
    ``jax.lax.map(..., batch_size=block)``.

    Example:
        >>> import jax.numpy as jnp
        >>> f = lambda x: {"y": jnp.tanh(x[:, None] * jnp.ones(1000)).sum(1)}
        >>> draw_block_size(f, (jnp.ones(10_000),), 1000, budget=2**28)
        1
        >>> draw_block_size(f, (jnp.ones(10),), 1000)
        10
        >>> draw_block_size(f, (jnp.ones(10),), 8) is None
        True
    """
    return block_for_draw_bytes(per_draw_bytes(one_draw, args), num_draws, budget)


def block_for_draw_bytes(
    per_draw: int, num_draws: int, budget: int = TEMP_BYTES_PER_BLOCK
) -> int | None:
    """Draws per block for draws of ``per_draw`` intermediate bytes (see
    :func:`draw_block_size`); ``None`` when one block covers every draw.

    Example:
        >>> block_for_draw_bytes(2**20, 1000)
        4
        >>> block_for_draw_bytes(10_000, 1000)  # 16 fit the cache; 10 divides 1000
        10
        >>> block_for_draw_bytes(1_000, 1000) is None  # all draws fit in the cache
        True
    """
    per_draw = max(1, int(per_draw))
    if per_draw * num_draws <= CACHE_BYTES_PER_BLOCK:  # every draw at once stays in cache
        return None
    for_cache = min(MAX_DRAWS_PER_BLOCK, max(1, CACHE_BYTES_PER_BLOCK // per_draw))
    block = max(1, min(for_cache, budget // per_draw))
    return None if block >= num_draws else dividing_block(block, num_draws)


def dividing_block(block: int, num_draws: int) -> int:
    """``block``, or the largest divisor of ``num_draws`` between half of it and it.

    ``lax.map(batch_size=block)`` over a count that ``block`` does not divide runs
    the remainder separately and concatenates: XLA then keeps the blocks' whole
    output as a temporary and copies it into the result. On the benchmark linear
    model (1000 draws x 8,334 rows, 32 MiB of output) blocks of 16 cost 34 MiB of
    temporaries, blocks of 8 or 20 1-3 MiB. When no divisor is within a factor of
    two (a prime number of draws), ``block`` is kept.

    Example:
        >>> dividing_block(16, 1000), dividing_block(16, 1024), dividing_block(16, 997)
        (10, 16, 16)
    """
    for candidate in range(block, (block + 1) // 2 - 1, -1):
        if candidate >= 1 and num_draws % candidate == 0:
            return candidate
    return block


#: Smallest automatic batch of rows: smaller inputs are padded up to it.
MIN_BUCKET_ROWS = 8


def row_buckets_enabled() -> bool:
    """Whether automatic row batches are rounded up to buckets (default; turn it off
    with ``AIMZ_ROW_BUCKETS=0``).

    Padding rows would change what a kernel that computes across rows (a mean over
    rows, a scan) sees; such kernels are detected before planning and stream draws
    instead (:mod:`aimz_core.streaming.axis`), so they never see padding.

    Example:
        >>> isinstance(row_buckets_enabled(), bool)
        True
    """
    return os.environ.get("AIMZ_ROW_BUCKETS", "1").strip().lower() not in ("0", "false", "no")


#: Automatic batches of more rows than this are rounded up in eighths of an octave
#: (at most 12.5% padding) instead of to a power of two (up to 50%): padding is
#: computed like real rows.
FINE_BUCKET_ROWS = 256
#: Steps per octave of the buckets of a call that fills one batch (requests of many
#: sizes share a few programs) and of a call of several full batches (a bulk job
#: pays the padding in every batch, the compile once: 10,000 rows in 3 batches of
#: 3,584 rows computed 7.5% padding, of 3,360 rows 0.8%).
BUCKET_STEPS = 8
BULK_BUCKET_STEPS = 64


def row_bucket(size: int, steps: int = BUCKET_STEPS) -> int:
    """The bucket an automatic batch of ``size`` rows is padded to: a power of two
    (at least :data:`MIN_BUCKET_ROWS`) up to :data:`FINE_BUCKET_ROWS`, above it the
    next multiple of ``1 / steps`` of the power of two below ``size`` (never a step
    under :data:`MIN_BUCKET_ROWS`).

    Example:
        >>> [row_bucket(n) for n in (5, 9, 200, 257, 500, 3334, 5000)]
        [8, 16, 256, 288, 512, 3584, 5120]
        >>> [row_bucket(n, 64) for n in (500, 3334, 5000)]
        [504, 3360, 5056]
    """
    if size <= FINE_BUCKET_ROWS:
        return max(MIN_BUCKET_ROWS, 1 << max(0, size - 1).bit_length())
    octave = 1 << (size.bit_length() - 1)  # the power of two below (or at) size
    step = max(MIN_BUCKET_ROWS, octave // steps)
    return math.ceil(size / step) * step


def bucket_batch_size(size: int, total: int, cap: int, num_devices: int) -> int:
    """Round an automatic batch of rows up to its :func:`row_bucket`, so that inputs
    of many sizes share a few compiled programs; rows beyond the input are padding.

    A call of one batch is rounded in :data:`BUCKET_STEPS` per octave, a call of
    several in :data:`BULK_BUCKET_STEPS`. The bucket is used only when it stays
    within ``cap`` (the rows the memory budget allows) and keeps the number of
    batches ``ceil(total / size)``, so the batch numbering (and the per-batch keys)
    is that of ``size``. Otherwise ``size`` is returned unchanged.

    Example:
        >>> bucket_batch_size(5, 5, 10_000, 1), bucket_batch_size(9, 9, 10_000, 1)
        (8, 16)
        >>> bucket_batch_size(500, 500, 10_000, 1)
        512
        >>> bucket_batch_size(3334, 10_000, 10_000, 1)  # 3 batches of 3360, not 3584
        3360
        >>> bucket_batch_size(5, 15, 10_000, 1)  # 8 would make 2 batches, not 3
        5
        >>> bucket_batch_size(600, 600, 600, 1)  # over the memory cap
        600
    """
    batches = math.ceil(total / max(1, size))
    steps = BUCKET_STEPS if batches == 1 else BULK_BUCKET_STEPS
    bucket = math.ceil(row_bucket(size, steps) / num_devices) * num_devices
    same_batches = math.ceil(total / bucket) == batches
    return bucket if bucket <= max(cap, size) and same_batches else size
