"""ArviZ 1.x reads aimz trees as they are."""

from __future__ import annotations

import numpy as np
import pytest
from aimz_io.backend import tree_from_arrays
from aimz_io.zarr_sink import ZarrSink

arviz_stats = pytest.importorskip("arviz_stats")


def test_summary_of_in_memory_tree(rng):
    tree = tree_from_arrays(
        {"posterior": {"w": rng.normal(size=(200, 3))}, "posterior_predictive": {}},
        num_chains=2,
    )
    table = arviz_stats.summary(tree, group="posterior")
    assert len(table) == 3 and "mean" in table.columns


def test_summary_of_persistent_tree(tmp_path, make_info, feed_sink):
    info, data = make_info(draws=40, num_chains=2)
    sink = ZarrSink(tmp_path)
    feed_sink(sink, info, data)
    tree = sink.commit()
    assert len(arviz_stats.summary(tree, group="posterior")) == 3  # posterior is in memory
    # ArviZ does not compute on Dask arrays: load the (lazy) predictive group first.
    table = arviz_stats.summary(tree.load(), group="posterior_predictive", var_names=["y"])
    np.testing.assert_allclose(
        table["mean"].to_numpy(dtype=float), data["y"].mean(axis=0), atol=0.01
    )
