"""PRNG key handling shared by the model and the data loaders."""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

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
            "Legacy `uint32` PRNGKey detected; converting to a typed key array. "
            f"(`{name}`: use `jax.random.key(seed)` to silence this warning.)",
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


# ------------------------------------------------------------------ pickling keys
# JAX pickles a typed key together with a *copy* of its PRNG implementation, and some
# samplers (``jax.random.poisson`` for one) check the implementation by identity, so
# an unpickled key fails there. State that holds keys is therefore
# pickled with every key turned into a `PickledKey` (key data plus the registered
# name of its implementation) and rebuilt from that name on unpickling.

# Objects of these packages are walked through (their attributes), so that keys held
# by an SVI/MCMC object, its guide, sampler and seed handlers are covered as well.
_WALKED_MODULES = ("numpyro.infer", "numpyro.handlers")
_MAX_OBJECT_DEPTH = 4


@dataclasses.dataclass(frozen=True, eq=False)
class PickledKey:
    """A typed PRNG key as plain data: its key data and its implementation's name.

    Attributes:
        data: The key data (``jax.random.key_data``) as a NumPy array, batch axes
            first.
        impl: The registered name of the key's implementation (``"threefry2x32"``,
            ``"rbg"``, ``"unsafe_rbg"``...).

    Example:
        >>> import jax
        >>> packed = PickledKey.from_key(jax.random.key(0, impl="rbg"))
        >>> packed.impl, packed.data.shape
        ('rbg', (4,))
        >>> str(jax.random.key_impl(packed.to_key()))
        'rbg'
    """

    data: np.ndarray
    impl: str

    @classmethod
    def from_key(cls, key: jax.Array) -> PickledKey:
        """Store a typed key (of any batch shape) as data plus implementation name."""
        return cls(np.asarray(random.key_data(key)), str(random.key_impl(key)))

    def to_key(self) -> jax.Array:
        """Rebuild the key with the implementation registered under :attr:`impl`."""
        return random.wrap_key_data(jnp.asarray(self.data), impl=self.impl)


def is_typed_key(value: object) -> bool:
    """Whether ``value`` is a typed JAX PRNG key array (of any shape).

    Example:
        >>> import jax
        >>> is_typed_key(jax.random.key(0)), is_typed_key(jax.random.PRNGKey(0))
        (True, False)
    """
    return isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jax.dtypes.prng_key)


def pack_keys(state: Any) -> Any:
    """Replace every typed key in ``state`` by a picklable :class:`PickledKey`.

    ``state`` is walked through dicts, lists, tuples (named tuples such as NumPyro's
    ``SVIState`` and ``HMCState`` included) and the attributes of NumPyro inference
    objects (``SVI``, ``MCMC``, guides, samplers, handlers). Containers and objects
    on the way to a key are copied (objects shallowly); nothing is changed in place
    and parts without keys are returned as they are.

    Args:
        state: Any object, typically the state dict of ``__getstate__``.

    Returns:
        ``state`` with its keys packed (``state`` itself when it holds none).

    Example:
        >>> import jax
        >>> packed = pack_keys({"key": jax.random.key(1), "n": 3})
        >>> type(packed["key"]).__name__, packed["n"]
        ('PickledKey', 3)
    """
    return _Walker(lambda key: PickledKey.from_key(key) if is_typed_key(key) else key).walk(state)


def unpack_keys(state: Any) -> Any:
    """Inverse of :func:`pack_keys`: rebuild every :class:`PickledKey` as a typed key.

    Typed keys found as such (pickles written before keys were packed) are rebuilt
    too, so that their implementation is the registered one again.

    Args:
        state: Any object, typically the state given to ``__setstate__``.

    Returns:
        ``state`` with working keys (copied along the way as in :func:`pack_keys`).

    Example:
        >>> import jax
        >>> key = jax.random.key(2)
        >>> restored = unpack_keys(pack_keys([key]))[0]
        >>> bool((jax.random.key_data(restored) == jax.random.key_data(key)).all())
        True
    """

    def rebuild(value: Any) -> Any:
        if isinstance(value, PickledKey):
            return value.to_key()
        return PickledKey.from_key(value).to_key()

    return _Walker(rebuild).walk(state)


class _Walker:
    """Rebuilds a structure with ``convert`` applied to its keys (copy on change)."""

    def __init__(self, convert: Callable[[Any], Any]) -> None:
        self.convert = convert
        # id -> (original, result): keeps originals alive so that ids stay unique,
        # and shared parts stay shared.
        self.memo: dict[int, tuple[Any, Any]] = {}
        self.active: set[int] = set()

    def walk(self, obj: Any, depth: int = 0) -> Any:
        if obj is None or isinstance(obj, (str, bytes, int, float, np.ndarray)):
            return obj
        oid = id(obj)
        if oid in self.memo:
            return self.memo[oid][1]
        if isinstance(obj, PickledKey) or is_typed_key(obj):
            result = self.convert(obj)
        elif isinstance(obj, jax.Array) or oid in self.active:  # (or a cycle)
            return obj
        else:
            self.active.add(oid)
            try:
                result = self._walk_inner(obj, depth)
            finally:
                self.active.discard(oid)
        self.memo[oid] = (obj, result)
        return result

    def _walk_inner(self, obj: Any, depth: int) -> Any:
        kind = type(obj)
        if kind in (dict, OrderedDict):
            items = {k: self.walk(v, depth) for k, v in obj.items()}
            if all(items[k] is v for k, v in obj.items()):
                return obj
            return kind(items)
        if kind is list or isinstance(obj, tuple):
            values = [self.walk(v, depth) for v in obj]
            if all(new is old for new, old in zip(values, obj, strict=True)):
                return obj
            if kind is list:
                return values
            if hasattr(obj, "_fields"):  # a named tuple
                return kind._make(values)
            return tuple(values) if kind is tuple else obj
        if depth < _MAX_OBJECT_DEPTH and any(
            str(getattr(cls, "__module__", "")).startswith(_WALKED_MODULES)
            for cls in kind.__mro__[:-1]
        ):
            return self._walk_object(obj, depth + 1)
        return obj

    def _walk_object(self, obj: Any, depth: int) -> Any:
        # What the object itself pickles (``MCMC`` drops its cache, guides their plates).
        getstate = getattr(obj, "__getstate__", None)
        state = getstate() if callable(getstate) else getattr(obj, "__dict__", None)
        if not isinstance(state, dict):
            return obj
        changed = {}
        for name, value in state.items():
            new = self.walk(value, depth)
            if new is not value:
                changed[name] = new
        if not changed:
            return obj
        clone = copy.copy(obj)
        clone.__dict__.update(changed)
        return clone
