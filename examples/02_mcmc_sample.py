"""MCMC with NUTS: fit on one batch, keep the chains, draw more with ``sample``
============================================================================

MCMC runs through :meth:`aimz.ImpactModel.fit_on_batch` (``fit`` is SVI only). The
posterior keeps its ``chain`` dimension, so the DataTree that
:meth:`~aimz.ImpactModel.sample` returns opens in ArviZ directly. ``sample`` continues
the chains from their last state without changing the model's stored posterior.

Run: ``python examples/02_mcmc_sample.py``
"""

from __future__ import annotations

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
from aimz import ImpactModel
from numpyro.infer import MCMC, NUTS


def model(X, y=None):
    """Poisson regression kernel (counts ``y`` with a log link)."""
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Poisson(rate=jax.numpy.exp(X @ w + b)), obs=y)


def main() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 2)).astype(np.float32)
    y = rng.poisson(np.exp(X @ np.array([0.5, -0.3]) + 1.0)).astype(np.float32)

    mcmc = MCMC(
        NUTS(model),
        num_warmup=150,
        num_samples=150,
        num_chains=2,
        chain_method="sequential",
        progress_bar=False,
    )
    im = ImpactModel(model, rng_key=jax.random.key(1), inference=mcmc)
    im.fit_on_batch(X, y)
    post = im.posterior
    print(f"MCMC posterior: {post['w'].shape[0]} draws from {im.describe()['num_chains']} chains")
    print(f"posterior mean of w: {np.round(post['w'].mean(axis=0), 2)} (true [0.5, -0.3])")

    more = im.sample(num_samples=100, X=X, y=y)
    posterior = more["posterior"]
    print(f"sample(): posterior dims {dict(posterior.sizes)}")
    # Per-chain means: the chains should agree. The tree opens in ArviZ 1.x as is,
    # e.g. ``arviz.summary(more)``.
    print(posterior["w"].mean("draw").round(2).to_pandas())


if __name__ == "__main__":
    main()
