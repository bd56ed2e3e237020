"""The posterior as a value: validation of injected samples, the draws forward
sampling substitutes, their device placement and the per-batch gather of draws.

A posterior is a plain ``{site: array}`` with a shared, flattened (chain-major)
leading draw axis; the model stores it as it is and never mutates it in place.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any

import jax
import numpy as np

from aimz_core.data import check_batch_size
from aimz_core.exceptions import NotFittedError, OutputWarning
from aimz_core.kernel import RESERVED_SITE_NAMES, reserved_names_message
from aimz_core.kernel_spec import KernelSpec
from aimz_core.recorded_sites import latent_sites, recorded_sites


def not_fitted() -> NotFittedError:
    """The error every method that needs posterior samples raises without them.

    Example:
        >>> isinstance(not_fitted(), ValueError)
        True
    """
    return NotFittedError(
        "This ImpactModel instance is not fitted yet. Call `.fit()`, `.fit_on_batch()` "
        "or `.set_posterior_sample()` before using this method."
    )


def validate_posterior_sample(
    posterior_sample: Mapping[str, Any],
    *,
    num_chains: int,
    param_output: str,
    kernel_spec: KernelSpec | None,
    guide: Any,
) -> dict[str, Any]:
    """Check injected posterior samples and return them as ``{site: array}``.

    Raises:
        TypeError: If ``posterior_sample`` is not a mapping.
        ValueError: For reserved or 0-D sites, an empty mapping, differing leading
            sizes or a leading size not divisible by ``num_chains``.

    Warns:
        OutputWarning: If the output site is given (it is removed), if no known
            trace of the kernel records a site, or if a latent site a known trace
            records has no draws (the predictive methods draw it from the prior).

    Example:
        >>> out = validate_posterior_sample(
        ...     {"w": [1.0, 2.0]}, num_chains=1, param_output="y", kernel_spec=None,
        ...     guide=None)
        >>> out["w"].shape
        (2,)
    """
    if not isinstance(posterior_sample, Mapping):
        raise TypeError(
            "`posterior_sample` must be a mapping of site names to arrays, got "
            f"{type(posterior_sample).__name__}."
        )
    check_batch_size(num_chains, "num_chains")
    samples = dict(posterior_sample)
    if param_output in samples:
        warnings.warn(
            f"The output site {param_output!r} is removed.",
            OutputWarning,
            stacklevel=3,
        )
        samples.pop(param_output)
    reserved = [k for k in samples if k in RESERVED_SITE_NAMES]
    if reserved:
        raise ValueError(reserved_names_message(reserved))
    if not samples:
        raise ValueError("`posterior_sample` cannot be empty.")
    for name, value in samples.items():
        if not isinstance(value, (np.ndarray, jax.Array)):
            value = np.asarray(value)
        if value.ndim == 0:
            raise ValueError(f"`posterior_sample[{name!r}]` must have at least 1 dimension.")
        samples[name] = value
    shapes = {k: v.shape[0] for k, v in samples.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"Inconsistent batch shapes found in `posterior_sample`: {shapes}")
    n = next(iter(shapes.values()))
    if n % num_chains:
        raise ValueError(
            f"The leading size {n} of `posterior_sample` is not divisible by "
            f"`num_chains={num_chains}`."
        )
    recorded = recorded_sites(kernel_spec, guide)
    unknown = [k for k in samples if recorded is not None and k not in recorded]
    if unknown:
        warnings.warn(
            f"No trace of the kernel records the site(s) {', '.join(map(repr, unknown))} "
            "of `posterior_sample`; they are kept in `posterior`, but the predictive "
            "methods ignore them unless the kernel records them.",
            OutputWarning,
            stacklevel=3,
        )
    latent = latent_sites(kernel_spec, guide, param_output)
    missing = sorted(latent - set(samples)) if latent is not None else []
    if missing:
        warnings.warn(
            f"`posterior_sample` has no draws for the latent site(s) "
            f"{', '.join(map(repr, missing))}; the predictive methods draw them from the "
            "prior. Include their draws to condition on them.",
            OutputWarning,
            stacklevel=3,
        )
    return samples


def substitutable(
    posterior: Mapping[str, Any], kernel_spec: KernelSpec | None, param_output: str
) -> dict[str, Any]:
    """Posterior sites that forward sampling substitutes (no deterministic ones).

    Example:
        >>> spec = KernelSpec(True, ("w", "y"), ("y", "mu"), True)
        >>> sorted(substitutable({"w": 1, "mu": 2, "y": 3}, spec, "y"))
        ['w']
    """
    deterministic: set[str] = set()
    if kernel_spec is not None:
        deterministic = set(kernel_spec.return_sites) - set(kernel_spec.sample_sites)
    return {k: v for k, v in posterior.items() if k not in deterministic and k != param_output}


def to_host(posterior: Mapping[str, Any] | None) -> dict[str, np.ndarray]:
    """The posterior as NumPy arrays (``{}`` for none).

    Example:
        >>> to_host({"w": [1.0, 2.0]})["w"].dtype
        dtype('float64')
    """
    return {k: np.asarray(v) for k, v in (posterior or {}).items()}


def first_draw(posterior: Mapping[str, Any]) -> dict[str, jax.ShapeDtypeStruct]:
    """Abstract value of one draw of every site (only shapes matter for planning).

    Indexing a draw-sharded array on an explicit mesh would need an out_sharding,
    so no value is read.

    Example:
        >>> first_draw({"w": np.zeros((10, 3), np.float32)})["w"].shape
        (3,)
    """
    return {k: jax.ShapeDtypeStruct(np.shape(v)[1:], v.dtype) for k, v in posterior.items()}


@partial(jax.jit, static_argnums=2)
def take_draws(
    post: dict[str, jax.Array], start: int, size: int
) -> tuple[dict[str, jax.Array], jax.Array]:
    """Draws ``[start, start + size)`` of a posterior and their draw indices.

    Past the last draw the chunk repeats the last draw (batch padding, trimmed
    later), so the posterior is never copied into a padded version.

    Example:
        >>> import jax.numpy as jnp
        >>> chunk, idx = take_draws({"w": jnp.arange(6.0)}, 4, 3)
        >>> chunk["w"].tolist(), idx.tolist()
        ([4.0, 5.0, 5.0], [4, 5, 6])
    """
    idx = start + jax.numpy.arange(size)
    chunk = {k: jax.numpy.take(v, idx, axis=0, mode="clip") for k, v in post.items()}
    return chunk, idx


def fitted_params(model: Any, names: Iterable[str]) -> dict[str, Any]:
    """Fitted values of the kernel's ``numpyro.param`` sites ``names`` (SVI only).

    A kernel's own ``numpyro.param`` sites are learned by SVI alongside the guide;
    the predictive methods substitute these values for the sites' initial values.

    Example:
        >>> from aimz_core.testing import fitted_linreg
        >>> fitted_params(fitted_linreg(), ["a"])
        {}
    """
    result = getattr(model, "vi_result", None)
    if result is None or not getattr(result, "params", None):
        return {}
    wanted = set(names)
    return {k: jax.numpy.asarray(v) for k, v in result.params.items() if k in wanted}


__all__ = [
    "first_draw",
    "fitted_params",
    "not_fitted",
    "substitutable",
    "take_draws",
    "to_host",
    "validate_posterior_sample",
]
