"""Canonical kernels and fitted models for tests, examples and doctests.

Everything here is importable by name in any process (Dask workers and
subprocesses included), and fast: :func:`fitted_linreg` sets a synthetic
posterior instead of fitting.

Example:
    >>> from aimz_core.testing import fitted_linreg, linreg_data
    >>> model = fitted_linreg()
    >>> X, y = linreg_data()
    >>> model.predict_on_batch(X, return_datatree=False)["y"].shape
    (100, 60)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

if TYPE_CHECKING:
    from aimz_core.model import ImpactModel

#: Coefficients of the data of :func:`linreg_data`.
TRUE_W = np.array([1.5, -2.0], dtype=np.float32)
TRUE_B = 0.5


def linreg(X: Any, y: Any = None) -> None:
    """Linear regression: global latents ``w``, ``b``, ``sigma``; deterministic
    ``mu``; output ``y`` in an ``obs`` plate.

    Example:
        >>> from numpyro import handlers
        >>> tr = handlers.trace(handlers.seed(linreg, 0)).get_trace(np.ones((3, 2)))
        >>> list(tr)
        ['w', 'b', 'sigma', 'mu', 'obs', 'y']
    """
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    mu = numpyro.deterministic("mu", X @ w + b)
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def linreg_data(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` of :func:`linreg`: ``n`` rows, two features, small noise.

    Example:
        >>> X, y = linreg_data(5)
        >>> X.shape, y.shape
        ((5, 2), (5,))
    """
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2)).astype(np.float32)
    y = (X @ TRUE_W + TRUE_B + 0.1 * rng.normal(size=n)).astype(np.float32)
    return X, y


def make_svi(kernel: Callable = linreg, lr: float = 0.05) -> SVI:
    """SVI with an ``AutoNormal`` guide, Adam and ``Trace_ELBO``.

    Example:
        >>> type(make_svi()).__name__
        'SVI'
    """
    return SVI(kernel, AutoNormal(kernel), numpyro.optim.Adam(lr), Trace_ELBO())


def make_model(kernel: Callable = linreg, seed: int = 0, **kwargs: Any) -> ImpactModel:
    """An unfitted :class:`~aimz_core.model.ImpactModel` of ``kernel`` with SVI.

    Example:
        >>> make_model().is_fitted()
        False
    """
    from aimz_core.model import ImpactModel

    return ImpactModel(kernel, rng_key=jax.random.key(seed), inference=make_svi(kernel), **kwargs)


def fitted_linreg(num_draws: int = 100, seed: int = 0) -> ImpactModel:
    """A :func:`linreg` model with a fixed synthetic posterior (no fitting needed).

    Example:
        >>> model = fitted_linreg(num_draws=10)
        >>> model.is_fitted(), model.posterior["w"].shape
        (True, (10, 2))
    """
    rng = np.random.default_rng(seed)
    model = make_model(linreg, seed=seed)
    model.set_posterior_sample(
        {
            "w": rng.normal(size=(num_draws, 2)).astype(np.float32),
            "b": rng.normal(size=num_draws).astype(np.float32),
            "sigma": np.abs(rng.normal(size=num_draws)).astype(np.float32) + 0.1,
        }
    )
    return model


__all__ = [
    "TRUE_B",
    "TRUE_W",
    "fitted_linreg",
    "linreg",
    "linreg_data",
    "make_model",
    "make_svi",
]
