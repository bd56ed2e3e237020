"""Sharding over several devices (spec 4.3, 4.8, 7), on CPU with a forced device count.

The checks run in a child process started with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (appended to the inherited
``XLA_FLAGS``, so an instruction-set limit applies to it too) so that this process
keeps one device. The child writes its results to an ``.npz`` file that is compared
here with single-device results of the same posterior and key: the same per-draw
keys, but other compiled programs, so floats agree to tolerance, not bit for bit. To
keep the suite fast the child is started in the background as soon as collection
finishes (see ``conftest.py``), so it runs while the other tests do.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from aimz_core import ImpactModel
from aimz_core.testing import linreg, make_svi

from ..aimz_testing import assert_close_float, child_env
from .conftest import N_OBS, TRUE_B, TRUE_W

CHILD = textwrap.dedent(
    """
    import sys, warnings
    import jax, numpy as np, numpyro, numpyro.distributions as dist
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal
    from aimz_core import ImpactModel, PerformanceWarning
    from aimz_core.testing import linreg

    assert jax.local_device_count() == 4, jax.devices()

    def local(X, y=None):
        with numpyro.plate("obs", X.shape[0]):
            z = numpyro.sample("z", dist.Normal())
            numpyro.sample("y", dist.Normal(z, 1.0), obs=y)

    inputs = np.load(sys.argv[1])
    X, y = inputs["X"], inputs["y"]
    post = {k: inputs[k] for k in ("w", "b", "sigma")}
    svi = SVI(linreg, AutoNormal(linreg), numpyro.optim.Adam(0.05), Trace_ELBO())
    model = ImpactModel(linreg, rng_key=jax.random.key(0), inference=svi)
    model.set_posterior_sample(post)
    assert model._layout.num_devices == 4
    key = jax.random.key(11)
    kw = {"progress": False, "return_datatree": False}
    out = {}

    # draw sharding: invariant to mesh size and chunk size
    out["draw8"] = model.predict(X, shard_axis="draw", batch_size=8, rng_key=key, **kw)["y"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out["draw6"] = model.predict(X, shard_axis="draw", batch_size=6, rng_key=key, **kw)["y"]
    # issue 14 item 19: the divisibility warning is for `shard_axis="obs"` only
    assert not any("not divisible" in str(w.message) for w in caught), [
        str(w.message) for w in caught]

    # obs sharding with a batch size that does not divide the device count
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        obs = model.predict(X, batch_size=10, rng_key=key, return_sites=["y", "mu"], **kw)
    messages = [str(w.message) for w in caught]
    assert any("The `batch_size` (10) is not divisible by the number of devices (4)" in m
               for m in messages), messages
    assert [w.category for w in caught if "divisible" in str(w.message)] == [PerformanceWarning]
    assert obs["y"].shape == obs["mu"].shape == (50, len(X)), obs["y"].shape
    out["obs_mu"], out["obs_y"] = obs["mu"], obs["y"]
    again = model.predict(X, batch_size=10, rng_key=key, return_sites=["y", "mu"], **kw)
    assert np.array_equal(again["y"], obs["y"])  # deterministic for a fixed key and size

    # log-likelihood: deterministic, so every layout gives the same values
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerformanceWarning)  # 12 rows: divisible, no warning
        out["ll_obs"] = model.log_likelihood(X, y, batch_size=12, **kw)["y"]
    out["ll_draw"] = model.log_likelihood(X, y, shard_axis="draw", batch_size=8, **kw)["y"]

    # prior predictive: global latents shared by every device and batch
    ones = np.ones_like(X)
    prior = model.sample_prior_predictive(ones, num_samples=50, batch_size=8, rng_key=key,
                                          return_sites=["y", "mu"], **kw)
    out["prior_mu"], out["prior_y"] = prior["mu"], prior["y"]

    # an observation-level posterior cannot be sharded along observations
    loc = ImpactModel(local, rng_key=jax.random.key(0),
                      inference=SVI(local, AutoNormal(local), numpyro.optim.Adam(0.05),
                                    Trace_ELBO()))
    loc.set_posterior_sample({"z": inputs["z"]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out["local"] = loc.predict(X, rng_key=key, return_sites="y", **kw)["y"]
    assert any(issubclass(w.category, PerformanceWarning)
               and "as long as the number of observations"
               in str(w.message) for w in caught), [str(w.message) for w in caught]

    np.savez(sys.argv[2], **out)
    """
)


def _inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    X = rng.normal(size=(N_OBS, 2)).astype(np.float32)
    return {
        "X": X,
        "y": (X @ TRUE_W + TRUE_B + 0.1 * rng.normal(size=N_OBS)).astype(np.float32),
        "w": rng.normal(size=(50, 2)).astype(np.float32),
        "b": rng.normal(size=50).astype(np.float32),
        "sigma": rng.uniform(0.5, 1.5, size=50).astype(np.float32),
        "z": rng.normal(size=(50, N_OBS)).astype(np.float32),
    }


_CHILD: dict = {}


def start_child() -> None:
    """Start the 4-device child process once (called early by conftest.py)."""
    if _CHILD:
        return
    workdir = Path(tempfile.mkdtemp(prefix="aimz-multidevice-"))
    np.savez(workdir / "inputs.npz", **_inputs())
    (workdir / "child.py").write_text(CHILD)
    env = child_env(device_count=4, JAX_PLATFORMS="cpu")
    stderr = open(workdir / "stderr.txt", "w")  # noqa: SIM115 - closed in _finish
    proc = subprocess.Popen(
        [sys.executable, "child.py", "inputs.npz", "result.npz"],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    _CHILD.update(proc=proc, workdir=workdir, stderr=stderr)
    atexit.register(_finish)


def _finish() -> None:
    proc = _CHILD.get("proc")
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
    if _CHILD.get("stderr") is not None:
        _CHILD["stderr"].close()
    if _CHILD.get("workdir") is not None:
        shutil.rmtree(_CHILD["workdir"], ignore_errors=True)


@pytest.mark.slow
def test_multidevice_sharding():
    start_child()
    proc, workdir = _CHILD["proc"], _CHILD["workdir"]
    try:
        returncode = proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    _CHILD["stderr"].flush()
    assert returncode == 0, (workdir / "stderr.txt").read_text()[-4000:]
    child = dict(np.load(workdir / "result.npz"))
    inputs = _inputs()
    X, y, z = inputs["X"], inputs["y"], inputs["z"]
    post = {k: inputs[k] for k in ("w", "b", "sigma")}
    assert jax.local_device_count() == 1  # this process is unaffected

    model = ImpactModel(linreg, rng_key=jax.random.key(0), inference=make_svi())
    model.set_posterior_sample(post)
    key = jax.random.key(11)
    ref = model.predict_on_batch(X, rng_key=key, return_datatree=False)
    # draw path: the same draws as one device, whatever the chunk size (same per-draw
    # keys; sharded programs of other shapes, so equal to float tolerance)
    for name in ("draw8", "draw6"):
        assert_close_float(child[name], ref["y"], err_msg=name)

    # obs path: rows in place, deterministic site as NumPy, shards draw independent noise
    mu = post["w"] @ X.T + post["b"][:, None]
    np.testing.assert_allclose(child["obs_mu"], mu, rtol=1e-5, atol=1e-5)
    assert child["obs_y"].shape == (50, len(X))
    z_scores = (child["obs_y"] - mu) / post["sigma"][:, None]
    assert abs(z_scores.mean()) < 0.1 and 0.9 < z_scores.std() < 1.1
    # 10-row batches padded to 12 rows -> 3 rows per device; compare device 0 and 1 rows
    assert not np.allclose(z_scores[:, 0:3], z_scores[:, 3:6])

    # log-likelihood: sharded == unsharded == numpy
    single = model.log_likelihood(X, y, batch_size=12, progress=False, return_datatree=False)
    manual = (
        -0.5 * ((y - mu) / post["sigma"][:, None]) ** 2
        - np.log(post["sigma"])[:, None]
        - 0.5 * np.log(2 * np.pi)
    )
    np.testing.assert_allclose(single["y"], manual, rtol=1e-5, atol=1e-5)
    for name in ("ll_obs", "ll_draw"):
        np.testing.assert_allclose(child[name], single["y"], rtol=1e-5, atol=1e-5, err_msg=name)

    # prior predictive: mu is identical in every row (w, b shared by all devices/batches)
    prior_mu = child["prior_mu"]
    assert prior_mu.shape == (50, len(X))
    np.testing.assert_allclose(
        prior_mu, np.broadcast_to(prior_mu[:, :1], prior_mu.shape), rtol=1e-6
    )
    assert prior_mu[:, 0].std() > 0.5
    resid = child["prior_y"] - prior_mu
    assert not np.allclose(resid[:, 0], resid[:, 2])  # rows on different devices

    # the obs-level model reran on the draw path: one device's on-batch draws (to float
    # tolerance: a sharded program on 4 devices against an unsharded one)
    def local(X, y=None):
        import numpyro
        import numpyro.distributions as dist

        with numpyro.plate("obs", X.shape[0]):
            z = numpyro.sample("z", dist.Normal())
            numpyro.sample("y", dist.Normal(z, 1.0), obs=y)

    loc = ImpactModel(local, rng_key=jax.random.key(0), inference=make_svi(local))
    loc.set_posterior_sample({"z": z})
    local_ref = loc.predict_on_batch(X, rng_key=key, return_sites="y", return_datatree=False)
    assert_close_float(child["local"], local_ref["y"])
