"""Dimension names in output trees (issue 14 item 14), end to end."""

from __future__ import annotations

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from aimz_core.exceptions import OutputWarning
from aimz_core.testing import make_model
from aimz_io.backend import effect_tree, tree_from_arrays
from aimz_io.datatree import resolve_dims

X = np.linspace(-1, 1, 12, dtype=np.float32).reshape(6, 2)


def plated(X, y=None):
    w = numpyro.sample("w", dist.Normal(0, 1).expand([2, 3]).to_event(2))
    with numpyro.plate("obs", X.shape[0]):
        mu = numpyro.deterministic("mu", X @ w)  # (n, 3)
        numpyro.sample(
            "y", dist.Normal(mu, 1.0).to_event(1), obs=y, infer={"event_dims": ["level"]}
        )


def default_named(X, y=None):
    w = numpyro.sample("w", dist.Normal(0, 1).expand([2]).to_event(1))
    mu = numpyro.deterministic("mu", X @ w)
    numpyro.deterministic("mu_dim_0", 2 * mu)  # named like mu's default dim
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


@pytest.fixture(scope="module")
def plated_model():
    model = make_model(plated)
    model.set_posterior_sample({"w": np.zeros((4, 2, 3), np.float32)})
    return model


def test_plate_names_go_on_the_right_axes(plated_model, tmp_path):
    tree = plated_model.predict_on_batch(X, rng_key=jax.random.key(0))
    group = tree["posterior_predictive"]
    assert group["mu"].dims == ("chain", "draw", "obs", "mu_dim_0")
    assert group["y"].dims == ("chain", "draw", "obs", "level")
    for where in ({"store": "memory"}, {"output_dir": tmp_path}):
        streamed = plated_model.predict(
            X, rng_key=jax.random.key(0), batch_size=4, progress=False, **where
        )["posterior_predictive"]
        assert streamed["mu"].dims == group["mu"].dims
        assert streamed["y"].dims == group["y"].dims


def test_event_dims_that_cannot_apply_warn_and_fall_back():
    def kernel(X, y=None):
        with numpyro.plate("obs", X.shape[0]):
            numpyro.sample(
                "y",
                dist.Normal(0, 1).expand([X.shape[0], 3]).to_event(1),
                obs=y,
                infer={"event_dims": ["a", "b"]},
            )

    model = make_model(kernel)
    with pytest.warns(OutputWarning, match="`event_dims` of site 'y' cannot apply"):
        tree = model.sample_prior_predictive_on_batch(X, num_samples=3)
    assert tree["prior_predictive"]["y"].dims == ("chain", "draw", "obs", "y_dim_0")


def test_site_named_like_a_default_dim_builds(tmp_path):
    model = make_model(default_named)
    model.set_posterior_sample({"w": np.zeros((4, 2), np.float32)})
    trees = [
        model.predict_on_batch(X),
        model.predict(X, store="memory", progress=False),
        model.predict(X, store="persistent", output_dir=tmp_path, progress=False),
    ]
    for tree in trees:
        group = tree["posterior_predictive"]
        assert set(group.data_vars) == {"mu", "mu_dim_0", "y"}
        assert group["mu"].dims[2] not in group.data_vars
        np.testing.assert_allclose(group["mu_dim_0"].values, 2 * group["mu"].values)


def test_dims_never_take_a_site_name():
    with pytest.warns(OutputWarning, match="'obs' is also a site name"):
        dims = resolve_dims({"obs": (3,), "y": (3,)}, {"y": ("obs",)})
    assert dims == {"obs": ("obs_dim_0",), "y": ("y_dim_0",)}
    # a default name taken by a site moves aside, silently
    assert resolve_dims({"a": (2,), "a_dim_0": (3,)}, {"a": ("a_dim_0",)}) == {
        "a": ("a_dim_0_",),
        "a_dim_0": ("a_dim_0_dim_0",),
    }


def test_effect_reconciles_dim_names_between_scenarios():
    base = tree_from_arrays({"predictions": {"y": np.zeros((4, 5))}}, dims={"y": ("obs",)})
    intv = tree_from_arrays({"predictions": {"y": np.ones((4, 5))}})  # y_dim_0
    effect = effect_tree(base, intv, posterior=None, num_chains=1)
    y = effect["predictions"]["y"]
    assert y.dims == ("chain", "draw", "obs")
    np.testing.assert_array_equal(y.values, np.ones((1, 4, 5)))
