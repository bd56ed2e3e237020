"""Kernels used by the MLflow flavor tests.

They live in their own module so that a saved model can carry the module as a code path
(``code_paths=[__file__]``) and load in a fresh process or a model server.
"""

import jax.numpy as jnp
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


def poisson_kernel(X, y=None):
    """Poisson regression: its draws need a key from the registered threefry PRNG."""
    w = numpyro.sample("w", dist.Normal(0.0, 0.5).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Poisson(jnp.exp(X @ w)), obs=y)


def offset_kernel(X, t, y=None):
    """Linear regression with a known per-row offset ``t`` (one value per row of ``X``)."""
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    mu = numpyro.deterministic("mu", X @ w + b + t)
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)
