"""PRNG key handling shared by the model and the data loaders."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax import random

from aimz_core.exceptions import AimzWarning


def coerce_key(key: object, name: str = "rng_key", *, stacklevel: int = 3) -> jax.Array:
    """Return ``key`` as a typed JAX PRNG key.

    Legacy ``uint32`` keys (``jax.random.PRNGKey``) are accepted with an
    :class:`~aimz_core.exceptions.AimzWarning` and wrapped.

    Args:
        key: A typed key from ``jax.random.key`` or a legacy ``uint32`` key.
        name: Argument name used in error messages.
        stacklevel: Passed to :func:`warnings.warn`.

    Returns:
        A typed PRNG key.

    Raises:
        TypeError: If ``key`` is not a PRNG key.

    Example:
        >>> import jax
        >>> coerce_key(jax.random.key(0)).dtype.name.startswith("key")
        True
    """
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise TypeError(f"`{name}` must be a single PRNG key, got shape {key.shape}.")
        return key
    if isinstance(key, (jax.Array, np.ndarray)) and key.dtype == np.uint32:
        if key.shape != (2,):
            raise TypeError(
                f"`{name}` must be a single PRNG key; got a uint32 array of shape "
                f"{key.shape}. Use `jax.random.key(seed)`."
            )
        warnings.warn(
            f"Legacy `uint32` PRNGKey detected for `{name}`; converting to a typed "
            "key. Use `jax.random.key(seed)` to silence this warning.",
            AimzWarning,
            stacklevel=stacklevel,
        )
        return random.wrap_key_data(jnp.asarray(key))
    raise TypeError(
        f"`{name}` must be a JAX PRNG key such as `jax.random.key(0)`, got {type(key).__name__}."
    )


def key_seed(key: jax.Array) -> np.ndarray:
    """Return the raw ``uint32`` data of a typed key (to seed NumPy generators).

    Example:
        >>> import jax
        >>> key_seed(jax.random.key(1)).dtype
        dtype('uint32')
    """
    return np.asarray(random.key_data(key)).ravel()
