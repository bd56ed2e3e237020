"""A kernel's own ``numpyro.param`` sites predict with their fitted values.

SVI learns them with the guide; every predictive method used to run the kernel with
their initial values instead: wrong numbers with no error (``mu`` about 0 for a
fitted intercept of 5).
"""

from __future__ import annotations

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from aimz_core import ImpactModel
from aimz_core.testing import make_svi
from scipy import stats

from ..aimz_testing import assert_close_float

STREAM = {"store": "memory", "return_datatree": False, "progress": False}


def intercept_kernel(X, y=None):
    a = numpyro.param("a", 0.0)
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    with numpyro.plate("obs", X.shape[0]):
        mu = numpyro.deterministic("mu", a + b * X[:, 0])
        numpyro.sample("y", dist.Normal(mu, 0.5), obs=y)


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 1)).astype(np.float32)
    y = (5.0 + X[:, 0] + 0.1 * rng.normal(size=40)).astype(np.float32)
    model = ImpactModel(
        intercept_kernel, rng_key=jax.random.key(0), inference=make_svi(intercept_kernel, 0.2)
    )
    model.fit_on_batch(X, y, num_steps=300, num_samples=10, progress=False)
    a = float(model.vi_result.params["a"])
    assert 4.0 < a < 6.0  # SVI learned it
    return model, X, y, a


def test_predictive_methods_use_fitted_param_values(fitted):
    model, X, _, a = fitted
    expected = a + model.posterior["b"][:, None] * X[None, :, 0]
    on_batch = model.predict_on_batch(X, return_datatree=False)
    assert_close_float(on_batch["mu"], expected)
    for batch_size in (None, 16):
        out = model.predict(X, batch_size=batch_size, **STREAM)
        assert_close_float(np.asarray(out["mu"]), expected)
    drawn = model.predict(X, shard_axis="draw", batch_size=4, **STREAM)
    assert_close_float(np.asarray(drawn["mu"]), expected)


def test_log_likelihood_uses_fitted_param_values(fitted):
    model, X, y, a = fitted
    mu = a + model.posterior["b"][:, None] * X[None, :, 0]
    expected = stats.norm.logpdf(y[None, :], mu, 0.5).astype(np.float32)
    out = model.log_likelihood(X, y, batch_size=16, **STREAM)
    assert_close_float(np.asarray(out["y"]), expected)


def test_a_param_replaced_in_place_reaches_a_warm_repeat(fitted):
    # A warm repeat of a plain on-batch call replays what the first call validated;
    # it used to keep the old value of an entry replaced in `vi_result.params` (the
    # dict itself unchanged) while the streaming methods used the new one.
    model, X, _, _ = fitted
    params = model.vi_result.params
    original = params["a"]
    key = jax.random.key(7)
    first = model.predict_on_batch(X, rng_key=key, return_datatree=False)["mu"]
    again = model.predict_on_batch(X, rng_key=key, return_datatree=False)["mu"]
    np.testing.assert_array_equal(first, again)  # the same program on the same inputs
    try:
        params["a"] = original + 100.0
        moved = model.predict_on_batch(X, rng_key=key, return_datatree=False)["mu"]
        streamed = np.asarray(model.predict(X, rng_key=key, **STREAM)["mu"])
    finally:
        params["a"] = original
    assert_close_float(moved, first + 100.0)
    assert_close_float(streamed, first + 100.0)
    back = model.predict_on_batch(X, rng_key=key, return_datatree=False)["mu"]
    assert_close_float(back, first)
