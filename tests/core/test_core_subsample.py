"""log_likelihood with subsampling plates: indices pinned, oversized batches refused."""

from __future__ import annotations

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from aimz_core import ImpactModel
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from scipy import stats

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
    with pytest.raises(ValueError, match="subsampling plate 'obs' has size 40"):
        model.log_likelihood(
            X_big, np.concatenate([y, y]), batch_size=80, progress=False, return_datatree=False
        )
