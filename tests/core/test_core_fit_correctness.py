"""Correct fits (issue 14 items 1, 2, 9, 11, 12 and 20, and the fit messages of the
reference): row order and keyed shuffling, the posterior of the guide run on the whole
data with ``y``, kernels with no latent sites, warm starts, MCMC ``sample`` leaving the
sampler as it was, and array keyword arguments alongside a data loader.

Every fit here is a few SVI steps on tiny data; no test needs ``aimz_io``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from aimz_core import ArrayDataset, ArrayLoader, ImpactModel
from aimz_core.testing import TRUE_W, linreg, linreg_data, make_model, make_svi
from numpyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO

from ..aimz_testing import assert_close_float, assert_sites_close
from .conftest import key_data

KEY = jax.random.key(3)
N = 40


# ------------------------------------------------------------------ kernels
def per_row(X, y=None):
    """A per-row latent ``z`` in the ``obs`` plate; ``y`` is ``z`` plus small noise."""
    with numpyro.plate("obs", X.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(z, 0.1), obs=y)


def amortized_guide(X, y=None):
    """A guide that computes ``z`` from the observed ``y``."""
    a = numpyro.param("a", 0.5)
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("z", dist.Normal(a * y, 0.1))


def amortized_model(seed: int = 0, lr: float = 0.05) -> ImpactModel:
    svi = SVI(per_row, amortized_guide, numpyro.optim.Adam(lr), Trace_ELBO())
    return ImpactModel(per_row, rng_key=jax.random.key(seed), inference=svi)


def params_only(X, y=None):
    """No latent sample site: the weights are a ``param`` site."""
    w = numpyro.param("w", jnp.zeros(X.shape[1]))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(X @ w, 1.0), obs=y)


def whole_coef(X, coef, y=None):
    """``coef`` is one vector for all rows (not batched with ``X``)."""
    assert coef.shape == (2,), coef.shape  # the kernel sees the whole array
    scale = numpyro.sample("scale", dist.Normal(1.0, 1.0))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(scale * (X @ coef), 0.1), obs=y)


@pytest.fixture(scope="module")
def rows() -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` of the per-row kernels: ``X`` only gives the number of rows."""
    y = np.random.default_rng(1).normal(size=N).astype(np.float32)
    return np.zeros((N, 1), np.float32), y


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.asarray(a), np.asarray(b))[0, 1])


# ------------------------------------------------- item 1: order and shuffling
def test_fit_one_batch_keeps_rows_in_place(rows):
    """One batch covering the data is never shuffled, so the per-row latents stay
    paired with their rows (shuffling it gave corr(z, y) near 0)."""
    X, y = rows

    def fitted(**kw):
        model = make_model(per_row, seed=1)
        model.fit(X, y, epochs=60, num_samples=50, rng_key=KEY, progress=False, **kw)
        return model

    model = fitted(shuffle=True)
    assert model.posterior["z"].shape == (50, N)
    assert corr(model.posterior["z"].mean(0), y) > 0.95
    # the same program on the same inputs: shuffle=True changes nothing here
    for kw in ({"shuffle": False}, {"batch_size": N + 5}):
        other = fitted(**kw)
        np.testing.assert_array_equal(other.vi_result.losses, model.vi_result.losses)
        np.testing.assert_array_equal(other.posterior["z"], model.posterior["z"])


def test_fit_shuffles_like_an_array_loader_keyed_from_the_call_key():
    """``fit(X, y, rng_key=K, shuffle=True)`` shuffles as an ArrayLoader keyed with
    ``jax.random.split(K)[0]`` (the derivation fit's docstring gives)."""
    X, y = linreg_data(N)
    a = make_model(seed=2)
    before = key_data(a.rng_key)
    a.fit(X, y, rng_key=KEY, batch_size=20, epochs=2, num_samples=5, progress=False)
    train_key = jax.random.split(KEY)[0]
    loader = ArrayLoader(ArrayDataset(X=X, y=y), train_key, batch_size=20, shuffle=True)
    b = make_model(seed=2).fit(loader, rng_key=KEY, epochs=2, num_samples=5, progress=False)
    np.testing.assert_array_equal(a.vi_result.losses, b.vi_result.losses)
    assert_sites_close(a.posterior, b.posterior)
    assert key_data(a.rng_key) == before  # an explicit key leaves the model's key alone


# ------------------------------------- item 2: the guide on all rows, with y
def test_fit_passes_the_output_to_an_amortized_guide(rows):
    """The guide reads ``y`` (before: ``None * a`` raised a TypeError)."""
    X, y = rows
    for how in ("fit", "fit_on_batch"):
        model = amortized_model(seed=5)
        if how == "fit":
            model.fit(X, y, epochs=3, num_samples=200, progress=False)
        else:
            model.fit_on_batch(X, y, num_steps=3, num_samples=200, progress=False)
        a = float(model.vi_result.params["a"])
        z = model.posterior["z"]
        assert z.shape == (200, N)
        np.testing.assert_allclose(z.mean(0), a * y, atol=0.05)
        draws = model.sample(num_samples=4, X=X, y=y, return_datatree=False)
        assert draws["z"].shape == (4, N)


def test_minibatch_fit_posterior_covers_every_row_in_input_order(rows):
    """A per-row latent fitted on shuffled batches of 10 rows: the posterior has all N
    rows, in input order (before: the last batch's 10 rows only)."""
    X, y = rows
    fit = dict(batch_size=10, epochs=2, num_samples=200, rng_key=KEY, progress=False)
    shuffled = amortized_model().fit(X, y, **fit)
    z = shuffled.posterior["z"]
    assert z.shape == (200, N)
    np.testing.assert_allclose(z.mean(0), float(shuffled.vi_result.params["a"]) * y, atol=0.05)

    # a loader's batches, in the order it yields them, give the posterior of the arrays
    plain = amortized_model().fit(X, y, shuffle=False, **fit)
    batches = [{"X": X[i : i + 10], "y": y[i : i + 10]} for i in range(0, N, 10)]
    fit.pop("batch_size")
    listed = amortized_model().fit(batches, **fit)
    assert_close_float(listed.vi_result.losses, plain.vi_result.losses)
    assert_sites_close(listed.posterior, plain.posterior)

    # a shuffling ArrayLoader: its dataset in its own order
    loader = ArrayLoader(ArrayDataset(X=X, y=y), KEY, batch_size=10, shuffle=True)
    looped = amortized_model().fit(loader, **fit)
    a = float(looped.vi_result.params["a"])
    np.testing.assert_allclose(looped.posterior["z"].mean(0), a * y, atol=0.05)


# ------------------------------------------------ item 9: no latent sample site
def test_kernel_without_latent_sites_fits_to_an_empty_posterior():
    X, y = linreg_data(N)
    model = make_model(params_only)
    model.fit_on_batch(X, y, num_steps=200, num_samples=5, progress=False)
    assert model.posterior == {}
    np.testing.assert_allclose(model.vi_result.params["w"], TRUE_W, atol=0.3)
    model.fit(X, y, batch_size=20, epochs=2, num_samples=5, progress=False)
    assert model.posterior == {} and model.vi_result.losses.shape == (4,)
    assert model.sample(num_samples=3, X=X, y=y, return_datatree=False) == {}


# ------------------------------------------------------------ item 11: warm start
@pytest.fixture(scope="module")
def external_result():
    """An SVI result made outside aimz, by another SVI object (and guide)."""
    X, y = linreg_data(N)
    svi = make_svi()
    return svi, svi.run(KEY, 300, X, y, progress_bar=False)


def steps(model: ImpactModel) -> int:
    return int(model._vi_state.optim_state[0])


def test_warm_start_continues_from_a_set_vi_result(external_result):
    _, external_result = external_result
    X, y = linreg_data(N)
    model = make_model(seed=6)
    model.vi_result = external_result
    model.fit_on_batch(X, y, num_steps=5, num_samples=5, progress=False)
    assert steps(model) == 305
    # it continued: 5 steps from a cold start are far from the data's weights
    np.testing.assert_allclose(model.posterior["w"].mean(0), TRUE_W, atol=0.3)
    assert model.vi_result.losses[0] < external_result.losses[0] / 2
    model.fit_on_batch(X, y, num_steps=5, num_samples=5, progress=False)
    assert steps(model) == 310  # and a second fit_on_batch continues too
    assert set(model.posterior) == {"w", "b", "sigma"}

    stepped = make_model(seed=6)
    stepped.vi_result = external_result
    state, _ = stepped.train_on_batch(X[:20], y[:20])
    assert int(state.optim_state[0]) == 301
    stepped.vi_result = external_result  # set again: fit starts from it once more
    stepped.fit(X, y, batch_size=20, epochs=1, num_samples=5, progress=False)
    assert steps(stepped) == 302 and set(stepped.posterior) == {"w", "b", "sigma"}
    np.testing.assert_allclose(stepped.posterior["w"].mean(0), TRUE_W, atol=0.3)


def test_sample_after_setting_vi_result_needs_the_output(external_result):
    svi, external_result = external_result
    X, y = linreg_data(N)
    model = make_model(seed=7)
    model.vi_result = external_result
    before = key_data(model.rng_key)
    with pytest.raises(ValueError, match=r"'y' must be provided in .sample\(\)"):
        model.sample(num_samples=4, X=X, return_datatree=False)
    assert key_data(model.rng_key) == before  # refused: no key taken
    assert model.inference.guide.prototype_trace is None  # nor the guide touched
    draws = model.sample(num_samples=4, rng_key=KEY, X=X, y=y, return_datatree=False)
    assert {k: v.shape for k, v in draws.items()} == {"w": (4, 2), "b": (4,), "sigma": (4,)}
    # the draws of the guide that made the result, with its parameters
    expected = Predictive(svi.guide, params=external_result.params, num_samples=4, parallel=True)
    assert_sites_close(draws, expected(KEY, X=X, y=y))


# ------------------------------------------- item 12: MCMC sample restores sampler
def test_mcmc_sample_leaves_the_sampler_as_it_was():
    X, y = linreg_data(N)
    mcmc = MCMC(NUTS(linreg), num_warmup=10, num_samples=10, progress_bar=False)
    model = ImpactModel(linreg, rng_key=jax.random.key(8), inference=mcmc)
    model.fit_on_batch(X, y)
    assert mcmc.post_warmup_state is None
    draws = model.sample(num_samples=4, X=X, y=y, return_datatree=False)
    assert draws["w"].shape == (4, 2)
    assert mcmc.num_samples == 10 and mcmc.post_warmup_state is None
    assert model.posterior["w"].shape == (10, 2)


# ------------------------------- item 20: array kwargs alongside a data loader
def test_array_kwargs_with_a_loader_are_passed_whole():
    X, y = linreg_data(N)
    coef = TRUE_W.copy()
    batches = [{"X": X[i : i + 10], "y": y[i : i + 10]} for i in range(0, N, 10)]
    model = make_model(whole_coef, seed=9)
    model.fit(batches, coef=coef, epochs=2, num_samples=5, progress=False)
    assert model.posterior["scale"].shape == (5,) and model.vi_result.losses.shape == (8,)
    loader = ArrayLoader(ArrayDataset(X=X, y=y), KEY, batch_size=15)
    model.fit(loader, coef=coef, num_samples=5, progress=False)
    assert model.vi_result.losses.shape == (3,)
    # given both as a keyword argument and as a field of the batches: refused
    before = key_data(model.rng_key)
    clash = [{**b, "coef": coef} for b in batches]
    with pytest.raises(ValueError, match=r"\['coef'\] are given both"):
        model.fit(clash, coef=coef, progress=False)
    assert key_data(model.rng_key) == before


# ------------------------------------------------------------ fit messages
def test_fit_loader_messages_and_no_key_taken():
    X, y = linreg_data(N)

    def out_named_obs(X, obs=None):
        w = numpyro.sample("w", dist.Normal().expand([X.shape[1]]).to_event(1))
        with numpyro.plate("rows", X.shape[0]):
            numpyro.sample("obs", dist.Normal(X @ w, 1.0), obs=obs)

    model = ImpactModel(
        out_named_obs, jax.random.key(10), make_svi(out_named_obs), param_output="obs"
    )
    before = key_data(model.rng_key)
    with pytest.raises(ValueError, match=r"^The data loader has no field named 'obs'\."):
        model.fit([{"X": X}], progress=False)
    with pytest.raises(ValueError, match=r"^The data loader has no field named 'X'"):
        model.fit([{"obs": y}], progress=False)
    generator = ({"X": X[i : i + 20], "obs": y[i : i + 20]} for i in (0, 20))
    with pytest.raises(
        ValueError,
        match=r"^The data loader yielded no batches in epoch 2; pass a loader that can be "
        r"iterated once per epoch\.",
    ):
        model.fit(generator, epochs=2, progress=False)
    assert key_data(model.rng_key) == before and model._vi_state is None

    class Once:
        """Re-iterable, but empty after its first pass."""

        def __init__(self) -> None:
            self.used = False

        def __iter__(self):
            if not self.used:
                self.used = True
                yield {"X": X, "obs": y}

    with pytest.raises(ValueError, match=r"^The data loader yielded no batches in epoch 2;"):
        model.fit(Once(), epochs=2, progress=False)
    # a generator is fine for one epoch
    generator = ({"X": X[i : i + 20], "obs": y[i : i + 20]} for i in (0, 20))
    model.fit(generator, num_samples=3, progress=False)
    assert model.posterior["w"].shape == (3, 2)
