"""Kernel contract (spec section 2), KernelSpec (section 3) and ``return_sites``."""

from __future__ import annotations

import functools
import warnings

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from aimz_core import AimzWarning, ImpactModel, KernelSpec, KernelValidationError
from aimz_core import model as impact_model_module
from aimz_core.kernel_spec import coerce_return_sites
from aimz_core.testing import linreg, make_model, make_svi
from numpyro import handlers

from ..aimz_testing import assert_close_float, assert_sites_close
from .conftest import N_DRAWS

KEY = jax.random.key(0)


# --------------------------------------------------------------------- signature
def _ok(X, y=None):
    numpyro.sample("y", dist.Normal(X.sum(-1), 1.0), obs=y)


def _varargs(X, y=None, *args):
    pass


def _varkw(X, y=None, **kwargs):
    pass


def _no_input(data, y=None):
    pass


def _no_io(a, b=None):
    pass


def _input_default(X=None, y=None):
    pass


def _output_zero(X, y=0):
    pass


def _output_array(X, y=np.zeros(3)):  # noqa: B008
    pass


def _posonly(X, /, y=None):
    pass


@pytest.mark.parametrize(
    ("kernel", "match"),
    [
        (_varargs, r"must not accept variable arguments.*args"),
        (_varkw, r"must not accept variable arguments.*kwargs"),
        (_no_input, r"Kernel must accept 'X' as argument\(s\).*set `param_input` and"),
        (_no_io, r"Kernel must accept 'X', 'y' as argument\(s\)"),
        (_input_default, r"input parameter 'X' must not have a default"),
        (_output_zero, r"output parameter 'y' must default to `None` \(got 0\)"),
        (_output_array, r"output parameter 'y' must default to `None`"),
        (_posonly, r"positional-only: X"),
    ],
)
def test_signature_rejected_at_construction(kernel, match):
    with pytest.raises(KernelValidationError, match=match):
        ImpactModel(kernel, rng_key=KEY, inference=make_svi(_ok))


def test_signature_checks_use_custom_names():
    with pytest.raises(KernelValidationError, match=r"'inputs'"):
        ImpactModel(_ok, rng_key=KEY, inference=make_svi(_ok), param_input="inputs")
    # the same kernel is fine once the names match its parameters
    model = ImpactModel(
        _no_io, rng_key=KEY, inference=make_svi(_ok), param_input="a", param_output="b"
    )
    assert (model.param_input, model.param_output) == ("a", "b")


def test_partial_and_handler_wrapped_kernels(data):
    X, _ = data

    def scaled(X, y=None, scale=1.0):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0))
        numpyro.deterministic("mu", scale * w * X[:, 0])
        with numpyro.plate("obs", X.shape[0]):
            numpyro.sample("y", dist.Normal(scale * w * X[:, 0], 1.0), obs=y)

    kernel = functools.partial(scaled, scale=3.0)
    model = ImpactModel(kernel, rng_key=KEY, inference=make_svi(kernel))
    model.set_posterior_sample({"w": np.linspace(-1.0, 1.0, 8)})
    out = model.predict_on_batch(X, rng_key=KEY, return_sites="mu", return_datatree=False)
    expected = 3.0 * np.linspace(-1.0, 1.0, 8)[:, None] * X[:, 0]
    np.testing.assert_allclose(out["mu"], expected, rtol=1e-5, atol=1e-6)
    assert model.describe()["kernel"] == "test_partial_and_handler_wrapped_kernels.<locals>.scaled"

    # a partial of a bad kernel is still rejected
    with pytest.raises(KernelValidationError, match="variable arguments"):
        ImpactModel(functools.partial(_varkw, y=None), rng_key=KEY, inference=make_svi(_ok))

    # a kernel wrapped in NumPyro handlers validates against the wrapped model
    wrapped = handlers.scale(linreg, scale=1.0)
    model = ImpactModel(wrapped, rng_key=KEY, inference=make_svi(linreg))
    spec_model = model.sample_prior_predictive_on_batch(
        X, num_samples=4, rng_key=KEY, return_datatree=False
    )
    assert set(spec_model) == {"y", "mu"}


# -------------------------------------------------------------------------- body
def _slash(X, y=None):
    numpyro.sample("a/b", dist.Normal())
    numpyro.sample("y", dist.Normal(X.sum(-1), 1.0), obs=y)


def _missing_output(X, y=None):
    numpyro.sample("out", dist.Normal(X.sum(-1), 1.0), obs=y)


def _unobserved(X, y=None):
    numpyro.sample("y", dist.Normal(X.sum(-1), 1.0))


def _deterministic_output(X, y=None):
    w = numpyro.sample("w", dist.Normal())
    numpyro.deterministic("y", w * X[:, 0])


def _conflict(X, y=None, z=None):
    numpyro.sample("z", dist.Normal())
    numpyro.sample("y", dist.Normal(X.sum(-1), 1.0), obs=y)


@pytest.mark.parametrize(
    ("kernel", "match"),
    [
        (_slash, r"Invalid site names containing '/': \['a/b'\]"),
        (_missing_output, r"must include a sample or deterministic site named 'y'.*'out'"),
        (_unobserved, r"'y' must be observed \(i\.e\., defined with `obs=` in the kernel\)"),
        (_deterministic_output, r"Expected 'y' to have type 'sample', got 'deterministic'"),
        (_conflict, r"Kernel parameters conflict with model sites: z"),
    ],
)
def test_body_rejected_when_fitting(kernel, match, data):
    X, y = data
    model = ImpactModel(kernel, rng_key=KEY, inference=make_svi(_ok))
    with pytest.raises(KernelValidationError, match=match):
        model.fit_on_batch(X, y, num_steps=1, num_samples=1, progress=False)
    assert model.kernel_spec is None
    assert not model.is_fitted()
    # the trace happens before any training step or key use
    with pytest.raises(KernelValidationError, match=match):
        model.train_on_batch(X, y)
    assert model._vi_state is None


@pytest.mark.parametrize(
    ("kernel", "match"),
    [
        (_slash, "Invalid site names containing '/'"),
        (_missing_output, "must include a sample or deterministic site named 'y'"),
        (_conflict, "conflict with model sites: z"),
    ],
)
def test_body_rejected_for_prior_predictive(kernel, match, data):
    X, _ = data
    model = ImpactModel(kernel, rng_key=KEY, inference=make_svi(_ok))
    with pytest.raises(KernelValidationError, match=match):
        model.sample_prior_predictive_on_batch(X, num_samples=2, return_datatree=False)


def test_unobserved_and_deterministic_output_allowed_for_prior(data):
    X, _ = data
    model = ImpactModel(_deterministic_output, rng_key=KEY, inference=make_svi(_ok))
    out = model.sample_prior_predictive_on_batch(
        X, num_samples=5, rng_key=KEY, return_sites=["y", "w"], return_datatree=False
    )
    np.testing.assert_allclose(out["y"], out["w"][:, None] * X[:, 0], rtol=1e-6)
    assert model.kernel_spec == KernelSpec(True, ("w",), ("y",), False)

    model = ImpactModel(_unobserved, rng_key=KEY, inference=make_svi(_ok))
    out = model.sample_prior_predictive_on_batch(X, num_samples=3, return_datatree=False)
    assert out["y"].shape == (3, len(X))


def test_custom_param_names_end_to_end(data, svi_model):
    """Custom ``param_input``/``param_output`` through every kind of call."""
    X, y = data

    def kernel(inputs, target=None):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([inputs.shape[1]]).to_event(1))
        b = numpyro.sample("b", dist.Normal(0.0, 1.0))
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        mu = numpyro.deterministic("mu", inputs @ w + b)
        with numpyro.plate("obs", inputs.shape[0]):
            numpyro.sample("target", dist.Normal(mu, sigma), obs=target)

    model = ImpactModel(
        kernel,
        rng_key=KEY,
        inference=make_svi(kernel),
        param_input="inputs",
        param_output="target",
    )
    with pytest.raises(KernelValidationError, match="Kernel must accept 'X', 'y'"):
        ImpactModel(kernel, rng_key=KEY, inference=make_svi(kernel))

    model.fit(X, y, batch_size=20, epochs=3, num_samples=N_DRAWS, progress=False)
    assert model.kernel_spec.return_sites == ("target", "mu")
    assert len(model.vi_result.losses) == 9
    assert model.posterior["w"].shape == (N_DRAWS, 2)

    out = model.predict_on_batch(X, rng_key=KEY, return_datatree=False)
    assert set(out) == {"target", "mu"}
    streamed = model.predict(
        X, shard_axis="draw", batch_size=16, rng_key=KEY, progress=False, return_datatree=False
    )
    assert_sites_close(streamed, out)  # same keys, other compiled program: float tolerance
    obs = model.predict(X, batch_size=25, rng_key=KEY, progress=False, return_datatree=False)
    assert_close_float(obs["mu"], out["mu"])

    ll = model.log_likelihood(X, y, batch_size=25, progress=False, return_datatree=False)
    assert set(ll) == {"target"} and ll["target"].shape == (N_DRAWS, len(X))

    prior = model.sample_prior_predictive(
        X, num_samples=N_DRAWS, batch_size=25, progress=False, return_datatree=False
    )
    assert prior["target"].shape == (N_DRAWS, len(X))

    # the reserved names follow the custom names
    with pytest.raises(TypeError, match="'inputs' is a reserved kernel parameter"):
        model.predict_on_batch(X, inputs=X, return_datatree=False)
    with pytest.raises(TypeError, match="'target' is a reserved kernel parameter"):
        model.fit(X, y, target=y)

    # same posterior through a model with the default names gives the same draws: both
    # kernels trace to the same computation, so the compiled programs are the same (exact)
    twin = ImpactModel(
        kernel, rng_key=KEY, inference=make_svi(kernel), param_input="inputs", param_output="target"
    )
    twin.set_posterior_sample(dict(svi_model.posterior))
    ref = svi_model.predict_on_batch(X, rng_key=KEY, return_sites="y", return_datatree=False)
    got = twin.predict_on_batch(X, rng_key=KEY, return_sites="target", return_datatree=False)
    np.testing.assert_array_equal(ref["y"], got["target"])


# --------------------------------------------------------------------- KernelSpec
def test_kernel_spec_from_fit(svi_model):
    spec = svi_model.kernel_spec
    assert spec == KernelSpec(
        traced=True,
        sample_sites=("w", "b", "sigma", "y"),
        return_sites=("y", "mu"),
        output_observed=True,
    )
    with pytest.raises(AttributeError):
        spec.traced = False  # frozen dataclass
    with pytest.raises(AttributeError):
        svi_model.kernel_spec = None  # read-only property


def test_kernel_spec_lazy_idempotent_and_merged(data, monkeypatch):
    X, y = data
    calls = []  # one entry per body validation, i.e. per trace that builds a spec
    real = impact_model_module.validate_kernel_body

    def counting(trace, **kwargs):
        calls.append((kwargs["with_output"], trace["y"].get("is_observed")))
        return real(trace, **kwargs)

    monkeypatch.setattr(impact_model_module, "validate_kernel_body", counting)

    def kernel(X, y=None):
        w = numpyro.sample("w", dist.Normal())
        mu = numpyro.deterministic("mu", w * X[:, 0])
        if y is not None:
            numpyro.deterministic("resid", y - mu)
        with numpyro.plate("obs", X.shape[0]):
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    model = ImpactModel(kernel, rng_key=KEY, inference=make_svi(kernel))
    assert model.kernel_spec is None and not calls  # lazy: nothing traced yet
    key_before = np.asarray(jax.random.key_data(model.rng_key))

    model.sample_prior_predictive_on_batch(X, num_samples=2, rng_key=KEY, return_datatree=False)
    prior_spec = model.kernel_spec
    assert prior_spec == KernelSpec(True, ("w", "y"), ("y", "mu"), False)
    assert calls == [(False, False)]  # traced without the output
    # building the spec does not consume the model key
    np.testing.assert_array_equal(key_before, jax.random.key_data(model.rng_key))

    model.sample_prior_predictive_on_batch(X, num_samples=2, rng_key=KEY, return_datatree=False)
    model.sample_prior_predictive(
        X, num_samples=2, rng_key=KEY, progress=False, return_datatree=False
    )
    assert model.kernel_spec is prior_spec and len(calls) == 1  # idempotent

    # a fitting trace upgrades a prior-only spec and merges the sites
    model.train_on_batch(X, y, rng_key=KEY)
    assert calls == [(False, False), (True, True)]
    assert model.kernel_spec == KernelSpec(
        traced=True,
        sample_sites=("w", "y"),
        return_sites=("y", "mu", "resid"),
        output_observed=True,
    )
    fitted_spec = model.kernel_spec
    model.train_on_batch(X, y)
    model.sample_prior_predictive_on_batch(X, num_samples=2, rng_key=KEY, return_datatree=False)
    assert model.kernel_spec is fitted_spec and len(calls) == 2


def test_kernel_spec_merge_and_covers():
    old = KernelSpec(True, ("w", "z"), ("y", "a"), False)
    new = KernelSpec(True, ("w", "y"), ("y", "b"), True)
    merged = old.merge(new)
    assert merged == KernelSpec(True, ("w", "y", "z"), ("y", "b", "a"), True)
    assert old.covers(with_output=False) and not old.covers(with_output=True)
    assert merged.covers(with_output=True)
    untraced = KernelSpec(False, ("w",), ("y",), False)
    assert not untraced.covers(with_output=False)


def test_set_posterior_creates_untraced_spec(data):
    X, _ = data
    model = make_model()
    model.set_posterior_sample({"w": np.zeros((4, 2)), "b": np.zeros(4), "sigma": np.ones(4)})
    assert model.kernel_spec == KernelSpec(False, ("w", "b", "sigma"), ("y",), False)
    # the first call traces the kernel (issue 15, item 3): the untraced spec is
    # replaced and deterministic sites are returned by default, as for a fitted model
    out = model.predict_on_batch(X, rng_key=KEY, return_datatree=False)
    assert set(out) == {"y", "mu"}
    assert model.kernel_spec == KernelSpec(True, ("w", "b", "sigma", "y"), ("y", "mu"), False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "mu" has been seen: no "not seen" warning
        out = model.predict_on_batch(X, rng_key=KEY, return_sites="mu", return_datatree=False)
    np.testing.assert_array_equal(out["mu"], np.zeros((4, len(X))))


# ------------------------------------------------------------------- return_sites
def test_return_sites_variants(svi_model, data):
    X, _ = data
    predict = functools.partial(svi_model.predict_on_batch, X, rng_key=KEY, return_datatree=False)
    assert set(predict()) == {"y", "mu"}
    assert list(predict(return_sites="mu")) == ["mu"]
    assert set(predict(return_sites=("y", "mu"))) == {"y", "mu"}
    assert predict(return_sites=[]) == {}
    # any iterable; a latent site comes back as the substituted posterior draws
    out = predict(return_sites=iter(["w", "y"]))
    assert set(out) == {"w", "y"}
    np.testing.assert_array_equal(out["w"], np.asarray(svi_model.posterior["w"]))
    assert out["y"].shape == (N_DRAWS, len(X))

    with pytest.warns(AimzWarning, match=r"'nope'.* not seen in any trace so far"):
        out = predict(return_sites=["y", "nope"])
    assert set(out) == {"y"}
    with pytest.raises(TypeError, match="must contain strings only"):
        predict(return_sites=["y", 3])
    with pytest.raises(TypeError, match="`return_sites` must be a site name"):
        predict(return_sites=5)


def test_coerce_return_sites_unit():
    spec = KernelSpec(True, ("w", "y"), ("y", "mu"), True)
    assert coerce_return_sites(None, spec, "y") == ("y", "mu")
    assert coerce_return_sites(None, None, "out") == ("out",)
    assert coerce_return_sites("w", spec, "y") == ("w",)
    assert coerce_return_sites(["mu", "mu", "w"], spec, "y") == ("mu", "w")
    for empty in ([], (), iter(())):  # the spec: `return_sites=[]` returns no sites
        assert coerce_return_sites(empty, spec, "y") == ()
    with pytest.warns(UserWarning, match="not seen in any trace"):
        assert coerce_return_sites({"q"}, spec, "y") == ("q",)
