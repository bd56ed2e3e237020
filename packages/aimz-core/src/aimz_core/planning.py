"""Former home of the batch-size heuristics (kept as an alias); see
:mod:`aimz_core._sizing`."""

from aimz_core._sizing import (
    CACHE_BYTES_PER_BLOCK,
    LIVE_FACTOR,
    MAX_DRAWS_PER_BLOCK,
    MIN_DRAWS_PER_BLOCK,
    OUTPUT_BYTES_PER_BATCH,
    TEMP_BYTES_PER_BLOCK,
    auto_batch_size,
    balanced_batch_size,
    block_for_draw_bytes,
    draw_block_size,
    per_draw_bytes,
    rows_for_intermediates,
)

__all__ = [
    "CACHE_BYTES_PER_BLOCK",
    "LIVE_FACTOR",
    "MAX_DRAWS_PER_BLOCK",
    "MIN_DRAWS_PER_BLOCK",
    "OUTPUT_BYTES_PER_BATCH",
    "TEMP_BYTES_PER_BLOCK",
    "auto_batch_size",
    "balanced_batch_size",
    "block_for_draw_bytes",
    "draw_block_size",
    "per_draw_bytes",
    "rows_for_intermediates",
]
