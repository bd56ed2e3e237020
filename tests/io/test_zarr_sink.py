"""The persistent sink: layout on disk, lazy read back, failures leave nothing."""

from __future__ import annotations

import os
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from aimz_core.exceptions import OutputWarning
from aimz_core.streaming import SiteLayout, StreamInfo
from aimz_io import artifact, lazy_arrays
from aimz_io.backend import make_sink, open_tree
from aimz_io.zarr_sink import ZarrSink


def chains(values: np.ndarray, num_chains: int) -> np.ndarray:
    return values.reshape(num_chains, -1, *values.shape[1:])


@pytest.mark.parametrize("stream_axis", [0, 1], ids=["draw-streaming", "obs-streaming"])
@pytest.mark.parametrize("num_chains", [1, 2])
def test_round_trip(tmp_path, make_info, feed_sink, stream_axis, num_chains):
    info, data = make_info(stream_axis=stream_axis, num_chains=num_chains, chunk=4)
    sink = make_sink(store="persistent", base_dir=tmp_path)
    count = -(-data["y"].shape[stream_axis] // 4)
    feed_sink(sink, info, data, order=reversed(range(count)))  # out of order, last partial
    tree = sink.commit()

    assert tree.name == "root"
    assert list(tree.children) == ["posterior", "posterior_predictive"]
    group = tree["posterior_predictive"]
    assert group["y"].chunks is not None  # lazy (Dask-backed in the dev env)
    np.testing.assert_array_equal(group["y"].values, chains(data["y"], num_chains))
    np.testing.assert_array_equal(group["z"].values, chains(data["z"], num_chains))
    assert group["y"].dims == ("chain", "draw", "obs")
    assert group["z"].dims == ("chain", "draw", "obs", "z_dim_1")
    assert group["y"].dtype == np.float32 and group["z"].dtype == np.int32
    assert group.sizes["chain"] == num_chains
    for dim, size in group.sizes.items():
        np.testing.assert_array_equal(group[dim].values, np.arange(size))
    np.testing.assert_array_equal(
        tree["posterior"]["w"].values, chains(info.posterior["w"], num_chains)
    )
    assert tree["posterior"]["w"].dims == ("chain", "draw", "feature")


def test_directory_name_and_store_layout(tmp_path, make_info, feed_sink):
    info, data = make_info(chunk=4)
    # created with parents; one chunk per block
    sink = ZarrSink(tmp_path / "new" / "base", coalesce_bytes=0)
    feed_sink(sink, info, data)
    sink.commit()
    (path,) = (tmp_path / "new" / "base").iterdir()
    assert path == sink.path
    stamp, caller = path.name.split("_", 1)
    assert caller == "predict"
    assert datetime.strptime(stamp, "%Y%m%dT%H%M%S%fZ")

    group = zarr.open_group(path, mode="r")
    assert group.metadata.zarr_format == 3
    assert sorted(group.array_keys()) == ["y", "z"]
    y = group["y"]
    assert y.shape == (6, 10)
    assert y.chunks == (6, 4)  # chunked along the stream axis, full extent elsewhere
    assert tuple(y.metadata.dimension_names) == ("draw", "obs")
    assert tuple(group["z"].metadata.dimension_names) == ("draw", "obs", "z_dim_1")
    attrs = dict(group.attrs)
    assert attrs["aimz_complete"] is True
    assert list(attrs)[-1] == "aimz_complete"
    assert attrs["num_chains"] == 1 and attrs["group"] == "posterior_predictive"
    assert {"created_at", "aimz_version"} <= set(attrs)


def test_draw_streaming_chunks(tmp_path, make_info, feed_sink):
    info, data = make_info(stream_axis=0, draws=10, chunk=4)
    sink = ZarrSink(tmp_path, coalesce_bytes=0)
    feed_sink(sink, info, data)
    tree = sink.commit()
    assert zarr.open_group(sink.path, mode="r")["y"].chunks == (4, 10)
    np.testing.assert_array_equal(tree["posterior_predictive"]["y"].values[0], data["y"])


@pytest.mark.parametrize("stream_axis", [0, 1], ids=["draw-streaming", "obs-streaming"])
def test_small_blocks_are_written_a_few_per_chunk(tmp_path, make_info, feed_sink, stream_axis):
    info, data = make_info(stream_axis=stream_axis, draws=12, obs=14, chunk=2)
    # blocks of 2 entries; a chunk gathers 3 of them (the last chunk: 1 or 2 blocks)
    block_bytes = data["y"].nbytes // data["y"].shape[stream_axis] * 2
    sink = ZarrSink(tmp_path, coalesce_bytes=3 * block_bytes)
    count = -(-data["y"].shape[stream_axis] // 2)
    feed_sink(sink, info, data, order=reversed(range(count)))  # out of order, last partial
    tree = sink.commit()
    y = zarr.open_group(sink.path, mode="r")["y"]
    assert y.chunks[stream_axis] == 6
    written = [p for p in (sink.path / "y" / "c").rglob("*") if p.is_file()]
    assert len(written) == -(-y.shape[stream_axis] // 6)  # one file per chunk
    np.testing.assert_array_equal(tree["posterior_predictive"]["y"].values[0], data["y"])
    np.testing.assert_array_equal(tree["posterior_predictive"]["z"].values[0], data["z"])


def test_plain_xarray_reopens_artifact(tmp_path, make_info, feed_sink):
    info, data = make_info(num_chains=2)
    sink = ZarrSink(tmp_path)
    feed_sink(sink, info, data)
    sink.commit()
    ds = xr.open_zarr(sink.path, consolidated=False)
    assert ds["y"].dims == ("draw", "obs")
    np.testing.assert_array_equal(ds["y"].values, data["y"])
    np.testing.assert_array_equal(ds["z"].values, data["z"])
    assert ds.attrs["num_chains"] == 2 and ds.attrs["note"] == "test"
    tree = xr.open_datatree(sink.path, engine="zarr", consolidated=False)
    np.testing.assert_array_equal(tree["y"].values, data["y"])


def test_zero_values_are_not_masked(tmp_path, make_info, feed_sink):
    info, data = make_info()
    data["y"][:] = 0.0
    sink = ZarrSink(tmp_path)
    feed_sink(sink, info, data)
    tree = sink.commit()
    assert (tree["posterior_predictive"]["y"].values == 0).all()
    assert (xr.open_zarr(sink.path, consolidated=False)["y"].values == 0).all()


def test_attrs_on_root_and_groups(tmp_path, make_info, feed_sink):
    info, data = make_info()
    sink = ZarrSink(tmp_path)
    feed_sink(sink, info, data)
    tree = sink.commit()
    for node in (tree, tree["posterior"], tree["posterior_predictive"]):
        assert node.attrs["output_dir"] == str(sink.path)
        assert node.attrs["artifact_path"] == str(sink.path)
        assert node.attrs["num_chains"] == 1
        assert node.attrs["created_at"].endswith("+00:00")
        assert node.attrs["aimz_version"]
        assert "aimz_complete" not in node.attrs
    assert tree.attrs["note"] == "test"


def test_open_tree_reopens_lazily(tmp_path, make_info, feed_sink):
    info, data = make_info(num_chains=2)
    sink = ZarrSink(tmp_path)
    feed_sink(sink, info, data)
    sink.commit()
    tree = open_tree(str(sink.path))
    assert list(tree.children) == ["posterior_predictive"]
    y = tree["posterior_predictive"]["y"]
    assert y.chunks is not None
    np.testing.assert_array_equal(y.isel(chain=1, obs=slice(2, 5)).values, data["y"][3:, 2:5])


def test_without_dask_reads_lazily(tmp_path, make_info, feed_sink, monkeypatch):
    monkeypatch.setattr(artifact, "has_dask", lambda: False)
    info, data = make_info(num_chains=2, stream_axis=0, chunk=2)
    sink = ZarrSink(tmp_path)
    feed_sink(sink, info, data)
    tree = sink.commit()
    y = tree["posterior_predictive"]["y"]
    assert y.chunks is None
    assert not y.variable._in_memory
    expected = chains(data["y"], 2)
    np.testing.assert_array_equal(y.values, expected)
    np.testing.assert_array_equal(y[1, ::2, [0, 3]].values, expected[1, ::2][:, [0, 3]])
    np.testing.assert_array_equal(y[:, 1].values, expected[:, 1])
    np.testing.assert_array_equal(y[::-1, 2:0:-1, 4].values, expected[::-1, 2:0:-1, 4])
    assert y[:, 0:0].values.shape == (2, 0, 10)
    shutil.rmtree(sink.path)
    with pytest.raises(FileNotFoundError, match="no longer exists"):
        y.values  # noqa: B018


def test_read_after_deletion_raises(tmp_path, make_info, feed_sink):
    info, data = make_info()
    sink = ZarrSink(tmp_path)
    feed_sink(sink, info, data)
    tree = sink.commit()
    shutil.rmtree(sink.path)
    with pytest.raises(FileNotFoundError, match="no longer exists"):
        tree["posterior_predictive"]["y"].values  # noqa: B018
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_tree(sink.path)


def test_missing_chunk_raises(tmp_path, make_info, feed_sink):
    info, data = make_info()
    sink = ZarrSink(tmp_path, coalesce_bytes=0)  # several chunks
    feed_sink(sink, info, data)
    tree = sink.commit()
    os.remove(sink.path / "y" / "c" / "0" / "1")
    with pytest.raises(FileNotFoundError, match="missing"):
        tree["posterior_predictive"]["y"].values  # noqa: B018


def test_incomplete_store_does_not_open(tmp_path, make_info, feed_sink):
    info, data = make_info()
    sink = ZarrSink(tmp_path)
    feed_sink(sink, info, data)
    sink.commit()
    group = zarr.open_group(sink.path, mode="r+")
    group.attrs["aimz_complete"] = False
    with pytest.raises(ValueError, match="incomplete"):
        open_tree(sink.path)
    with pytest.raises(ValueError, match="not a Zarr"):
        open_tree(tmp_path)


def test_wrong_block_shape_aborts(tmp_path, make_info):
    info, data = make_info()
    sink = ZarrSink(tmp_path)
    sink.open(info)
    sink.write("y", 0, data["y"][:, :4])
    with pytest.raises(ValueError, match=r"shape \(5, 4\)"):
        sink.write("y", 4, data["y"][:5, 4:8])
    assert sink.path is not None and not sink.path.exists()
    assert list(tmp_path.iterdir()) == []
    sink.abort()  # idempotent after a failure


@pytest.mark.parametrize(
    ("site", "start", "width", "match"),
    [
        ("nope", 0, 4, "Unknown site"),
        ("y", 2, 4, "not aligned"),
        ("y", 8, 4, "outside"),
    ],
)
def test_bad_writes_are_rejected(tmp_path, make_info, site, start, width, match):
    info, _ = make_info()
    sink = ZarrSink(tmp_path)
    sink.open(info)
    with pytest.raises(ValueError, match=match):
        sink.write(site, start, np.zeros((6, width), "float32"))
    assert list(tmp_path.iterdir()) == []


def test_unsafe_dtype_is_rejected(tmp_path, make_info):
    info, _ = make_info()
    sink = ZarrSink(tmp_path)
    sink.open(info)
    with pytest.raises(ValueError, match="cannot be stored"):
        sink.write("z", 0, np.zeros((6, 4, 2), "float64"))


def test_writer_error_propagates_and_removes_directory(tmp_path, make_info, monkeypatch):
    info, data = make_info(obs=40)
    sink = ZarrSink(tmp_path, coalesce_bytes=0)  # one write per block
    sink.open(info)
    array_type = type(sink._arrays["y"])
    original = array_type.__setitem__

    def failing(self, key, value):
        if key[1].start == 8:
            raise OSError("disk full")
        original(self, key, value)

    monkeypatch.setattr(array_type, "__setitem__", failing)
    with pytest.raises(OSError, match="disk full"):
        for start in range(0, 40, 4):
            sink.write("y", start, data["y"][:, start : start + 4])
            sink.write("z", start, data["z"][:, start : start + 4])
        sink.commit()
    assert not sink.path.exists()
    assert list(tmp_path.iterdir()) == []
    sink.abort()


def test_incomplete_stream_fails_commit(tmp_path, make_info):
    info, data = make_info()
    sink = ZarrSink(tmp_path)
    sink.open(info)
    sink.write("y", 0, data["y"][:, :4])
    with pytest.raises(RuntimeError, match="received 4 of 10"):
        sink.commit()
    assert list(tmp_path.iterdir()) == []


def test_abort_is_idempotent_and_safe_before_open(tmp_path, make_info):
    sink = ZarrSink(tmp_path)
    sink.abort()
    sink.abort()
    info, data = make_info()
    sink = ZarrSink(tmp_path)
    sink.open(info)
    sink.write("y", 0, data["y"][:, :4])
    sink.abort()
    sink.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="aborted"):
        sink.write("y", 4, data["y"][:, 4:8])


def test_abort_after_commit_keeps_artifact(tmp_path, make_info, feed_sink):
    info, data = make_info()
    sink = ZarrSink(tmp_path)
    feed_sink(sink, info, data)
    sink.commit()
    sink.abort()
    assert sink.path.exists()


def test_each_call_gets_a_new_directory(tmp_path, make_info, feed_sink):
    paths = set()
    for _ in range(3):
        info, data = make_info()
        sink = ZarrSink(tmp_path)
        feed_sink(sink, info, data)
        paths.add(sink.commit().attrs["artifact_path"])
    assert len(paths) == 3 and len(list(tmp_path.iterdir())) == 3


def test_codecs_are_recorded(tmp_path, make_info, feed_sink):
    info, data = make_info()
    sink = ZarrSink(tmp_path)
    feed_sink(sink, info, data)
    sink.commit()
    group = zarr.open_group(sink.path, mode="r")
    kinds = {name: group[name].dtype.kind for name in ("y", "z")}
    for name, kind in kinds.items():
        if kind == "f":  # float draws are stored raw: compression does not pay
            assert group[name].compressors == ()
        else:
            (codec,) = group[name].compressors
            config = codec.to_dict()["configuration"]
            assert config["cname"] == "lz4" and config["shuffle"] == "bitshuffle"
    assert set(kinds.values()) == {"f", "i"}
    assert np.isnan(group["y"].fill_value) and group["z"].fill_value == 0


def test_integer_counts_compress(tmp_path):
    counts = np.random.default_rng(1).poisson(4, size=(100, 5000)).astype("int32")
    layout = SiteLayout("y", counts.shape, counts.dtype, 1, 5000, ("obs",))
    sink = ZarrSink(tmp_path)
    sink.open(StreamInfo("predictions", "predict", 1, {"y": layout}))
    sink.write("y", 0, counts)
    sink.commit()
    stored = sum(f.stat().st_size for f in Path(sink.path, "y").rglob("*") if f.is_file())
    assert stored < counts.nbytes / 4


def test_clashing_dims_fall_back_with_warning(tmp_path):
    a = SiteLayout("a", (2, 3), np.dtype("f4"), 1, 3, ("obs",))
    b = SiteLayout("b", (2, 4), np.dtype("f4"), 1, 4, ("obs",))
    sink = ZarrSink(tmp_path)
    with pytest.warns(OutputWarning, match="'obs' has size 3"):
        sink.open(StreamInfo("predictions", "predict", 1, {"a": a, "b": b}))
    sink.write("a", 0, np.ones((2, 3), "f4"))
    sink.write("b", 0, np.ones((2, 4), "f4"))
    tree = sink.commit()
    assert tree["predictions"]["b"].dims == ("chain", "draw", "b_dim_0")
    assert tuple(zarr.open_group(sink.path)["b"].metadata.dimension_names) == ("draw", "b_dim_0")


def test_bfloat16_blocks_are_stored_as_float32(tmp_path):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    values = np.arange(6, dtype=ml_dtypes.bfloat16).reshape(2, 3)
    layout = SiteLayout("y", (2, 3), values.dtype, 1, 3, ("obs",))
    sink = ZarrSink(tmp_path)
    sink.open(StreamInfo("predictions", "predict", 1, {"y": layout}))
    sink.write("y", 0, values)
    y = sink.commit()["predictions"]["y"]
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y.values[0], values.astype("float32"))


def test_make_sink_validates_store(tmp_path):
    with pytest.raises(ValueError, match="`store` must be one of"):
        make_sink(store="disk", base_dir=tmp_path)
    with pytest.raises(ValueError, match="`base_dir` is required"):
        make_sink(store="persistent", base_dir=None)
    assert isinstance(make_sink(store="persistent", base_dir=tmp_path), ZarrSink)


def test_lazy_reader_keeps_chunk_layout(tmp_path, make_info, feed_sink):
    info, data = make_info(stream_axis=0, draws=12, num_chains=2, chunk=4)
    sink = ZarrSink(tmp_path, coalesce_bytes=0)
    feed_sink(sink, info, data)
    y = sink.commit()["posterior_predictive"]["y"]
    assert y.chunks[0] == (1, 1) and y.chunks[1] == (4, 2)
    assert isinstance(lazy_arrays.has_dask(), bool)


def test_a_trimmed_last_block_is_copied_once(tmp_path, make_info):
    """The last batch arrives as a strided view (padding trimmed) for a partial chunk:
    Zarr copies it into a whole chunk, and the sink adds no contiguous copy of its own
    (that copy was a second batch of memory at the end of every call)."""
    import tracemalloc

    chunk = 4096
    info, data = make_info(draws=200, obs=10_000, chunk=chunk)
    sink = ZarrSink(tmp_path, coalesce_bytes=0)
    sink.open(info)
    last = (data["y"].shape[1] // chunk) * chunk
    for start in range(0, data["y"].shape[1], chunk):
        sink.write("z", start, data["z"][:, start : start + chunk])
        if start != last:
            sink.write("y", start, data["y"][:, start : start + chunk])
    sink._pool.join()  # everything else written before the window
    padded = np.zeros((200, chunk), dtype=np.float32)  # a padded device batch
    padded[:, : 10_000 - last] = data["y"][:, last:]
    block = padded[:, : 10_000 - last]
    assert not block.flags["C_CONTIGUOUS"]
    tracemalloc.start()
    try:
        sink.write("y", last, block)
        sink._pool.join()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    chunk_bytes = 200 * chunk * 4
    assert peak < chunk_bytes + block.nbytes // 2, (peak, chunk_bytes, block.nbytes)
    tree = sink.commit()
    np.testing.assert_array_equal(tree["posterior_predictive"]["y"].values[0], data["y"])
