"""Refused calls (issue 15): a clear error at the call, before any work or file.

A refused call changes nothing: no file under ``output_dir`` and the model's key
where it was.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from aimz_core.testing import linreg_data, make_model

N = 12


def treated(X: Any, t: Any = None, y: Any = None) -> None:
    """Linear regression with a per-row treatment ``t``."""
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    tau = numpyro.sample("tau", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    mu = numpyro.deterministic("mu", X @ w + tau * t)
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


def key_data(model: Any) -> np.ndarray:
    return np.asarray(jax.random.key_data(model.rng_key))


@pytest.fixture(scope="module")
def linreg_model():
    """A fitted model with a traced kernel spec (so handler sites are checked)."""
    X, y = linreg_data(n=N)
    return make_model().fit_on_batch(X, y, num_steps=5, num_samples=8, progress=False)


@pytest.fixture
def xy():
    X, y = linreg_data(n=N)
    return X, y


@pytest.fixture
def treated_model():
    rng = np.random.default_rng(0)
    model = make_model(treated)
    model.set_posterior_sample(
        {
            "w": rng.normal(size=(8, 2)).astype(np.float32),
            "tau": rng.normal(size=8).astype(np.float32),
            "sigma": np.ones(8, np.float32),
        }
    )
    return model


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


# --------------------------------------------------------------- (8) estimate_effect
def test_estimate_effect_checks_intervention_before_baseline(linreg_model, xy, tmp_path):
    pytest.importorskip("aimz_io")
    X, _ = xy
    out = tmp_path / "out"
    out.mkdir()
    before = key_data(linreg_model)
    with pytest.raises(ValueError, match="Intervention site\\(s\\) not among"):
        linreg_model.estimate_effect(
            args_baseline={"X": X, "output_dir": out, "progress": False},
            args_intervention={"X": X, "intervention": {"nope": 1.0}, "output_dir": out},
        )
    assert files_under(out) == []
    np.testing.assert_array_equal(key_data(linreg_model), before)


def test_estimate_effect_missing_scenario_keeps_key(linreg_model, xy):
    X, _ = xy
    before = key_data(linreg_model)
    with pytest.raises(ValueError, match="Either `output_intervention` or `args_intervention`"):
        linreg_model.estimate_effect(args_baseline={"X": X, "return_datatree": False})
    np.testing.assert_array_equal(key_data(linreg_model), before)


# --------------------------------------------------------------- (9) output_dir
def test_file_url_output_dir_is_its_local_path(linreg_model, xy, tmp_path, monkeypatch):
    pytest.importorskip("aimz_io")
    X, _ = xy
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "srv" / "out"
    tree = linreg_model.predict(X, output_dir=target.as_uri(), progress=False)
    assert Path(tree.attrs["artifact_path"]).parent == target
    assert files_under(target)
    assert sorted(os.listdir(tmp_path)) == ["srv"]  # no ./file:/... in the cwd


def test_local_path_of_file_urls(tmp_path):
    from aimz_core.backend import local_path, resolve_output_dir

    assert local_path("file:///srv/out") == Path("/srv/out").resolve()
    assert local_path("file://localhost/srv/out") == Path("/srv/out").resolve()
    assert local_path("file:/srv/out") == Path("/srv/out").resolve()
    with pytest.raises(ValueError, match="another host"):
        local_path("file://elsewhere/srv/out")
    assert resolve_output_dir((tmp_path / "a b").as_uri()) == tmp_path / "a b"


def test_empty_output_dir_is_refused(linreg_model, xy, tmp_path, monkeypatch):
    X, _ = xy
    monkeypatch.chdir(tmp_path)
    before = key_data(linreg_model)
    with pytest.raises(ValueError, match="`output_dir` must not be an empty string"):
        linreg_model.predict(X, output_dir="", progress=False)
    from aimz_core.backend import check_output_dir

    with pytest.raises(ValueError, match="`output_dir` must not be an empty string"):
        check_output_dir("")
    assert os.listdir(tmp_path) == []
    np.testing.assert_array_equal(key_data(linreg_model), before)


# --------------------------------------------------------------- (10) return_sites=[]
# The spec: `return_sites=[]` returns no sites. It does so at once: no store is
# written (before, an empty store was written and marked complete), no key is drawn.
@pytest.mark.parametrize("method", ["predict", "sample_prior_predictive", "predict_on_batch"])
@pytest.mark.parametrize("empty", [[], (), iter(())])
@pytest.mark.parametrize("return_datatree", [False, True])
def test_empty_return_sites_returns_no_sites_and_writes_nothing(
    linreg_model, xy, tmp_path, method, empty, return_datatree
):
    X, _ = xy
    out = tmp_path / "out"
    before = key_data(linreg_model)
    kwargs: dict[str, Any] = {"return_datatree": return_datatree}
    if method != "predict_on_batch":
        kwargs.update(progress=False, output_dir=out)
    if return_datatree:
        pytest.importorskip("aimz_io")
    result = getattr(linreg_model, method)(X, return_sites=empty, **kwargs)
    if return_datatree:
        group = "prior_predictive" if method == "sample_prior_predictive" else None
        groups = [g for g in result.children if g != "posterior"]
        assert len(groups) == 1 and (group is None or groups == [group])
        assert len(result[groups[0]].data_vars) == 0
    else:
        assert result == {}
    assert files_under(out) == []
    np.testing.assert_array_equal(key_data(linreg_model), before)


def test_estimate_effect_of_no_sites_is_refused(linreg_model, xy):
    X, _ = xy
    before = key_data(linreg_model)
    with pytest.raises(ValueError, match=r"`return_sites` is empty.*pass None for the default"):
        linreg_model.estimate_effect(
            args_baseline={"X": X, "return_datatree": False, "return_sites": []},
            args_intervention={
                "X": X,
                "return_datatree": False,
                "return_sites": [],
                "intervention": {"w": 0.0},
            },
        )
    np.testing.assert_array_equal(key_data(linreg_model), before)


# --------------------------------------------------------------- (13) rows
@pytest.mark.parametrize(
    "method", ["predict_on_batch", "sample_posterior_predictive_on_batch", "sample_prior"]
)
def test_on_batch_empty_input_is_a_value_error(linreg_model, xy, method):
    X, _ = xy
    before = key_data(linreg_model)
    with pytest.raises(ValueError, match="`X` must not be empty"):
        if method == "sample_prior":
            linreg_model.sample_prior_predictive_on_batch(
                X[:0], num_samples=4, return_datatree=False
            )
        else:
            getattr(linreg_model, method)(X[:0], return_datatree=False)
    np.testing.assert_array_equal(key_data(linreg_model), before)


ROWS = r"All array arguments must share the leading-axis size of `X`; got X=12, t=1"


@pytest.mark.parametrize(
    "method",
    ["predict_on_batch", "sample_posterior_predictive_on_batch", "prior_on_batch", "predict"],
)
def test_per_row_kwargs_must_match_rows(treated_model, xy, method):
    X, _ = xy
    t = np.ones(N, np.float32)
    before = key_data(treated_model)
    with pytest.raises(ValueError, match=ROWS):
        if method == "prior_on_batch":
            treated_model.sample_prior_predictive_on_batch(
                X, t=t[:1], num_samples=4, return_datatree=False
            )
        elif method == "predict":
            treated_model.predict(X, t=t[:1], progress=False, return_datatree=False)
        else:
            getattr(treated_model, method)(X, t=t[:1], return_datatree=False)
    np.testing.assert_array_equal(key_data(treated_model), before)


@pytest.mark.parametrize("method", ["fit_on_batch", "fit", "train_on_batch", "log_likelihood"])
def test_fitting_kwargs_must_match_rows(xy, method):
    X, y = xy
    t = np.ones(N, np.float32)
    model = make_model(treated)
    if method == "log_likelihood":
        model.set_posterior_sample(
            {
                "w": np.zeros((4, 2), np.float32),
                "tau": np.zeros(4, np.float32),
                "sigma": np.ones(4, np.float32),
            }
        )
    before = key_data(model)
    kwargs: dict[str, Any] = {"t": t[:1]}
    if method in ("fit_on_batch", "fit"):
        kwargs["progress"] = False
    if method == "log_likelihood":
        kwargs.update(progress=False, return_datatree=False)
    with pytest.raises(ValueError, match=ROWS.replace("t=1", "y=12, t=1")):
        getattr(model, method)(X, y, **kwargs)
    np.testing.assert_array_equal(key_data(model), before)
    assert method == "log_likelihood" or not model.is_fitted()


# --------------------------------------------------------------- key never moves
def bad_calls(X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    return {
        "predict_on_batch": lambda m: m.predict_on_batch(
            X, intervention={"nope": 1.0}, return_datatree=False
        ),
        "sample_posterior_predictive_on_batch": lambda m: m.sample_posterior_predictive_on_batch(
            X, condition={"nope": 1.0}, return_datatree=False
        ),
        "predict": lambda m: m.predict(
            X, condition={"nope": 1.0}, progress=False, return_datatree=False
        ),
        "log_likelihood": lambda m: m.log_likelihood(X, y[:-1], progress=False),
        "estimate_effect": lambda m: m.estimate_effect(
            args_baseline={"X": X, "return_datatree": False},
            args_intervention={"X": X, "return_sites": [], "return_datatree": False},
        ),
        "estimate_effect_on_batch": lambda m: m.estimate_effect(
            args_baseline={"X": X, "return_datatree": False},
            args_intervention={"X": X[:0], "return_datatree": False},
            on_batch=True,
        ),
    }


@pytest.mark.parametrize("name", list(bad_calls(np.zeros(1), np.zeros(1))))
def test_refused_calls_leave_the_key(linreg_model, xy, name):
    X, y = xy
    before = key_data(linreg_model)
    with pytest.raises(ValueError):
        bad_calls(X, y)[name](linreg_model)
    np.testing.assert_array_equal(key_data(linreg_model), before)
