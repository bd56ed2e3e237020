"""ArrayDataset and ArrayLoader (spec section 8, 0.17 form: batches are dicts)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from aimz_core import AimzWarning, ArrayDataset, ArrayLoader
from aimz_core.data import is_loader

KEY = jax.random.key(0)


def test_array_dataset_basics():
    ds = ArrayDataset(X=np.arange(10).reshape(5, 2), y=[1, 2, 3, 4, 5], skip=None)
    assert list(ds.arrays) == ["X", "y"]  # insertion order kept, None dropped
    assert isinstance(ds.arrays["y"], np.ndarray)
    assert len(ds) == ds.length == 5
    item = ds[1:3]
    assert isinstance(item, dict) and set(item) == {"X", "y"}
    np.testing.assert_array_equal(item["X"], [[2, 3], [4, 5]])
    np.testing.assert_array_equal(ds[np.array([4, 0])]["y"], [5, 1])
    jax_ds = ArrayDataset(to_jax=True, X=np.ones((3, 1)))
    assert isinstance(jax_ds.arrays["X"], jax.Array)
    kept = jnp.ones(4)
    assert ArrayDataset(X=kept).arrays["X"] is kept


def test_array_dataset_errors():
    with pytest.raises(ValueError, match=r"At least one array must be provided\."):
        ArrayDataset()
    with pytest.raises(ValueError, match=r"At least one array must be provided\."):
        ArrayDataset(X=None)
    with pytest.raises(ValueError, match=r"same leading-axis size; got X=3, y=4"):
        ArrayDataset(X=np.zeros(3), y=np.zeros(4))
    with pytest.raises(ValueError, match="'X' must have at least 1 dimension"):
        ArrayDataset(X=1.0)


def test_array_loader_batches_are_dicts():
    ds = ArrayDataset(X=np.arange(7), y=np.arange(7) * 10)
    loader = ArrayLoader(ds, KEY, batch_size=3)
    assert loader.dataset is ds and loader.batch_size == 3 and loader.shuffle is False
    np.testing.assert_array_equal(loader.indices, np.arange(7))
    assert len(loader) == 3
    batches = list(loader)
    assert [b["X"].tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [b["y"].tolist() for b in batches] == [[0, 10, 20], [30, 40, 50], [60]]
    assert all(isinstance(b, dict) for b in batches)
    # no shuffling: the key is not touched and every pass is identical
    before = np.asarray(jax.random.key_data(loader.rng_key))
    assert [b["X"].tolist() for b in loader] == [[0, 1, 2], [3, 4, 5], [6]]
    np.testing.assert_array_equal(jax.random.key_data(loader.rng_key), before)
    assert len(ArrayLoader(ds, KEY, batch_size=100)) == 1


def test_array_loader_shuffle_advances_key():
    ds = ArrayDataset(X=np.arange(50), y=np.arange(50) + 100)
    loader = ArrayLoader(ds, KEY, batch_size=16, shuffle=True)
    keys, orders = [], []
    for _ in range(3):
        keys.append(np.asarray(jax.random.key_data(loader.rng_key)).tolist())
        batches = list(loader)
        assert [len(b["X"]) for b in batches] == [16, 16, 16, 2]
        order = np.concatenate([b["X"] for b in batches])
        # rows stay aligned across fields
        np.testing.assert_array_equal(np.concatenate([b["y"] for b in batches]), order + 100)
        assert sorted(order.tolist()) == list(range(50))  # a permutation
        orders.append(order)
    assert len({tuple(k) for k in keys}) == 3  # each pass split the key
    assert not np.array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[0], np.arange(50))
    # the same key reproduces the same permutation
    again = ArrayLoader(ds, KEY, batch_size=16, shuffle=True)
    np.testing.assert_array_equal(np.concatenate([b["X"] for b in again]), orders[0])


def test_array_loader_errors():
    ds = ArrayDataset(X=np.arange(4))
    for bad in (0, -1, True, 1.5, "2", None):
        with pytest.raises(ValueError, match="`batch_size` should be a positive integer, but got"):
            ArrayLoader(ds, KEY, batch_size=bad)
    with pytest.raises(TypeError, match="`dataset` must be an ArrayDataset"):
        ArrayLoader({"X": np.arange(4)}, KEY)
    with pytest.raises(TypeError, match="must be a JAX PRNG key"):
        ArrayLoader(ds, 0)
    with pytest.warns(AimzWarning, match="Legacy `uint32` PRNGKey"):
        loader = ArrayLoader(ds, jax.random.PRNGKey(0), batch_size=2)
    assert jax.dtypes.issubdtype(loader.rng_key.dtype, jax.dtypes.prng_key)
    assert ArrayLoader(ds, KEY, batch_size=np.int64(2)).batch_size == 2


def test_is_loader():
    X = np.zeros((4, 2))
    assert is_loader(ArrayLoader(ArrayDataset(X=X), KEY))
    assert is_loader([{"X": X}]) and is_loader(({"X": X},))
    assert is_loader(iter([{"X": X}])) and is_loader({"X": X} for _ in range(2))
    for not_loader in (
        X,
        jnp.asarray(X),
        [1.0, 2.0],
        [[1.0], [2.0]],
        (1, 2),
        [],
        {"X": X},
        "abc",
        range(3),
    ):
        assert not is_loader(not_loader), not_loader
