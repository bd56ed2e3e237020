"""log_likelihood with subsampling plates: indices pinned, oversized batches refused."""

from __future__ import annotations

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from aimz_core import ImpactModel
from aimz_core.exceptions import PerformanceWarning
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from scipy import stats

from ..aimz_testing import assert_close_float
from .conftest import key_data

N_TOTAL = 40


def minibatch_kernel(X, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0))
    with numpyro.plate("obs", N_TOTAL, subsample_size=X.shape[0]):
        numpyro.sample("y", dist.Normal(w * X, 1.0), obs=y)


def test_subsample_plate_is_pinned_and_checked():
    svi = SVI(minibatch_kernel, AutoNormal(minibatch_kernel), numpyro.optim.Adam(0.1), Trace_ELBO())
    model = ImpactModel(minibatch_kernel, rng_key=jax.random.key(0), inference=svi)
    w = np.linspace(-1.0, 1.0, 5).astype(np.float32)
    model.set_posterior_sample({"w": w})
    rng = np.random.default_rng(0)
    X = rng.normal(size=N_TOTAL).astype(np.float32)
    y = (0.5 * X + rng.normal(size=N_TOTAL)).astype(np.float32)
    out = model.log_likelihood(X, y, batch_size=10, progress=False, return_datatree=False)
    expected = stats.norm.logpdf(y[None, :], loc=w[:, None] * X[None, :], scale=1.0)
    np.testing.assert_allclose(out["y"], expected, rtol=1e-5, atol=1e-5)
    X_big = np.concatenate([X, X])
    key = model.rng_key
    with pytest.raises(ValueError, match="Plate site 'obs' declares size=40, but the evaluated"):
        model.log_likelihood(
            X_big, np.concatenate([y, y]), batch_size=80, progress=False, return_datatree=False
        )
    assert key_data(model.rng_key) == key_data(key)
    # Automatic batches hold at most the plate's size.
    auto = model.log_likelihood(X, y, progress=False, return_datatree=False)
    assert_close_float(auto["y"], out["y"])


K_SUB = 16


def self_subsampling_kernel(X, y=None):
    """The kernel draws its own subsample of the rows it gets (`y[idx]`)."""
    w = numpyro.sample("w", dist.Normal(0.0, 1.0))
    with numpyro.plate("obs", X.shape[0], subsample_size=K_SUB) as idx:
        numpyro.sample("y", dist.Normal(w * X[idx], 1.0), obs=None if y is None else y[idx])


def const_plate_kernel(X, y=None):
    """A plate of constant size that the kernel subsamples itself."""
    w = numpyro.sample("w", dist.Normal(0.0, 1.0))
    with numpyro.plate("obs", N_TOTAL, subsample_size=K_SUB) as idx:
        numpyro.sample("y", dist.Normal(w * X[idx], 1.0), obs=None if y is None else y[idx])


@pytest.mark.parametrize("batch_size", [5, 10, 16, 25, 40, None])
def test_kernel_subsample_larger_or_smaller_than_batch_gives_analytic_values(batch_size):
    """Issue 14 item 5: `plate(n, subsample_size=k)` with k above or below the batch
    used to come back permuted or repeated; every row is now evaluated once, in order."""
    model = _model(self_subsampling_kernel)
    w = np.linspace(-1.0, 1.0, 5).astype(np.float32)
    model.set_posterior_sample({"w": w})
    X, y = _data()
    out = model.log_likelihood(X, y, batch_size=batch_size, progress=False, return_datatree=False)
    expected = stats.norm.logpdf(y[None, :], loc=w[:, None] * X[None, :], scale=1.0)
    assert_close_float(out["y"], expected.astype(np.float32))


def test_constant_plate_evaluates_all_rows_or_refuses():
    model = _model(const_plate_kernel)
    w = np.linspace(-1.0, 1.0, 5).astype(np.float32)
    model.set_posterior_sample({"w": w})
    X, y = _data()
    with pytest.warns(PerformanceWarning, match="have no observation axis"):
        out = model.log_likelihood(X, y, batch_size=10, progress=False, return_datatree=False)
    expected = stats.norm.logpdf(y[None, :], loc=w[:, None] * X[None, :], scale=1.0)
    assert_close_float(out["y"], expected.astype(np.float32))
    key = model.rng_key
    with pytest.raises(ValueError, match="Plate site 'obs' declares size=40, but the evaluated"):
        model.log_likelihood(X[:30], y[:30], progress=False, return_datatree=False)
    assert key_data(model.rng_key) == key_data(key)


def _model(kernel):
    svi = SVI(kernel, AutoNormal(kernel), numpyro.optim.Adam(0.1), Trace_ELBO())
    return ImpactModel(kernel, rng_key=jax.random.key(0), inference=svi)


def _data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=N_TOTAL).astype(np.float32)
    return X, (0.5 * X + rng.normal(size=N_TOTAL)).astype(np.float32)
