"""Kernels of the distributed tests, importable by Dask worker processes by name."""

from __future__ import annotations

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
from aimz_core import ImpactModel
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

N_DRAWS = 30


def linreg(X, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    mu = numpyro.deterministic("mu", X @ w + b)
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def fitted_model(num_draws: int = N_DRAWS) -> ImpactModel:
    """A linear regression with a fixed synthetic posterior (no fitting needed)."""
    rng = np.random.default_rng(0)
    svi = SVI(linreg, AutoNormal(linreg), numpyro.optim.Adam(0.05), Trace_ELBO())
    model = ImpactModel(linreg, rng_key=jax.random.key(0), inference=svi)
    model.set_posterior_sample(
        {
            "w": rng.normal(size=(num_draws, 2)).astype(np.float32),
            "b": rng.normal(size=num_draws).astype(np.float32),
            "sigma": np.abs(rng.normal(size=num_draws)).astype(np.float32) + 0.1,
        }
    )
    return model


def set_fault_hook(hook) -> None:
    """Install ``hook`` as the distributed runner's test hook (run on every worker)."""
    from aimz_io import distributed

    distributed._FAULT_HOOK = hook


def fail_on_region(failing: int):
    """A hook that raises in region ``failing`` after its data is written."""

    def hook(i: int) -> None:
        if i == failing:
            raise OSError(f"injected failure in region {i}")

    return hook


def kill_on_region(killing: int):
    """A hook that SIGKILLs its own process in region ``killing`` (a lost worker)."""

    def hook(i: int) -> None:
        if i == killing:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def warm_up() -> None:
    """Import JAX, NumPyro and aimz on a worker (run in the background by the tests)."""
    import aimz_io.distributed  # noqa: F401
