"""Kernel used by the MLflow flavor tests.

It lives in its own module so that a saved model can carry it as a code path
(``code_paths=[__file__]``) and load in a fresh process or a model server.
"""

import numpyro
import numpyro.distributions as dist


def linear_kernel(X, y=None):
    """Bayesian linear regression with a deterministic mean site."""
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    mu = numpyro.deterministic("mu", X @ w + b)
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)
