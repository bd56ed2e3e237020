"""Automatic batches of a long stream hold more than glibc's 32 MiB mmap cap.

glibc serves blocks of up to 32 MiB from its heaps once it has freed one that
size, and heap blocks freed out of order stay resident: batches of 31.8 MiB left
231-302 MiB resident on a 500K-1M row stream, batches of 39.7 MiB 86-98 MiB (see
``aimz_core._sizing.OUTPUT_BYTES_PER_BATCH``).
"""

from __future__ import annotations

import numpy as np
import pytest
from aimz_core._sizing import OUTPUT_BYTES_PER_BATCH, balanced_batch_size
from aimz_core.streaming import StreamOptions, plan_call, resolve_inputs
from aimz_core.streaming._autotune import batch_output_bytes
from aimz_core.testing import fitted_linreg

GLIBC_MMAP_THRESHOLD_MAX = 32 * 2**20


@pytest.mark.parametrize("rows", [60_000, 200_000])
def test_long_streams_batch_above_the_mmap_cap(rows):
    model = fitted_linreg(num_draws=1000)
    X = np.random.default_rng(0).normal(size=(rows, 2)).astype(np.float32)
    # One site: the batch budget is one buffer. (Several sites share the budget, so
    # each of their buffers can stay under the cap.)
    options = StreamOptions(
        kind="predict",
        caller="predict",
        store="memory",
        return_datatree=False,
        progress=False,
        return_sites=("y",),
    )
    plan = plan_call(
        options, resolve_inputs(model, X, None, options), model._runner(), param_input="X"
    )
    assert plan.auto_batch and len(plan.ranges) >= 5
    assert list(plan.info.sites) == ["y"]
    assert batch_output_bytes(plan) > GLIBC_MMAP_THRESHOLD_MAX
    assert batch_output_bytes(plan) <= OUTPUT_BYTES_PER_BATCH * 1.02  # rounding to buckets


def test_evening_out_five_or_more_batches_stays_above_the_cap():
    per_row = 4_000  # 1000 float32 draws per row
    budget_rows = OUTPUT_BYTES_PER_BATCH // per_row
    for batches in range(5, 200):
        # The worst total for this many batches: one row past the previous count.
        total = (batches - 1) * budget_rows + 1
        size = balanced_batch_size(budget_rows, total, 1)
        assert size * per_row > GLIBC_MMAP_THRESHOLD_MAX, (batches, size)
