"""Array keyword arguments next to a data loader go whole to every batch (issue 14
item 20, as aimz 0.17 does), in every streamed method and on either path."""

from __future__ import annotations

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from aimz_core import ArrayDataset, ArrayLoader, ImpactModel
from aimz_core.testing import make_svi
from scipy import stats

from ..aimz_testing import assert_close_float
from .conftest import key_data

KEY = jax.random.key(3)
STREAM = {"store": "memory", "return_datatree": False, "progress": False}
N, DRAWS = 30, 6


def weighted_kernel(X, weights, y=None):
    """`weights` has one value per feature, not per row: it must reach every batch whole."""
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    with numpyro.plate("obs", X.shape[0]):
        mu = numpyro.deterministic("mu", b * (X @ weights))
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, 3)).astype(np.float32)
    y = rng.normal(size=N).astype(np.float32)
    weights = np.array([1.0, -2.0, 0.5], np.float32)
    model = ImpactModel(
        weighted_kernel, rng_key=jax.random.key(0), inference=make_svi(weighted_kernel)
    )
    model.set_posterior_sample({"b": rng.normal(size=DRAWS).astype(np.float32)})
    return model, X, y, weights


def test_predict_and_log_likelihood_take_whole_arrays_with_a_loader(setup):
    model, X, y, weights = setup
    b = model.posterior["b"]
    mu = b[:, None] * (X @ weights)[None, :]
    loader = ArrayLoader(ArrayDataset(X=X, y=y), KEY, batch_size=7)
    out = model.predict(loader, weights=weights, rng_key=KEY, **STREAM)
    assert_close_float(np.asarray(out["mu"]), mu)
    ll = model.log_likelihood(loader, weights=weights, **STREAM)
    assert_close_float(np.asarray(ll["y"]), stats.norm.logpdf(y, mu, 1.0).astype(np.float32))
    batches = [{"X": X[:11], "y": y[:11]}, {"X": X[11:], "y": y[11:]}]
    listed = model.log_likelihood(batches, weights=weights, **STREAM)
    assert_close_float(np.asarray(listed["y"]), np.asarray(ll["y"]))


def test_whole_array_given_twice_is_refused(setup):
    model, X, _, weights = setup
    loader = ArrayLoader(ArrayDataset(X=X, weights=np.ones((N, 3), np.float32)), KEY)
    before = key_data(model.rng_key)
    with pytest.raises(ValueError, match="both as keyword arguments and as fields"):
        model.predict(loader, weights=weights, **STREAM)
    assert key_data(model.rng_key) == before
