"""Model comparison and predictive checks: fit, stream, LOO, compare, PPC
======================================================================

The whole loop an analyst runs after fitting, on outputs of any size:

1. fit two candidate kernels (a straight line and a curve) with SVI;
2. stream each model's pointwise log-likelihood to a chunked Zarr store with
   :meth:`aimz.ImpactModel.log_likelihood`;
3. compute PSIS-LOO chunk by chunk with :func:`aimz.loo` (no chunk holds more than a
   block of rows, so this works for stores far larger than memory) and compare the
   models with ``arviz_stats.compare`` when ArviZ 1.x is installed;
4. summarize the posterior predictive per row with :func:`aimz.summarize_predictive`;
5. load a reproducible random subsample of rows with :func:`aimz.ppc_subsample` and
   draw a posterior predictive check (``arviz_plots.plot_ppc_dist`` when installed,
   otherwise the same picture with Matplotlib).

Run: ``python examples/07_model_comparison.py``
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from aimz import ImpactModel, loo, ppc_subsample, summarize_predictive
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

N_ROWS = 2_000
BATCH = 500  # rows per streamed batch: each store has 4 chunks of rows


def line(X, y=None):
    """``y`` is a straight line in ``x`` plus noise."""
    a = numpyro.sample("a", dist.Normal(0.0, 5.0))
    b = numpyro.sample("b", dist.Normal(0.0, 5.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(a + b * X[:, 0], sigma), obs=y)


def curve(X, y=None):
    """``y`` is a quadratic in ``x`` plus noise."""
    a = numpyro.sample("a", dist.Normal(0.0, 5.0))
    b = numpyro.sample("b", dist.Normal(0.0, 5.0))
    c = numpyro.sample("c", dist.Normal(0.0, 5.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(2.0))
    with numpyro.plate("obs", X.shape[0]):
        mu = a + b * X[:, 0] + c * jnp.square(X[:, 0])
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def fit(kernel, X, y, seed: int) -> ImpactModel:
    """Fit ``kernel`` with SVI (AutoNormal) and draw 300 posterior samples."""
    guide = AutoNormal(kernel)
    model = ImpactModel(
        kernel,
        rng_key=jax.random.key(seed),
        inference=SVI(kernel, guide, numpyro.optim.Adam(0.05), Trace_ELBO()),
    )
    return model.fit_on_batch(X, y, num_steps=800, num_samples=300, progress=False)


def main() -> None:
    rng = np.random.default_rng(7)
    X = rng.uniform(-2.0, 2.0, size=(N_ROWS, 1)).astype(np.float32)
    y = (1.0 + 0.5 * X[:, 0] + 0.8 * X[:, 0] ** 2 + rng.normal(0.0, 0.5, N_ROWS)).astype(np.float32)
    models = {"line": fit(line, X, y, seed=0), "curve": fit(curve, X, y, seed=1)}

    with tempfile.TemporaryDirectory() as tmp:
        # 2. Stream the pointwise log-likelihood of each model to Zarr, 4 chunks of rows.
        stores = {
            name: model.log_likelihood(
                X, y, batch_size=BATCH, output_dir=Path(tmp) / name, progress=False
            )
            for name, model in models.items()
        }
        # 3. PSIS-LOO, chunk by chunk. The pointwise values stay lazy.
        results = {name: loo(tree) for name, tree in stores.items()}
        for name, res in results.items():
            print(f"{name:>5}: elpd_loo {res.elpd:9.1f} (se {res.se:5.1f}), p_loo {res.p:4.1f}")
        diff = results["curve"].elpd - results["line"].elpd
        print(f"elpd_loo difference (curve - line): {diff:.1f}")
        try:
            import arviz_stats
        except ImportError:
            print("arviz-stats is not installed (it needs Python >= 3.12): no compare table")
        else:
            print(arviz_stats.compare(results).round(1).to_string())

        # 4. Per-row summaries of the better model's posterior predictive, lazily.
        best = models["curve"]
        predictive = best.predict(X, batch_size=BATCH, output_dir=Path(tmp) / "pp", progress=False)
        per_row = summarize_predictive(predictive, hdi_prob=0.9)
        first = per_row["y"].isel(obs=0).compute()
        print(
            "row 0: observed {:.2f}, predictive mean {:.2f}, 90% HDI [{:.2f}, {:.2f}]".format(
                float(y[0]),
                float(first.sel(stat="mean")),
                float(first.sel(stat="hdi_low")),
                float(first.sel(stat="hdi_high")),
            )
        )
        inside = (
            (per_row["y"].sel(stat="hdi_low") <= y) & (y <= per_row["y"].sel(stat="hdi_high"))
        ).mean()
        print(f"share of rows inside their 90% HDI: {float(inside):.2f}")

        # 5. A predictive check on 500 random rows (their indices are recorded).
        sample = ppc_subsample(predictive, n_rows=500, seed=0, observed={"y": y})
        print(f"PPC subsample: {sample.posterior_predictive.sizes['obs']} rows, seed 0")
        plot_ppc(sample)


def plot_ppc(sample) -> None:
    """Draw the observed ``y`` against its posterior predictive on the subsample."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:  # the example still runs without matplotlib
        return
    try:
        import arviz_plots
    except ImportError:
        observed = sample.observed_data["y"].values
        draws = sample.posterior_predictive["y"].values.reshape(-1, observed.size)
        _, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
        for row in draws[:50]:
            ax.hist(row, bins=40, histtype="step", density=True, color="C0", alpha=0.2)
        ax.hist(observed, bins=40, histtype="step", density=True, color="k", lw=2)
        ax.set_xlabel("y (50 predictive draws in blue, observed in black)")
    else:
        arviz_plots.plot_ppc_dist(sample, backend="matplotlib")
    if plt.get_backend().lower() != "agg":
        plt.show()


if __name__ == "__main__":
    main()
