"""A warm ``predict_on_batch`` does not trace or compile again (issue 16, item 4).

Counts, not timings: JAX's monitoring events (a trace, a backend compile) and the
executables in the model's batch-function cache, across repeated calls.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import jax
import numpy as np
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
