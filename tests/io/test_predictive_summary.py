"""Per-row predictive summaries and row-averaged group summaries of real model outputs."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import xarray as xr

jax = pytest.importorskip("jax")
pytest.importorskip("numpyro")

from aimz_core.testing import fitted_linreg, linreg_data  # noqa: E402
from aimz_io import artifact, backend, predictive_summary, summary  # noqa: E402
from aimz_io.datatree import tree_from_arrays  # noqa: E402
from aimz_io.predictive_summary import summarize_predictive  # noqa: E402
from aimz_io.summary import summarize_group  # noqa: E402
from aimz_io.zarr_sink import ZarrSink  # noqa: E402

N_OBS, N_DRAWS, BATCH = 50, 40, 16
QUANTILES = (0.05, 0.5, 0.95)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """``predict`` of a tiny linear regression: chunked Zarr store, memory, log-likelihood."""
    X, y = linreg_data(N_OBS)
    model = fitted_linreg(num_draws=N_DRAWS)
    base = tmp_path_factory.mktemp("outputs")
    with pytest.MonkeyPatch.context() as patch:  # one chunk per batch: several chunks
        patch.setattr(backend, "ZarrSink", partial(ZarrSink, coalesce_bytes=0))
        key = jax.random.key(3)
        stored = model.predict(X, batch_size=BATCH, rng_key=key, output_dir=base, progress=False)
        loglik = model.log_likelihood(X, y, batch_size=BATCH, output_dir=base, progress=False)
    memory = model.predict(X, batch_size=BATCH, rng_key=key, store="memory", progress=False)
    yield {"stored": stored, "memory": memory, "loglik": loglik, "base": base}
    model.cleanup()


def hdi_loop(x: np.ndarray, prob: float) -> tuple[float, float]:
    """Shortest interval of ``ceil(prob * n)`` sorted values, by a plain loop."""
    x = np.sort(x)
    k = int(np.ceil(prob * len(x)))
    best = min(range(len(x) - k + 1), key=lambda i: x[i + k - 1] - x[i])
    return x[best], x[best + k - 1]


def reference(values: np.ndarray, hdi_prob: float, quantiles=QUANTILES) -> np.ndarray:
    """``(stat, rows)`` by NumPy from ``(chain, draw, rows)`` values."""
    flat = values.reshape(-1, values.shape[-1]).astype(np.float64)
    hdi = np.array([hdi_loop(flat[:, j], hdi_prob) for j in range(flat.shape[1])]).T
    quant = np.quantile(flat, quantiles, axis=0)
    return np.vstack([flat.mean(0), flat.std(0, ddof=1), hdi, quant])


def test_chunked_store_is_lazy_and_matches_numpy(outputs):
    group = outputs["stored"]["posterior_predictive"]
    assert group["y"].chunks[2] == (16, 16, 16, 2)
    stats = summarize_predictive(outputs["stored"], hdi_prob=0.9, quantiles=QUANTILES)
    assert list(stats["stat"].values) == [
        "mean", "sd", "hdi_low", "hdi_high", "q5", "q50", "q95",
    ]  # fmt: skip
    assert stats["y"].dims == ("stat", "obs") and stats["mu"].dims == ("stat", "mu_dim_0")
    assert stats["y"].chunks == ((7,), (16, 16, 16, 2))  # lazy, one block per stored chunk
    assert stats.attrs["num_draws"] == N_DRAWS and stats.attrs["group"] == "posterior_predictive"
    np.testing.assert_array_equal(stats["obs"].values, np.arange(N_OBS))
    for site in ("y", "mu"):
        expected = reference(group[site].values, 0.9)
        np.testing.assert_allclose(stats[site].values, expected, rtol=1e-10, atol=1e-12)


def test_memory_numpy_and_slabs_agree(outputs, monkeypatch):
    lazy = summarize_predictive(outputs["stored"], var_names="y").compute()
    memory = summarize_predictive(outputs["memory"], var_names=["y"])
    xr.testing.assert_allclose(memory.compute(), lazy)
    values = outputs["memory"]["posterior_predictive"]["y"].values.reshape(N_DRAWS, N_OBS)
    in_memory = tree_from_arrays(
        {"posterior_predictive": {"y": values}}, num_chains=2, dims={"y": ("obs",)}
    )
    monkeypatch.setattr(summary, "SLAB_BYTES", N_DRAWS * 8 * 7)  # 7 rows per slab
    numpy_stats = summarize_predictive(in_memory)
    assert numpy_stats["y"].chunks is None
    xr.testing.assert_allclose(numpy_stats, lazy)
    np.testing.assert_allclose(numpy_stats["y"].values, reference(values, 0.94), rtol=1e-10)


def test_draw_split_chunks_and_log_likelihood(outputs, monkeypatch):
    X, _ = linreg_data(N_OBS)
    monkeypatch.setattr(backend, "ZarrSink", partial(ZarrSink, coalesce_bytes=0))
    tree = fitted_linreg(num_draws=N_DRAWS).predict(
        X, shard_axis="draw", batch_size=8, output_dir=outputs["base"], progress=False
    )
    assert len(tree["posterior_predictive"]["y"].chunks[1]) > 1  # draws split over chunks
    stats = summarize_predictive(tree, var_names="y", quantiles=())
    expected = reference(tree["posterior_predictive"]["y"].values, 0.94, quantiles=[])
    np.testing.assert_allclose(stats["y"].values, expected, rtol=1e-10)

    loglik = summarize_predictive(outputs["loglik"], group="log_likelihood", quantiles=(0.5,))
    values = outputs["loglik"]["log_likelihood"]["y"].values
    expected = reference(values, 0.94, quantiles=[0.5])
    np.testing.assert_allclose(loglik["y"].values, expected, rtol=1e-10)
    monkeypatch.setattr(artifact, "has_dask", lambda: False)  # lazily indexed, no Dask
    reopened = artifact.open_tree(outputs["loglik"].attrs["artifact_path"])
    assert reopened["log_likelihood"]["y"].chunks is None
    plain = summarize_predictive(reopened, group="log_likelihood", quantiles=(0.5,))
    np.testing.assert_allclose(plain["y"].values, expected, rtol=1e-10)


def test_agrees_with_arviz(outputs):
    arviz_stats = pytest.importorskip("arviz_stats")
    loaded = outputs["stored"].load()
    # 0.94 * 40 = 37.6 draws: ArviZ's floor(prob * n) + 1 = ceil(prob * n) here.
    ours = summarize_predictive(loaded, hdi_prob=0.94, quantiles=(0.05, 0.5, 0.95))
    hdi = arviz_stats.hdi(loaded, 0.94, group="posterior_predictive")["y"]
    np.testing.assert_allclose(ours["y"].sel(stat="hdi_low"), hdi.sel(ci_bound="lower"))
    np.testing.assert_allclose(ours["y"].sel(stat="hdi_high"), hdi.sel(ci_bound="upper"))
    eti = arviz_stats.eti(loaded, 0.9, group="posterior_predictive")["y"]
    np.testing.assert_allclose(ours["y"].sel(stat="q5"), eti.sel(ci_bound="lower"), rtol=1e-6)
    np.testing.assert_allclose(ours["y"].sel(stat="q95"), eti.sel(ci_bound="upper"), rtol=1e-6)
    np.testing.assert_allclose(
        ours["y"].sel(stat="q50"),
        arviz_stats.median(loaded, group="posterior_predictive", round_to="none")["y"],
    )
    # 0.9 * 40 = 36 draws: ArviZ's interval holds 37, ours 36 (the documented difference).
    hdi_90 = arviz_stats.hdi(loaded, 0.9, group="posterior_predictive")["y"]
    with_37 = summarize_predictive(loaded, var_names="y", hdi_prob=36.5 / 40, quantiles=())
    np.testing.assert_allclose(with_37["y"].sel(stat="hdi_low"), hdi_90.sel(ci_bound="lower"))
    np.testing.assert_allclose(with_37["y"].sel(stat="hdi_high"), hdi_90.sel(ci_bound="upper"))


def test_output_is_written_atomically(outputs, tmp_path, monkeypatch):
    target = tmp_path / "stats" / "pp.zarr"
    written = summarize_predictive(outputs["stored"], output=target)
    assert written["y"].chunks is not None  # read back lazily
    expected = summarize_predictive(outputs["stored"]).compute()
    xr.testing.assert_allclose(written.compute(), expected)
    assert written.attrs["quantiles"] == list(QUANTILES)
    np.testing.assert_array_equal(written["stat"].values, expected["stat"].values)
    plain = xr.open_zarr(target, consolidated=False)  # without aimz: labels in the attrs
    assert plain.attrs["stat_labels"] == list(expected["stat"].values)
    assert "stat_labels" not in written.attrs
    with pytest.raises(ValueError, match="already exists"):
        summarize_predictive(outputs["stored"], output=target)

    def fail(*args, **kwargs):
        raise RuntimeError("injected")

    monkeypatch.setattr(predictive_summary, "block_stats", fail)
    with pytest.raises(RuntimeError, match="injected"):
        summarize_predictive(outputs["stored"], output=tmp_path / "failed.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats"]  # no output, no temp dir


def test_bad_arguments_raise_before_work(outputs, tmp_path):
    tree = outputs["memory"]
    with pytest.raises(ValueError, match="`hdi_prob`"):
        summarize_predictive(tree, hdi_prob=1.5)
    with pytest.raises(ValueError, match=r"`quantiles` must be levels in \[0, 1\]"):
        summarize_predictive(tree, quantiles=(-0.1,))
    with pytest.raises(ValueError, match="distinct"):
        summarize_predictive(tree, quantiles=(0.5, 0.5))
    with pytest.raises(TypeError, match="`quantiles` must be a sequence"):
        summarize_predictive(tree, quantiles=0.5)
    with pytest.raises(ValueError, match="Group 'predictions' not found"):
        summarize_predictive(tree, group="predictions")
    with pytest.raises(ValueError, match=r"`var_names`.*\['nope'\]"):
        summarize_predictive(tree, var_names="nope")
    with pytest.raises(ValueError, match="local directory"):
        summarize_predictive(tree, output="s3://bucket/stats")
    no_draws = xr.Dataset({"y": ("obs", np.zeros(3))})
    with pytest.raises(ValueError, match="no 'chain' dim"):
        summarize_predictive(no_draws)
    assert list(tmp_path.iterdir()) == []


def test_summarize_group_averages_rows_per_draw(outputs):
    values = outputs["loglik"]["log_likelihood"]["y"].values.reshape(N_DRAWS, N_OBS)
    table = summarize_group(outputs["loglik"], group="log_likelihood", hdi_prob=0.9)
    assert list(table.columns if hasattr(table, "columns") else table) == [
        "site", "mean", "sd", "hdi_low", "hdi_high",
    ]  # fmt: skip
    per_draw = values.astype(np.float64).mean(axis=1)
    np.testing.assert_allclose(table["mean"][0], per_draw.mean(), rtol=1e-6)
    np.testing.assert_allclose(table["sd"][0], per_draw.std(ddof=1), rtol=1e-6)
    np.testing.assert_allclose(
        (table["hdi_low"][0], table["hdi_high"][0]), hdi_loop(per_draw, 0.9), rtol=1e-6
    )
    by_obs = summarize_group(outputs["stored"], var_names="y", by="obs")
    y = outputs["stored"]["posterior_predictive"]["y"].values[0]
    np.testing.assert_allclose(by_obs["mean"], y.mean(axis=0), rtol=1e-5)
    assert list(by_obs["site"]) == ["y"] * N_OBS


def test_sites_with_several_dims_and_integer_values(rng):
    z = rng.poisson(3, size=(24, 7, 3)).astype("int32")  # draws, obs, k
    tree = tree_from_arrays({"prior_predictive": {"z": z}}, num_chains=2, dims={"z": ("obs", "k")})
    in_memory = summarize_predictive(tree, hdi_prob=0.8, quantiles=(0.25, 0.75))
    lazy = summarize_predictive(tree.chunk({"obs": 3}), hdi_prob=0.8, quantiles=(0.25, 0.75))
    assert in_memory["z"].dims == ("stat", "obs", "k") and lazy["z"].chunks[1] == (3, 3, 1)
    xr.testing.assert_allclose(lazy.compute(), in_memory)
    for k in range(3):
        expected = reference(z[:, :, k].reshape(2, 12, 7), 0.8, quantiles=(0.25, 0.75))
        np.testing.assert_allclose(in_memory["z"].values[:, :, k], expected, rtol=1e-12)
