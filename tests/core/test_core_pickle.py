"""Serialization (spec section 9): posterior, KernelSpec and SVI state survive a pickle
round trip, runtime caches are rebuilt, and another process (same environment, so the
same compiled programs) draws bit-identical values."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import cloudpickle
import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from aimz_core import ImpactModel, PerformanceWarning
from aimz_core import model as impact_model_module
from aimz_core.testing import linreg, make_svi
from numpyro.infer import MCMC, NUTS

from ..aimz_testing import assert_close_float
from .conftest import N_DRAWS, key_data

KEY = jax.random.key(77)


def test_cloudpickle_round_trip(svi_model, data, monkeypatch):
    X, y = data
    ref = svi_model.predict_on_batch(X, rng_key=KEY, return_datatree=False)
    assert len(svi_model._functions) > 0
    state = svi_model.__getstate__()
    for runtime in ("_layout", "_functions", "_temp_dir", "_placed", "_fn_vi_update", "_lock"):
        assert runtime not in state

    clone = cloudpickle.loads(cloudpickle.dumps(svi_model))
    assert clone is not svi_model
    # posterior bit-identical, spec and fit results kept
    assert set(clone.posterior) == set(svi_model.posterior)
    for site, value in svi_model.posterior.items():
        np.testing.assert_array_equal(np.asarray(clone.posterior[site]), np.asarray(value))
        assert np.asarray(clone.posterior[site]).dtype == np.asarray(value).dtype
    assert clone.kernel_spec == svi_model.kernel_spec
    np.testing.assert_array_equal(clone.vi_result.losses, svi_model.vi_result.losses)
    assert key_data(clone.rng_key) == key_data(svi_model.rng_key)
    assert clone.is_fitted() and clone.describe() == svi_model.describe()
    assert (clone.param_input, clone.param_output) == ("X", "y")
    # runtime caches are fresh
    assert len(clone._functions) == 0 and clone._placed is None and clone._fn_vi_update == {}
    assert clone.temp_dir is None and clone._layout.num_devices == jax.local_device_count()
    assert clone in ImpactModel._models

    # no retrace after load, same draws for the same key
    def no_trace(*args, **kwargs):
        raise AssertionError("the kernel spec was rebuilt after unpickling")

    monkeypatch.setattr(impact_model_module, "validate_kernel_body", no_trace)
    out = clone.predict_on_batch(X, rng_key=KEY, return_datatree=False)
    for site in ref:
        np.testing.assert_array_equal(out[site], ref[site])
    clone.sample_prior_predictive_on_batch(X, num_samples=3, return_datatree=False)

    # training resumes from the pickled SVI state
    steps = int(svi_model._vi_state.optim_state[0])
    state, _ = clone.train_on_batch(X, y)
    assert int(state.optim_state[0]) == steps + 1
    assert int(svi_model._vi_state.optim_state[0]) == steps  # the original is untouched


def test_old_pickle_defaults(svi_model):
    state = svi_model.__getstate__()
    del state["_is_fitted"]
    model = ImpactModel.__new__(ImpactModel)
    model.__setstate__(dict(state))
    assert not model.is_fitted() and model.posterior is not None
    assert len(model._functions) == 0


def test_plain_pickle_with_mcmc(mcmc_model, data):
    X, _ = data
    clone = pickle.loads(pickle.dumps(mcmc_model))
    for site, value in mcmc_model.posterior.items():
        np.testing.assert_array_equal(np.asarray(clone.posterior[site]), np.asarray(value))
    a = mcmc_model.predict_on_batch(X, rng_key=KEY, return_datatree=False)
    b = clone.predict_on_batch(X, rng_key=KEY, return_datatree=False)
    np.testing.assert_array_equal(a["y"], b["y"])


def test_parallel_mcmc_downgraded_on_unpickle():
    chains = jax.local_device_count() + 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # NumPyro: not enough devices
        mcmc = MCMC(
            NUTS(linreg),
            num_warmup=5,
            num_samples=5,
            num_chains=chains,
            chain_method="parallel",
            progress_bar=False,
        )
    model = ImpactModel(linreg, rng_key=KEY, inference=mcmc)
    mcmc.chain_method = "parallel"  # as if pickled on a host with enough devices
    with pytest.warns(PerformanceWarning, match=f"{chains} parallel chains but this host has"):
        clone = pickle.loads(pickle.dumps(model))
    assert clone.inference.chain_method == "sequential"
    assert model.inference.chain_method == "parallel"


SUBPROCESS = textwrap.dedent(
    """
    import sys
    import cloudpickle, jax, numpy as np

    with open(sys.argv[1], "rb") as f:
        model, X, y = cloudpickle.load(f)
    assert model.is_fitted() and len(model._functions) == 0
    key = jax.random.key(5)
    on_batch = model.predict_on_batch(X, rng_key=key, return_datatree=False)
    draw = model.predict(X, shard_axis="draw", batch_size=16, rng_key=key, progress=False,
                         return_datatree=False)
    obs = model.predict(X, batch_size=25, rng_key=key, progress=False, return_datatree=False)
    ll = model.log_likelihood(X, y, batch_size=25, progress=False, return_datatree=False)
    np.savez(sys.argv[2], on_batch=on_batch["y"], draw=draw["y"], obs=obs["y"], ll=ll["y"],
             mu=on_batch["mu"], **{"post_" + k: np.asarray(v) for k, v in model.posterior.items()})
    """
)


@pytest.mark.slow
def test_pickle_predicts_identically_in_another_process(tmp_path, data):
    X, y = data

    # defined here so that cloudpickle ships it by value: the child cannot import tests
    def kernel(X, y=None):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
        b = numpyro.sample("b", dist.Normal(0.0, 1.0))
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        mu = numpyro.deterministic("mu", X @ w + b)
        with numpyro.plate("obs", X.shape[0]):
            numpyro.sample("y", dist.Normal(mu, sigma), obs=y)

    model = ImpactModel(kernel, rng_key=jax.random.key(3), inference=make_svi(kernel))
    model.fit(X, y, epochs=30, num_samples=N_DRAWS, progress=False)
    path = tmp_path / "model.pkl"
    path.write_bytes(cloudpickle.dumps((model, X, y)))
    # computed first, so the child may reuse the persistent compilation cache
    key = jax.random.key(5)
    on_batch = model.predict_on_batch(X, rng_key=key, return_datatree=False)
    draw = model.predict(
        X, shard_axis="draw", batch_size=16, rng_key=key, progress=False, return_datatree=False
    )
    obs = model.predict(X, batch_size=25, rng_key=key, progress=False, return_datatree=False)
    ll = model.log_likelihood(X, y, batch_size=25, progress=False, return_datatree=False)
    # same per-draw keys, but the chunked draw path is another compiled program
    assert_close_float(draw["y"], on_batch["y"])

    script = tmp_path / "child.py"
    script.write_text(SUBPROCESS)
    result_path = tmp_path / "result.npz"
    # The child inherits this process's environment, XLA_FLAGS included (an ISA limit
    # or device count), so it compiles the very programs this process ran.
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, str(script), str(path), str(result_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    child = np.load(result_path)

    for site, value in model.posterior.items():
        np.testing.assert_array_equal(child["post_" + site], np.asarray(value))
    # each path against the same path here: the same program, so bit-identical
    np.testing.assert_array_equal(child["on_batch"], on_batch["y"])
    np.testing.assert_array_equal(child["mu"], on_batch["mu"])
    np.testing.assert_array_equal(child["draw"], draw["y"])
    np.testing.assert_array_equal(child["obs"], obs["y"])
    np.testing.assert_allclose(child["ll"], ll["y"], rtol=1e-6)
