"""Array datasets and batch loaders."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import random

from aimz_core.rng import coerce_key, key_seed, pack_keys, unpack_keys


class ArrayDataset:
    """Named arrays that share their leading axis.

    Args:
        to_jax: Convert every array with ``jnp.asarray``.
        **arrays: The arrays; ``None`` values are dropped.

    Raises:
        ValueError: If no array is given or lengths differ.

    Example:
        >>> import numpy as np
        >>> ds = ArrayDataset(X=np.zeros((4, 2)), y=np.ones(4))
        >>> len(ds), ds[1:3]["y"].shape
        (4, (2,))
    """

    def __init__(self, *, to_jax: bool = False, **arrays: Any) -> None:
        converted: dict[str, Any] = {}
        for name, value in arrays.items():
            if value is None:
                continue
            if not isinstance(value, (np.ndarray, jax.Array)):
                value = np.asarray(value)
            if value.ndim == 0:
                raise ValueError(f"Array {name!r} must have at least 1 dimension.")
            converted[name] = jnp.asarray(value) if to_jax else value
        if not converted:
            raise ValueError("At least one array must be provided.")
        lengths = {len(v) for v in converted.values()}
        if len(lengths) != 1:
            sizes = ", ".join(f"{k}={len(v)}" for k, v in converted.items())
            raise ValueError(f"All arrays must have the same leading-axis size; got {sizes}.")
        self.arrays: dict[str, Any] = converted
        self.length: int = lengths.pop()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, idx: Any) -> dict[str, Any]:
        return {name: arr[idx] for name, arr in self.arrays.items()}


class ArrayLoader:
    """Iterates over an :class:`ArrayDataset` in batches of dicts.

    Args:
        dataset: The dataset.
        rng_key: Key used to shuffle (only when ``shuffle=True``).
        batch_size: Rows per batch (positive int).
        shuffle: Reshuffle the rows on every pass.

    Raises:
        ValueError: If ``batch_size`` is not a positive integer.

    Example:
        >>> import jax, numpy as np
        >>> loader = ArrayLoader(ArrayDataset(X=np.arange(5)), jax.random.key(0),
        ...                      batch_size=2)
        >>> [b["X"].tolist() for b in loader]
        [[0, 1], [2, 3], [4]]
    """

    def __init__(
        self,
        dataset: ArrayDataset,
        rng_key: jax.Array,
        *,
        batch_size: int = 32,
        shuffle: bool = False,
    ) -> None:
        if not isinstance(dataset, ArrayDataset):
            raise TypeError(f"`dataset` must be an ArrayDataset, got {type(dataset).__name__}.")
        check_batch_size(batch_size)
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.indices = np.arange(len(dataset))
        self.rng_key = coerce_key(rng_key)

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __getstate__(self) -> dict[str, Any]:
        # The key travels as data plus implementation name (see `aimz_core.rng`).
        return pack_keys(dict(self.__dict__))

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(unpack_keys(state))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        n = len(self.dataset)
        if self.shuffle:
            self.rng_key, sub = random.split(self.rng_key)
            order = np.random.default_rng(key_seed(sub)).permutation(n)
        else:
            order = None
        for start in range(0, n, self.batch_size):
            stop = min(start + self.batch_size, n)
            idx = slice(start, stop) if order is None else order[start:stop]
            yield self.dataset[idx]


def is_loader(value: object) -> bool:
    """Whether ``value`` is a data loader: an :class:`ArrayLoader` or an iterable of
    mappings (a list or tuple of dicts, a generator...), rather than an array-like.

    Example:
        >>> import numpy as np
        >>> is_loader([{"X": np.zeros(2)}]), is_loader([1.0, 2.0]), is_loader(np.zeros(2))
        (True, False, False)
    """
    if isinstance(value, ArrayLoader):
        return True
    if isinstance(value, (str, bytes, bytearray, Mapping, np.ndarray, jax.Array)):
        return False
    if isinstance(value, (list, tuple)):
        return len(value) > 0 and all(isinstance(item, Mapping) for item in value)
    if hasattr(value, "shape") or hasattr(value, "__array__") or isinstance(value, Sequence):
        return False
    return isinstance(value, Iterable)


def check_batch_size(batch_size: object, name: str = "batch_size") -> int:
    """Validate a batch size (positive int, not bool) and return it."""
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or (batch_size <= 0)
    ):
        raise ValueError(f"`{name}` should be a positive integer, but got {batch_size!r}.")
    return int(batch_size)
