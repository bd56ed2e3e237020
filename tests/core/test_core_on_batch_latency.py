"""A warm ``predict_on_batch`` does not trace or compile again (issue 16, item 4).

Counts, not timings: JAX's monitoring events (a trace, a backend compile) and the
executables in the model's batch-function cache, across repeated calls.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import jax
import numpy as np
import pytest
from aimz_core.testing import fitted_linreg, linreg_data

_EVENTS: Counter[str] = Counter()


def _on_duration(name: str, _secs: float, **_: Any) -> None:
    if name.startswith("/jax/core/compile/"):
        _EVENTS[name.rsplit("/", 1)[-1]] += 1


jax.monitoring.register_event_duration_secs_listener(_on_duration)


def _traces_and_compiles() -> tuple[int, int]:
    return _EVENTS["jaxpr_trace_duration"], _EVENTS["backend_compile_duration"]


def test_same_row_count_does_not_compile_again() -> None:
    model = fitted_linreg()
    X, _ = linreg_data()
    first = model.predict_on_batch(X[:5], return_datatree=False)
    executables = model._functions.compiled()
    events = _traces_and_compiles()
    for i in range(3):  # other values, same shapes; keys from the model and given
        key = jax.random.key(i) if i else None
        out = model.predict_on_batch(X[5:10] + i, return_datatree=False, rng_key=key)
        assert out["y"].shape == first["y"].shape
    assert _traces_and_compiles() == events
    assert model._functions.compiled() == executables


def test_new_row_count_compiles_once() -> None:
    model = fitted_linreg()
    X, _ = linreg_data()
    model.predict_on_batch(X[:5], return_datatree=False)
    before = model._functions.compiled()
    out = model.predict_on_batch(X[:7], return_datatree=False)
    assert out["y"].shape[1] == 7
    assert model._functions.compiled() == before + 1
    events = _traces_and_compiles()
    again = model.predict_on_batch(X[7:14], return_datatree=False)
    assert again["y"].shape[1] == 7
    assert model._functions.compiled() == before + 1
    assert _traces_and_compiles() == events


def test_warm_call_matches_general_path() -> None:
    """The memoised path returns what a fresh model computes for the same key."""
    X, _ = linreg_data()
    key = jax.random.key(3)
    warm = fitted_linreg()
    warm.predict_on_batch(X[:4], return_datatree=False, rng_key=key)
    got = warm.predict_on_batch(X[:4], return_datatree=False, rng_key=key)
    fresh = fitted_linreg().predict_on_batch(X[:4], return_datatree=False, rng_key=key)
    assert got.keys() == fresh.keys()
    for site in got:
        np.testing.assert_allclose(got[site], fresh[site], rtol=1e-6, atol=1e-6)


def test_repeat_call_sees_a_new_posterior() -> None:
    """A repeated plain call reuses its validated plan only while the posterior is the
    same object: after ``set_posterior_sample`` it substitutes the new draws."""
    model = fitted_linreg(num_draws=10)
    X, _ = linreg_data()
    for _ in range(2):  # the second call takes the repeat path
        model.predict_on_batch(X[:4], return_sites="mu", return_datatree=False)
    post = {k: np.asarray(v) for k, v in model.posterior.items()}
    post["b"] = post["b"] + 100.0
    model.set_posterior_sample(post)
    got = model.predict_on_batch(X[:4], return_sites="mu", return_datatree=False)["mu"]
    expected = X[:4] @ post["w"].T + post["b"]  # (rows, draws)
    np.testing.assert_allclose(got, expected.T, rtol=1e-5, atol=1e-4)


def test_repeat_call_is_the_general_path_result() -> None:
    """The repeat path gives what the general path gives for the same key, and still
    moves the model's key once per call."""
    X, _ = linreg_data()
    model = fitted_linreg()
    key = jax.random.key(11)
    first = model.predict_on_batch(X[:6], return_datatree=False, rng_key=key)
    again = model.predict_on_batch(X[:6], return_datatree=False, rng_key=key)
    np.testing.assert_array_equal(first["y"], again["y"])  # same program, same inputs
    before = jax.random.key_data(model.rng_key)
    a = model.predict_on_batch(X[:6], return_datatree=False)
    b = model.predict_on_batch(X[:6], return_datatree=False)
    assert not np.array_equal(jax.random.key_data(model.rng_key), before)
    assert not np.array_equal(a["y"], b["y"])  # a fresh key per call


def test_calls_that_are_not_plain_take_the_general_path() -> None:
    """Interventions, keyword arguments and non-NumPy inputs are validated every call:
    a bad intervention site is refused on a repeat too, with the key unchanged."""
    X, _ = linreg_data()
    model = fitted_linreg()
    model.predict_on_batch(X[:3], return_datatree=False)
    model.predict_on_batch(X[:3], return_datatree=False)
    key = jax.random.key_data(model.rng_key)
    with pytest.raises(ValueError, match="mu"):
        model.predict_on_batch(X[:3], intervention={"mu": 1.0}, return_datatree=False)
    with pytest.raises(ValueError):
        model.predict_on_batch(X[:0], return_datatree=False)
    np.testing.assert_array_equal(jax.random.key_data(model.rng_key), key)
    out = model.predict_on_batch(X[:3].tolist(), return_datatree=False)
    assert out["y"].shape == (100, 3)
