"""On-batch and streaming sampling, log-likelihood and input validation (spec 4.7, 4.8,
section 6). Every call uses ``return_datatree=False`` (DataTrees belong to aimz-io)."""

from __future__ import annotations

import importlib
import sys
import warnings

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from aimz_core import (
    ArrayDataset,
    ArrayLoader,
    ImpactModel,
    NotFittedError,
    OutputWarning,
    PerformanceWarning,
)
from aimz_core.streaming import MemorySink, Sink, SiteLayout, StreamInfo, stream
from aimz_core.testing import make_model, make_svi

from ..aimz_testing import assert_close_float, assert_sites_close
from .conftest import N_DRAWS, key_data

KEY = jax.random.key(2024)
OBS_BATCH = 25  # does not divide N_OBS = 60: the last batch is padded and trimmed
DRAW_BATCH = 16  # does not divide N_DRAWS = 50


def _stream_kwargs(**kwargs):
    return {"progress": False, "return_datatree": False, **kwargs}


def _posterior(model):
    return {k: np.asarray(v) for k, v in model.posterior.items()}


def _mu(model, X):
    post = _posterior(model)
    return post["w"] @ X.T + post["b"][:, None]


def _normal_logpdf(y, mu, sigma):
    return -0.5 * ((y - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)


# ------------------------------------------------------------------------ on batch
def test_predict_on_batch_values(svi_model, data):
    X, _ = data
    out = svi_model.predict_on_batch(X, rng_key=KEY, return_datatree=False)
    assert set(out) == {"y", "mu"}
    assert all(isinstance(v, np.ndarray) for v in out.values())
    assert out["y"].shape == out["mu"].shape == (N_DRAWS, len(X))
    # posterior latents are substituted: the deterministic site is exact
    np.testing.assert_allclose(out["mu"], _mu(svi_model, X), rtol=1e-5, atol=1e-5)
    # the output is drawn around it with the posterior noise scale
    z = (out["y"] - out["mu"]) / _posterior(svi_model)["sigma"][:, None]
    assert abs(z.mean()) < 0.1 and 0.9 < z.std() < 1.1
    # same key -> same draws; in_sample and the alias do not change values
    for other in (
        svi_model.predict_on_batch(X, rng_key=KEY, in_sample=False, return_datatree=False),
        svi_model.sample_posterior_predictive_on_batch(X, rng_key=KEY, return_datatree=False),
    ):
        for site in out:
            np.testing.assert_array_equal(out[site], other[site])
    other_key = svi_model.predict_on_batch(X, rng_key=jax.random.key(1), return_datatree=False)
    assert not np.array_equal(other_key["y"], out["y"])
    np.testing.assert_array_equal(other_key["mu"], out["mu"])


def test_predict_on_batch_intervention(svi_model, data):
    X, _ = data
    post = _posterior(svi_model)
    out = svi_model.predict_on_batch(
        X, intervention={"b": 100.0}, rng_key=KEY, return_datatree=False
    )
    np.testing.assert_allclose(out["mu"], post["w"] @ X.T + 100.0, rtol=1e-5, atol=1e-4)
    assert out["y"].mean() > 90.0
    out = svi_model.predict_on_batch(
        X,
        intervention={"w": np.zeros(2, np.float32), "b": 3.0},
        rng_key=KEY,
        return_datatree=False,
    )
    np.testing.assert_array_equal(out["mu"], np.full((N_DRAWS, len(X)), 3.0, np.float32))
    # the posterior itself is untouched
    np.testing.assert_array_equal(_posterior(svi_model)["b"], post["b"])
    with pytest.raises(TypeError, match="`intervention` must be a mapping"):
        svi_model.predict_on_batch(X, intervention=[("b", 1.0)], return_datatree=False)


def test_predict_on_batch_condition(svi_model, data):
    X, y = data
    out = svi_model.predict_on_batch(X, condition={"y": y}, rng_key=KEY, return_datatree=False)
    np.testing.assert_array_equal(out["y"], np.broadcast_to(y, (N_DRAWS, len(X))))
    np.testing.assert_allclose(out["mu"], _mu(svi_model, X), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="`condition` must be a mapping"):
        svi_model.predict_on_batch(X, condition=5, return_datatree=False)


def test_handler_sites_validated(svi_model, data):
    X, y = data
    before = key_data(svi_model.rng_key)
    with pytest.raises(
        ValueError, match=r"Intervention site\(s\) not among the kernel's sample sites: 'mu'\."
    ):
        svi_model.predict_on_batch(X, intervention={"mu": 1.0}, return_datatree=False)
    with pytest.raises(ValueError, match=r"Sample sites: 'w', 'b', 'sigma', 'y'\."):
        svi_model.predict(X, intervention={"nope": 1.0}, **_stream_kwargs())
    with pytest.raises(ValueError, match=r"Condition site\(s\) not among .*: 'nope'\."):
        svi_model.predict_on_batch(X, condition={"nope": y}, return_datatree=False)
    with pytest.raises(ValueError, match=r"Intervention site\(s\) not among .*: 'mu'\."):
        make_model(seed=35).sample_prior_predictive_on_batch(
            X, intervention={"mu": 0.0}, return_datatree=False
        )
    assert key_data(svi_model.rng_key) == before


def test_estimate_effect_on_batch_slim(svi_model, data, monkeypatch):
    """Without aimz-io, two dict scenarios give a dict of differences; draws are paired."""
    X, _ = data
    monkeypatch.setitem(sys.modules, "aimz_io", None)
    monkeypatch.delitem(sys.modules, "aimz_io.backend", raising=False)
    base = {"X": X, "return_datatree": False}
    effect = svi_model.estimate_effect(
        args_baseline=base,
        args_intervention={**base, "intervention": {"b": _posterior(svi_model)["b"][0] + 1}},
        on_batch=True,
    )
    assert set(effect) == {"y", "mu"}
    b = _posterior(svi_model)["b"]
    expected = (b[0] + 1 - b)[:, None] * np.ones(len(X))
    np.testing.assert_allclose(effect["mu"], expected, rtol=1e-4, atol=1e-4)
    # scenarios share one key: the observation noise cancels out
    np.testing.assert_allclose(effect["y"], effect["mu"], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="Either `output_baseline` or `args_baseline` must be"):
        svi_model.estimate_effect(args_intervention=base, on_batch=True)
    with pytest.raises(ValueError, match="Either `output_intervention` or `args_intervention`"):
        svi_model.estimate_effect(args_baseline=base, on_batch=True)


def test_sample_prior_predictive_on_batch(data):
    X, _ = data
    model = make_model(seed=31)
    out = model.sample_prior_predictive_on_batch(
        X,
        num_samples=N_DRAWS,
        rng_key=KEY,
        return_sites=["w", "b", "mu", "y"],
        return_datatree=False,
    )
    assert not model.is_fitted() and model.posterior is None
    assert out["w"].shape == (N_DRAWS, 2) and out["y"].shape == (N_DRAWS, len(X))
    # prior draws: w ~ Normal(0, 1), independent over draws
    assert np.all(np.abs(out["w"].mean(0)) < 0.5) and np.all(np.abs(out["w"].std(0) - 1) < 0.35)
    assert len(np.unique(out["b"])) == N_DRAWS
    np.testing.assert_allclose(out["mu"], out["w"] @ X.T + out["b"][:, None], rtol=1e-4, atol=1e-4)
    # same key -> same draws; default return sites are output + deterministic
    again = model.sample_prior_predictive_on_batch(
        X, num_samples=N_DRAWS, rng_key=KEY, return_datatree=False
    )
    assert set(again) == {"y", "mu"}
    np.testing.assert_array_equal(again["y"], out["y"])
    # interventions reach the prior predictive as well
    fixed = model.sample_prior_predictive_on_batch(
        X,
        num_samples=N_DRAWS,
        intervention={"w": np.zeros(2, np.float32), "b": -4.0},
        return_datatree=False,
    )
    np.testing.assert_array_equal(fixed["mu"], np.full((N_DRAWS, len(X)), -4.0, np.float32))
    with pytest.raises(ValueError, match="`num_samples` should be a positive integer"):
        model.sample_prior_predictive_on_batch(X, num_samples=0, return_datatree=False)


def test_on_batch_input_errors(svi_model):
    with pytest.raises(ValueError, match="`X` must have at least 1 dimension"):
        svi_model.predict_on_batch(np.float32(1.0), return_datatree=False)
    with pytest.raises(ValueError, match="`X` must have at least 1 dimension"):
        svi_model.sample_prior_predictive_on_batch(1.0, return_datatree=False)


def test_datatree_without_aimz_io_raises(svi_model, data, monkeypatch):
    """A slim install (no aimz-io) gets an ImportError with the install hint."""
    X, _ = data
    monkeypatch.setitem(sys.modules, "aimz_io", None)
    monkeypatch.delitem(sys.modules, "aimz_io.backend", raising=False)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("aimz_io.backend")
    before = key_data(svi_model.rng_key)
    with pytest.raises(ImportError, match=r"need the `aimz-io` distribution.*pip install aimz-io"):
        svi_model.predict_on_batch(X)
    with pytest.raises(ImportError, match=r"pip install aimz-io"):
        svi_model.predict(X, progress=False)
    with pytest.raises(ImportError, match=r"pip install aimz-io"):
        svi_model.sample(num_samples=2)
    assert key_data(svi_model.rng_key) == before  # failed before any work
    # dict results do not need aimz-io
    out = svi_model.predict_on_batch(X, rng_key=KEY, return_datatree=False)
    assert out["y"].shape == (N_DRAWS, len(X))


# ----------------------------------------------------------------------- streaming
@pytest.mark.parametrize("batch_size", [DRAW_BATCH, None])
def test_draw_path_equals_predict_on_batch(svi_model, data, batch_size):
    X, _ = data
    ref = svi_model.predict_on_batch(X, rng_key=KEY, return_datatree=False)
    out = svi_model.predict(
        X, shard_axis="draw", rng_key=KEY, **_stream_kwargs(batch_size=batch_size)
    )
    # same per-draw keys, other compiled program (chunked draws): equal to float tolerance
    assert_sites_close(out, ref)


def test_obs_path_shapes_and_determinism(svi_model, data):
    X, _ = data
    out = svi_model.predict(X, rng_key=KEY, **_stream_kwargs(batch_size=OBS_BATCH))
    assert out["y"].shape == out["mu"].shape == (N_DRAWS, len(X))
    # rows land where they belong (padding trimmed): the deterministic site matches NumPy
    np.testing.assert_allclose(out["mu"], _mu(svi_model, X), rtol=1e-5, atol=1e-5)
    again = svi_model.predict(X, rng_key=KEY, **_stream_kwargs(batch_size=OBS_BATCH))
    for site in out:
        np.testing.assert_array_equal(out[site], again[site])
    other = svi_model.predict(X, rng_key=jax.random.key(5), **_stream_kwargs(batch_size=OBS_BATCH))
    assert not np.array_equal(other["y"], out["y"])
    # batches draw independent noise: no two batches repeat the same stream
    resid = out["y"] - out["mu"]
    assert not np.allclose(resid[:, :10], resid[:, OBS_BATCH : OBS_BATCH + 10])
    alias = svi_model.sample_posterior_predictive(
        X, rng_key=KEY, **_stream_kwargs(batch_size=OBS_BATCH)
    )
    for site in out:
        np.testing.assert_array_equal(out[site], alias[site])
    auto = svi_model.predict(X, rng_key=KEY, **_stream_kwargs(in_sample=False))
    assert auto["y"].shape == (N_DRAWS, len(X))
    assert_close_float(auto["mu"], out["mu"])  # other batch shape: float tolerance


def test_streaming_return_sites(svi_model, data):
    X, _ = data
    out = svi_model.predict(
        X, rng_key=KEY, **_stream_kwargs(batch_size=OBS_BATCH, return_sites="mu")
    )
    assert set(out) == {"mu"}
    assert svi_model.predict(X, **_stream_kwargs(batch_size=OBS_BATCH, return_sites=[])) == {}
    # a global site cannot be streamed along observations: the call streams draws ...
    with pytest.warns(PerformanceWarning, match=r"Return site\(s\) 'w' have no observation axis"):
        out = svi_model.predict(X, **_stream_kwargs(batch_size=OBS_BATCH, return_sites=["w", "y"]))
    np.testing.assert_array_equal(out["w"], _posterior(svi_model)["w"])
    # ... where it is the substituted posterior
    out = svi_model.predict(
        X, shard_axis="draw", **_stream_kwargs(batch_size=DRAW_BATCH, return_sites=["w"])
    )
    np.testing.assert_array_equal(out["w"], _posterior(svi_model)["w"])


def test_streaming_intervention_and_condition(svi_model, data):
    X, y = data
    ref = svi_model.predict_on_batch(
        X, intervention={"b": 100.0}, condition={"y": y}, rng_key=KEY, return_datatree=False
    )
    np.testing.assert_allclose(
        ref["mu"], _posterior(svi_model)["w"] @ X.T + 100.0, rtol=1e-5, atol=1e-4
    )
    np.testing.assert_array_equal(ref["y"], np.broadcast_to(y, (N_DRAWS, len(X))))
    # intervention alone streams along observations
    out = svi_model.predict(
        X, intervention={"b": 100.0}, rng_key=KEY, **_stream_kwargs(batch_size=OBS_BATCH)
    )
    assert_close_float(out["mu"], ref["mu"])  # other compiled program: float tolerance
    # an observation-aligned condition is sliced per batch like X (issue 14 item 7)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerformanceWarning)
        out = svi_model.predict(
            X,
            intervention={"b": 100.0},
            condition={"y": y},
            rng_key=KEY,
            **_stream_kwargs(batch_size=OBS_BATCH),
        )
    # same draws; float rounding may differ between compiled batch shapes
    assert_sites_close(out, ref)
    # ... also when the automatic batch holds the whole input
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerformanceWarning)
        out = svi_model.predict(X, condition={"y": y}, **_stream_kwargs())
    np.testing.assert_array_equal(out["y"], ref["y"])
    draw = svi_model.predict(
        X,
        intervention={"b": 100.0},
        shard_axis="draw",
        rng_key=KEY,
        **_stream_kwargs(batch_size=DRAW_BATCH),
    )
    no_cond = svi_model.predict_on_batch(
        X, intervention={"b": 100.0}, rng_key=KEY, return_datatree=False
    )
    assert_close_float(draw["y"], no_cond["y"])  # same keys, other compiled program


def test_no_recompilation_for_repeated_calls(svi_model, data):
    X, y = data

    def cache_sizes():
        sizes = [e.fn._cache_size() for e in svi_model._functions._entries.values()]
        return len(svi_model._functions), sum(sizes)

    calls = [
        lambda: svi_model.predict(X, **_stream_kwargs(batch_size=OBS_BATCH)),
        lambda: svi_model.predict(X, shard_axis="draw", **_stream_kwargs(batch_size=DRAW_BATCH)),
        lambda: svi_model.log_likelihood(X, y, **_stream_kwargs(batch_size=OBS_BATCH)),
        lambda: svi_model.predict_on_batch(X, return_datatree=False),
    ]
    for call in calls:
        call()
    before = cache_sizes()
    for call in calls:
        call()
    # different values with the same shapes reuse the compiled functions too
    svi_model.predict(X + 1.0, **_stream_kwargs(batch_size=OBS_BATCH))
    svi_model.log_likelihood(X, y - 1.0, **_stream_kwargs(batch_size=OBS_BATCH))
    assert cache_sizes() == before


def test_log_likelihood_matches_numpy(svi_model, mcmc_model, data):
    X, y = data
    for model in (svi_model, mcmc_model):
        post = _posterior(model)
        ref = _normal_logpdf(y, _mu(model, X), post["sigma"][:, None])
        n = len(post["sigma"])
        for kwargs in (
            {"batch_size": OBS_BATCH},
            {},
            {"shard_axis": "draw", "batch_size": DRAW_BATCH},
        ):
            out = model.log_likelihood(X, y, **_stream_kwargs(**kwargs))
            assert set(out) == {"y"} and out["y"].shape == (n, len(X))
            np.testing.assert_allclose(out["y"], ref, rtol=1e-5, atol=1e-4)


def test_sample_prior_predictive_streaming(data):
    X, _ = data
    model = make_model(seed=32)
    out = model.sample_prior_predictive(
        X, num_samples=N_DRAWS, rng_key=KEY, **_stream_kwargs(batch_size=OBS_BATCH)
    )
    assert set(out) == {"y", "mu"} and out["y"].shape == (N_DRAWS, len(X))
    assert not model.is_fitted() and model.kernel_spec.traced
    again = model.sample_prior_predictive(
        X, num_samples=N_DRAWS, rng_key=KEY, **_stream_kwargs(batch_size=OBS_BATCH)
    )
    np.testing.assert_array_equal(out["y"], again["y"])
    # on the draw path the prior draws equal the on-batch ones for the same key (the same
    # per-draw keys; floats to tolerance, as the chunked program differs)
    ref = model.sample_prior_predictive_on_batch(
        X, num_samples=N_DRAWS, rng_key=KEY, return_datatree=False
    )
    draw = model.sample_prior_predictive(
        X,
        num_samples=N_DRAWS,
        shard_axis="draw",
        rng_key=KEY,
        **_stream_kwargs(batch_size=DRAW_BATCH),
    )
    assert_sites_close(draw, ref)  # same keys, other compiled program: float tolerance


@pytest.mark.parametrize("shard_axis", ["obs", "draw"])
def test_prior_global_latents_shared_across_batches(shard_axis):
    """Global latents (w, b) are drawn once per draw and shared by every obs batch."""
    X = np.ones((60, 2), np.float32)  # identical rows: mu is the same in every row
    model = make_model(seed=33)
    out = model.sample_prior_predictive(
        X,
        num_samples=N_DRAWS,
        rng_key=KEY,
        shard_axis=shard_axis,
        **_stream_kwargs(batch_size=OBS_BATCH if shard_axis == "obs" else DRAW_BATCH),
    )
    mu = out["mu"]
    np.testing.assert_allclose(mu, np.broadcast_to(mu[:, :1], mu.shape), rtol=1e-6)
    assert mu[:, 0].std() > 0.5  # but it varies over draws
    resid = out["y"] - mu  # and the observation noise is not shared
    assert not np.allclose(resid[:, 0], resid[:, OBS_BATCH])


def test_obs_level_posterior_falls_back_to_draw(data):
    X, _ = data

    def local(X, y=None):
        w = numpyro.sample("w", dist.Normal())
        with numpyro.plate("obs", X.shape[0]):
            z = numpyro.sample("z", dist.Normal())
            mu = numpyro.deterministic("mu", w * X[:, 0] + z)
            numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    rng = np.random.default_rng(1)
    post = {
        "w": rng.normal(size=20).astype(np.float32),
        "z": rng.normal(size=(20, len(X))).astype(np.float32),
    }
    model = ImpactModel(local, rng_key=KEY, inference=make_svi(local))
    model.set_posterior_sample(post)
    expected = post["w"][:, None] * X[:, 0] + post["z"]
    ref = model.predict_on_batch(X, rng_key=KEY, return_sites=["mu", "y"], return_datatree=False)
    np.testing.assert_allclose(ref["mu"], expected, rtol=1e-5, atol=1e-5)

    with pytest.warns(
        PerformanceWarning,
        match=r"are as long as the number of observations.*rerunning with `shard_axis",
    ):
        out = model.predict(
            X, rng_key=KEY, return_sites=["mu", "y"], **_stream_kwargs(batch_size=OBS_BATCH)
        )
    # same keys as on-batch; the draw path gathers its chunk first (another program)
    assert_sites_close(out, ref)
    # automatic batch size: the whole input fits in one batch, no fallback needed
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerformanceWarning)
        whole = model.predict(X, rng_key=KEY, return_sites=["mu"], **_stream_kwargs())
    np.testing.assert_allclose(whole["mu"], expected, rtol=1e-5, atol=1e-5)
    with pytest.warns(PerformanceWarning, match="are as long as the number of observations"):
        ll = model.log_likelihood(X, X[:, 1], **_stream_kwargs(batch_size=OBS_BATCH))
    np.testing.assert_allclose(
        ll["y"], _normal_logpdf(X[:, 1], expected, 1.0), rtol=1e-5, atol=1e-4
    )


# ------------------------------------------------------------------------ loaders
def test_loaders_in_predict(svi_model, data):
    X, _ = data
    ref = svi_model.predict(X, rng_key=KEY, **_stream_kwargs(batch_size=20))
    loaders = {
        "ArrayLoader": ArrayLoader(ArrayDataset(X=X), KEY, batch_size=20),
        "list of dicts": [{"X": X[i : i + 20]} for i in range(0, len(X), 20)],
        "generator": ({"X": X[i : i + 20]} for i in range(0, len(X), 20)),
    }
    for name, loader in loaders.items():
        out = svi_model.predict(loader, rng_key=KEY, **_stream_kwargs())
        for site in ref:
            np.testing.assert_array_equal(out[site], ref[site], err_msg=name)
    ll = svi_model.log_likelihood(
        [{"X": X[:30], "y": X[:30, 0]}, {"X": X[30:], "y": X[30:, 0]}], **_stream_kwargs()
    )
    assert ll["y"].shape == (N_DRAWS, len(X))


def test_loader_errors(svi_model, data):
    X, y = data
    loader = ArrayLoader(ArrayDataset(X=X, y=y), KEY, batch_size=20)
    before = key_data(svi_model.rng_key)
    with pytest.raises(TypeError, match="`y` must be `None` when `X` is already a data loader"):
        svi_model.log_likelihood(loader, y, **_stream_kwargs())
    with pytest.raises(
        ValueError, match="The data loader has no field named 'X' for the model input"
    ):
        svi_model.predict(ArrayLoader(ArrayDataset(inputs=X), KEY), **_stream_kwargs())
    # an array keyword argument goes whole to every batch: linreg takes no `z`
    with pytest.raises(TypeError, match="z"):
        svi_model.predict(loader, z=np.zeros(len(X)), **_stream_kwargs())
    with pytest.raises(TypeError, match="`shard_axis='draw'` replicates the whole input"):
        svi_model.predict(loader, shard_axis="draw", **_stream_kwargs())
    with pytest.raises(ValueError, match="yielded no batches"):
        svi_model.predict(iter([]), **_stream_kwargs())
    assert key_data(svi_model.rng_key) == before
    shuffling = ArrayLoader(ArrayDataset(X=X), KEY, batch_size=20, shuffle=True)
    with pytest.warns(OutputWarning, match="shuffles"):
        out = svi_model.predict(shuffling, rng_key=KEY, **_stream_kwargs())
    ref = svi_model.predict(X, rng_key=KEY, **_stream_kwargs(batch_size=20))
    np.testing.assert_array_equal(out["mu"], ref["mu"])  # results follow the data order


# --------------------------------------------------------------------- validation
def test_streaming_validation_order(svi_model, data):
    X, y = data
    unfitted = make_model(seed=34)
    with pytest.raises(NotFittedError):
        unfitted.predict(X, shard_axis="bad", batch_size=0, store="nope")
    with pytest.raises(NotFittedError):
        unfitted.log_likelihood(X, None, shard_axis="bad")
    before = key_data(svi_model.rng_key)
    m = svi_model
    with pytest.raises(ValueError, match=r"`shard_axis` must be either 'obs' or 'draw', got 'b'"):
        m.predict(X[:0], shard_axis="b", batch_size=0, store="nope", **_stream_kwargs())
    with pytest.raises(ValueError, match=r"`batch_size` should be a positive integer, but got 0"):
        m.predict(X[:0], batch_size=0, store="nope", **_stream_kwargs())
    for bad in (-3, 2.5, True, "10"):
        with pytest.raises(ValueError, match="`batch_size` should be a positive integer"):
            m.predict(X, batch_size=bad, **_stream_kwargs())
    with pytest.raises(ValueError, match=r"`store` must be either 'persistent' or 'memory'"):
        m.predict(X[:0], store="nope", **_stream_kwargs())
    with pytest.raises(ValueError, match=r"`output_dir` must be `None` when `store='memory'`"):
        m.predict(X, store="memory", output_dir="somewhere", progress=False)
    with pytest.raises(ValueError, match="`X` must not be empty"):
        m.log_likelihood(X[:0], None, **_stream_kwargs())
    with pytest.raises(ValueError, match=r"`y` is required for `log_likelihood\(\)`"):
        m.log_likelihood(X, None, **_stream_kwargs())
    with pytest.raises(ValueError, match=r"got X=60, y=59"):
        m.log_likelihood(X, y[:-1], **_stream_kwargs())
    with pytest.raises(TypeError, match="`X` must be an array-like or a data loader, got 'int'"):
        m.predict(5, **_stream_kwargs())
    with pytest.raises(TypeError, match="`X` must be an array-like or a data loader"):
        m.predict({"X": X}, **_stream_kwargs())
    with pytest.raises(ValueError, match="`X` must have at least 1 dimension"):
        m.predict(np.float32(3.0), **_stream_kwargs())
    with pytest.raises(ValueError, match="`num_samples` should be a positive integer"):
        m.sample_prior_predictive(X, num_samples=0, **_stream_kwargs())
    assert key_data(svi_model.rng_key) == before
    assert svi_model.temp_dir is None  # nothing was created on disk


# -------------------------------------------------------------------------- engine
class _RecordingSink(Sink):
    def __init__(self, events, fail_on=None):
        self.events, self.fail_on = events, fail_on
        self.inner = MemorySink()

    def open(self, info):
        self.events.append("open")
        self.inner.open(info)

    def write(self, site, start, block):
        self.events.append(("write", start))
        self.inner.write(site, start, block)

    def commit(self):
        self.events.append("commit")
        return self.inner.commit()

    def abort(self):
        self.events.append("abort")
        self.inner.abort()


def _info(total):
    layout = SiteLayout("y", (2, total), np.dtype("float32"), 1, 4, ("obs",))
    return StreamInfo("predictions", "predict", 1, {"y": layout})


def test_engine_pipelines_and_trims():
    events = []

    def launch(i, start, stop):
        events.append(("launch", start))
        block = np.arange(start, start + 4, dtype=np.float32)  # padded to 4 rows
        return {"y": jax.numpy.asarray(np.stack([block, -block]))}

    ranges = [(0, 4), (4, 8), (8, 10)]
    out = stream(
        ranges, launch, stream_axis=1, sink=_RecordingSink(events), info=_info(10), progress=False
    )
    np.testing.assert_array_equal(out["y"][0], np.arange(10))
    np.testing.assert_array_equal(out["y"][1], -np.arange(10))
    # the sink opens while batch 0 computes; batch k+1 is dispatched before batch k
    # is written
    assert events == [
        ("launch", 0),
        "open",
        ("launch", 4),
        ("write", 0),
        ("launch", 8),
        ("write", 4),
        ("write", 8),
        "commit",
    ]


def test_engine_aborts_sink_on_error():
    events = []

    def launch(i, start, stop):
        if i == 2:
            raise RuntimeError("boom")
        return {"y": jax.numpy.zeros((2, 4))}

    with pytest.raises(RuntimeError, match="boom"):
        stream(
            [(0, 4), (4, 8), (8, 10)],
            launch,
            stream_axis=1,
            sink=_RecordingSink(events),
            info=_info(10),
            progress=False,
        )
    assert events[-1] == "abort" and "commit" not in events
