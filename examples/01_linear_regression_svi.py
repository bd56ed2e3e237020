"""Linear regression with SVI: fit over minibatches, then predict
==============================================================

Fits ``y = X @ w + b + noise`` with an ``AutoNormal`` guide, using
:meth:`aimz.ImpactModel.fit` (minibatches, several epochs), and checks that the
posterior means recover the weights the data were simulated with. Predictions come
back in memory (``store="memory"``) as an :class:`xarray.DataTree`.

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
N_ROWS = 1_000


def model(X, y=None, n=N_ROWS):
    """Bayesian linear regression kernel: input ``X``, output ``y``.

    The plate declares the ``n`` rows of the whole data with the batch as its
    subsample, so NumPyro scales each minibatch's likelihood to the whole data.
    """
    w = numpyro.sample("w", dist.Normal().expand([X.shape[1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal())
    sigma = numpyro.sample("sigma", dist.Exponential())
    with numpyro.plate("obs", n, subsample_size=X.shape[0]):
        numpyro.sample("y", dist.Normal(jnp.dot(X, w) + b, sigma), obs=y)


def main() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N_ROWS, 3)).astype(np.float32)
    y = (X @ TRUE_W + TRUE_B + rng.normal(scale=0.5, size=N_ROWS)).astype(np.float32)

    im = ImpactModel(
        model,
        rng_key=jax.random.key(0),
        inference=SVI(model, AutoNormal(model), numpyro.optim.Adam(0.05), Trace_ELBO()),
    )
    im.fit(X, y, batch_size=250, epochs=60, num_samples=500, progress=False)
    print(f"final ELBO loss: {im.vi_result.losses[-1]:.1f}")

    w = im.posterior["w"].mean(axis=0)
    print(f"posterior mean of w: {np.round(np.asarray(w, dtype=float), 2)} (true {TRUE_W})")
    print(f"posterior mean of b: {im.posterior['b'].mean():.2f} (true {TRUE_B})")
    assert np.allclose(w, TRUE_W, atol=0.1)

    tree = im.predict(X[:100], store="memory", progress=False)
    y_pred = tree["posterior_predictive"]["y"]
    y_hat = y_pred.mean(("chain", "draw")).values
    print(f"predictions: groups {list(tree.children)}, y shape {y_pred.shape}")
    print(
        f"RMSE of the predictive mean on 100 rows: {np.sqrt(np.mean((y_hat - y[:100]) ** 2)):.3f}"
    )
    plot_fit(y[:100], y_pred)


def plot_fit(y_obs: np.ndarray, y_pred) -> None:
    """Draw predicted against observed ``y`` with 94% intervals (needs matplotlib)."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:  # the example still runs without matplotlib
        return
    draws = y_pred.stack(sample=("chain", "draw")).transpose("sample", ...).values
    mean = draws.mean(axis=0)
    low, high = np.quantile(draws, [0.03, 0.97], axis=0)

    _, ax = plt.subplots(figsize=(5, 5), layout="constrained")
    ax.errorbar(y_obs, mean, yerr=[mean - low, high - mean], fmt="o", ms=3, alpha=0.6)
    lims = [min(y_obs.min(), low.min()), max(y_obs.max(), high.max())]
    ax.plot(lims, lims, color="k", ls="--", lw=1, label="predicted = observed")
    ax.set_xlabel("observed y")
    ax.set_ylabel("posterior predictive mean (94% interval)")
    ax.legend(loc="upper left")
    if plt.get_backend().lower() != "agg":
        plt.show()


if __name__ == "__main__":
    main()
