"""A posterior given by ``set_posterior_sample`` (issue 15, item 3).

``set_posterior_sample`` does not trace the kernel; the first call that needs the
kernel's sites traces it, with that call's inputs, before checking ``intervention`` /
``condition`` sites and resolving the default return sites. Results must not depend
on how the posterior got there: a model fitted with SVI and a model given the same
posterior answer alike.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from aimz_core import ImpactModel
from aimz_core.testing import make_model

from .conftest import key_data

KEY = jax.random.key(7)


@pytest.fixture
def given(svi_model: ImpactModel) -> ImpactModel:
    """A fresh model holding the SVI model's posterior, never traced."""
    model = make_model(seed=3).set_posterior_sample(svi_model.posterior)
    assert model.kernel_spec is not None and not model.kernel_spec.traced
    return model


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def test_set_posterior_sample_does_not_trace(given):
    assert set(given.kernel_spec.sample_sites) == set(given.posterior)
    assert given.kernel_spec.return_sites == ("y",)


def test_first_call_replaces_the_untraced_spec(given, svi_model, data):
    X, _ = data
    given.predict_on_batch(X, return_datatree=False, rng_key=KEY)
    spec, fitted = given.kernel_spec, svi_model.kernel_spec
    assert spec.traced and not spec.output_observed
    assert spec.sample_sites == fitted.sample_sites
    assert spec.return_sites == fitted.return_sites == ("y", "mu")


@pytest.mark.parametrize("method", ["predict_on_batch", "sample_posterior_predictive_on_batch"])
def test_on_batch_defaults_and_draws_match_the_fitted_model(given, svi_model, data, method):
    X, _ = data
    out = getattr(given, method)(X, return_datatree=False, rng_key=KEY)
    ref = getattr(svi_model, method)(X, return_datatree=False, rng_key=KEY)
    assert set(out) == set(ref) == {"mu", "y"}
    for site in ref:  # same program, same posterior, same key: the same draws
        np.testing.assert_array_equal(out[site], ref[site])


@pytest.mark.parametrize("method", ["predict", "sample_posterior_predictive"])
def test_streamed_defaults_and_draws_match_the_fitted_model(given, svi_model, data, method):
    X, _ = data
    opts = {"return_datatree": False, "rng_key": KEY, "store": "memory", "progress": False}
    out = getattr(given, method)(X, **opts)
    ref = getattr(svi_model, method)(X, **opts)
    assert set(out) == set(ref) == {"mu", "y"}
    for site in ref:
        np.testing.assert_array_equal(np.asarray(out[site]), np.asarray(ref[site]))


CALLS = {
    "predict_on_batch": lambda m, X, kw: m.predict_on_batch(X, return_datatree=False, **kw),
    "sample_posterior_predictive_on_batch": lambda m, X, kw: m.sample_posterior_predictive_on_batch(
        X, return_datatree=False, **kw
    ),
    "predict": lambda m, X, kw: m.predict(
        X, return_datatree=False, store="memory", progress=False, **kw
    ),
    "sample_posterior_predictive": lambda m, X, kw: m.sample_posterior_predictive(
        X, return_datatree=False, store="memory", progress=False, **kw
    ),
}


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize(
    "handler",
    [
        {"intervention": {"nope": 1.0}},  # misspelled
        {"intervention": {"mu": 0.0}},  # deterministic
        {"condition": {"nope": 1.0}},
        {"condition": {"mu": 0.0}},
    ],
    ids=["do-misspelled", "do-deterministic", "cond-misspelled", "cond-deterministic"],
)
def test_bad_sites_are_refused_alike(given, svi_model, data, call, handler):
    X, _ = data
    for model in (svi_model, given):
        before = key_data(model.rng_key)
        with pytest.raises(ValueError, match="site\\(s\\) not among the kernel's sample sites"):
            CALLS[call](model, X, handler)
        assert key_data(model.rng_key) == before


def test_valid_intervention_matches_the_fitted_model(given, svi_model, data):
    X, _ = data
    kw = {"intervention": {"b": 2.0}, "rng_key": KEY}
    out = given.predict_on_batch(X, return_datatree=False, **kw)
    ref = svi_model.predict_on_batch(X, return_datatree=False, **kw)
    np.testing.assert_array_equal(out["y"], ref["y"])


@pytest.mark.parametrize("on_batch", [False, True])
def test_estimate_effect_refuses_a_bad_site_before_any_work(given, data, tmp_path, on_batch):
    pytest.importorskip("aimz_io")
    X, _ = data
    out = tmp_path / "out"
    out.mkdir()
    before = key_data(given.rng_key)
    extra = {} if on_batch else {"output_dir": out, "progress": False}
    with pytest.raises(ValueError, match="Intervention site\\(s\\) not among"):
        given.estimate_effect(
            args_baseline={"X": X, **extra},
            args_intervention={"X": X, "intervention": {"mu": 1.0}, **extra},
            on_batch=on_batch,
        )
    assert files_under(out) == []
    assert key_data(given.rng_key) == before


def test_estimate_effect_matches_the_fitted_model(given, svi_model, data):
    X, _ = data
    args = {"X": X, "return_datatree": False, "rng_key": KEY}
    kw = {"args_baseline": args, "args_intervention": {**args, "intervention": {"b": 1.0}}}
    eff = given.estimate_effect(on_batch=True, **kw)
    ref = svi_model.estimate_effect(on_batch=True, **kw)
    eff = eff if isinstance(eff, dict) else eff["posterior_predictive"]
    ref = ref if isinstance(ref, dict) else ref["posterior_predictive"]
    for site in ("y", "mu"):
        np.testing.assert_array_equal(np.asarray(eff[site]), np.asarray(ref[site]))
        assert np.abs(np.asarray(eff[site])).max() > 0.0
