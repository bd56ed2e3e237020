"""PRNG keys survive pickling with their implementation.

JAX pickles a typed key with a copy of its PRNG implementation, and
``jax.random.poisson`` checks the implementation by identity, so a model whose kernel
draws from a Poisson failed after loading. Every key a pickled object holds is now
stored as key data plus the implementation's registered name.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import cloudpickle
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from aimz_core import ArrayDataset, ArrayLoader, ImpactModel
from aimz_core.model import _RUNTIME_ATTRS
from aimz_core.rng import PickledKey, is_typed_key, pack_keys, unpack_keys
from aimz_core.streaming import StreamOptions, plan_call, resolve_inputs
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

from .conftest import key_data

FAMILIES = ("poisson", "binomial", "gamma")
IMPLS = ("rbg", "unsafe_rbg")
EXPLICIT_SEED = 5


def make_kernel(family: str) -> Any:
    """A GLM kernel; built in a function so that cloudpickle ships it by value."""

    def kernel(X, y=None):
        w = numpyro.sample("w", dist.Normal(0.0, 0.5).expand([X.shape[1]]).to_event(1))
        eta = X @ w
        with numpyro.plate("obs", X.shape[0]):
            if family == "poisson":
                numpyro.sample("y", dist.Poisson(jnp.exp(eta)), obs=y)
            elif family == "binomial":
                numpyro.sample("y", dist.Binomial(5, logits=eta), obs=y)
            else:
                numpyro.sample("y", dist.Gamma(2.0, 2.0 * jnp.exp(-eta)), obs=y)

    return kernel


def make_data(family: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 2)).astype(np.float32)
    eta = X @ np.array([0.5, -0.3], np.float32)
    if family == "poisson":
        y = rng.poisson(np.exp(eta))
    elif family == "binomial":
        y = rng.binomial(5, 1.0 / (1.0 + np.exp(-eta)))
    else:
        y = rng.gamma(2.0, np.exp(eta) / 2.0)
    return X, y.astype(np.float32)


def fit(family: str, *, guide: Any = AutoNormal) -> ImpactModel:
    kernel = make_kernel(family)
    svi = SVI(kernel, guide(kernel), numpyro.optim.Adam(0.05), Trace_ELBO())
    model = ImpactModel(kernel, rng_key=jax.random.key(3), inference=svi)
    X, y = make_data(family)
    return model.fit_on_batch(X, y, num_steps=20, num_samples=8, progress=False)


def fit_with_impl(impl: str) -> ImpactModel:
    """A Gamma model whose own and SVI keys use ``impl`` (Poisson needs threefry).

    NumPyro's ``Predictive`` rejects the batched keys of ``rbg`` implementations, so
    the posterior is set instead of drawn from the guide.
    """
    kernel = make_kernel("gamma")
    svi = SVI(kernel, AutoNormal(kernel), numpyro.optim.Adam(0.05), Trace_ELBO())
    model = ImpactModel(kernel, rng_key=jax.random.key(3, impl=impl), inference=svi)
    X, y = make_data("gamma")
    model.train_on_batch(X, y)
    w = np.random.default_rng(1).normal(0.3, 0.1, size=(8, 2)).astype(np.float32)
    return model.set_posterior_sample({"w": w})


def pickled_keys(obj: Any) -> list[Any]:
    """Typed keys that reach the pickler when ``obj`` is pickled."""
    found: list[Any] = []

    class Scanner(cloudpickle.Pickler):
        def reducer_override(self, value: Any) -> Any:
            if is_typed_key(value):
                found.append(value)
            return super().reducer_override(value)

    Scanner(io.BytesIO()).dump(obj)
    return found


def assert_registered(key: jax.Array) -> None:
    """``key`` uses the registered implementation object (so Poisson draws work).

    Checked on the key itself: any jnp operation on a key (indexing, ravel) may
    return a key with the registered implementation even when the input had a copy.
    """
    impl = str(jax.random.key_impl(key))
    assert key.dtype._impl is jax.random.key(0, impl=impl).dtype._impl
    if key.ndim == 0 and impl == "threefry2x32":
        jax.random.poisson(key, 1.0)


# ------------------------------------------------------------------ in process
@pytest.mark.parametrize("impl", ["threefry2x32", *IMPLS])
def test_pickled_key_keeps_data_and_impl(impl: str) -> None:
    keys = jax.random.split(jax.random.key(9, impl=impl), 3)
    packed = pack_keys({"one": keys[0], "batch": [keys], "other": 1})
    assert isinstance(packed["one"], PickledKey) and packed["one"].impl == impl
    assert packed["other"] == 1
    restored = unpack_keys(pickle.loads(pickle.dumps(packed)))
    for before, after in ((keys[0], restored["one"]), (keys, restored["batch"][0])):
        assert str(jax.random.key_impl(after)) == impl and after.shape == before.shape
        np.testing.assert_array_equal(jax.random.key_data(after), jax.random.key_data(before))
        draw = jax.vmap(jax.random.normal)
        np.testing.assert_array_equal(draw(jnp.ravel(after)), draw(jnp.ravel(before)))


def test_pack_keys_copies_only_what_holds_keys() -> None:
    key = jax.random.key(0)
    untouched = {"a": [1, 2], "b": np.zeros(2)}
    state = {"with": (key, 1), "without": untouched}
    packed = pack_keys(state)
    assert packed is not state and packed["without"] is untouched
    assert state["with"][0] is key  # nothing changed in place
    assert pack_keys(untouched) is untouched


def test_unpack_keys_repairs_keys_pickled_the_old_way() -> None:
    legacy = pickle.loads(pickle.dumps(jax.random.key(4)))  # copied implementation
    with pytest.raises(NotImplementedError, match="threefry2x32"):
        jax.random.poisson(legacy, 1.0)
    repaired = unpack_keys({"k": legacy})["k"]
    assert key_data(repaired) == key_data(legacy)
    assert_registered(repaired)


def test_no_typed_key_reaches_the_pickler(mcmc_model: ImpactModel) -> None:
    models = [fit("poisson"), fit("poisson", guide=AutoMultivariateNormal), mcmc_model]
    for model in models:
        assert pickled_keys(model) == []
        state = {k: v for k, v in model.__dict__.items() if k not in _RUNTIME_ATTRS}
        assert len(pickled_keys(state)) > 0  # the keys are there unpacked


def test_every_key_of_an_unpickled_model_works(mcmc_model: ImpactModel) -> None:
    svi = pickle.loads(cloudpickle.dumps(fit("poisson")))
    for key in (svi.rng_key, svi._vi_state.rng_key, svi.vi_result.state.rng_key):
        assert_registered(key)
    mcmc = pickle.loads(pickle.dumps(mcmc_model))
    state = mcmc.inference.last_state
    for key in (mcmc.rng_key, state.rng_key, state.adapt_state.rng_key):
        assert_registered(key)
    assert key_data(state.rng_key) == key_data(mcmc_model.inference.last_state.rng_key)
    # the original model still holds its own (unchanged) objects
    assert mcmc_model.inference.last_state is not state


def test_in_memory_state_round_trip_restores_keys() -> None:
    model = fit("poisson")
    clone = ImpactModel.__new__(ImpactModel)
    clone.__setstate__(model.__getstate__())
    assert key_data(clone.rng_key) == key_data(model.rng_key)
    assert_registered(clone.rng_key)
    assert_registered(clone._vi_state.rng_key)
    X, _ = make_data("poisson")
    np.testing.assert_array_equal(
        clone.predict_on_batch(X, return_datatree=False)["y"],
        model.predict_on_batch(X, return_datatree=False)["y"],
    )


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_array_loader_and_stream_plan_keep_their_key(impl: str) -> None:
    loader = ArrayLoader(
        ArrayDataset(X=np.arange(6)), jax.random.key(1, impl=impl), batch_size=2, shuffle=True
    )
    clone = pickle.loads(pickle.dumps(loader))
    assert str(jax.random.key_impl(clone.rng_key)) == impl
    assert_registered(clone.rng_key)
    assert [b["X"].tolist() for b in clone] == [b["X"].tolist() for b in loader]

    family = "poisson" if impl == "threefry2x32" else "gamma"  # Poisson draws need threefry
    model = fit(family)
    X, _ = make_data(family)
    options = StreamOptions(
        kind="predict",
        caller="predict",
        rng_key=jax.random.key(2, impl=impl),
        batch_size=8,
        store="memory",
        return_datatree=False,
    )
    inputs = resolve_inputs(model, X, None, options)
    plan = plan_call(options, inputs, model._runner(), param_input="X")
    shipped = pickle.loads(pickle.dumps(plan.for_workers()))
    assert str(jax.random.key_impl(shipped.key)) == impl
    assert_registered(shipped.key)
    assert shipped.fingerprint() == plan.for_workers().fingerprint()
    rows = {"X": X[:8]}
    np.testing.assert_array_equal(
        model.compute_block(shipped, 0, 0, 8, rows)["y"],
        model.compute_block(plan, 0, 0, 8, rows)["y"],
    )


# ------------------------------------------------------------- fresh process
CHILD = textwrap.dedent(
    """
    import sys
    import cloudpickle, jax, numpy as np

    with open(sys.argv[1], "rb") as f:
        cases = cloudpickle.load(f)
    out = {}
    for name, (model, X) in cases.items():
        for where, k in (("rng_key", model.rng_key), ("svi_key", model._vi_state.rng_key)):
            out[f"{name}/{where}/data"] = np.asarray(jax.random.key_data(k))
            out[f"{name}/{where}/impl"] = np.asarray(str(jax.random.key_impl(k)))
        out[name + "/gamma"] = np.asarray(jax.random.gamma(model.rng_key, 2.0))
        out[name + "/own"] = model.predict_on_batch(X, return_datatree=False)["y"]
        key = jax.random.key(int(sys.argv[3]), impl=str(jax.random.key_impl(model.rng_key)))
        out[name + "/explicit"] = model.predict_on_batch(X, rng_key=key, return_datatree=False)["y"]
    np.savez(sys.argv[2], **out)
    """
)


@pytest.fixture(scope="module")
def fresh_process(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Pickle fitted models, then compare what a new process draws with this one.

    One child process serves every case, so the interpreter and JAX start once.
    """
    tmp = tmp_path_factory.mktemp("key_pickle")
    cases = {family: fit(family) for family in FAMILIES}
    cases.update({impl: fit_with_impl(impl) for impl in IMPLS})
    inputs = {name: make_data("gamma" if name in IMPLS else name)[0] for name in cases}
    path = tmp / "models.pkl"
    path.write_bytes(cloudpickle.dumps({n: (m, inputs[n]) for n, m in cases.items()}))
    # What this process draws next, in the child's order (computed before the child
    # starts, so that it may reuse the persistent compilation cache).
    expected: dict[str, Any] = {}
    for name, model in cases.items():
        X = inputs[name]
        impl = str(jax.random.key_impl(model.rng_key))
        expected[name + "/rng_key"] = (key_data(model.rng_key), impl)
        expected[name + "/svi_key"] = (key_data(model._vi_state.rng_key), impl)
        expected[name + "/gamma"] = np.asarray(jax.random.gamma(model.rng_key, 2.0))
        expected[name + "/own"] = model.predict_on_batch(X, return_datatree=False)["y"]
        key = jax.random.key(EXPLICIT_SEED, impl=impl)
        expected[name + "/explicit"] = model.predict_on_batch(
            X, rng_key=key, return_datatree=False
        )["y"]
    result = tmp / "result.npz"
    script = tmp / "child.py"
    script.write_text(CHILD)
    # The child inherits XLA_FLAGS (an ISA limit included), so it compiles the same
    # programs as this process and its draws must match exactly.
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, str(script), str(path), str(result), str(EXPLICIT_SEED)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=Path(tmp),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(result) as child:
        return {"child": dict(child), "expected": expected}


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("call", ["own", "explicit"])
def test_fresh_process_draws_what_this_process_draws_next(
    fresh_process: dict[str, Any], family: str, call: str
) -> None:
    child, expected = fresh_process["child"], fresh_process["expected"]
    name = f"{family}/{call}"
    assert child[name].shape == expected[name].shape == (8, 16)
    # Same compiled program on the same inputs in both processes: exact for every family.
    np.testing.assert_array_equal(child[name], expected[name])


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLS)
def test_fresh_process_keeps_the_key_implementation(
    fresh_process: dict[str, Any], impl: str
) -> None:
    child, expected = fresh_process["child"], fresh_process["expected"]
    for where in ("rng_key", "svi_key"):
        data, name = expected[f"{impl}/{where}"]
        assert str(child[f"{impl}/{where}/impl"]) == name == impl
        assert child[f"{impl}/{where}/data"].tolist() == data
    np.testing.assert_array_equal(child[impl + "/gamma"], expected[impl + "/gamma"])
    for call in ("own", "explicit"):
        np.testing.assert_array_equal(child[f"{impl}/{call}"], expected[f"{impl}/{call}"])
