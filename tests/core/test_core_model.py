"""ImpactModel: constructor, properties, RNG semantics, keyword routing, training and
posterior handling (spec sections 4.1-4.6)."""

from __future__ import annotations

import contextlib
import warnings

import aimz_core
import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from aimz_core import (
    AimzWarning,
    ArrayDataset,
    ArrayLoader,
    FitWarning,
    ImpactModel,
    KernelValidationError,
    NotFittedError,
    OutputWarning,
    PerformanceWarning,
)
from aimz_core.testing import linreg, make_model, make_svi
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.infer.svi import SVIRunResult

from .conftest import N_DRAWS, key_data

KEY = jax.random.key(42)


# -------------------------------------------------------------- exports & errors
def test_public_exceptions_and_warnings():
    assert issubclass(NotFittedError, ValueError) and issubclass(NotFittedError, AttributeError)
    assert issubclass(KernelValidationError, Exception)
    assert issubclass(AimzWarning, UserWarning)
    assert issubclass(FitWarning, AimzWarning) and issubclass(FitWarning, RuntimeWarning)
    assert issubclass(OutputWarning, AimzWarning)
    assert issubclass(PerformanceWarning, AimzWarning)
    for name in (
        "ImpactModel",
        "KernelSpec",
        "ArrayDataset",
        "ArrayLoader",
        "NotFittedError",
        "KernelValidationError",
        "AimzWarning",
        "FitWarning",
        "OutputWarning",
        "PerformanceWarning",
        "__version__",
    ):
        assert name in aimz_core.__all__ and hasattr(aimz_core, name)


# ------------------------------------------------------------------- constructor
def test_constructor_initial_state():
    svi = make_svi()
    model = ImpactModel(linreg, rng_key=jax.random.key(3), inference=svi)
    assert model.kernel is linreg and model.inference is svi
    assert (model.param_input, model.param_output) == ("X", "y")
    assert model.kernel_spec is None and model.vi_result is None and model.posterior is None
    assert model._vi_state is None
    assert model.temp_dir is None and not model.is_fitted()
    assert key_data(model.rng_key) == key_data(jax.random.key(3))
    assert model in ImpactModel._models
    for attr in (
        "kernel",
        "inference",
        "kernel_spec",
        "param_input",
        "param_output",
        "posterior",
        "rng_key",
        "temp_dir",
    ):
        with pytest.raises(AttributeError):
            setattr(model, attr, None)


def test_constructor_rejects_inference_type():
    with pytest.raises(TypeError, match=r"Unsupported inference object: `str`\. Expected `SVI` or"):
        ImpactModel(linreg, rng_key=KEY, inference="svi")
    with pytest.raises(TypeError, match="Unsupported inference object: `NUTS`"):
        ImpactModel(linreg, rng_key=KEY, inference=NUTS(linreg))


def test_constructor_rejects_svi_static_kwargs():
    svi = SVI(linreg, AutoNormal(linreg), numpyro.optim.Adam(0.1), Trace_ELBO(), scale=2.0)
    with pytest.raises(ValueError, match=r"SVI `static_kwargs` are not supported.*\['scale'\]"):
        ImpactModel(linreg, rng_key=KEY, inference=svi)


def test_constructor_converts_legacy_key():
    with pytest.warns(AimzWarning, match=r"Legacy `uint32` PRNGKey detected.*converting"):
        model = ImpactModel(linreg, rng_key=jax.random.PRNGKey(5), inference=make_svi())
    assert jax.dtypes.issubdtype(model.rng_key.dtype, jax.dtypes.prng_key)
    assert key_data(model.rng_key) == key_data(jax.random.key(5))
    with pytest.raises(TypeError, match="must be a JAX PRNG key"):
        ImpactModel(linreg, rng_key=5, inference=make_svi())


def test_repr_str_describe_unfitted():
    model = make_model(seed=0)
    assert repr(model) == (
        "<ImpactModel kernel_name=linreg; rng_key_data=[0, 0]; inference_method=SVI; "
        "param_input='X'; param_output='y'; kernel_spec=None; fitted=False; temp_dir=None>"
    )
    assert str(model).splitlines() == [
        "<ImpactModel>",
        "  kernel: linreg",
        "  inference: SVI",
        "  param_input: 'X'",
        "  param_output: 'y'",
        "  fitted: False",
    ]
    assert model.describe() == {
        "kernel": "linreg",
        "arguments": ["X", "y"],
        "param_input": "X",
        "param_output": "y",
        "inference": "SVI",
        "fitted": False,
        "num_chains": 1,
        "num_samples": 0,
        "sites": {},
    }


def test_repr_str_describe_fitted(svi_model, mcmc_model):
    text = repr(svi_model)
    assert text.startswith("<ImpactModel kernel_name=linreg; rng_key_data=[")
    assert "inference_method=SVI" in text and "fitted=True" in text
    assert "kernel_spec=KernelSpec(traced=True" in text
    assert "fitted: True" in str(svi_model) and f"draws: {N_DRAWS} (1 chain(s))" in str(svi_model)
    info = svi_model.describe()
    assert info["fitted"] is True and info["num_samples"] == N_DRAWS and info["num_chains"] == 1
    assert info["sites"]["w"]["kind"] == "latent" and info["sites"]["w"]["draw_shape"] == [2]
    assert info["sites"]["b"]["draw_shape"] == []
    assert info["sites"]["y"]["kind"] == "observed"
    assert info["sites"]["mu"]["kind"] == "deterministic"
    assert set(info["sites"]) == {"w", "b", "sigma", "y", "mu"}
    assert mcmc_model.describe()["inference"] == "MCMC"
    assert "inference: MCMC" in str(mcmc_model)


# ------------------------------------------------------------------ RNG semantics
@pytest.fixture(scope="module")
def rng_model(data, svi_model):
    """A fitted model of its own, so that tests may advance its key."""
    model = make_model(seed=11)
    model.set_posterior_sample(dict(svi_model.posterior))
    return model


CALLS = {
    "predict_on_batch": lambda m, X, y, **kw: m.predict_on_batch(X, return_datatree=False, **kw),
    "sample_posterior_predictive_on_batch": lambda m, X, y, **kw: (
        m.sample_posterior_predictive_on_batch(X, return_datatree=False, **kw)
    ),
    "sample_prior_predictive_on_batch": lambda m, X, y, **kw: m.sample_prior_predictive_on_batch(
        X, num_samples=N_DRAWS, return_datatree=False, **kw
    ),
    "predict": lambda m, X, y, **kw: m.predict(
        X, batch_size=25, progress=False, return_datatree=False, **kw
    ),
    "sample_posterior_predictive": lambda m, X, y, **kw: m.sample_posterior_predictive(
        X, batch_size=25, progress=False, return_datatree=False, **kw
    ),
    "sample_prior_predictive": lambda m, X, y, **kw: m.sample_prior_predictive(
        X, num_samples=N_DRAWS, batch_size=25, progress=False, return_datatree=False, **kw
    ),
}


@pytest.mark.parametrize("method", list(CALLS))
def test_rng_explicit_key_only_affects_call(method, rng_model, data):
    X, y = data
    call = CALLS[method]
    before = key_data(rng_model.rng_key)
    first = call(rng_model, X, y, rng_key=jax.random.key(7))
    second = call(rng_model, X, y, rng_key=jax.random.key(7))
    assert key_data(rng_model.rng_key) == before
    for site in first:
        np.testing.assert_array_equal(first[site], second[site])
    # omitted: the internal key advances and the draws change
    third = call(rng_model, X, y)
    after = key_data(rng_model.rng_key)
    assert after != before
    assert not np.array_equal(third["y"], first["y"])
    fourth = call(rng_model, X, y)
    assert key_data(rng_model.rng_key) != after
    assert not np.array_equal(third["y"], fourth["y"])


def test_log_likelihood_never_consumes_key(rng_model, data):
    X, y = data
    before = key_data(rng_model.rng_key)
    a = rng_model.log_likelihood(X, y, batch_size=25, progress=False, return_datatree=False)
    b = rng_model.log_likelihood(
        X, y, rng_key=jax.random.key(1), batch_size=25, progress=False, return_datatree=False
    )
    assert key_data(rng_model.rng_key) == before
    np.testing.assert_array_equal(a["y"], b["y"])


def test_rng_training_methods_and_resume(data):
    """Explicit keys leave the model key alone; training always resumes from the state."""
    X, y = data
    model = make_model(seed=21)
    before = key_data(model.rng_key)

    def steps():
        return int(model._vi_state.optim_state[0])

    state, loss = model.train_on_batch(X, y, rng_key=jax.random.key(0))
    assert steps() == 1 and state is model._vi_state and np.isfinite(float(loss))
    assert model.vi_result is None and not model.is_fitted()  # no fit, no posterior
    assert model.kernel_spec.output_observed
    model.train_on_batch(X, y, rng_key=jax.random.key(0))
    assert steps() == 2
    model.fit_on_batch(X, y, num_steps=5, num_samples=5, rng_key=jax.random.key(0), progress=False)
    assert steps() == 7 and model.vi_result.losses.shape == (5,)
    assert int(model.vi_result.state.optim_state[0]) == 7
    model.fit(X, y, num_samples=5, rng_key=jax.random.key(0), progress=False)
    assert steps() == 8
    model.sample(num_samples=5, rng_key=jax.random.key(0), return_datatree=False)
    assert key_data(model.rng_key) == before

    for step in (
        lambda: model.fit_on_batch(X, y, num_steps=5, num_samples=5, progress=False),
        lambda: model.fit(X, y, num_samples=5, progress=False),
        lambda: model.sample(num_samples=5, return_datatree=False),
    ):
        current = key_data(model.rng_key)
        step()
        assert key_data(model.rng_key) != current
    assert steps() == 14

    # train_on_batch only uses a key to initialise SVI
    fresh = make_model(seed=22)
    start = key_data(fresh.rng_key)
    fresh.train_on_batch(X, y)
    assert key_data(fresh.rng_key) != start
    current = key_data(fresh.rng_key)
    fresh.train_on_batch(X, y)
    assert key_data(fresh.rng_key) == current


# ---------------------------------------------------------------- kwargs routing
def kw_kernel(X, z, y=None, shift=0.0):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0))
    mu = numpyro.deterministic("mu", w * X[:, 0] + z + shift)
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


W_KW = np.linspace(-1.0, 1.0, 20).astype(np.float32)


@pytest.fixture(scope="module")
def kw_model():
    model = ImpactModel(kw_kernel, rng_key=KEY, inference=make_svi(kw_kernel))
    return model.set_posterior_sample({"w": W_KW})


def test_array_kwarg_batched_with_X_and_static_extra(kw_model, data):
    X, _ = data
    z = np.arange(len(X), dtype=np.float32)
    expected = W_KW[:, None] * X[:, 0] + z + 2.0
    streamed = kw_model.predict(
        X, z=z, shift=2.0, batch_size=25, return_sites="mu", progress=False, return_datatree=False
    )
    np.testing.assert_allclose(streamed["mu"], expected, rtol=1e-5, atol=1e-5)
    on_batch = kw_model.predict_on_batch(
        X, z=list(z), shift=2.0, return_sites="mu", return_datatree=False
    )
    np.testing.assert_allclose(on_batch["mu"], expected, rtol=1e-5, atol=1e-5)
    draw = kw_model.predict(
        X,
        z=z,
        shift=2.0,
        batch_size=16,
        shard_axis="draw",
        return_sites="mu",
        progress=False,
        return_datatree=False,
    )
    np.testing.assert_allclose(draw["mu"], expected, rtol=1e-5, atol=1e-5)

    # the extra is static: a new value compiles a new function, the same value does not
    n_functions = kw_model._functions.compiled()
    again = kw_model.predict(
        X, z=z, shift=2.0, batch_size=25, return_sites="mu", progress=False, return_datatree=False
    )
    assert kw_model._functions.compiled() == n_functions
    np.testing.assert_array_equal(again["mu"], streamed["mu"])
    other = kw_model.predict(
        X, z=z, shift=-1.0, batch_size=25, return_sites="mu", progress=False, return_datatree=False
    )
    assert kw_model._functions.compiled() == n_functions + 1
    np.testing.assert_allclose(other["mu"], expected - 3.0, rtol=1e-5, atol=1e-5)


def test_kwarg_errors(kw_model, data):
    X, y = data
    z = np.zeros(len(X), dtype=np.float32)
    before = key_data(kw_model.rng_key)
    with pytest.raises(TypeError, match="unexpected keyword argument 'foo'"):
        kw_model.predict_on_batch(X, z=z, foo=1, return_datatree=False)
    with pytest.raises(TypeError, match="unexpected keyword argument 'foo'"):
        kw_model.predict(X, z=z, foo=1, return_datatree=False)
    with pytest.raises(TypeError, match="missing a required argument: 'z'"):
        kw_model.predict_on_batch(X, return_datatree=False)
    with pytest.raises(TypeError, match="missing a required argument: 'z'"):
        kw_model.log_likelihood(X, y, return_datatree=False)
    with pytest.raises(ValueError, match=r"leading-axis size of `X`; got X=60, z=59"):
        kw_model.predict(X, z=z[:-1], return_datatree=False)
    with pytest.raises(ValueError, match=r"`z` must have at least 1 dimension"):
        kw_model.predict_on_batch(X, z=np.float32(1.0), return_datatree=False)
    assert key_data(kw_model.rng_key) == before


def _custom_kernel(inputs, target=None, scale=1.0):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([inputs.shape[1]]).to_event(1))
    with numpyro.plate("obs", inputs.shape[0]):
        numpyro.sample("target", dist.Normal(scale * inputs @ w, 1.0), obs=target)


@pytest.fixture(scope="module")
def custom_model():
    model = ImpactModel(
        _custom_kernel,
        rng_key=KEY,
        inference=make_svi(_custom_kernel),
        param_input="inputs",
        param_output="target",
    )
    return model.set_posterior_sample({"w": np.zeros((4, 2), np.float32)})


ENTRY_POINTS = {
    "predict_on_batch": lambda m, X, y, kw: m.predict_on_batch(X, **kw),
    "sample_posterior_predictive_on_batch": (
        lambda m, X, y, kw: m.sample_posterior_predictive_on_batch(X, **kw)
    ),
    "sample_prior_predictive_on_batch": (
        lambda m, X, y, kw: m.sample_prior_predictive_on_batch(X, **kw)
    ),
    "predict": lambda m, X, y, kw: m.predict(X, **kw),
    "sample_posterior_predictive": lambda m, X, y, kw: m.sample_posterior_predictive(X, **kw),
    "sample_prior_predictive": lambda m, X, y, kw: m.sample_prior_predictive(X, **kw),
    "log_likelihood": lambda m, X, y, kw: m.log_likelihood(X, y, **kw),
    "train_on_batch": lambda m, X, y, kw: m.train_on_batch(X, y, **kw),
    "fit_on_batch": lambda m, X, y, kw: m.fit_on_batch(X, y, **kw),
    "fit": lambda m, X, y, kw: m.fit(X, y, **kw),
}


@pytest.mark.parametrize("method", list(ENTRY_POINTS))
@pytest.mark.parametrize("name", ["inputs", "target"])
def test_reserved_kwargs_rejected(method, name, custom_model, data):
    X, y = data
    before = key_data(custom_model.rng_key)
    with pytest.raises(
        TypeError,
        match=f"'{name}' is a reserved kernel parameter and cannot be passed as a keyword",
    ):
        ENTRY_POINTS[method](
            custom_model,
            X,
            y,
            {name: X, "return_datatree": False}
            if "predict" in method or method == "log_likelihood"
            else {name: X},
        )
    assert key_data(custom_model.rng_key) == before
    assert custom_model._vi_state is None


@pytest.mark.parametrize("method", [m for m in ENTRY_POINTS if "predict" in m])
def test_reserved_output_name_rejected_default_names(method, rng_model, data):
    X, y = data
    with pytest.raises(TypeError, match="'y' is a reserved kernel parameter"):
        ENTRY_POINTS[method](rng_model, X, y, {"y": y, "return_datatree": False})


# ---------------------------------------------------------------------- training
def test_fit_minibatches_epochs_shuffle_progress_reproducible(data, capsys):
    X, y = data

    def fitted(shuffle, progress=False):
        model = make_model(seed=9)
        out = model.fit(
            X, y, batch_size=20, epochs=3, shuffle=shuffle, num_samples=30, progress=progress
        )
        assert out is model and model.is_fitted()
        return model

    model = fitted(shuffle=True, progress=True)
    captured = capsys.readouterr()
    for epoch in (1, 2, 3):
        assert f"Epoch {epoch}/3 - Average loss: " in captured.out
    losses = model.vi_result.losses
    assert isinstance(losses, np.ndarray) and losses.shape == (9,)  # 3 epochs x 3 batches
    assert np.all(np.isfinite(losses))
    assert {k: v.shape for k, v in model.posterior.items()} == {
        "w": (30, 2),
        "b": (30,),
        "sigma": (30,),
    }
    assert model.vi_result.state is model._vi_state
    assert int(model._vi_state.optim_state[0]) == 9

    # same initial key, same everything (the shuffling is keyed too)
    twin = fitted(shuffle=True)
    np.testing.assert_array_equal(losses, twin.vi_result.losses)
    for site in model.posterior:
        np.testing.assert_array_equal(model.posterior[site], twin.posterior[site])
    assert key_data(model.rng_key) == key_data(twin.rng_key)
    a = model.predict_on_batch(X, return_datatree=False)
    b = twin.predict_on_batch(X, return_datatree=False)
    for site in a:
        np.testing.assert_array_equal(a[site], b[site])

    # without shuffling the minibatches (hence the losses) differ
    plain = fitted(shuffle=False)
    assert not np.allclose(plain.vi_result.losses, losses)

    # training resumes from the last state
    model.fit(X, y, batch_size=20, epochs=1, shuffle=False, num_samples=30, progress=False)
    assert int(model._vi_state.optim_state[0]) == 12
    assert model.vi_result.losses.shape == (3,)


def test_vi_result_setter_warns_on_nan(svi_model):
    model = make_model(seed=6)
    result = svi_model.vi_result
    for bad in (np.nan, np.inf):
        with pytest.warns(FitWarning, match="Loss contains NaN or Inf"):
            model.vi_result = SVIRunResult(result.params, result.state, np.array([1.0, bad]))
    assert model.vi_result.losses.shape == (2,)
    assert not model.is_fitted() and model.posterior is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.vi_result = result
    # the setter makes `sample` possible without marking the model fitted
    X, y = np.zeros((2, 2)), np.zeros(2)  # the fresh guide is set up with `y` observed
    draws = model.sample(num_samples=3, rng_key=KEY, return_datatree=False, X=X, y=y)
    assert draws["w"].shape == (3, 2) and not model.is_fitted()
    with pytest.raises(TypeError, match="SVIRunResult"):
        model.vi_result = {"params": 1}


def test_fit_nan_loss_warns(data):
    X, y = data
    model = make_model(seed=7)
    y_bad = y.copy()
    y_bad[-1] = np.nan  # only the last minibatch is broken; SVI initialises on the first
    with (
        pytest.warns(FitWarning, match="Loss contains NaN or Inf"),
        # the diverged (NaN) guide parameters may then fail NumPyro's own checks
        contextlib.suppress(ValueError),
    ):
        model.fit(X, y_bad, batch_size=20, shuffle=False, num_samples=2, progress=False)
    losses = model.vi_result.losses
    assert np.isfinite(losses[0]) and not np.isfinite(losses[-1])


def test_fit_errors(data, mcmc_model):
    X, y = data
    with pytest.raises(
        TypeError, match=r"`\.fit\(\)` is not supported for MCMC.*`\.fit_on_batch\(\)`"
    ):
        mcmc_model.fit(X, y)
    model = make_model(seed=8)
    before = key_data(model.rng_key)
    with pytest.raises(ValueError, match=r"`y` is required for `fit\(\)` when `X` is array-like"):
        model.fit(X)
    loader = ArrayLoader(ArrayDataset(X=X, y=y), KEY, batch_size=30)
    with pytest.raises(TypeError, match=r"`y` must be `None` when `X` is already a data loader"):
        model.fit(loader, y)
    with pytest.raises(ValueError, match=r"`X` must not be empty"):
        model.fit(X[:0], y[:0])
    with pytest.raises(ValueError, match=r"X=60, y=59"):
        model.fit(X, y[:-1])
    with pytest.raises(ValueError, match="batch_size` should be a positive integer, but got 0"):
        model.fit(X, y, batch_size=0)
    with pytest.raises(ValueError, match="`epochs` should be a positive integer"):
        model.fit(X, y, epochs=0)
    # array kwargs go whole to every batch of a loader, so the kernel's signature decides
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        model.fit(loader, z=np.zeros(len(X)))
    # fit_on_batch
    with pytest.raises(ValueError, match=r"`X` and `y` must have the same leading-axis size"):
        model.fit_on_batch(X, y[:-1])
    with pytest.raises(ValueError, match=r"`X` must have at least 1 dimension"):
        model.fit_on_batch(np.float32(1.0), y)
    with pytest.raises(ValueError, match=r"`y` must have at least 1 dimension"):
        model.fit_on_batch(X, np.float32(1.0))
    with pytest.raises(ValueError, match=r"`num_steps` should be a positive integer"):
        model.fit_on_batch(X, y, num_steps=0)
    assert key_data(model.rng_key) == before
    # loader problems only show while iterating
    with pytest.raises(ValueError, match="yielded no batches"):
        model.fit(iter([]))
    with pytest.raises(ValueError, match="must have a 'y' field"):
        model.fit([{"X": X}])
    with pytest.raises(ValueError, match="must be a mapping with a 'X' field"):
        model.fit(iter([X]))
    assert model.kernel_spec is None and not model.is_fitted()


def test_fit_with_loaders(data):
    X, y = data
    model = make_model(seed=10)
    loader = ArrayLoader(ArrayDataset(X=X, y=y), KEY, batch_size=20, shuffle=True)
    model.fit(loader, epochs=2, num_samples=8, progress=False)
    assert len(loader) == 3 and model.vi_result.losses.shape == (6,)
    assert model.posterior["w"].shape == (8, 2)
    # any iterable of mappings works as well (a list of dicts here)
    batches = [{"X": X[i : i + 20], "y": y[i : i + 20]} for i in (0, 20, 40)]
    model.fit(batches, epochs=2, num_samples=8, progress=False)
    assert model.vi_result.losses.shape == (6,)
    assert int(model._vi_state.optim_state[0]) == 12


# --------------------------------------------------------------------- posterior
def test_fit_on_batch_svi_and_mcmc(svi_model, mcmc_model, data):
    X, _ = data
    assert svi_model.is_fitted() and mcmc_model.is_fitted()
    assert {k: v.shape for k, v in svi_model.posterior.items()} == {
        "w": (N_DRAWS, 2),
        "b": (N_DRAWS,),
        "sigma": (N_DRAWS,),
    }
    assert svi_model.vi_result.losses.shape == (300,)
    # the fit recovered the data-generating weights
    np.testing.assert_allclose(np.mean(svi_model.posterior["w"], 0), [1.5, -2.0], atol=0.3)
    # MCMC keeps deterministic sites in its samples (as NumPyro returns them)
    assert {k: v.shape for k, v in mcmc_model.posterior.items()} == {
        "w": (50, 2),
        "b": (50,),
        "sigma": (50,),
        "mu": (50, len(X)),
    }
    assert mcmc_model.vi_result is None and mcmc_model.describe()["num_samples"] == 50
    np.testing.assert_allclose(np.mean(mcmc_model.posterior["w"], 0), [1.5, -2.0], atol=0.3)


def test_sample_svi(svi_model):
    posterior = svi_model.posterior
    before = key_data(svi_model.rng_key)
    draws = svi_model.sample(num_samples=12, rng_key=KEY, return_datatree=False)
    assert {k: v.shape for k, v in draws.items()} == {"w": (12, 2), "b": (12,), "sigma": (12,)}
    assert all(isinstance(v, np.ndarray) for v in draws.values())
    again = svi_model.sample(num_samples=12, rng_key=KEY, return_datatree=False)
    np.testing.assert_array_equal(draws["w"], again["w"])
    only_w = svi_model.sample(num_samples=12, rng_key=KEY, return_sites="w", return_datatree=False)
    assert set(only_w) == {"w"}
    # the stored posterior and the key are untouched
    assert svi_model.posterior is posterior and posterior["w"].shape == (N_DRAWS, 2)
    assert key_data(svi_model.rng_key) == before
    with pytest.raises(NotFittedError, match="no inference result to sample from"):
        make_model().sample(num_samples=2, return_datatree=False)


def test_sample_mcmc(data, mcmc_model):
    X, y = data
    unfitted = MCMC(NUTS(linreg), num_warmup=5, num_samples=5, progress_bar=False)
    fresh = ImpactModel(linreg, rng_key=KEY, inference=unfitted)
    with pytest.raises(NotFittedError, match="no MCMC state to sample from"):
        fresh.sample(num_samples=5, X=X, y=y, return_datatree=False)
    posterior = mcmc_model.posterior
    with pytest.raises(TypeError, match=r"'y' must be provided in `\.sample\(\)`"):
        mcmc_model.sample(num_samples=5, X=X, return_datatree=False)
    before = key_data(mcmc_model.rng_key)
    draws = mcmc_model.sample(num_samples=20, X=X, y=y, return_datatree=False)
    assert {k: v.shape for k, v in draws.items()} == {
        "w": (20, 2),
        "b": (20,),
        "sigma": (20,),
        "mu": (20, len(X)),
    }
    np.testing.assert_allclose(draws["w"].mean(0), [1.5, -2.0], atol=0.3)
    assert mcmc_model.posterior is posterior and posterior["w"].shape == (50, 2)
    assert key_data(mcmc_model.rng_key) == before  # MCMC continues from its own state


def test_set_posterior_sample_validation(data):
    X, _ = data
    model = make_model(seed=12)
    with pytest.raises(ValueError, match="`posterior_sample` cannot be empty"):
        model.set_posterior_sample({})
    with pytest.raises(ValueError, match=r"`posterior_sample\['b'\]` must have at least 1 dim"):
        model.set_posterior_sample({"w": np.zeros((4, 2)), "b": 1.0})
    with pytest.raises(ValueError, match=r"Inconsistent batch shapes found in `posterior_sample`"):
        model.set_posterior_sample({"w": np.zeros((4, 2)), "b": np.zeros(5)})
    with pytest.raises(ValueError, match="reserved"):
        model.set_posterior_sample({"w": np.zeros((4, 2)), "draw": np.zeros(4)})
    with pytest.raises(ValueError, match=r"not divisible by `num_chains=3`"):
        model.set_posterior_sample({"w": np.zeros((4, 2))}, num_chains=3)
    with pytest.raises(TypeError, match="must be a mapping"):
        model.set_posterior_sample([("w", np.zeros(3))])
    with (
        pytest.warns(UserWarning, match="The output site 'y' is removed."),
        pytest.raises(ValueError, match="cannot be empty"),
    ):
        model.set_posterior_sample({"y": np.zeros((4, 60))})
    assert not model.is_fitted() and model.posterior is None

    sample = {
        "w": [[0.0, 0.0]] * 4,
        "b": np.arange(4.0),
        "sigma": np.ones(4),
        "y": np.zeros((4, 60)),
    }
    with pytest.warns(OutputWarning, match="The output site 'y' is removed."):
        out = model.set_posterior_sample(sample, num_chains=2)
    assert out is model and model.is_fitted()
    assert set(model.posterior) == {"w", "b", "sigma"}
    assert isinstance(model.posterior["w"], np.ndarray) and model.posterior["w"].shape == (4, 2)
    assert model.describe()["num_chains"] == 2 and model.describe()["num_samples"] == 4
    pred = model.predict_on_batch(X, return_sites="mu", return_datatree=False)
    np.testing.assert_array_equal(pred["mu"], np.broadcast_to(np.arange(4.0)[:, None], (4, 60)))


@pytest.mark.parametrize(
    "call",
    [
        lambda m, X, y: m.predict_on_batch(X, return_datatree=False),
        lambda m, X, y: m.sample_posterior_predictive_on_batch(X, return_datatree=False),
        lambda m, X, y: m.predict(X, shard_axis="bad", return_datatree=False),
        lambda m, X, y: m.sample_posterior_predictive(X, return_datatree=False),
        lambda m, X, y: m.log_likelihood(X, y, batch_size=0, return_datatree=False),
        lambda m, X, y: m.estimate_effect(args_baseline={"X": X}, args_intervention={"X": X}),
    ],
)
def test_not_fitted_errors(call, data):
    X, y = data
    model = make_model(seed=13)
    with pytest.raises(NotFittedError, match=r"not fitted yet\. Call `\.fit\(\)`"):
        call(model, X, y)
