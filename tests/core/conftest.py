"""Shared fixtures for the aimz-core tests: tiny kernels, data and fitted models.

Fitted models are session-scoped so that every test reuses the same posterior and the
same jit caches (same shapes): the whole ``tests/core`` suite must stay fast on a
couple of CPU cores. Tests that mutate a model use their own instance.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from aimz_core import ImpactModel
from aimz_core.testing import linreg, make_model
from numpyro.infer import MCMC, NUTS

N_OBS = 60
N_DRAWS = 50
TRUE_W = np.array([1.5, -2.0], dtype=np.float32)
TRUE_B = 0.5


def key_data(key: jax.Array) -> list[int]:
    return np.asarray(jax.random.key_data(key)).tolist()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the multi-device child process early so it runs alongside other tests."""
    if session.config.option.collectonly:
        return
    for item in session.items:
        module = getattr(item, "module", None)
        if module is not None and module.__name__.endswith("test_multidevice"):
            module.start_child()
            break


@pytest.fixture(scope="session")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N_OBS, 2)).astype(np.float32)
    y = (X @ TRUE_W + TRUE_B + 0.1 * rng.normal(size=N_OBS)).astype(np.float32)
    return X, y


@pytest.fixture(scope="session")
def svi_model(data) -> ImpactModel:
    """An SVI model fitted once; tests must not change its posterior or key."""
    X, y = data
    model = make_model()
    model.fit_on_batch(X, y, num_steps=300, num_samples=N_DRAWS, progress=False)
    return model


@pytest.fixture(scope="session")
def mcmc_model(data) -> ImpactModel:
    X, y = data
    mcmc = MCMC(NUTS(linreg), num_warmup=50, num_samples=50, progress_bar=False)
    model = ImpactModel(linreg, rng_key=jax.random.key(1), inference=mcmc)
    model.fit_on_batch(X, y)
    return model


@pytest.fixture
def fresh_key() -> jax.Array:
    return jax.random.key(123)
