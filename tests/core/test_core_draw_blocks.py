"""Draw blocks: a block of one draw is a plain loop over draws (no vectorised axis of
length 1), in the planner's program and in the tuner's candidate, and gives the
draws of the other formulations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from aimz_core.streaming import _formulations as formulations
from aimz_core.streaming import blocks
from aimz_core.testing import fitted_linreg


@pytest.fixture
def map_calls(monkeypatch):
    """The ``batch_size`` of every ``jax.lax.map`` traced meanwhile."""
    seen: list[int | None] = []
    real = jax.lax.map

    def spy(f, xs, *, batch_size=None):
        seen.append(batch_size)
        return real(f, xs, batch_size=batch_size)

    monkeypatch.setattr(jax.lax, "map", spy)
    return seen


def _predict(block, monkeypatch, tmp_path):
    monkeypatch.setenv("AIMZ_AUTOTUNE", "0")
    monkeypatch.setenv("AIMZ_CACHE_DIR", str(tmp_path / f"cache-{block}"))
    monkeypatch.setattr(blocks, "block_for_draw_bytes", lambda *a, **k: block)
    model = fitted_linreg(num_draws=12)
    X = np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32)
    out = model.predict(X, rng_key=jax.random.key(5), return_datatree=False, progress=False)
    return {k: np.asarray(v) for k, v in out.items()}


def test_the_planners_block_of_one_draw_is_a_plain_loop(map_calls, monkeypatch, tmp_path):
    looped = _predict(1, monkeypatch, tmp_path)
    assert map_calls and all(size is None for size in map_calls), map_calls
    del map_calls[:]
    vectorised = _predict(None, monkeypatch, tmp_path)  # one vmap over every draw
    assert looped.keys() == vectorised.keys()
    for site in looped:
        np.testing.assert_allclose(looped[site], vectorised[site], rtol=1e-5, atol=1e-5)


def test_the_tuners_block_of_one_draw_is_a_plain_loop(map_calls):
    def one(key, draw, arrays, intervention, condition):
        return {"y": draw["w"] * arrays["x"] + jax.random.normal(key, arrays["x"].shape)}

    post = {"w": jnp.arange(6.0)}
    args = (post, (jax.random.key(0), 0), np.int32(0), {"x": jnp.ones(3)}, {}, {})
    single = formulations.build(one, 6, 6, formulations.Formulation("vmap", 1))(*args)
    assert map_calls == [None]
    paired = formulations.build(one, 6, 6, formulations.Formulation("vmap", 2))(*args)
    assert map_calls == [None, 2]
    np.testing.assert_allclose(single["y"], paired["y"], rtol=1e-6, atol=1e-6)


def test_blocks_divide_the_draws_so_xla_keeps_no_copy_of_the_output():
    from aimz_core._sizing import block_for_draw_bytes, dividing_block

    assert block_for_draw_bytes(10_000, 1000) == 10  # 16 fit the cache; 10 divides 1000
    assert block_for_draw_bytes(10_000, 1024) == 16
    assert block_for_draw_bytes(10_000, 997) == 16  # prime: no divisor near 16
    assert [dividing_block(b, 12) for b in (1, 2, 5, 8, 16)] == [1, 2, 4, 6, 12]

    def one(key, draw, arrays, intervention, condition):
        return {"y": arrays["x"] * draw["w"] + jax.random.normal(key, arrays["x"].shape)}

    post = {"w": jnp.arange(1000.0, dtype=jnp.float32)}
    args = (post, (jax.random.key(0), 0), np.int32(0), {"x": jnp.ones(2000)}, {}, {})
    temps = {}
    for block in (16, 10):
        fn = formulations.build(one, 1000, 1000, formulations.Formulation("vmap", block))
        analysis = jax.jit(fn.jitted).lower(*args).compile().memory_analysis()
        if analysis is None:
            pytest.skip("this backend reports no memory analysis")
        temps[block] = analysis.temp_size_in_bytes
    output = 1000 * 2000 * 4
    # A remainder (1000 = 62 x 16 + 8) is concatenated: the blocks' output is a temporary.
    assert temps[16] >= output * 0.9, temps
    assert temps[10] < output / 4, temps
