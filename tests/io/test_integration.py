"""aimz-io behind ``ImpactModel``: persistent and memory stores, temp dirs, effects."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

jax = pytest.importorskip("jax")
numpyro = pytest.importorskip("numpyro")
aimz_core = pytest.importorskip("aimz_core")

from aimz_core.testing import linreg  # noqa: E402
from aimz_io.backend import open_tree, summarize_effect  # noqa: E402
from numpyro.infer import SVI, Trace_ELBO  # noqa: E402
from numpyro.infer.autoguide import AutoNormal  # noqa: E402

N_OBS, N_DRAWS = 40, 30


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N_OBS, 2)).astype(np.float32)
    y = (X @ np.array([1.5, -2.0]) + 0.5 + 0.1 * rng.normal(size=N_OBS)).astype(np.float32)
    return X, y


@pytest.fixture(scope="module")
def model(data):
    """A linear regression fitted with 50 SVI steps."""
    X, y = data
    svi = SVI(linreg, AutoNormal(linreg), numpyro.optim.Adam(0.05), Trace_ELBO())
    model = aimz_core.ImpactModel(linreg, rng_key=jax.random.key(0), inference=svi)
    model.fit_on_batch(X, y, num_steps=50, num_samples=N_DRAWS, progress=False)
    yield model
    model.cleanup()


@pytest.fixture
def fresh_model(model):
    """A new model (no temp dir yet) sharing the fitted model's posterior."""
    svi = SVI(linreg, AutoNormal(linreg), numpyro.optim.Adam(0.05), Trace_ELBO())
    fresh = aimz_core.ImpactModel(linreg, rng_key=jax.random.key(1), inference=svi)
    fresh.set_posterior_sample(model.posterior)
    yield fresh
    fresh.cleanup()


def test_predict_returns_lazy_persistent_tree(model, data):
    X, _ = data
    tree = model.predict(X, batch_size=16, progress=False, rng_key=jax.random.key(7))
    assert isinstance(tree, xr.DataTree) and tree.name == "root"
    assert list(tree.children) == ["posterior", "posterior_predictive"]
    group = tree["posterior_predictive"]
    assert group["y"].chunks is not None  # read lazily from disk
    assert group["y"].dims == ("chain", "draw", "obs")
    assert group["y"].shape == (1, N_DRAWS, N_OBS)
    path = Path(tree.attrs["artifact_path"])
    assert path.parent == Path(model.temp_dir) and path.name.endswith("_predict")
    for node in (tree, tree["posterior"], group):
        assert node.attrs["output_dir"] == node.attrs["artifact_path"] == str(path)
    assert xr.open_zarr(path, consolidated=False)["y"].shape == (N_DRAWS, N_OBS)

    memory = model.predict(
        X, batch_size=16, progress=False, rng_key=jax.random.key(7), store="memory"
    )
    np.testing.assert_array_equal(memory["posterior_predictive"]["y"].values, group["y"].values)
    np.testing.assert_array_equal(
        open_tree(path)["posterior_predictive"]["mu"].values, group["mu"].values
    )


def test_memory_store_writes_nothing(fresh_model, data):
    X, _ = data
    tree = fresh_model.predict(X, store="memory", progress=False)
    assert fresh_model.temp_dir is None
    assert "output_dir" not in tree.attrs and "artifact_path" not in tree.attrs
    assert tree["posterior_predictive"]["y"].shape == (1, N_DRAWS, N_OBS)


def test_draw_streaming_and_explicit_output_dir(model, data, tmp_path):
    X, _ = data
    tree = model.predict(
        X, shard_axis="draw", batch_size=8, output_dir=tmp_path / "out", progress=False
    )
    path = Path(tree.attrs["output_dir"])
    assert path.parent == tmp_path / "out"
    np.testing.assert_allclose(
        tree["posterior_predictive"]["mu"].values[0],
        np.asarray(model.posterior["w"]) @ X.T + np.asarray(model.posterior["b"])[:, None],
        rtol=1e-4,
        atol=1e-4,
    )
    model.cleanup()
    assert path.exists()  # explicit output dirs are never cleaned up


def test_temp_dir_lifecycle(fresh_model, data):
    X, _ = data
    assert fresh_model.temp_dir is None
    tree = fresh_model.predict(X, progress=False)
    temp = Path(fresh_model.temp_dir)
    assert stat.S_IMODE(os.stat(temp).st_mode) == 0o700
    assert Path(tree.attrs["artifact_path"]).parent == temp
    fresh_model.cleanup()
    assert fresh_model.temp_dir is None and not temp.exists()
    fresh_model.cleanup()  # idempotent
    with pytest.raises(FileNotFoundError, match="no longer exists"):
        tree["posterior_predictive"]["y"].values  # noqa: B018
    fresh_model.predict(X, progress=False)
    assert fresh_model.temp_dir is not None and Path(fresh_model.temp_dir) != temp


def test_estimate_effect_of_an_intervention(model, data):
    X, _ = data
    effect = model.estimate_effect(
        args_baseline={"X": X},
        args_intervention={"X": X, "intervention": {"b": 1.0}},
    )
    assert list(effect.children) == ["posterior", "posterior_predictive"]
    for label in ("baseline", "intervention"):
        path = effect.attrs[f"artifact_path_{label}"]
        assert path == effect.attrs[f"output_dir_{label}"]
        assert path.endswith("_estimate_effect")
    mu = effect["posterior_predictive"]["mu"]
    assert mu.chunks is not None
    # Paired draws: do(b=1) shifts every mean by 1 - b for that draw.
    expected = 1.0 - np.asarray(model.posterior["b"])
    np.testing.assert_allclose(mu.values[0], np.repeat(expected[:, None], N_OBS, 1), atol=1e-5)
    table = summarize_effect(effect)
    row = table[table["site"] == "mu"].iloc[0]
    np.testing.assert_allclose(row["mean"], expected.mean(), atol=1e-5)


def test_estimate_effect_on_batch_and_given_outputs(model, data):
    X, _ = data
    effect = model.estimate_effect(
        args_baseline={"X": X, "in_sample": False},
        args_intervention={"X": X, "in_sample": False, "intervention": {"b": 0.0}},
        on_batch=True,
    )
    assert "predictions" in effect.children
    assert "artifact_path_baseline" not in effect.attrs
    base = model.predict(X, store="memory", progress=False)
    intv = model.predict(X, store="memory", progress=False, intervention={"b": 0.0})
    given = model.estimate_effect(base, intv)
    assert given["posterior_predictive"]["y"].shape == (1, N_DRAWS, N_OBS)


def test_chains_are_kept(fresh_model, data):
    X, _ = data
    posterior = {k: np.asarray(v) for k, v in fresh_model.posterior.items() if k != "mu"}
    fresh_model.set_posterior_sample(posterior, num_chains=2)
    tree = fresh_model.predict(X, progress=False, rng_key=jax.random.key(3))
    assert tree.attrs["num_chains"] == 2
    assert tree["posterior"].sizes["chain"] == 2
    assert tree["posterior_predictive"]["y"].shape == (2, N_DRAWS // 2, N_OBS)
    np.testing.assert_array_equal(
        tree["posterior"]["b"].values, posterior["b"].reshape(2, N_DRAWS // 2)
    )
