"""Tree layout of on-batch results: groups, dims, coords, attrs."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from aimz_core.exceptions import OutputWarning
from aimz_io.backend import tree_from_arrays
from aimz_io.datatree import resolve_dims


def test_tree_from_arrays_layout():
    w = np.arange(12.0).reshape(4, 3)
    y = np.arange(40, dtype="float32").reshape(4, 10)
    tree = tree_from_arrays(
        {"posterior": {"w": w}, "posterior_predictive": {"y": y, "mu": y * 2}},
        num_chains=2,
        dims={"y": ("obs",), "mu": ("obs",)},
        attrs={"source": "unit"},
    )
    assert isinstance(tree, xr.DataTree) and tree.name == "root"
    assert list(tree.children) == ["posterior", "posterior_predictive"]
    pp = tree["posterior_predictive"]
    assert list(pp.data_vars) == ["mu", "y"]  # sorted by name
    assert pp["y"].dims == ("chain", "draw", "obs")
    np.testing.assert_array_equal(pp["y"].values, y.reshape(2, 2, 10))
    assert tree["posterior"]["w"].dims == ("chain", "draw", "w_dim_0")
    np.testing.assert_array_equal(tree["posterior"]["w_dim_0"].values, np.arange(3))
    np.testing.assert_array_equal(pp["chain"].values, [0, 1])
    for node in (tree, tree["posterior"], pp):
        assert node.attrs["num_chains"] == 2 and node.attrs["source"] == "unit"
        assert "created_at" in node.attrs and "aimz_version" in node.attrs
        assert "output_dir" not in node.attrs


def test_one_dimensional_sites_and_jax_like_inputs():
    tree = tree_from_arrays({"posterior": {"sigma": [0.1, 0.2, 0.3]}})
    assert tree["posterior"]["sigma"].dims == ("chain", "draw")
    assert tree["posterior"].sizes["draw"] == 3


def test_num_chains_must_divide_draws():
    with pytest.raises(ValueError, match="`num_chains` must be a positive integer"):
        tree_from_arrays({"posterior": {"w": np.zeros((5, 2))}}, num_chains=2)
    with pytest.raises(ValueError, match="`num_chains`"):
        tree_from_arrays({"posterior": {"w": np.zeros((4, 2))}}, num_chains=True)


def test_dims_fall_back_on_clashes():
    with pytest.warns(OutputWarning, match="'obs' has size 3"):
        dims = resolve_dims({"a": (3,), "b": (4,)}, {"a": ("obs",), "b": ("obs",)})
    assert dims == {"a": ("obs",), "b": ("b_dim_0",)}
    with pytest.warns(OutputWarning, match="1 names for 2 axes"):
        assert resolve_dims({"a": (3, 2)}, {"a": ("obs",)}) == {"a": ("a_dim_0", "a_dim_1")}
    with pytest.warns(OutputWarning, match="reserved name 'draw'"):
        resolve_dims({"a": (3,)}, {"a": ("draw",)})
    with pytest.warns(OutputWarning, match="repeated"):
        resolve_dims({"a": (3, 3)}, {"a": ("obs", "obs")})
    assert resolve_dims({"a": (3,), "b": (3,)}, {"a": ("obs",), "b": ("obs",)}) == {
        "a": ("obs",),
        "b": ("obs",),
    }


def test_prebuilt_posterior_group_equals_the_built_one():
    """A ``posterior`` group built ahead of time gives the same tree (values, dims,
    digest and attributes) and is not changed by the trees that use it."""
    from aimz_core.streaming.sinks import POSTERIOR_ATTR
    from aimz_io.datatree import posterior_dataset

    w = np.arange(12.0).reshape(4, 3)
    y = np.arange(8, dtype="float32").reshape(4, 2)
    groups = {"posterior": {"w": w}, "posterior_predictive": {"y": y}}
    built = tree_from_arrays(groups, num_chains=2, dims={"y": ("obs",)})
    ds = posterior_dataset({"w": w}, num_chains=2, dims={"y": ("obs",)})
    before = dict(ds.attrs)
    pre = tree_from_arrays({**groups, "posterior": ds}, num_chains=2, dims={"y": ("obs",)})
    drop = {"created_at"}  # the time each tree was made
    a, b = pre["posterior"].to_dataset(), built["posterior"].to_dataset()
    xr.testing.assert_equal(a, b)
    assert {k: v for k, v in a.attrs.items() if k not in drop} == {
        k: v for k, v in b.attrs.items() if k not in drop
    }
    assert pre["posterior"].attrs[POSTERIOR_ATTR] == built.attrs[POSTERIOR_ATTR]
    assert pre.attrs.keys() == built.attrs.keys()
    assert ds.attrs == before  # the cached group keeps its own attributes


def test_on_batch_trees_follow_a_new_posterior():
    """The model keeps one ``posterior`` group per posterior: after
    ``set_posterior_sample`` the trees carry the new draws and digest."""
    from aimz_core.streaming.sinks import POSTERIOR_ATTR
    from aimz_core.testing import fitted_linreg, linreg_data

    model = fitted_linreg(num_draws=10)
    X, _ = linreg_data()
    first = model.predict_on_batch(X[:3])
    again = model.predict_on_batch(X[:3])
    assert again.attrs[POSTERIOR_ATTR] == first.attrs[POSTERIOR_ATTR]
    post = {k: np.asarray(v) + 1.0 for k, v in model.posterior.items()}
    model.set_posterior_sample(post)
    new = model.predict_on_batch(X[:3])
    assert new.attrs[POSTERIOR_ATTR] != first.attrs[POSTERIOR_ATTR]
    np.testing.assert_array_equal(new["posterior"]["b"].values.ravel(), post["b"])
    np.testing.assert_allclose(first["posterior"]["b"].values.ravel(), post["b"] - 1.0, atol=1e-6)


def test_datasets_from_a_template_equal_datasets_built_anew():
    # NumPy arrays of a structure seen before are placed into a copy of a template
    # Dataset (issue 16: the 1-row on-batch DataTree); the result must be the very
    # Dataset the constructors build, holding the caller's arrays, with its own attrs.
    from aimz_io.datatree import _build_dataset, _template, make_dataset

    rng = np.random.default_rng(0)
    dims = {"y": ("obs",), "w": ("w_dim_0", "w_dim_1"), "b": ()}
    cases = [
        {"y": rng.normal(size=(2, 5, 7)).astype("float32"), "b": np.arange(10).reshape(2, 5)},
        {"y": rng.normal(size=(1, 4, 1)), "w": rng.normal(size=(1, 4, 2, 3)) > 0},
    ]
    for arrays in cases:
        for attrs in ({"a": 1}, {"created_at": "now"}):
            fast = make_dataset(arrays, dims, attrs)
            xr.testing.assert_identical(fast, _build_dataset(arrays, dims, attrs))
            for site, value in arrays.items():
                assert fast[site].variable._data is value  # no copy of the caller's data
        first, second = make_dataset(arrays, dims, {"n": 1}), make_dataset(arrays, dims, {"n": 2})
        first.attrs["extra"] = True
        assert second.attrs == {"n": 2}  # attrs are per Dataset
    # The template keeps zero-strided placeholders, not the first caller's arrays.
    big = {"y": np.ones((1, 3, 11), "float64")}
    make_dataset(big, dims)
    structure = (("y", ("chain", "draw", "obs"), (1, 3, 11), np.dtype("float64").str),)
    placeholder = _template(structure)["y"].values
    assert placeholder.strides == (0, 0, 0) and not np.shares_memory(placeholder, big["y"])
    # Lazy (non-NumPy) arrays and mismatched dims take the constructors' path.
    with pytest.raises(ValueError):
        make_dataset({"y": np.ones((1, 2))}, {"y": ("obs",)})


def _tree() -> xr.DataTree:
    post = {"w": np.arange(12.0).reshape(4, 3), "b": np.ones(4)}
    return tree_from_arrays(
        {"posterior": post, "posterior_predictive": {"y": np.zeros((4, 5))}},
        num_chains=2,
        dims={"y": ("obs",)},
        attrs={"note": "x"},
    )


def test_groups_linked_directly_form_the_tree_xarray_builds(monkeypatch):
    from aimz_io import datatree

    # The fast link is in use on this xarray (a release that breaks it would fall
    # back to the public setter, and this says so).
    assert datatree._direct_attach_works()
    fast = _tree()
    monkeypatch.setattr(datatree, "_direct_attach_works", lambda: False)
    public = _tree()
    fast.attrs["created_at"] = public.attrs["created_at"]
    for name in ("posterior", "posterior_predictive"):
        fast[name].attrs["created_at"] = public[name].attrs["created_at"]
    xr.testing.assert_identical(fast, public)
    assert [node.path for node in fast.subtree] == ["/", "/posterior", "/posterior_predictive"]
    for name, node in fast.children.items():
        assert node.parent is fast and node.name == name and node.root is fast
    # The tree behaves as one built in public: nodes can be added, replaced, detached.
    fast["extra"] = xr.Dataset({"z": ("obs", np.arange(5))})
    assert fast["extra"].parent is fast
    with pytest.raises(ValueError, match="not aligned"):
        fast["posterior_predictive/bad"] = xr.Dataset(coords={"obs": np.arange(7)})
    detached = fast["posterior"]
    detached.orphan()
    assert detached.parent is None and "posterior" not in fast.children
    # Each call's nodes are its own: editing one tree leaves the next untouched.
    fast["posterior_predictive"]["y"].attrs["edited"] = True
    fast["posterior_predictive"].attrs["edited"] = True
    again = _tree()
    assert "edited" not in again["posterior_predictive"]["y"].attrs
    assert "edited" not in again["posterior_predictive"].attrs
