"""Guide internals stay internal: ``_auto_latent`` of the AutoContinuous guides never
reaches the posterior, ``sample()``, ``describe()`` or an output tree, and
``set_posterior_sample`` warns about sites that no trace of the kernel records."""

from __future__ import annotations

import warnings

import jax
import numpy as np
import numpyro
import pytest
from aimz_core import ImpactModel, OutputWarning
from aimz_core.recorded_sites import prototype_sites, recorded_sites
from aimz_core.testing import linreg
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal, AutoNormal

LATENTS = {"w", "b", "sigma"}
GUIDES = [AutoMultivariateNormal, AutoDiagonalNormal]


def make(guide: type, kernel=linreg, seed: int = 0) -> ImpactModel:
    svi = SVI(kernel, guide(kernel), numpyro.optim.Adam(0.05), Trace_ELBO())
    return ImpactModel(kernel, rng_key=jax.random.key(seed), inference=svi)


@pytest.fixture(scope="module", params=GUIDES, ids=lambda g: g.__name__)
def fitted(request: pytest.FixtureRequest, data) -> ImpactModel:
    X, y = data
    return make(request.param).fit_on_batch(X, y, num_steps=30, num_samples=10, progress=False)


def test_posterior_and_describe_hold_only_kernel_latents(fitted: ImpactModel) -> None:
    assert set(fitted.posterior) == LATENTS
    sites = fitted.describe()["sites"]
    assert "_auto_latent" not in sites
    assert {name for name, site in sites.items() if site["kind"] == "latent"} == LATENTS


def test_sample_holds_only_kernel_latents(fitted: ImpactModel) -> None:
    draws = fitted.sample(num_samples=4, return_datatree=False)
    assert set(draws) == LATENTS and draws["w"].shape == (4, 2)
    pytest.importorskip("aimz_io")  # DataTree outputs: absent from a core-only install
    tree = fitted.sample(num_samples=4)
    assert set(tree["posterior"].data_vars) == LATENTS


def test_output_trees_hold_only_kernel_latents(fitted: ImpactModel, data) -> None:
    pytest.importorskip("aimz_io")  # DataTree outputs: absent from a core-only install
    X, _ = data
    key = jax.random.key(1)
    on_batch = fitted.predict_on_batch(X, rng_key=key)
    streamed = fitted.predict(X, rng_key=key, store="memory", progress=False)
    for tree in (on_batch, streamed):
        assert set(tree["posterior"].data_vars) == LATENTS
        assert tree["posterior_predictive"]["y"].shape == (1, 10, len(X))


def test_minibatch_fit_drops_guide_only_sites(data) -> None:
    X, y = data
    model = make(AutoMultivariateNormal).fit(X, y, num_samples=5, batch_size=30, progress=False)
    assert set(model.posterior) == LATENTS


def test_set_posterior_sample_warns_on_sites_no_trace_records(fitted: ImpactModel) -> None:
    draws = {k: np.asarray(v) for k, v in fitted.posterior.items()}
    n = len(draws["w"])
    model = make(AutoMultivariateNormal)
    model._kernel_spec = fitted.kernel_spec  # as after a fit
    with pytest.warns(OutputWarning, match=r"No trace of the kernel records the site\(s\) '_auto"):
        model.set_posterior_sample({**draws, "_auto_latent": np.zeros((n, 4), np.float32)})
    assert "_auto_latent" in model.posterior  # kept, as given
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # deterministic sites are recorded by the kernel's trace: no warning
        model.set_posterior_sample({**draws, "mu": np.zeros((n, 3), np.float32)})


def test_set_posterior_sample_uses_the_guide_prototype_trace(fitted: ImpactModel) -> None:
    # A new model over the fitted SVI object: no kernel spec, but the guide's
    # prototype trace (recorded when SVI initialised it) is a trace of the kernel.
    model = ImpactModel(linreg, rng_key=jax.random.key(0), inference=fitted.inference)
    assert model.kernel_spec is None
    assert set(prototype_sites(fitted.inference.guide)) >= LATENTS | {"y", "mu"}
    draws = {"w": np.zeros((3, 2)), "_auto_latent": np.zeros((3, 4))}
    with pytest.warns(OutputWarning, match="'_auto_latent'"):
        model.set_posterior_sample(draws)


def test_set_posterior_sample_without_any_trace_does_not_warn() -> None:
    model = make(AutoNormal)  # never traced, guide not initialised
    assert recorded_sites(model.kernel_spec, model.inference.guide) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.set_posterior_sample({"w": np.zeros((3, 2)), "_auto_latent": np.zeros((3, 4))})
    assert set(model.posterior) == {"w", "_auto_latent"}
