"""Out-of-process checks: a fresh Python process and `mlflow models serve` over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from aimz_core import ImpactModel
from aimz_mlflow_testing import FRESH_KEY_SEED, NUM_SAMPLES, Background, free_port, subprocess_env

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


def _post_strict(port: int, payload: dict[str, Any]) -> tuple[int, Any]:
    """POST to /invocations; the body must be strict JSON (no NaN / Infinity)."""

    def refuse(token: str) -> Any:
        raise ValueError(f"invalid JSON constant {token}")

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read(), parse_constant=refuse)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read(), parse_constant=refuse)


def test_served_model_answers_like_the_library(
    local_model_dir: Path, data: Any, tmp_path: Path
) -> None:
    """Concurrent valid, invalid, NaN-producing and too-large requests to a server."""
    port = free_port()
    log = tmp_path / "server.log"
    env = {**subprocess_env(f"sqlite:///{tmp_path / 'mlflow.db'}"), "AIMZ_SERVE_MAX_ROWS": "30"}
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "mlflow", "models", "serve", "-m", str(local_model_dir)),
                *("--env-manager", "local", "-p", str(port), "--host", "127.0.0.1"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
            start_new_session=True,
        )
    X = data.X.tolist()
    requests = {
        "valid": ({"inputs": {"X": X}, "params": {"seed": 0}}, 200, None),
        "nan": (
            {"inputs": {"X": X}, "params": {"seed": 0, "intervention": '{"sigma": NaN}'}},
            200,
            None,
        ),
        "batch_size": (
            {"inputs": {"X": X}, "params": {"batch_size": 0}},
            400,
            "`batch_size` should be a positive integer",
        ),
        "return_sites": (
            {"inputs": {"X": X}, "params": {"return_sites": ["nope"]}},
            400,
            "does not record: ['nope']",
        ),
        "datatree": (
            {"inputs": {"X": X}, "params": {"return_datatree": True}},
            400,
            "`return_datatree=true` is not available from a model server",
        ),
        "too_many_rows": ({"inputs": {"X": X + X}}, 413, "more than the 30"),
    }
    try:
        Background(server, log, port, server, tmp_path / "unused", log).wait_for_server()
        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = {
                name: pool.submit(_post_strict, port, payload)
                for name, (payload, _, _) in {**requests, "valid2": requests["valid"]}.items()
            }
            answers = {name: future.result(timeout=300) for name, future in futures.items()}
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn workers
        server.wait(timeout=30)
    for name, (status, body) in answers.items():
        expected_status, expected_message = requests[name.rstrip("2")][1:]
        assert status == expected_status, (name, body)
        if expected_message is not None:
            assert expected_message in body["message"], (name, body)
    assert answers["valid"] == answers["valid2"]
    assert np.asarray(answers["valid"][1]["predictions"]["y"]).shape == (NUM_SAMPLES, len(X))
    nan = answers["nan"][1]["predictions"]
    assert all(v is None for row in nan["y"] for v in row)
    assert np.isfinite(np.asarray(nan["mu"], dtype=float)).all()
