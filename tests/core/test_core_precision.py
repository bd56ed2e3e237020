"""Opt-in bfloat16 matrix products: ``jax.default_matmul_precision("bfloat16")``
makes the forward passes compute float32 products from bfloat16 operands on CPU
(which XLA itself ignores there); the default stays float32, and switching back
never reuses a program compiled under the other setting."""

from __future__ import annotations

import threading

import jax
import numpy as np
import pytest
from aimz_core._precision import bf16_matmuls, with_bf16_matmuls
from aimz_core.testing import linreg, make_model

F32 = 2 * 1.001 * 1.001  # mu = X @ w with X = w = 1.001 (b = 0)
BF16 = 2.0  # 1.001 rounds to 1.0 in bfloat16


@pytest.fixture
def model(tmp_path, monkeypatch):
    monkeypatch.setenv("AIMZ_CACHE_DIR", str(tmp_path / "cache"))
    model = make_model(linreg)
    model.set_posterior_sample(
        {
            "w": np.full((8, 2), 1.001, np.float32),
            "b": np.zeros(8, np.float32),
            "sigma": np.ones(8, np.float32),
        }
    )
    return model


X = np.full((5, 2), 1.001, np.float32)


def _mu(model, streamed: bool) -> np.ndarray:
    if streamed:
        out = model.predict(X, return_sites="mu", return_datatree=False, progress=False)
    else:
        out = model.predict_on_batch(X, return_sites="mu", return_datatree=False)
    return np.asarray(out["mu"])


@pytest.mark.parametrize("streamed", [False, True], ids=["on_batch", "predict"])
def test_products_follow_the_setting_and_switch_back(model, streamed):
    assert not bf16_matmuls()
    np.testing.assert_allclose(_mu(model, streamed), F32, rtol=1e-6)
    with jax.default_matmul_precision("bfloat16"):
        assert bf16_matmuls()
        np.testing.assert_array_equal(_mu(model, streamed), BF16)
        np.testing.assert_array_equal(_mu(model, streamed), BF16)  # warm repeat
    # The float32 program again, not the one compiled (or replayed) under bfloat16.
    np.testing.assert_allclose(_mu(model, streamed), F32, rtol=1e-6)


def test_the_setting_is_per_thread(model):
    results: dict[str, np.ndarray] = {}
    barrier = threading.Barrier(2)

    def run(name: str, precision: str | None) -> None:
        barrier.wait()
        with jax.default_matmul_precision(precision):
            results[name] = _mu(model, streamed=False)

    threads = [
        threading.Thread(target=run, args=("bf16", "bfloat16")),
        threading.Thread(target=run, args=("default", None)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    np.testing.assert_array_equal(results["bf16"], BF16)
    np.testing.assert_allclose(results["default"], F32, rtol=1e-6)


def test_only_float32_products_are_rewritten_and_loops_keep_theirs():
    def f(a, i, b):
        looped = jax.lax.fori_loop(0, 1, lambda _, acc: acc + a @ b, 0.0 * a[:, :1] @ b[:1])
        return a @ b, i @ i, looped

    a = np.full((2, 2), 1.001, np.float32)
    i = np.ones((2, 2), np.int32)
    with jax.default_matmul_precision("bfloat16"):
        fast, ints, looped = jax.jit(with_bf16_matmuls(f))(a, i, a)
    np.testing.assert_array_equal(fast, BF16)
    np.testing.assert_array_equal(ints, 2)
    np.testing.assert_allclose(looped, F32, rtol=1e-6)
