"""Kernels that compute across rows, or return sites without one value per row, and
per-row kernels with per-row handler values (issue 14 items 3, 4, 6, 7).

Shared by ``test_core_row_dependence.py`` and its multi-device child process (which
imports this file by path), so it imports nothing from the test package.
"""

from __future__ import annotations

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist

N = 24
DRAWS = 8


def scan_kernel(X, y=None):
    """An AR(1) level over the rows (``lax.scan``): row i depends on rows < i."""
    rho = numpyro.sample("rho", dist.Uniform(-0.9, 0.9))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))

    def step(carry, x):
        level = rho * carry + x[0]
        return level, level

    _, levels = jax.lax.scan(step, 0.0, X)
    numpyro.deterministic("level", levels)
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(levels, sigma), obs=y)


def lag_kernel(X, y=None):
    """A lag plate of ``n - 1`` differences next to a per-row output."""
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("lag", X.shape[0] - 1):
        numpyro.deterministic("diff", b * (X[1:, 0] - X[:-1, 0]))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(b * X[:, 0], sigma), obs=y)


def global_kernel(X, y=None):
    """A global ``deterministic`` site (one value per draw)."""
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    numpyro.deterministic("sigma2", sigma**2)
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(b * X[:, 0], sigma), obs=y)


def centered_kernel(X, y=None):
    """Centres its input on the batch mean: every row depends on all rows."""
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("obs", X.shape[0]):
        mu = numpyro.deterministic("mu", b * (X[:, 0] - X[:, 0].mean()))
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def branch_kernel(X, y=None):
    """Branches on a sum over rows (``lax.cond``): every row depends on all rows."""
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    shift = jax.lax.cond(X[:, 0].sum() > 0, lambda: 3.0, lambda: -3.0)
    with numpyro.plate("obs", X.shape[0]):
        mu = numpyro.deterministic("mu", b * X[:, 0] + shift)
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def row_latent_kernel(X, y=None):
    """A per-row latent ``z`` (the posterior has one value per row)."""
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    with numpyro.plate("obs", X.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(z + X[:, 0], s), obs=y)


def treatment_kernel(X, y=None):
    """A per-row treatment ``t`` to intervene on or condition, row by row."""
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("obs", X.shape[0]):
        t = numpyro.sample("t", dist.Bernoulli(0.5))
        mu = numpyro.deterministic("mu", b * X[:, 0] + 2.0 * t)
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


KERNELS = {
    "scan": scan_kernel,
    "lag": lag_kernel,
    "global": global_kernel,
    "centered": centered_kernel,
    "branch": branch_kernel,
    "row_latent": row_latent_kernel,
    "treatment": treatment_kernel,
}


def data(n: int = N) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(n, 1)).astype(np.float32)
    return X, (X[:, 0] + 0.3 * rng.normal(size=n)).astype(np.float32)


def posterior(name: str, n: int = N, draws: int = DRAWS) -> dict[str, np.ndarray]:
    """A fixed posterior for each kernel (no fitting: the tests stay fast)."""
    rng = np.random.default_rng(5)
    scale = rng.uniform(0.5, 1.5, size=draws).astype(np.float32)
    if name == "scan":
        return {"rho": rng.uniform(-0.8, 0.8, size=draws).astype(np.float32), "sigma": scale}
    if name == "row_latent":
        return {"s": scale, "z": rng.normal(size=(draws, n)).astype(np.float32)}
    return {"b": rng.normal(size=draws).astype(np.float32), "sigma": scale}
