"""Interventions and ``estimate_effect``: what if every unit were treated?
=======================================================================

The kernel models a binary treatment ``t`` that depends on a covariate (so naive
comparisons are confounded) and an outcome that depends on both. The intervention
``{"treatment": 1.0}`` fixes the ``treatment`` sample site with
:class:`numpyro.handlers.do`; :meth:`aimz.ImpactModel.estimate_effect` runs both scenarios
with one shared key (paired draws) and returns the difference as a DataTree, which
:func:`aimz.summarize_effect` turns into a table.

Run: ``python examples/03_interventions_effects.py``
"""

from __future__ import annotations

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
from aimz import ImpactModel, format_summary, summarize_effect
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

TRUE_EFFECT = 2.0


def model(X, t=None, y=None):
    """Treatment assignment (``treatment``) and outcome (``y``) given covariates ``X``."""
    a = numpyro.sample("a", dist.Normal(0.0, 1.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 2.0))
    tau = numpyro.sample("tau", dist.Normal(0.0, 2.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("unit", X.shape[0]):
        treatment = numpyro.sample("treatment", dist.Bernoulli(logits=a * X[:, 0]), obs=t)
        numpyro.sample("y", dist.Normal(beta * X[:, 0] + tau * treatment, sigma), obs=y)


def main() -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(1_000, 1)).astype(np.float32)
    t = rng.binomial(1, 1 / (1 + np.exp(-1.5 * X[:, 0]))).astype(np.float32)
    y = (1.0 * X[:, 0] + TRUE_EFFECT * t + rng.normal(size=1_000)).astype(np.float32)
    naive = y[t == 1].mean() - y[t == 0].mean()
    print(f"naive difference in means: {naive:.2f} (confounded; true effect {TRUE_EFFECT})")

    im = ImpactModel(
        model,
        rng_key=jax.random.key(2),
        inference=SVI(model, AutoNormal(model), numpyro.optim.Adam(0.05), Trace_ELBO()),
    )
    im.fit_on_batch(X, y, t=t, num_steps=500, num_samples=400, progress=False)

    # Average treatment effect: do(treatment=1) versus do(treatment=0).
    effect = im.estimate_effect(
        args_baseline={"X": X, "t": t, "intervention": {"treatment": 0.0}, "store": "memory"},
        args_intervention={"X": X, "t": t, "intervention": {"treatment": 1.0}, "store": "memory"},
    )
    table = summarize_effect(effect, hdi_prob=0.94)
    print("effect of do(treatment=1) vs do(treatment=0), averaged over units:")
    print(format_summary(table))
    assert abs(float(table["mean"].iloc[0]) - TRUE_EFFECT) < 0.3
    plot_effect(effect, table, naive)


def plot_effect(effect, table, naive: float) -> None:
    """Draw the posterior of the average effect on ``y`` with its HDI (needs matplotlib)."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:  # the example still runs without matplotlib
        return
    group = next(g for g in ("predictions", "posterior_predictive") if g in effect.children)
    y = effect[group]["y"]
    # One average effect per posterior draw: mean over every non-sample dim.
    per_draw = y.mean([d for d in y.dims if d not in ("chain", "draw")]).values.ravel()
    row = table[table["site"] == "y"].iloc[0]

    _, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
    ax.hist(per_draw, bins=30, color="C0", alpha=0.7, label="posterior draws")
    ax.axvspan(row["hdi_low"], row["hdi_high"], color="C0", alpha=0.15, label="94% HDI")
    ax.axvline(row["mean"], color="C0", lw=2, label=f"posterior mean {row['mean']:.2f}")
    ax.axvline(TRUE_EFFECT, color="k", ls="--", label=f"true effect {TRUE_EFFECT}")
    ax.axvline(naive, color="C3", ls=":", label=f"naive difference {naive:.2f}")
    ax.set_xlabel("average effect of do(treatment=1) vs do(treatment=0) on y")
    ax.set_ylabel("draws")
    ax.legend(loc="upper center", fontsize="small")
    if plt.get_backend().lower() != "agg":
        plt.show()


if __name__ == "__main__":
    main()
