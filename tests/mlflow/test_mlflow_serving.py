"""Out-of-process checks: a fresh Python process and `mlflow models serve` over HTTP."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest
from aimz_core import ImpactModel
from aimz_mlflow_testing import FRESH_KEY_SEED, NUM_SAMPLES, Background

pytestmark = pytest.mark.slow


def test_fresh_process_reproduces_posterior_and_draws(
    background: Background, fitted: ImpactModel, data: Any
) -> None:
    returncode = background.fresh.wait(timeout=300)
    assert returncode == 0, background.fresh_log.read_text()
    result = np.load(background.fresh_out)
    for site, value in fitted.posterior.items():
        assert np.array_equal(result[f"posterior/{site}"], np.asarray(value)), site
    expected = fitted.predict_on_batch(
        data.X, rng_key=jax.random.key(FRESH_KEY_SEED), return_datatree=False
    )
    for site, value in expected.items():
        assert np.array_equal(result[f"draws/{site}"], value), site


def test_mlflow_models_serve_answers_invocations(
    background: Background, fitted: ImpactModel, data: Any
) -> None:
    background.wait_for_server()
    status, body = background.post({"inputs": {"X": data.X.tolist()}, "params": {"seed": 0}})
    assert status == 200, body
    predictions = body["predictions"]
    assert set(predictions) == {"y", "mu"}
    y = np.asarray(predictions["y"], dtype=np.float32)
    assert y.shape == (NUM_SAMPLES, len(data.X))
    expected = fitted.predict(
        data.X, rng_key=jax.random.key(0), return_datatree=False, progress=False
    )
    assert np.array_equal(y, expected["y"])

    # A DataFrame payload whose "X" column holds the rows, plus an intervention.
    status, body = background.post(
        {
            "dataframe_split": {"columns": ["X"], "data": [[row] for row in data.X.tolist()]},
            "params": {"seed": 0, "intervention": '{"b": 2.0, "w": [0, 0, 0]}'},
        }
    )
    assert status == 200, body
    mu = np.asarray(body["predictions"]["mu"])
    assert mu.shape == (NUM_SAMPLES, len(data.X))
    assert np.all(mu == 2.0)
