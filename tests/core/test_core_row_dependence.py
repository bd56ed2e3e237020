"""Streamed calls equal the whole-input computation for every kernel (issue 14 A/B).

Kernels that compute across rows (a ``scan``, a mean over rows), return sites without
one value per row (a lag plate, a global ``deterministic``) or have per-row posterior
sites used to be split by batches of rows: wrong numbers with no error, or a crash.
Now the call streams draws instead, with a ``PerformanceWarning`` naming the site.
Property style: for batch sizes drawn at random (seeded), every streamed method equals
its on-batch or analytic counterpart to float tolerance. A child process repeats the
checks on three devices (see ``test_rows_on_three_devices``).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest
from aimz_core import ImpactModel
from aimz_core.exceptions import PerformanceWarning
from aimz_core.testing import make_svi
from scipy import stats

from ..aimz_testing import assert_close_float, assert_sites_close, child_env
from .conftest import key_data
from .row_kernels import DRAWS, KERNELS, N, data, posterior

KEY = jax.random.key(11)
#: Batch sizes drawn once at random (seeded): different compiled programs each run.
BATCHES = sorted({int(b) for b in np.random.default_rng(14).integers(2, N, size=3)})
STREAM = {"store": "memory", "return_datatree": False, "progress": False}

#: The warning each kernel's streamed call gives on `shard_axis="obs"`.
REASONS = {
    "scan": r"computes across observations at site\(s\) 'y', 'level'",
    "lag": r"The output site 'diff' does not have one value per observation",
    "global": r"Return site\(s\) 'sigma2' have no observation axis",
    "centered": r"computes across observations at site\(s\) 'y', 'mu'",
    "branch": r"computes across observations at site\(s\) 'y', 'mu'",
    "row_latent": r"The posterior site\(s\) 'z' are as long as the number of observations",
}


def _model(name: str, n: int = N) -> ImpactModel:
    kernel = KERNELS[name]
    model = ImpactModel(kernel, rng_key=jax.random.key(0), inference=make_svi(kernel))
    model.set_posterior_sample(posterior(name, n))
    return model


@pytest.fixture(scope="module")
def models() -> dict[str, ImpactModel]:
    return {name: _model(name) for name in REASONS}


@pytest.mark.parametrize("batch_size", BATCHES)
@pytest.mark.parametrize("name", sorted(REASONS))
def test_predict_streams_draws_and_equals_on_batch(models, name, batch_size):
    model = models[name]
    X, _ = data()
    ref = model.predict_on_batch(X, rng_key=KEY, return_datatree=False)
    with pytest.warns(PerformanceWarning, match=REASONS[name]) as caught:
        out = model.predict(X, rng_key=KEY, batch_size=batch_size, **STREAM)
    assert "Pass `shard_axis='draw'` to silence this warning." in str(caught[0].message)
    assert_sites_close({k: np.asarray(v) for k, v in out.items()}, ref)
    # ... and the advice silences it
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerformanceWarning)
        again = model.predict(X, rng_key=KEY, batch_size=batch_size, shard_axis="draw", **STREAM)
    assert_sites_close({k: np.asarray(v) for k, v in again.items()}, ref)


@pytest.mark.parametrize("n", [5, 7])
@pytest.mark.parametrize("name", ["scan", "centered"])
def test_automatic_batches_of_cross_row_kernels_see_no_padding(models, name, n):
    """Automatic row batches are padded to buckets (8 rows here); a kernel that
    computes across rows streams draws instead, so its values are those of `n` rows."""
    X, _ = data()
    model = _model(name, n)
    ref = model.predict_on_batch(X[:n], rng_key=KEY, return_datatree=False)
    with pytest.warns(PerformanceWarning, match=REASONS[name]):
        out = model.predict(X[:n], rng_key=KEY, **STREAM)
    assert_sites_close({k: np.asarray(v) for k, v in out.items()}, ref)


@pytest.mark.parametrize("name", ["scan", "lag", "global", "centered"])
def test_prior_predictive_streams_draws_and_equals_on_batch(models, name):
    model = models[name]
    X, _ = data()
    ref = model.sample_prior_predictive_on_batch(
        X, num_samples=DRAWS, rng_key=KEY, return_datatree=False
    )
    with pytest.warns(PerformanceWarning, match=REASONS[name]):
        out = model.sample_prior_predictive(
            X, num_samples=DRAWS, rng_key=KEY, batch_size=BATCHES[0], **STREAM
        )
    assert_sites_close({k: np.asarray(v) for k, v in out.items()}, ref)


def _scan_loglik(post: dict[str, np.ndarray], X: np.ndarray, y: np.ndarray) -> np.ndarray:
    level = np.zeros((len(post["rho"]), len(X)), np.float64)
    prev = np.zeros(len(post["rho"]))
    for t in range(len(X)):
        prev = post["rho"] * prev + X[t, 0]
        level[:, t] = prev
    return stats.norm.logpdf(y[None, :], level, post["sigma"][:, None])


def _centered_loglik(post: dict[str, np.ndarray], X: np.ndarray, y: np.ndarray) -> np.ndarray:
    mu = post["b"][:, None] * (X[:, 0] - X[:, 0].mean())[None, :]
    return stats.norm.logpdf(y[None, :], mu, post["sigma"][:, None])


@pytest.mark.parametrize("batch_size", BATCHES)
@pytest.mark.parametrize(
    ("name", "analytic"), [("scan", _scan_loglik), ("centered", _centered_loglik)]
)
def test_log_likelihood_of_cross_row_kernels_is_analytic(models, name, analytic, batch_size):
    model = models[name]
    X, y = data()
    with pytest.warns(PerformanceWarning, match=r"computes across observations at site\(s\) 'y'"):
        out = model.log_likelihood(X, y, batch_size=batch_size, **STREAM)
    expected = analytic(posterior(name), X, y).astype(np.float32)
    assert_close_float(np.asarray(out["y"]), expected)


@pytest.mark.parametrize("name", ["lag", "global", "row_latent"])
def test_log_likelihood_of_per_row_outputs_streams_rows(models, name):
    """The output has one value per row here: log-likelihood stays on the rows."""
    model = models[name]
    X, y = data()
    whole = model.log_likelihood(X, y, batch_size=N, **STREAM)
    if name == "row_latent":  # the posterior is per row: it still streams draws
        with pytest.warns(PerformanceWarning, match=REASONS[name]):
            out = model.log_likelihood(X, y, batch_size=BATCHES[0], **STREAM)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PerformanceWarning)
            out = model.log_likelihood(X, y, batch_size=BATCHES[0], **STREAM)
    assert_close_float(np.asarray(out["y"]), np.asarray(whole["y"]))


def test_per_row_posterior_on_other_rows_is_refused(models, tmp_path):
    """Issue 14 item 4: fitted on 24 rows, evaluated on 25: a clear error before any
    work (it used to return draws of shape (draws, 24, 25)); the key stays."""
    model = models["row_latent"]
    X, y = data(N + 1)
    key = model.rng_key
    # Persistent stores need aimz-io (absent in the core-only test run).
    has_io = importlib.util.find_spec("aimz_io") is not None
    out = {"output_dir": tmp_path} if has_io else {"store": "memory", "return_datatree": False}
    calls = {
        "predict": lambda: model.predict(X, progress=False, **out),
        "posterior_predictive": lambda: model.sample_posterior_predictive(X, progress=False, **out),
        "predict_on_batch": lambda: model.predict_on_batch(X, return_datatree=False),
        "log_likelihood": lambda: model.log_likelihood(X, y, progress=False, **out),
    }
    for name, call in calls.items():
        with pytest.raises(
            ValueError,
            match=r"Each posterior draw of site 'z' has shape \(24,\), which does not fit the "
            r"shape \(25,\)",
        ):
            call()
        assert key_data(model.rng_key) == key_data(key), name
        assert list(tmp_path.iterdir()) == [], name


def test_per_row_intervention_and_condition_are_sliced_per_batch():
    """Issue 14 item 7: one value per row, sliced and padded per batch like `X`."""
    model = _model("treatment")
    X, _ = data()
    t = (np.arange(N) % 3 == 0).astype(np.float32)
    b = posterior("treatment")["b"]
    expected = b[:, None] * X[None, :, 0] + 2.0 * t[None, :]
    for handler in ("intervention", "condition"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", PerformanceWarning)
            out = model.predict(X, batch_size=5, rng_key=KEY, **{handler: {"t": t}}, **STREAM)
        assert_close_float(np.asarray(out["mu"]), expected, err_msg=handler)
    prior = model.sample_prior_predictive(
        X, num_samples=DRAWS, intervention={"t": t}, batch_size=6, **STREAM
    )
    slope = (np.asarray(prior["mu"]) - 2.0 * t) / X[:, 0]
    assert_close_float(slope, np.broadcast_to(slope[:, :1], slope.shape))


def test_estimate_effect_with_cross_row_kernel_and_per_row_intervention():
    pytest.importorskip("aimz_io")
    model = _model("scan")
    X, _ = data()
    with pytest.warns(PerformanceWarning, match="computes across observations"):
        effect = model.estimate_effect(
            args_baseline={"X": X, "rng_key": KEY, "batch_size": BATCHES[0], "progress": False},
            args_intervention={
                "X": X,
                "intervention": {"rho": np.float32(0.0)},
                "rng_key": KEY,
                "batch_size": BATCHES[0],
                "progress": False,
            },
        )
    level = np.asarray(effect["posterior_predictive"]["level"].values).reshape(DRAWS, N)
    expected = -_scan_levels(posterior("scan")["rho"], X) + X[None, :, 0]
    assert_close_float(level, expected.astype(np.float32))


def _scan_levels(rho: np.ndarray, X: np.ndarray) -> np.ndarray:
    out, prev = np.zeros((len(rho), len(X))), np.zeros(len(rho))
    for t in range(len(X)):
        prev = rho * prev + X[t, 0]
        out[:, t] = prev
    return out


CHILD = textwrap.dedent(
    """
    import sys, warnings
    import jax, numpy as np
    sys.path.insert(0, sys.argv[1])
    from row_kernels import KERNELS, N, DRAWS, data, posterior
    from aimz_core import ImpactModel, PerformanceWarning
    from aimz_core.testing import make_svi

    assert jax.local_device_count() == 3
    KEY = jax.random.key(11)
    kw = {"store": "memory", "return_datatree": False, "progress": False}
    X, y = data()
    out = {}
    for name in ("scan", "lag", "global", "centered", "branch", "row_latent"):
        kernel = KERNELS[name]
        model = ImpactModel(kernel, rng_key=jax.random.key(0), inference=make_svi(kernel))
        model.set_posterior_sample(posterior(name))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = model.predict(X, rng_key=KEY, batch_size=7, **kw)
        assert any(issubclass(w.category, PerformanceWarning) for w in caught), name
        for site, value in res.items():
            out[f"{name}/{site}"] = np.asarray(value)

    model = ImpactModel(KERNELS["treatment"], rng_key=jax.random.key(0),
                        inference=make_svi(KERNELS["treatment"]))
    model.set_posterior_sample(posterior("treatment"))
    t = (np.arange(N) % 3 == 0).astype(np.float32)
    for handler in ("intervention", "condition"):
        res = model.predict(X, rng_key=KEY, batch_size=6, **{handler: {"t": t}}, **kw)
        out[f"treatment/{handler}"] = np.asarray(res["mu"])
    # batch sizes not divisible by the devices warn on the obs path only
    def divisibility_warnings(**extra):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.predict(X, rng_key=KEY, **extra, **kw)
        return [str(w.message) for w in caught if "not divisible" in str(w.message)]
    obs = divisibility_warnings(batch_size=7)
    assert obs and obs[0].startswith(
        "The `batch_size` (7) is not divisible by the number of devices (3). "
        "Use a multiple of 3 for optimal performance."), obs
    assert divisibility_warnings(batch_size=7, shard_axis="draw") == []
    assert divisibility_warnings() == []
    np.savez(sys.argv[2], **{k.replace("/", "__"): v for k, v in out.items()})
    """
)


@pytest.mark.slow
def test_rows_on_three_devices(models, tmp_path):
    """The same kernels on three devices: no crash inside ``shard_map``, the same
    values as one device (another compiled program: float tolerance)."""
    (tmp_path / "child.py").write_text(CHILD)
    result = tmp_path / "result.npz"
    proc = subprocess.run(
        [sys.executable, "child.py", str(Path(__file__).parent), str(result)],
        cwd=tmp_path,
        env=child_env(device_count=3, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    child = {k.replace("__", "/"): v for k, v in np.load(result).items()}
    X, _ = data()
    for name in ("scan", "lag", "global", "centered", "branch", "row_latent"):
        ref = models[name].predict_on_batch(X, rng_key=KEY, return_datatree=False)
        for site, value in ref.items():
            assert_close_float(child[f"{name}/{site}"], value, err_msg=f"{name}/{site}")
    b = posterior("treatment")["b"]
    t = (np.arange(N) % 3 == 0).astype(np.float32)
    expected = b[:, None] * X[None, :, 0] + 2.0 * t[None, :]
    for handler in ("intervention", "condition"):
        assert_close_float(child[f"treatment/{handler}"], expected, err_msg=handler)


def _host_features_kernel(X, y=None):
    """Features computed on the host by a callback with no ``vmap_method``: the kernel
    runs on any batch of rows, but cannot be vectorised over copies of its inputs."""
    import numpyro
    import numpyro.distributions as dist

    shape = jax.ShapeDtypeStruct(X.shape, X.dtype)
    feats = jax.pure_callback(lambda a: np.asarray(a) * 2.0, shape, X)
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(feats @ w, 1.0), obs=y)


def test_a_kernel_with_a_host_callback_streams_rows():
    """The row probe runs the perturbed copies one at a time when they cannot be
    vectorised: the call streams rows, as a per-row kernel should, instead of
    failing with JAX's batching error."""
    from aimz_core.streaming.options import StreamOptions
    from aimz_core.streaming.plan import plan_call, resolve_inputs

    model = ImpactModel(
        _host_features_kernel,
        rng_key=jax.random.key(0),
        inference=make_svi(_host_features_kernel),
    )
    draws = np.random.default_rng(2).normal(size=(200, 2)).astype(np.float32)
    model.set_posterior_sample({"w": draws})
    X = np.random.default_rng(3).normal(size=(300, 2)).astype(np.float32)
    opts = StreamOptions(
        kind="predict", caller="predict", batch_size=64, store="memory", return_datatree=False
    )
    plan = plan_call(opts, resolve_inputs(model, X, None, opts), model._runner(), param_input="X")
    assert plan.shard_axis == "obs"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no rerun on the draw path
        out = model.predict(X, batch_size=64, return_datatree=False, progress=False)
    y = np.asarray(out["y"])
    assert y.shape == (200, 300)
    # y ~ Normal(2 X w, 1): the callback ran on every row of every batch.
    np.testing.assert_allclose(y.mean(0), (2 * X @ draws.T).mean(1), atol=0.3)
