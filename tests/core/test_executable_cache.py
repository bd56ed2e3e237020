"""Serialized executables: a second process loads the batch function from disk and
draws exactly what the first drew; the cache can be switched off and survives a
corrupt entry."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from aimz_core._jit_cache import PersistentJit, executable_cache_dir, program_key

from ..aimz_testing import child_env

CHILD = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np, numpyro, numpyro.distributions as dist
    from aimz_core import ImpactModel
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal

    def kernel(X, y=None):
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        with numpyro.plate("obs", X.shape[0]):
            numpyro.sample("y", dist.Normal(X @ w, sigma), obs=y)

    rng = np.random.default_rng(0)
    svi = SVI(kernel, AutoNormal(kernel), numpyro.optim.Adam(0.01), Trace_ELBO())
    model = ImpactModel(kernel, rng_key=jax.random.key(0), inference=svi)
    model.set_posterior_sample({
        "w": rng.normal(size=(40, 3)).astype("float32"),
        "sigma": np.abs(rng.normal(size=40)).astype("float32") + 0.1,
    })
    X = rng.normal(size=(30, 3)).astype("float32")
    out = model.predict(X, rng_key=jax.random.key(5), return_datatree=False, progress=False)
    sources = [s for e in model._functions._entries.values() for s in e.fn.sources]
    print(json.dumps({"sources": sources, "y": np.asarray(out["y"]).tolist()}))
    """
)


def _run_child(tmp_path: Path, devices: int = 1, **env: str) -> dict:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    # Inherited XLA_FLAGS are kept (an ISA limit reaches the child); only the host
    # device count is replaced by `devices`.
    environ = child_env(devices, AIMZ_CACHE_DIR=str(tmp_path / "cache"), **env)
    proc = subprocess.run(
        [sys.executable, str(script)], env=environ, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("devices", [1, 4])
def test_second_process_loads_the_executable_and_draws_the_same(tmp_path, devices):
    first = _run_child(tmp_path, devices)
    assert first["sources"] == ["compiled"]
    saved = list((tmp_path / "cache" / "executables").glob("*.bin"))
    assert len(saved) == 1

    second = _run_child(tmp_path, devices)
    assert second["sources"] == ["disk"]
    np.testing.assert_array_equal(np.array(second["y"]), np.array(first["y"]))
    if devices > 1:  # sharded over 4 devices, loaded onto the same 4
        return

    # A corrupt entry is ignored: the function is compiled again, same draws.
    saved[0].write_bytes(b"not an executable")
    third = _run_child(tmp_path)
    assert third["sources"] == ["compiled"]
    np.testing.assert_array_equal(np.array(third["y"]), np.array(first["y"]))


def test_switched_off_with_the_compilation_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AIMZ_COMPILATION_CACHE", "0")
    assert executable_cache_dir() is None
    off = _run_child(tmp_path, AIMZ_COMPILATION_CACHE="0")
    assert off["sources"] == []  # plain jitted calls
    assert not (tmp_path / "cache").exists()


def test_program_key_follows_constants_not_argument_values():
    f = jax.jit(lambda x: x * 2.0)
    assert program_key(f.trace(jnp.ones(3))) == program_key(f.trace(jnp.zeros(3)))
    assert program_key(f.trace(jnp.ones(3))) != program_key(f.trace(jnp.ones(4)))

    def closing_over(c):
        return jax.jit(lambda x: x + c)

    one, two = closing_over(np.ones(3, "float32")), closing_over(np.full(3, 2.0, "float32"))
    assert program_key(one.trace(jnp.ones(3))) != program_key(two.trace(jnp.ones(3)))


def test_host_callbacks_are_never_cached(tmp_path):
    def f(x):
        return jax.pure_callback(
            lambda v: np.asarray(v) + 1, jax.ShapeDtypeStruct((3,), x.dtype), x
        )

    jitted = PersistentJit(jax.jit(f), directory=tmp_path)
    assert program_key(jax.jit(f).trace(jnp.ones(3))) is None
    np.testing.assert_array_equal(jitted(jnp.ones(3)), np.full(3, 2.0))
    assert jitted.sources == ["compiled"]
    assert not list(tmp_path.iterdir())


def test_traced_calls_go_through_jit(tmp_path):
    jitted = PersistentJit(jax.jit(lambda x: x * 3.0), directory=tmp_path)
    assert jax.grad(lambda x: jitted(x).sum())(jnp.ones(2)).tolist() == [3.0, 3.0]
    assert jitted.eval_shape(jnp.ones(2)).shape == (2,)
    assert jitted.sources == []


@pytest.mark.parametrize("value", [np.ones(2, "float32"), jnp.ones(2)])
def test_numpy_and_jax_inputs_share_one_entry_per_type(tmp_path, value):
    jitted = PersistentJit(jax.jit(lambda x: x + 1.0), directory=tmp_path)
    assert jitted(value).tolist() == [2.0, 2.0]
    assert jitted(value * 2).tolist() == [3.0, 3.0]
    assert len(jitted.sources) == 1
