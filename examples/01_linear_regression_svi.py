"""Linear regression with SVI: fit over minibatches, then predict.

Fits ``y = X @ w + b + noise`` with an ``AutoNormal`` guide, using
:meth:`aimz.ImpactModel.fit` (minibatches, several epochs), and checks that the
posterior means recover the weights the data were simulated with. Predictions come
back in memory (``store="memory"``) as an ``xarray.DataTree``.

Run: ``python examples/01_linear_regression_svi.py``
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

TRUE_W = np.array([1.0, -2.0, 0.5])
TRUE_B = 0.3


def model(X, y=None):
    """Bayesian linear regression kernel: input ``X``, output ``y``."""
    w = numpyro.sample("w", dist.Normal().expand([X.shape[1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal())
    sigma = numpyro.sample("sigma", dist.Exponential())
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(jnp.dot(X, w) + b, sigma), obs=y)


def main() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1_000, 3)).astype(np.float32)
    y = (X @ TRUE_W + TRUE_B + rng.normal(scale=0.5, size=1_000)).astype(np.float32)

    im = ImpactModel(
        model,
        rng_key=jax.random.key(0),
        inference=SVI(model, AutoNormal(model), numpyro.optim.Adam(0.05), Trace_ELBO()),
    )
    im.fit(X, y, batch_size=250, epochs=60, num_samples=500, progress=False)
    print(f"final ELBO loss: {im.vi_result.losses[-1]:.1f}")

    w = im.posterior["w"].mean(axis=0)
    print(f"posterior mean of w: {np.round(w, 2)} (true {TRUE_W})")
    print(f"posterior mean of b: {im.posterior['b'].mean():.2f} (true {TRUE_B})")
    assert np.allclose(w, TRUE_W, atol=0.1)

    tree = im.predict(X[:100], store="memory", progress=False)
    y_pred = tree["posterior_predictive"]["y"]
    y_hat = y_pred.mean(("chain", "draw")).values
    print(f"predictions: groups {list(tree.children)}, y shape {y_pred.shape}")
    print(
        f"RMSE of the predictive mean on 100 rows: {np.sqrt(np.mean((y_hat - y[:100]) ** 2)):.3f}"
    )


if __name__ == "__main__":
    main()
