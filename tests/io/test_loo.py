"""Chunked PSIS-LOO (``aimz_io.loo``) against ArviZ and against one NumPy block."""

from __future__ import annotations

import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from aimz_io import _loo as loo_module
from aimz_io import loo
from aimz_io._psis import psis_loo
from aimz_io.artifact import open_tree
from aimz_io.datatree import tree_from_arrays

ROWS, DRAWS = 48, 120


def _ar_draws(rng, shape, phi=0.6):
    """Autocorrelated draws along axis 0 (so that ESS differs from the draw count)."""
    out = rng.normal(size=shape)
    for i in range(1, shape[0]):
        out[i] = phi * out[i - 1] + np.sqrt(1 - phi**2) * out[i]
    return out.astype(np.float32)


@pytest.fixture(scope="module")
def model_trees(tmp_path_factory):
    """Log-likelihood of a real aimz model (2 chains): persistent store and memory."""
    pytest.importorskip("dask")
    from aimz_core.testing import linreg_data, make_model

    rng = np.random.default_rng(3)
    X, y = linreg_data(ROWS)
    model = make_model()
    sample = {
        "w": 0.05 * _ar_draws(rng, (DRAWS, 2)) + np.array([1.5, -2.0], np.float32),
        "b": 0.05 * _ar_draws(rng, (DRAWS,)) + 0.5,
        "sigma": np.abs(_ar_draws(rng, (DRAWS,))) * 0.05 + 0.1,
    }
    model.set_posterior_sample(sample, num_chains=2)
    base = tmp_path_factory.mktemp("loo_store")
    stored = model.log_likelihood(X, y, output_dir=base, batch_size=16, progress=False)
    memory = model.log_likelihood(X, y, store="memory", batch_size=16, progress=False)
    return stored, memory


def _compare(result, reference, rtol=1e-5, atol=1e-5):
    for field in ("elpd", "se", "p", "good_k"):
        assert getattr(result, field) == pytest.approx(getattr(reference, field), rel=rtol), field
    assert result.warning == reference.warning
    assert result.n_samples == reference.n_samples
    assert result.n_data_points == reference.n_data_points
    for field in ("elpd_i", "pareto_k"):
        mine, ref = getattr(result, field), getattr(reference, field)
        assert mine.dims == ref.dims
        np.testing.assert_allclose(mine.values, ref.values, rtol=rtol, atol=atol)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def test_two_chains_match_arviz(model_trees):
    arviz_stats = pytest.importorskip("arviz_stats")
    stored, memory = model_trees
    assert memory["log_likelihood"]["y"].data.numblocks[-1] == 3  # one chunk per batch
    reference = _quiet(arviz_stats.loo, memory.load())
    for tree in (memory, stored.chunk({"obs": 10}), stored.load()):
        result = _quiet(loo, tree)
        assert type(result).__name__ == "ELPDDataLOO" and result.kind == "loo"
        _compare(result, reference)
    table = _quiet(arviz_stats.compare, {"chunked": result, "arviz": reference})
    assert len(table) == 2 and float(np.abs(table["elpd_diff"]).max()) < 1e-3


def test_one_chain_matches_arviz(model_trees):
    arviz_stats = pytest.importorskip("arviz_stats")
    _, memory = model_trees
    loaded = memory.load()
    flat = {
        group: {
            name: np.asarray(v.values).reshape(-1, *v.shape[2:])
            for name, v in loaded[group].data_vars.items()
        }
        for group in ("posterior", "log_likelihood")
    }
    tree = tree_from_arrays(flat, num_chains=1, dims={"y": ("obs",)})
    reference = _quiet(arviz_stats.loo, tree)
    _compare(_quiet(loo, tree), reference)
    _compare(_quiet(loo, tree.chunk({"obs": 7})), reference)


def test_store_path_write_and_reff_from_log_lik(model_trees):
    arviz_stats = pytest.importorskip("arviz_stats")
    stored, _ = model_trees
    path = stored.attrs["artifact_path"]
    values = stored["log_likelihood"]["y"].load()
    # Without a posterior, reff is the mean relative ESS of exp(log_lik) over observations.
    ratios = np.exp(values - values.max(("chain", "draw")))
    ess = arviz_stats.ess(ratios.to_dataset(name="y"), method="mean")["y"]
    reff = float(ess.mean()) / (values.sizes["chain"] * values.sizes["draw"])
    reference = _quiet(arviz_stats.loo, stored.load(), reff=reff)
    result = _quiet(loo, path, write=True)
    _compare(result, reference)
    written = zarr.open_group(f"{path}/loo/y", mode="r")
    assert written.attrs["aimz_loo"]["elpd"] == pytest.approx(result.elpd)
    assert written.attrs["aimz_loo"]["reff"] == pytest.approx(reff, rel=1e-6)
    assert result.elpd_i.chunks is not None  # read back lazily
    again = _quiet(loo, stored, write=True, reff=0.9)  # replaces the earlier result
    assert zarr.open_group(f"{path}/loo/y", mode="r").attrs["aimz_loo"]["reff"] == 0.9
    np.testing.assert_allclose(again.elpd_i.values, _quiet(loo, stored, reff=0.9).elpd_i.values)
    leftovers = [p.name for p in Path(path).parent.iterdir() if p.name.startswith(".")]
    assert not leftovers and not [p for p in Path(path).iterdir() if ".tmp" in p.name]
    assert "loo" not in open_tree(path)["log_likelihood"].data_vars  # the store reads as before


def _heavy(rng, draws=400, rows=30):
    """Log-likelihood with a few influential rows (heavy right tail of 1/p)."""
    ll = rng.normal(size=(draws, rows)) * 0.3 - 1.0
    ll[:, :4] = -np.abs(rng.standard_t(3, size=(draws, 4))) * 0.5 - 1.0
    return ll.astype(np.float32)


def test_heavy_tail_warns_like_arviz(rng):
    ll = _heavy(rng)
    tree = tree_from_arrays({"log_likelihood": {"y": ll}}, dims={"y": ("obs",)})
    with pytest.warns(UserWarning, match="Estimated shape parameter of Pareto distribution"):
        result = loo(tree.chunk({"obs": 8}))
    assert result.warning and float(result.pareto_k.max()) > 0.7
    assert np.isfinite(result.pareto_k.values).all()
    arviz_stats = pytest.importorskip("arviz_stats")
    _compare(result, _quiet(arviz_stats.loo, tree, reff=1.0))


def test_chunked_equals_one_block_without_arviz(rng, monkeypatch):
    """Dask chunks and NumPy slabs give the single-block NumPy result."""
    ll = _heavy(rng, draws=300, rows=50).reshape(3, 100, 5, 10)
    da = xr.DataArray(ll, dims=("chain", "draw", "obs", "item"), name="y")
    pointwise = psis_loo(ll.reshape(300, 50), reff=0.8).reshape(3, 5, 10)
    elpd = pointwise[0]
    monkeypatch.setattr(loo_module, "SLAB_BYTES", 2 * 300 * 10 * 4)  # 2 rows of `obs` a slab
    for data in (da, da.chunk({"obs": 2, "item": 4}), da.chunk({"draw": 50})):
        result = _quiet(loo, data, reff=0.8)
        assert result.n_data_points == 50 and result.elpd_i.dims == ("obs", "item")
        np.testing.assert_allclose(result.elpd_i.values, elpd, rtol=1e-12)
        np.testing.assert_allclose(result.pareto_k.values, pointwise[1], rtol=1e-12)
        assert result.elpd == pytest.approx(elpd.sum(), rel=1e-12)
        assert result.se == pytest.approx(np.sqrt(50 * np.var(elpd, ddof=1)), rel=1e-10)
        assert result.p == pytest.approx(pointwise[2].sum(), rel=1e-10)


def test_write_to_path_without_dask_store(rng, tmp_path, monkeypatch):
    ll = rng.normal(size=(2, 60, 9)).astype(np.float32) - 1
    da = xr.DataArray(ll, dims=("chain", "draw", "obs"), name="y")
    monkeypatch.setattr(loo_module, "SLAB_BYTES", 120 * 4 * 4)  # 3 slabs
    monkeypatch.setattr(loo_module, "WORKERS", 3)  # all in flight: results stay in order
    result = _quiet(loo, da, reff=1.0, write=tmp_path / "out")
    reopened = xr.open_zarr(tmp_path / "out", consolidated=False)
    np.testing.assert_allclose(reopened["elpd_i"].values, result.elpd_i.values)
    expected = psis_loo(ll.reshape(120, 9))
    np.testing.assert_allclose(result.pareto_k.values, expected[1], rtol=1e-12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_store_without_dask_reads_in_slabs(model_trees, monkeypatch, tmp_path):
    """A store read without Dask (lazily indexed) gives the Dask result, slab by slab."""
    from aimz_io import artifact

    stored, _ = model_trees
    expected = _quiet(loo, stored.chunk({"obs": 10}), reff=0.7)
    monkeypatch.setattr(artifact, "has_dask", lambda: False)
    monkeypatch.setattr(loo_module, "has_dask", lambda: False)
    monkeypatch.setattr(loo_module, "SLAB_BYTES", 120 * 4 * 10)  # 10 rows a slab
    tree = open_tree(stored.attrs["artifact_path"])
    assert tree["log_likelihood"]["y"].chunks is None
    result = _quiet(loo, tree, reff=0.7, write=tmp_path / "loo")
    assert result.elpd == pytest.approx(expected.elpd, rel=1e-12)
    assert result.se == pytest.approx(expected.se, rel=1e-10)
    np.testing.assert_allclose(result.pareto_k.values, expected.pareto_k.values, rtol=1e-12)
    assert zarr.open_array(str(tmp_path / "loo" / "elpd_i"), mode="r").chunks == (10,)


def test_fallback_result_without_arviz(rng, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "arviz_stats", None)  # import fails, as on Python 3.11
    monkeypatch.setitem(sys.modules, "arviz_stats.utils", None)
    da = xr.DataArray(rng.normal(size=(1, 100, 4)) * 0.2 - 1, dims=("chain", "draw", "obs"))
    result = _quiet(loo, da)
    assert type(result).__name__ == "LooResult" and result.kind == "loo"
    assert result.scale == "log" and result.elpd_i.dims == ("obs",)
    with pytest.raises(AttributeError):
        result.elpd = 0.0  # frozen


def test_bad_input_is_refused_before_work(rng, tmp_path):
    tree = tree_from_arrays(
        {"log_likelihood": {"a": rng.normal(size=(40, 3)), "b": rng.normal(size=(40, 3))}}
    )
    with pytest.raises(ValueError, match=r"`var_name` is required.*\['a', 'b'\]"):
        loo(tree)
    with pytest.raises(ValueError, match="`var_name` 'c' is not a site"):
        loo(tree, var_name="c")
    with pytest.raises(ValueError, match="`group` 'posterior'"):
        loo(tree, group="posterior", var_name="a")
    with pytest.raises(ValueError, match="`reff` must be a positive number"):
        loo(tree, var_name="a", reff=0)
    with pytest.raises(ValueError, match="`write=True` needs"):
        loo(tree, var_name="a", write=True)
    with pytest.raises(ValueError, match="needs dims 'chain' and 'draw'"):
        loo(xr.DataArray(np.zeros((40, 3)), dims=("draw", "obs")))
    with pytest.raises(ValueError, match="draw at least 25 samples"):
        loo(xr.DataArray(np.zeros((1, 20, 3)), dims=("chain", "draw", "obs")))
    (tmp_path / "taken").mkdir()
    with pytest.raises(ValueError, match="exists and is not a LOO result"):
        loo(tree, var_name="a", write=tmp_path / "taken")
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]


def test_failure_leaves_nothing(model_trees, monkeypatch):
    stored, _ = model_trees
    path = Path(stored.attrs["artifact_path"])
    before = sorted(p.name for p in path.iterdir())

    def broken(block, reff):
        raise RuntimeError("boom")

    monkeypatch.setattr(loo_module, "_psis_block", broken)
    with pytest.raises(RuntimeError, match="boom"):
        loo(open_tree(path), write=True, reff=1.0)
    after = sorted(p.name for p in path.iterdir())
    assert after == before and not [p for p in path.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_memory_stays_bounded(tmp_path):
    """200K rows x 100 draws (80 MB float32, 20 chunks) with far less memory than that."""
    psutil = pytest.importorskip("psutil")
    pytest.importorskip("dask")
    rows, draws, chunk = 200_000, 100, 10_000
    store = tmp_path / "20260101T000000000000Z_log_likelihood"
    group = zarr.open_group(
        str(store),
        mode="w",
        zarr_format=3,
        attributes={"num_chains": 1, "group": "log_likelihood", "aimz_complete": True},
    )
    array = group.create_array(
        "y",
        shape=(draws, rows),
        dtype="float32",
        chunks=(draws, chunk),
        compressors=(),
        dimension_names=("draw", "obs"),
    )
    rng = np.random.default_rng(0)
    for start in range(0, rows, chunk):
        array[:, start : start + chunk] = rng.normal(size=(draws, chunk)).astype("float32") - 1
    del rng
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        result = _quiet(loo, store, pointwise=False)
    finally:
        done.set()
        thread.join()
    growth = (peak[0] - baseline) / 2**20
    assert result.n_data_points == rows and np.isfinite(result.elpd)
    assert growth < 60, f"peak RSS grew {growth:.0f} MiB for an 80 MB store"
