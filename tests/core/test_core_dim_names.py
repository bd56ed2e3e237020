"""Default dimension names (issue 14 item 14): plates, event axes, numbering."""

from __future__ import annotations

import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from aimz_core._draws import site_dims
from aimz_core.exceptions import OutputWarning
from aimz_core.streaming.blocks import dim_names
from numpyro import handlers


def trace_of(kernel, *args):
    return handlers.trace(handlers.seed(kernel, 0)).get_trace(*args)


def test_defaults_number_only_the_unnamed_axes():
    assert dim_names("z", 3, {"z": {1: "obs"}}) == ("z_dim_0", "obs", "z_dim_1")
    assert dim_names("y", 2, {"y": {0: "obs"}}) == ("obs", "y_dim_0")
    assert dim_names("w", 2, {}) == ("w_dim_0", "w_dim_1")


def test_deterministic_in_plate_keeps_the_plate_on_its_axis():
    def kernel(X):
        w = numpyro.sample("w", dist.Normal(0, 1).expand([2, 3]).to_event(2))
        with numpyro.plate("obs", X.shape[0]):
            numpyro.deterministic("mu", X @ w)  # (n, 3): the plate is axis 0
            numpyro.deterministic("flat", X[:, 0])  # (n,)
            numpyro.deterministic("square", X @ w[:, :1] * np.ones((1, 4)))  # (4, 4) at n=4

    tr = trace_of(kernel, np.ones((4, 2)))
    assert site_dims(tr["mu"], 2) == {0: "obs"}
    assert site_dims(tr["flat"], 1) == {0: "obs"}
    assert site_dims(tr["square"], 2) == {0: "obs"}  # same sizes: leading axis (ArviZ)
    assert dim_names("mu", 2, {"mu": site_dims(tr["mu"], 2)}) == ("obs", "mu_dim_0")


def test_deterministic_that_does_not_fit_its_plates_gets_no_plate_name():
    def kernel(X):
        with numpyro.plate("obs", X.shape[0]):
            numpyro.deterministic("total", X.sum(0))  # (2,), not one value per row

    assert site_dims(trace_of(kernel, np.ones((5, 2)))["total"], 1) == {}


def test_event_dims_name_event_axes_and_warn_when_they_cannot():
    def kernel(X, names):
        with numpyro.plate("obs", X.shape[0]):
            numpyro.sample(
                "z",
                dist.Normal(0, 1).expand([X.shape[0], 2, 3]).to_event(2),
                infer={"event_dims": names},
            )

    X = np.ones((4, 2))
    tr = trace_of(kernel, X, ["feature", "level"])
    assert site_dims(tr["z"], 3) == {0: "obs", 1: "feature", 2: "level"}
    with pytest.warns(OutputWarning, match=r"`event_dims` of site 'z' cannot apply \(the site"):
        assert site_dims(trace_of(kernel, X, ["feature"])["z"], 3) == {0: "obs"}
    with pytest.warns(OutputWarning, match="list of strings"):
        assert site_dims(trace_of(kernel, X, [1, 2])["z"], 3) == {0: "obs"}
    # a log-density (event axes summed out) takes the plate names only
    assert site_dims({**tr["z"], "fn": None}, 1) == {0: "obs"}
