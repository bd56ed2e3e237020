"""Row subsamples for predictive checks, from real model outputs."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import xarray as xr

jax = pytest.importorskip("jax")
pytest.importorskip("numpyro")

from aimz_core.exceptions import OutputWarning  # noqa: E402
from aimz_core.testing import fitted_linreg, linreg_data  # noqa: E402
from aimz_io import artifact, backend  # noqa: E402
from aimz_io.datatree import tree_from_arrays  # noqa: E402
from aimz_io.ppc import ppc_subsample  # noqa: E402
from aimz_io.zarr_sink import ZarrSink  # noqa: E402

N_OBS, N_DRAWS, BATCH = 60, 30, 16


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """Chunked persistent ``predict`` and ``log_likelihood`` outputs, and in-memory ones."""
    X, y = linreg_data(N_OBS)
    model = fitted_linreg(num_draws=N_DRAWS)
    base = tmp_path_factory.mktemp("ppc")
    key = jax.random.key(5)
    with pytest.MonkeyPatch.context() as patch:  # one chunk per batch: several chunks
        patch.setattr(backend, "ZarrSink", partial(ZarrSink, coalesce_bytes=0))
        stored = model.predict(X, batch_size=BATCH, rng_key=key, output_dir=base, progress=False)
        loglik = model.log_likelihood(X, y, batch_size=BATCH, output_dir=base, progress=False)
    memory = model.predict(X, batch_size=BATCH, rng_key=key, store="memory", progress=False)
    yield {"stored": stored, "loglik": loglik, "memory": memory, "y": y}
    model.cleanup()


def test_subsample_is_reproducible_and_recorded(outputs):
    tree, y = outputs["stored"], outputs["y"]
    assert len(tree["posterior_predictive"]["y"].chunks[2]) == 4  # a lazy, chunked output
    small = ppc_subsample(tree, n_rows=12, seed=7, observed=y, log_likelihood=outputs["loglik"])
    rows = np.asarray(small.attrs["subsample_rows"])
    expected_rows = np.sort(np.random.default_rng(7).choice(N_OBS, 12, replace=False))
    np.testing.assert_array_equal(rows, expected_rows)
    assert small.attrs["subsample_seed"] == 7 and small.attrs["subsample_total_rows"] == N_OBS
    assert small["posterior_predictive"].attrs["subsample_rows"] == rows.tolist()
    assert list(small.children) == [
        "posterior", "posterior_predictive", "log_likelihood", "observed_data",
    ]  # fmt: skip
    assert list(small["posterior_predictive"].data_vars) == ["y"]  # the observed site
    full = tree["posterior_predictive"]["y"].values
    for name in ("posterior_predictive", "log_likelihood", "observed_data"):
        np.testing.assert_array_equal(small[name]["obs"].values, rows)
        assert small[name]["obs"].size == 12
    got = small["posterior_predictive"]["y"]
    assert isinstance(got.data, np.ndarray)  # loaded, not lazy
    np.testing.assert_array_equal(got.values, full[:, :, rows])
    np.testing.assert_array_equal(got.values, full[:, :, got["obs"].values])
    np.testing.assert_array_equal(small["observed_data"]["y"].values, y[rows])
    loglik = outputs["loglik"]["log_likelihood"]["y"].values
    np.testing.assert_array_equal(small["log_likelihood"]["y"].values, loglik[:, :, rows])

    again = ppc_subsample(tree, n_rows=12, seed=7, observed={"y": y})
    np.testing.assert_array_equal(again.attrs["subsample_rows"], rows)
    other = ppc_subsample(tree, n_rows=12, seed=8, observed=y)
    assert other.attrs["subsample_rows"] != rows.tolist()
    fresh = ppc_subsample(tree, n_rows=12, observed=y)  # a fresh seed, recorded
    replay = ppc_subsample(tree, n_rows=12, seed=fresh.attrs["subsample_seed"], observed=y)
    assert replay.attrs["subsample_rows"] == fresh.attrs["subsample_rows"]


def test_memory_and_undasked_outputs_give_the_same_rows(outputs, monkeypatch):
    y = outputs["y"]
    stored = ppc_subsample(outputs["stored"], n_rows=9, seed=1, observed=y)
    memory = ppc_subsample(outputs["memory"], n_rows=9, seed=1, observed=y)
    xr.testing.assert_equal(
        memory["posterior_predictive"].to_dataset(), stored["posterior_predictive"].to_dataset()
    )
    monkeypatch.setattr(artifact, "has_dask", lambda: False)  # lazily indexed Zarr reads
    reopened = artifact.open_tree(outputs["stored"].attrs["artifact_path"])
    assert reopened["posterior_predictive"]["y"].chunks is None
    plain = ppc_subsample(reopened, n_rows=9, seed=1, observed=y)
    xr.testing.assert_equal(
        plain["observed_data"].to_dataset(), stored["observed_data"].to_dataset()
    )
    xr.testing.assert_equal(
        plain["posterior_predictive"].to_dataset(), stored["posterior_predictive"].to_dataset()
    )


def test_observed_forms(outputs):
    tree, y = outputs["stored"], outputs["y"]
    expected = ppc_subsample(tree, n_rows=5, seed=2, observed=y)["observed_data"]["y"].values
    with_group = tree.copy()
    with_group["observed_data"] = xr.DataTree(xr.Dataset({"y": ("obs", y)}))
    own = ppc_subsample(with_group, n_rows=5, seed=2)
    np.testing.assert_array_equal(own["observed_data"]["y"].values, expected)
    dask_array = pytest.importorskip("dask.array")
    lazy = ppc_subsample(tree, n_rows=5, seed=2, observed=dask_array.from_array(y, chunks=7))
    np.testing.assert_array_equal(lazy["observed_data"]["y"].values, expected)
    pd = pytest.importorskip("pandas")
    series = pd.Series(y, index=np.arange(N_OBS)[::-1])  # labels are not positions
    by_position = ppc_subsample(tree, n_rows=5, seed=2, observed={"y": series})
    np.testing.assert_array_equal(by_position["observed_data"]["y"].values, expected)
    no_observed = ppc_subsample(tree, n_rows=5, seed=2)
    assert "observed_data" not in no_observed.children


def test_bad_arguments(outputs):
    tree, y = outputs["memory"], outputs["y"]
    with pytest.raises(ValueError, match="`n_rows` must be at least 1, got 0"):
        ppc_subsample(tree, n_rows=0)
    with pytest.raises(TypeError, match="`n_rows` must be an integer"):
        ppc_subsample(tree, n_rows=2.5)
    with pytest.raises(TypeError, match="`seed`"):
        ppc_subsample(tree, n_rows=2, seed="a")
    with pytest.warns(OutputWarning, match=f"exceeds the {N_OBS} rows"):
        everything = ppc_subsample(tree, n_rows=N_OBS + 1, seed=0, observed=y)
    assert everything.attrs["subsample_rows"] == list(range(N_OBS))
    with pytest.raises(ValueError, match="Group 'predictions' not found; available"):
        ppc_subsample(tree, group="predictions")
    with pytest.raises(ValueError, match="has no dim 'row'"):
        ppc_subsample(tree, dim="row")
    with pytest.raises(ValueError, match=r"has shape \(59,\); the output's rows need \(60,\)"):
        ppc_subsample(tree, n_rows=5, observed=y[1:])
    with pytest.raises(
        ValueError, match=r"`observed` has sites \['z'\] that the predictive group lacks"
    ):
        ppc_subsample(tree, n_rows=5, observed={"z": y})
    with pytest.raises(ValueError, match="no dim 'obs'; leave them out"):
        ppc_subsample(tree, n_rows=5, var_names="mu")
    short = tree_from_arrays(
        {"log_likelihood": {"y": np.zeros((N_DRAWS, 5))}}, dims={"y": ("obs",)}
    )
    with pytest.raises(ValueError, match="`log_likelihood` has 5 entries along 'obs'"):
        ppc_subsample(tree, n_rows=5, observed=y, log_likelihood=short)
    two = tree_from_arrays(
        {"posterior_predictive": {"a": np.zeros((4, 3)), "b": np.zeros((4, 3))}},
        dims={"a": ("obs",), "b": ("obs",)},
    )
    with pytest.raises(ValueError, match=r"one array but the group has several sites"):
        ppc_subsample(two, n_rows=2, observed=np.zeros(3))
    assert list(
        ppc_subsample(two, n_rows=2, observed=np.zeros(3), var_names="b")["observed_data"].data_vars
    ) == ["b"]


def test_arviz_plots_accept_the_subsample(outputs):
    arviz_plots = pytest.importorskip("arviz_plots")
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    small = ppc_subsample(
        outputs["stored"], n_rows=20, seed=0, observed=outputs["y"],
        log_likelihood=outputs["loglik"],
    )  # fmt: skip
    plot = arviz_plots.plot_ppc_dist(small, num_samples=20, backend="matplotlib")
    assert isinstance(plot.viz["figure"].item(), plt.Figure)
    assert {"predictive_dist", "observed_dist"} <= set(plot.viz.children)
    pit = arviz_plots.plot_loo_pit(small, backend="matplotlib")
    assert isinstance(pit.viz["figure"].item(), plt.Figure)
    plt.close("all")
