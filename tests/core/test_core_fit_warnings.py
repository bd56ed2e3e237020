"""Minibatch fit warnings (issue 14 item 18): ``fit`` with ``batch_size`` below the rows
(or a loader of several batches) warns once, before training, about an output that is
not scaled to the whole data, sites computed across rows, and per-row latents that the
guide does not compute from the batch; a correct minibatch kernel and every one-batch
fit do not warn.

Every fit is one epoch of a few SVI steps on 40 rows; no test needs ``aimz_io``.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from aimz_core import ArrayDataset, ArrayLoader, ImpactModel
from aimz_core._fit_checks import minibatch_problems, minibatch_total
from aimz_core.exceptions import FitWarning
from aimz_core.testing import linreg, linreg_data
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoDelta, AutoNormal

KEY = jax.random.key(5)
N = 40
BATCH = 10
FIT = dict(num_samples=2, progress=False)


# ------------------------------------------------------------------ kernels
def scaled(X, y=None, n=N):
    """A correct minibatch kernel: the output's plate is scaled to the ``n`` rows."""
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("obs", n, subsample_size=X.shape[0]):
        numpyro.deterministic("mu", X @ w)
        numpyro.sample("y", dist.Normal(X @ w, 0.5), obs=y)


def scan_rows(X, y=None, n=N):
    """Scaled, but an AR(1) level over the rows (``lax.scan``), not recorded as a site."""
    rho = numpyro.sample("rho", dist.Uniform(-0.9, 0.9))
    _, level = jax.lax.scan(lambda c, x: (rho * c + x[0], rho * c + x[0]), 0.0, X)
    with numpyro.plate("obs", n, subsample_size=X.shape[0]):
        numpyro.sample("y", dist.Normal(level, 0.5), obs=y)


def centred(X, y=None, n=N):
    """Scaled, but centres its input on the batch mean (a mean over rows)."""
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    with numpyro.plate("obs", n, subsample_size=X.shape[0]):
        mu = numpyro.deterministic("mu", b * (X[:, 0] - X[:, 0].mean()))
        numpyro.sample("y", dist.Normal(mu, 0.5), obs=y)


def per_row(X, y=None, n=N):
    """Scaled, with a per-row latent ``z`` in the row plate."""
    with numpyro.plate("obs", n, subsample_size=X.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(z, 0.1), obs=y)


def amortized(X, y=None, n=N):
    """A guide of :func:`per_row` that computes ``z`` from the batch's ``y``."""
    a = numpyro.param("a", 0.5)
    with numpyro.plate("obs", n, subsample_size=X.shape[0]):
        numpyro.sample("z", dist.Normal(a * y, 0.1))


def row_params(X, y=None, n=N):
    """A guide of :func:`per_row` with one parameter per row of the batch's shape."""
    loc = numpyro.param("z_loc", jnp.zeros(X.shape[0]))
    with numpyro.plate("obs", n, subsample_size=X.shape[0]):
        numpyro.sample("z", dist.Normal(loc, 0.1))


def model_of(kernel, guide=None) -> ImpactModel:
    guide = AutoNormal(kernel) if guide is None else guide
    svi = SVI(kernel, guide, numpyro.optim.Adam(0.01), Trace_ELBO())
    return ImpactModel(kernel, rng_key=KEY, inference=svi)


def fit_warnings(model: ImpactModel, X, y=None, **kwargs) -> list[warnings.WarningMessage]:
    """The ``FitWarning``\\ s of one fit (all others are recorded and dropped)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(X, y, **FIT, **kwargs)
    return [w for w in caught if issubclass(w.category, FitWarning)]


@pytest.fixture(scope="module")
def data():
    return linreg_data(N)


# ------------------------------------------------------------------- a, b, c
def test_unscaled_output_warns_once(data):
    X, y = data
    model = model_of(linreg)
    caught = fit_warnings(model, X, y, batch_size=BATCH, epochs=2)
    assert len(caught) == 1  # once per call, not per epoch or batch
    message = str(caught[0].message)
    assert "output site 'y' is not scaled to the whole data" in message
    assert "10 rows out of 40" in message and "needs 4" in message
    assert "numpyro.plate('obs', N, subsample_size=len(X))" in message
    assert "batch_size=None" in message
    assert caught[0].filename == __file__  # points at the call to `fit`
    # the check reads the model's key: one split per fit, as without it
    expected = jax.random.split(KEY)[0]
    np.testing.assert_array_equal(jax.random.key_data(model.rng_key), jax.random.key_data(expected))


def test_cross_row_site_warns(data):
    X, y = data
    caught = fit_warnings(model_of(scan_rows), X, y, batch_size=BATCH)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "computes across rows at site(s) 'y'" in message
    assert "batch_size=None" in message


def test_mean_over_rows_is_a_cross_row_site(data):
    X, y = data
    arrays = {"X": X[:BATCH], "y": y[:BATCH]}
    found = minibatch_problems(
        centred, AutoNormal(centred), KEY, arrays, {}, param_output="y", total=N
    )
    assert [(p.kind, p.sites) for p in found] == [("cross_row", ("mu", "y"))]


def test_per_row_latent_of_an_auto_guide_warns(data):
    X, y = data
    caught = fit_warnings(model_of(per_row), X, y, batch_size=BATCH)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "per-row latent site(s) 'z'" in message and "AutoNormal" in message
    assert "amortized guide" in message and "batch_size=None" in message


@pytest.mark.parametrize("guide", [row_params, AutoDelta(per_row)], ids=["params", "delta"])
def test_per_row_latent_not_computed_from_the_batch(data, guide):
    X, y = data
    arrays = {"X": X[:BATCH], "y": y[:BATCH]}
    found = minibatch_problems(per_row, guide, KEY, arrays, {}, param_output="y", total=N)
    assert [(p.kind, p.sites) for p in found] == [("per_row_latent", ("z",))]


def test_all_three_warn_separately(data):
    X, y = data

    def everything(X, y=None):
        _, level = jax.lax.scan(lambda c, x: (c + x[0], c + x[0]), 0.0, X)
        with numpyro.plate("obs", X.shape[0]):
            z = numpyro.sample("z", dist.Normal(level, 1.0))
            numpyro.sample("y", dist.Normal(z, 0.1), obs=y)

    arrays = {"X": X[:BATCH], "y": y[:BATCH]}
    found = minibatch_problems(
        everything, AutoNormal(everything), KEY, arrays, {}, param_output="y", total=N
    )
    assert [p.kind for p in found] == ["unscaled", "cross_row", "per_row_latent"]
    assert found[2].sites == ("z",)


# ----------------------------------------------------------------- no warning
def test_correct_minibatch_kernels_do_not_warn(data):
    X, y = data
    assert fit_warnings(model_of(scaled), X, y, batch_size=BATCH, epochs=2) == []
    assert fit_warnings(model_of(per_row, amortized), X, y, batch_size=BATCH) == []


@pytest.mark.parametrize("kernel", [linreg, scan_rows, per_row])
def test_one_batch_fits_do_not_warn(data, kernel):
    X, y = data
    assert fit_warnings(model_of(kernel), X, y) == []
    assert fit_warnings(model_of(kernel), X, y, batch_size=N + 5) == []


# -------------------------------------------------------------------- loaders
def test_loaders_of_several_batches_warn(data):
    X, y = data
    loader = ArrayLoader(ArrayDataset(X=X, y=y), KEY, batch_size=BATCH)
    assert len(fit_warnings(model_of(linreg), loader)) == 1
    batches = [{"X": X[i : i + 20], "y": y[i : i + 20]} for i in (0, 20)]
    caught = fit_warnings(model_of(linreg), batches)
    assert len(caught) == 1 and "out of at least 21" in str(caught[0].message)
    # an unsized loader shows several batches with its second one
    caught = fit_warnings(model_of(linreg), iter(batches))
    assert len(caught) == 1 and "out of at least 40" in str(caught[0].message)


def test_loaders_of_one_batch_do_not_warn(data):
    X, y = data
    one = [{"X": X, "y": y}]
    assert fit_warnings(model_of(linreg), one) == []
    assert fit_warnings(model_of(linreg), iter(one)) == []
    loader = ArrayLoader(ArrayDataset(X=X, y=y), KEY, batch_size=N)
    assert fit_warnings(model_of(linreg), loader) == []


def test_minibatch_total():
    loader = ArrayLoader(ArrayDataset(X=np.zeros((N, 1))), KEY, batch_size=BATCH)
    assert minibatch_total(loader, [BATCH]) == (N, True)
    assert minibatch_total([{}] * 4, [BATCH]) == (BATCH + 3, False)
    assert minibatch_total([{}], [N]) is None
    assert minibatch_total(iter([]), [BATCH]) is None  # not known yet
    assert minibatch_total(iter([]), [BATCH, 5]) == (BATCH + 5, False)
