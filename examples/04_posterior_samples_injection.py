"""Use posterior samples computed elsewhere with ``set_posterior_sample``
======================================================================

No fitting here: the posterior of a conjugate Bayesian linear regression (known
noise scale, Normal prior) is computed in closed form with NumPy, sampled, and
injected with :meth:`aimz.ImpactModel.set_posterior_sample`. The model then counts as
fitted, and prediction methods use the injected draws. The inference object is
still required by the constructor, but never runs.

Run: ``python examples/04_posterior_samples_injection.py``
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from aimz import ImpactModel
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

SIGMA = 0.5


def model(X, y=None):
    """Linear regression with a known noise scale."""
    w = numpyro.sample("w", dist.Normal().expand([X.shape[1]]).to_event(1))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(jnp.dot(X, w), SIGMA), obs=y)


def main() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(500, 2))
    y = X @ np.array([1.5, -0.5]) + rng.normal(scale=SIGMA, size=500)

    # Closed-form posterior of w under a N(0, I) prior, sampled with NumPy.
    precision = np.eye(2) + X.T @ X / SIGMA**2
    cov = np.linalg.inv(precision)
    mean = cov @ X.T @ y / SIGMA**2
    draws = rng.multivariate_normal(mean, cov, size=1_000).astype(np.float32)

    im = ImpactModel(
        model,
        rng_key=jax.random.key(3),
        inference=SVI(model, AutoNormal(model), numpyro.optim.Adam(0.01), Trace_ELBO()),
    )
    im.set_posterior_sample({"w": draws})
    print(f"injected {draws.shape[0]} draws of w; fitted: {im.is_fitted()}")

    X_new = rng.normal(size=(5, 2)).astype(np.float32)
    out = im.predict_on_batch(X_new, rng_key=jax.random.key(0), return_datatree=False)
    print(f"predict_on_batch: y draws shape {out['y'].shape}")
    print(f"predictive mean:  {np.round(out['y'].mean(axis=0), 2)}")
    print(f"expected (X @ E[w]): {np.round(X_new @ mean, 2)}")
    assert np.allclose(out["y"].mean(axis=0), X_new @ mean, atol=0.1)


if __name__ == "__main__":
    main()
