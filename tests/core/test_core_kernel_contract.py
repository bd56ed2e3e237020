"""Kernel contract details of issue 14: wrapped kernels (item 8), reserved site names
(item 10), ``describe`` (item 15), the prior's chain layout (item 16) and the
warnings of ``set_posterior_sample`` (item 17), with the reference's messages.
"""

from __future__ import annotations

import functools
import warnings

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from aimz_core import ImpactModel, KernelValidationError, OutputWarning
from aimz_core.testing import fitted_linreg, linreg, linreg_data, make_model
from numpyro import handlers

from .conftest import key_data

KEY = jax.random.key(3)
X, Y = linreg_data(12)
FIT = {"num_steps": 3, "num_samples": 4, "progress": False}


def _fit(kernel, **kwargs):
    return make_model(kernel).fit_on_batch(X, Y, **FIT, **kwargs)


# ------------------------------------------------------------ item 8: wrappers
@handlers.scale(scale=0.5)
def _scaled(X, y=None):
    linreg(X, y)


@handlers.condition(data={"b": 0.0})
def _conditioned(X, y=None):
    linreg(X, y)


def _noisy(X, y=None, noise=1.0):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(X @ w, noise), obs=y)


@pytest.mark.parametrize(
    "kernel",
    [_scaled, _conditioned, functools.partial(handlers.scale(scale=2.0)(_noisy), noise=0.5)],
    ids=["scale-decorator", "condition-decorator", "partial-of-decorated"],
)
def test_handler_wrapped_kernel_fits_and_predicts(kernel):
    model = _fit(kernel)
    assert np.isfinite(model.vi_result.losses).all()
    assert model.predict_on_batch(X, return_datatree=False)["y"].shape == (4, len(X))
    assert model.describe()["arguments"][:2] == ["X", "y"]


def test_scale_decorator_runs_the_kernel_as_given():
    """The decorated kernel is run wrapped: its losses are those of the function form."""
    losses = [
        _fit(kernel, rng_key=KEY).vi_result.losses
        for kernel in (_scaled, handlers.scale(linreg, scale=0.5), linreg)
    ]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-6)
    assert not np.allclose(losses[0], losses[2])


def test_partial_binds_arguments_out_of_the_signature():
    model = make_model(functools.partial(_noisy, noise=0.5))
    assert model.describe()["arguments"] == ["X", "y", "noise"]
    with pytest.raises(KernelValidationError, match="variable arguments"):
        make_model(handlers.scale(scale=2.0)(lambda *args: None))
    with pytest.raises(KernelValidationError, match="binds arguments"):
        make_model(functools.partial(_noisy, missing=1.0))


# ------------------------------------------------- item 10: reserved site names
def _site_named(name: str, kind: str = "sample"):
    def kernel(X, y=None):
        w = numpyro.sample("w", dist.Normal())
        if kind == "sample":
            numpyro.sample(name, dist.Normal())
        else:
            numpyro.deterministic(name, 2.0 * w)
        with numpyro.plate("obs", X.shape[0]):
            numpyro.sample("y", dist.Normal(w * X[:, 0], 1.0), obs=y)

    return kernel


@pytest.mark.parametrize(
    ("name", "kind", "match"),
    [
        ("draw", "sample", r"The site name\(s\) 'draw' are reserved for a dimension"),
        ("chain", "deterministic", r"The site name\(s\) 'chain' are reserved"),
        ("x/y", "sample", r"Invalid site names containing '/': \['x/y'\]\. "),
    ],
)
@pytest.mark.parametrize("method", ["fit", "fit_on_batch", "train_on_batch"])
def test_reserved_site_names_rejected_at_fit(name, kind, match, method):
    model = make_model(_site_named(name, kind))
    key = key_data(model.rng_key)
    call = {
        "fit": lambda: model.fit(X, Y, num_samples=2, progress=False),
        "fit_on_batch": lambda: model.fit_on_batch(X, Y, **FIT),
        "train_on_batch": lambda: model.train_on_batch(X, Y),
    }[method]
    with pytest.raises(KernelValidationError, match=match):
        call()
    assert not model.is_fitted() and model.kernel_spec is None
    if method != "fit":  # `fit` splits the key before its first trace (see _fit.fit)
        assert key_data(model.rng_key) == key


# ----------------------------------------------------- fit messages (reference)
def _masked_output(X, y=None):
    w = numpyro.sample("w", dist.Normal())
    mask = np.arange(X.shape[0]) % 2 == 0
    numpyro.sample("y", dist.Normal(w * X[:, 0], 1.0), obs=y, obs_mask=mask)


def _no_output(X, y=None):
    numpyro.sample("out", dist.Normal(X[:, 0], 1.0), obs=y)


def _unobserved(X, y=None):
    numpyro.sample("y", dist.Normal(X[:, 0], 1.0))


@pytest.mark.parametrize(
    ("kernel", "match"),
    [
        (
            _masked_output,
            r"^Expected 'y' to have type 'sample', got 'deterministic'\. `obs_mask` on the "
            r"output site is not supported; mask its distribution instead, as in "
            r"`sample\('y', d\.mask\(mask\), obs=y\)`\.$",
        ),
        (_no_output, r"^Kernel must include a sample or deterministic site named 'y'\. "),
        (_unobserved, r"^'y' must be observed \(i\.e\., defined with `obs=` in the kernel\)\."),
    ],
)
def test_fit_messages_start_with_the_reference_sentence(kernel, match):
    with pytest.raises(KernelValidationError, match=match):
        _fit(kernel)


# --------------------------------------------------------- item 15: describe()
def _treated(X, t=None, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("treated", dist.Bernoulli(0.5), obs=t)
        mu = numpyro.deterministic("mu", X @ w)
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def test_describe_dims_and_observed_kernel_arguments():
    model = _fit(_treated, t=np.ones(len(X)))
    sites = model.describe()["sites"]
    assert sites["treated"]["kind"] == "observed" and sites["y"]["kind"] == "observed"
    assert sites["w"] == {"kind": "latent", "dims": ["w_dim_0"], "draw_shape": [2]}
    assert sites["mu"]["dims"] == ["obs"] and sites["y"]["dims"] == ["obs"]
    assert sites["treated"]["dims"] == ["obs"]


def test_describe_counts_of_an_unfitted_model():
    info = make_model().describe()
    assert (info["num_samples"], info["num_chains"], info["fitted"]) == (0, 1, False)


def test_describe_dims_unknown_without_a_trace():
    sites = fitted_linreg(num_draws=4).describe()["sites"]
    assert sites["w"] == {"kind": "latent", "dims": None, "draw_shape": [2]}


# -------------------------------------------- item 16: the prior has one chain
def test_prior_predictive_on_batch_uses_one_chain():
    pytest.importorskip("aimz_io")
    model = fitted_linreg(num_draws=4)
    model.set_posterior_sample(dict(model.posterior), num_chains=2)
    tree = model.sample_prior_predictive_on_batch(X, num_samples=5, rng_key=KEY)
    assert dict(tree["prior_predictive"].sizes)["chain"] == 1
    assert tree["prior_predictive"].sizes["draw"] == 5
    post = model.predict_on_batch(X, rng_key=KEY)
    assert post["posterior_predictive"].sizes["chain"] == 2


def _chain_plate(X, y=None):
    w = numpyro.sample("w", dist.Normal())
    with numpyro.plate("chain", X.shape[0]):
        numpyro.sample("y", dist.Normal(w * X[:, 0], 1.0), obs=y)


def test_prior_predictive_on_batch_plate_named_chain_warns():
    pytest.importorskip("aimz_io")
    model = make_model(_chain_plate)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tree = model.sample_prior_predictive_on_batch(X, num_samples=3, rng_key=KEY)
    messages = [str(w.message) for w in caught if issubclass(w.category, OutputWarning)]
    assert messages[0].startswith(
        "The plate name 'chain' is reserved for a dimension of the output trees, so the "
        "sites in the plate keep the default dimension names."
    )
    assert len(messages) == 1  # no second warning from building the tree
    assert tree["prior_predictive"]["y"].dims == ("chain", "draw", "y_dim_0")


# --------------------------------------- item 17: set_posterior_sample warnings
@pytest.fixture(scope="module")
def traced() -> ImpactModel:
    """A fitted ``linreg`` model (its kernel traced, its guide initialised)."""
    return _fit(linreg)


def test_set_posterior_sample_warns_on_missing_latent_sites(traced):
    model = make_model(linreg)
    model._kernel_spec = traced.kernel_spec  # known sites, no fit needed
    draws = {k: v for k, v in traced.posterior.items() if k != "sigma"}
    with pytest.warns(OutputWarning) as caught:
        model.set_posterior_sample(draws)
    assert str(caught[0].message).startswith(
        "`posterior_sample` has no draws for the latent site(s) 'sigma'; the predictive "
        "methods draw them from the prior."
    )
    out = model.predict_on_batch(X, rng_key=KEY, return_datatree=False)
    assert out["y"].shape == (4, len(X)) and np.isfinite(out["y"]).all()


def test_set_posterior_sample_missing_latents_known_from_the_guide(traced):
    model = make_model(linreg)
    model._inference = traced.inference  # an initialised guide keeps a model trace
    with pytest.warns(OutputWarning, match=r"no draws for the latent site\(s\) 'b', 'sigma'"):
        model.set_posterior_sample({"w": traced.posterior["w"]})


def test_set_posterior_sample_warns_on_sites_no_trace_records(traced):
    model = make_model(linreg)
    model._kernel_spec = traced.kernel_spec
    draws = {**traced.posterior, "extra": np.zeros(4)}
    with pytest.warns(OutputWarning, match=r"No trace of the kernel records the site\(s\) 'extra'"):
        model.set_posterior_sample(draws)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.set_posterior_sample(traced.posterior)  # complete: no warning


def test_set_posterior_sample_reference_messages():
    model = make_model(linreg)
    with pytest.raises(ValueError, match=r"^The site name\(s\) 'draw' are reserved for a "):
        model.set_posterior_sample({"w": np.zeros((4, 2)), "draw": np.zeros(4)})
    with pytest.warns(UserWarning, match=r"^The output site 'y' is removed\.$"):
        model.set_posterior_sample({"w": np.zeros((4, 2)), "y": np.zeros((4, 3))})
