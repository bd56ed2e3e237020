"""The memory sink: same tree layout as the persistent one, nothing on disk."""

from __future__ import annotations

import numpy as np
import pytest
from aimz_io.backend import make_sink
from aimz_io.memory_sink import MemoryTreeSink


@pytest.mark.parametrize("stream_axis", [0, 1])
def test_memory_tree(tmp_path, monkeypatch, make_info, feed_sink, stream_axis):
    monkeypatch.chdir(tmp_path)
    info, data = make_info(stream_axis=stream_axis, num_chains=2)
    sink = make_sink(store="memory", base_dir=tmp_path)
    assert isinstance(sink, MemoryTreeSink)
    count = -(-data["y"].shape[stream_axis] // 4)
    feed_sink(sink, info, data, order=[count - 1, *range(count - 1)])
    tree = sink.commit()
    assert list(tmp_path.iterdir()) == []
    assert tree.name == "root" and list(tree.children) == ["posterior", "posterior_predictive"]
    group = tree["posterior_predictive"]
    np.testing.assert_array_equal(group["y"].values, data["y"].reshape(2, -1, 10))
    assert group["z"].dims == ("chain", "draw", "obs", "z_dim_1")
    for node in (tree, tree["posterior"], group):
        assert "output_dir" not in node.attrs and "artifact_path" not in node.attrs
        assert node.attrs["num_chains"] == 2 and node.attrs["aimz_version"]


def test_no_posterior_group_without_samples(make_info, feed_sink):
    info, data = make_info(posterior=False, group="prior_predictive")
    sink = MemoryTreeSink()
    feed_sink(sink, info, data)
    assert list(sink.commit().children) == ["prior_predictive"]


def test_memory_sink_rejects_bad_blocks_and_gaps(make_info):
    info, data = make_info()
    sink = MemoryTreeSink()
    sink.open(info)
    with pytest.raises(ValueError, match="shape"):
        sink.write("y", 0, np.zeros((6, 4, 1), "float32"))
    sink.write("y", 0, data["y"][:, :3])  # unaligned writes are fine in memory
    sink.write("y", 3, data["y"][:, 3:])
    with pytest.raises(RuntimeError, match="site 'z' received 0 of 10"):
        sink.commit()
    sink.abort()
    with pytest.raises(RuntimeError, match="before open"):
        sink.write("y", 0, data["y"])
