"""pyfunc predictions of a logged model: inputs, params and outputs."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path
from typing import Any

import aimz_mlflow
import jax
import numpy as np
import pandas as pd
import pytest
from aimz_core import ImpactModel
from aimz_mlflow_testing import NUM_SAMPLES


@pytest.fixture(scope="module")
def pyfunc_model(logged: Any) -> Any:
    import mlflow

    return mlflow.pyfunc.load_model(logged.model_uri)


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for site in a:
        assert np.array_equal(a[site], b[site]), site


def test_dict_input_returns_json_serializable_draws(
    pyfunc_model: Any, fitted: ImpactModel, data: Any
) -> None:
    out = pyfunc_model.predict({"X": data.X}, params={"seed": 3})
    assert set(out) == {"y", "mu"}
    assert all(isinstance(v, np.ndarray) for v in out.values())
    assert out["y"].shape == (NUM_SAMPLES, len(data.X))
    json.dumps({k: v.tolist() for k, v in out.items()})
    expected = fitted.predict(
        data.X, rng_key=jax.random.key(3), return_datatree=False, progress=False
    )
    assert_same(out, expected)
    # The seed makes calls reproducible; without it the model's own key advances.
    assert_same(pyfunc_model.predict({"X": data.X}, params={"seed": 3}), out)
    first = pyfunc_model.predict({"X": data.X})
    second = pyfunc_model.predict({"X": data.X})
    assert not np.array_equal(first["y"], second["y"])


def test_dataframe_with_list_column(pyfunc_model: Any, data: Any) -> None:
    frame = pd.DataFrame({"X": list(data.X)})
    out = pyfunc_model.predict(frame, params={"seed": 3})
    assert_same(out, pyfunc_model.predict({"X": data.X}, params={"seed": 3}))


def test_intervention_and_return_sites_params(pyfunc_model: Any, data: Any) -> None:
    intervention = json.dumps({"w": [0.0, 0.0, 0.0], "b": 2.0})
    out = pyfunc_model.predict(
        {"X": data.X},
        params={"seed": 3, "intervention": intervention, "return_sites": ["mu"]},
    )
    assert set(out) == {"mu"}
    assert np.all(out["mu"] == 2.0)
    out = pyfunc_model.predict({"X": data.X}, params={"seed": 3, "batch_size": 8})
    assert out["y"].shape == (NUM_SAMPLES, len(data.X))


@pytest.mark.skipif(
    importlib.util.find_spec("aimz_io") is None, reason="DataTree outputs need aimz-io"
)
def test_return_datatree_param(pyfunc_model: Any, data: Any) -> None:
    pytest.importorskip("aimz_io.backend")
    tree = pyfunc_model.predict(
        {"X": data.X}, params={"seed": 3, "return_datatree": True, "in_sample": False}
    )
    y = tree["predictions"]["y"]
    assert y.sizes["draw"] == NUM_SAMPLES
    assert "posterior" in tree.children
    flat = pyfunc_model.predict({"X": data.X}, params={"seed": 3})
    assert np.array_equal(np.asarray(y).reshape(flat["y"].shape), flat["y"])


def test_numpy_and_dataframe_inputs_with_unnamed_signature(
    fitted: ImpactModel, data: Any, tmp_path: Path
) -> None:
    import mlflow

    path = tmp_path / "numpy_model"
    aimz_mlflow.save_model(fitted, path, input_example=data.X[:5], pip_requirements=["numpyro"])
    assert (path / "requirements.txt").read_text().split()[1:] == ["numpyro"]
    pyfunc_model = mlflow.pyfunc.load_model(str(path))
    assert pyfunc_model.metadata.signature.inputs.inputs[0].shape == (-1, 3)
    out = pyfunc_model.predict(data.X, params={"seed": 1})
    assert out["y"].shape == (NUM_SAMPLES, len(data.X))
    frame = pd.DataFrame(data.X, columns=["a", "b", "c"])
    assert_same(pyfunc_model.predict(frame, params={"seed": 1}), out)


def test_wrapper_converts_inputs(fitted: ImpactModel, data: Any) -> None:
    """Without a signature, the wrapper itself takes a dict, an array or a DataFrame."""
    wrapper = aimz_mlflow._AimzModelWrapper(fitted)
    assert wrapper.get_raw_model() is fitted
    params = {"seed": 5}
    expected = wrapper.predict({"X": data.X}, params=params)
    assert_same(wrapper.predict(data.X, params=params), expected)
    assert_same(wrapper.predict(data.X.tolist(), params=params), expected)
    assert_same(wrapper.predict(pd.DataFrame(data.X), params=params), expected)
    assert_same(wrapper.predict(pd.DataFrame({"X": list(data.X)}), params=params), expected)
    by_mapping = wrapper.predict(
        {"X": data.X}, params={**params, "intervention": {"b": 0.0}, "return_sites": "mu"}
    )
    by_json = wrapper.predict(
        {"X": data.X}, params={**params, "intervention": '{"b": 0.0}', "return_sites": ["mu"]}
    )
    assert_same(by_mapping, by_json)
    with pytest.raises(ValueError, match="JSON object"):
        wrapper.predict({"X": data.X}, params={"intervention": "{not json"})
    with pytest.raises(KeyError, match="'X'"):
        wrapper.predict({"Z": data.X})


def test_wrapper_binds_inputs_like_aimz_predict(fitted: ImpactModel, data: Any) -> None:
    """One rule with the CLI: the output column is dropped, unknown names are refused."""
    wrapper = aimz_mlflow._AimzModelWrapper(fitted)
    params = {"seed": 5}
    expected = wrapper.predict({"X": data.X}, params=params)
    frame = pd.DataFrame(data.X, columns=["a", "b", "c"]).assign(y=data.y)
    assert_same(wrapper.predict(frame, params=params), expected)
    assert_same(wrapper.predict({"X": data.X, "y": data.y}, params=params), expected)
    with pytest.raises(ValueError, match="not parameters of the kernel"):
        wrapper.predict({"X": data.X, "scale": 2.0}, params=params)


@pytest.mark.parametrize(
    ("data_key", "params", "error", "match"),
    [
        ("X", {"batch_size": 0}, ValueError, "`batch_size` should be a positive integer"),
        ("X", {"intervention": "{not json"}, ValueError, "JSON object"),
        ("X", {"seed": "zero"}, TypeError, "`seed` must be an integer"),
        ("Z", {}, KeyError, "'X'"),
        ("X", {"return_sites": ["nope"]}, ValueError, r"does not record: \['nope'\]"),
    ],
)
def test_invalid_requests_are_invalid_parameter_values(
    fitted: ImpactModel, data: Any, data_key: str, params: Any, error: type, match: str
) -> None:
    """aimz's refusals answer 400 with aimz's message (and stay the built-in errors)."""
    from mlflow.exceptions import MlflowException

    wrapper = aimz_mlflow._AimzModelWrapper(fitted)
    with pytest.raises(MlflowException, match=match) as info:
        wrapper.predict({data_key: data.X}, params={"seed": 0, **params})
    assert isinstance(info.value, error)
    assert info.value.error_code == "INVALID_PARAMETER_VALUE"
    assert info.value.get_http_status_code() == 400


def test_served_return_datatree_is_refused(
    fitted: ImpactModel, data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "true")
    wrapper = aimz_mlflow._AimzModelWrapper(fitted)
    with pytest.raises(MlflowException, match="return_datatree=true` is not available") as info:
        wrapper.predict({"X": data.X}, params={"return_datatree": True})
    assert info.value.get_http_status_code() == 400


def test_served_non_finite_draws_are_json_null(
    fitted: ImpactModel, data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.pyfunc.scoring_server import predictions_to_json

    wrapper = aimz_mlflow._AimzModelWrapper(fitted)
    params = {"seed": 0, "intervention": '{"sigma": NaN}'}
    plain = wrapper.predict({"X": data.X}, params=params)
    assert np.isnan(plain["y"]).all()  # Python callers keep NaN
    monkeypatch.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "true")
    served = wrapper.predict({"X": data.X}, params=params)
    out = io.StringIO()
    predictions_to_json(served, out)
    body = json.loads(out.getvalue(), parse_constant=pytest.fail)  # no NaN / Infinity
    assert np.asarray(body["predictions"]["y"]).shape == plain["y"].shape
    assert all(v is None for row in body["predictions"]["y"] for v in row)
    assert np.allclose(body["predictions"]["mu"], plain["mu"])


def test_row_limit(fitted: ImpactModel, data: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from aimz_mlflow.pyfunc import DEFAULT_MAX_ROWS, MAX_ROWS_ENV, RequestTooLargeError

    assert DEFAULT_MAX_ROWS == 1_000_000
    rows = len(data.X)
    monkeypatch.setenv(MAX_ROWS_ENV, str(rows - 1))
    wrapper = aimz_mlflow._AimzModelWrapper(fitted)
    with pytest.raises(RequestTooLargeError, match=f"{rows} input rows") as info:
        wrapper.predict({"X": data.X}, params={"seed": 0})
    assert info.value.get_http_status_code() == 413
    assert wrapper.predict({"X": data.X[: rows - 1]}, params={"seed": 0})["y"].shape[1] == rows - 1
    # model_config's max_rows wins over the environment; 0 lifts the limit.
    unlimited = aimz_mlflow._AimzModelWrapper(fitted, max_rows=0)
    assert unlimited.predict({"X": data.X}, params={"seed": 0})["y"].shape[1] == rows
    monkeypatch.setenv(MAX_ROWS_ENV, "many")
    with pytest.raises(ValueError, match=MAX_ROWS_ENV):
        wrapper.predict({"X": data.X}, params={"seed": 0})


def test_pyfunc_model_config_sets_the_row_limit(logged: Any, data: Any) -> None:
    import mlflow
    from aimz_mlflow.pyfunc import RequestTooLargeError

    model = mlflow.pyfunc.load_model(logged.model_uri, model_config={"max_rows": 2})
    with pytest.raises(RequestTooLargeError):
        model.predict({"X": data.X}, params={"seed": 0})
