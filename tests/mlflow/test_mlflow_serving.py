"""Out-of-process checks: a fresh Python process and `mlflow models serve` over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from aimz_core import ImpactModel
from aimz_mlflow_testing import (
    FRESH_KEY_SEED,
    NUM_SAMPLES,
    Background,
    free_port,
    make_model,
    subprocess_env,
)

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


def test_concurrent_requests_with_new_row_counts(
    background: Background, fitted: ImpactModel
) -> None:
    """4 threads x 4 unseeded requests, each with a row count the server has not seen.

    Every new row count traces and compiles in the server, concurrently with the
    others (issue 15, item 6: concurrent tracing once failed with 400s). Each answer
    must be 200 with ``mu`` equal to the posterior's ``X @ w + b``, and no two
    requests may share a key (item 1): their standardized residuals differ.
    """
    background.wait_for_server()
    threads, rounds = 4, 4
    rng = np.random.default_rng(15)
    sizes = 5 + rng.permutation(threads * rounds)  # 5..20 rows; other requests send 24
    inputs = [rng.normal(size=(int(n), 3)).astype(np.float32) for n in sizes]
    barrier = threading.Barrier(threads)

    def client(k: int) -> list[tuple[int, int, Any]]:
        answers = []
        for r in range(rounds):
            i = r * threads + k  # each round: 4 new row counts at once
            barrier.wait(timeout=300)
            answers.append((i, *background.post({"inputs": {"X": inputs[i].tolist()}})))
        return answers

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(client, k) for k in range(threads)]
        answers = [answer for future in futures for answer in future.result(timeout=600)]
    elapsed = time.monotonic() - start
    assert sorted(i for i, _, _ in answers) == list(range(threads * rounds))
    assert all(status == 200 for _, status, _ in answers), [
        (len(inputs[i]), status, body) for i, status, body in answers if status != 200
    ]

    w = np.asarray(fitted.posterior["w"])
    b = np.asarray(fitted.posterior["b"])
    sigma = np.asarray(fitted.posterior["sigma"])
    residuals = []
    for i, _, body in sorted(answers, key=lambda answer: answer[0]):
        X = inputs[i]
        mu = np.asarray(body["predictions"]["mu"], dtype=np.float32)
        y = np.asarray(body["predictions"]["y"], dtype=np.float32)
        assert mu.shape == y.shape == (NUM_SAMPLES, len(X)), len(X)
        np.testing.assert_allclose(mu, w @ X.T + b[:, None], rtol=1e-5, atol=1e-5)
        assert np.isfinite(y).all()
        residuals.append((y[:, :5] - mu[:, :5]) / sigma[:, None])
    # A reused key gives (nearly) the same noise on the first rows; distinct keys do not.
    for a in range(len(residuals)):
        for c in range(a):
            gap = np.abs(residuals[a] - residuals[c]).max()
            assert gap > 0.1, (len(inputs[a]), len(inputs[c]), gap)
    assert elapsed < 300, elapsed


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


@contextmanager
def _served(model_dir: Path, tmp_path: Path, **env: str) -> Iterator[int]:
    """Serve ``model_dir`` on 127.0.0.1; yield the port once /ping answers.

    The server is stopped by its PID on exit (its process group: uvicorn workers too).
    """
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model_dir)),
                *("--env-manager", "local", "-p", str(port), "--host", "127.0.0.1"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**subprocess_env(f"sqlite:///{tmp_path / 'mlflow.db'}"), **env},
            cwd=tmp_path,
            start_new_session=True,
        )
    try:
        Background(server, log, port, server, tmp_path / "unused", log).wait_for_server()
        yield port
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn workers
        server.wait(timeout=30)


def test_served_model_answers_like_the_library(
    local_model_dir: Path, data: Any, tmp_path: Path
) -> None:
    """Concurrent valid, invalid, NaN-producing and too-large requests to a server."""
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
    with (
        _served(local_model_dir, tmp_path, AIMZ_SERVE_MAX_ROWS="30") as port,
        ThreadPoolExecutor(max_workers=3) as pool,
    ):
        futures = {
            name: pool.submit(_post_strict, port, payload)
            for name, (payload, _, _) in {**requests, "valid2": requests["valid"]}.items()
        }
        answers = {name: future.result(timeout=300) for name, future in futures.items()}
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


def test_served_row_mismatch_is_a_400(data: Any, tmp_path: Path) -> None:
    """A per-row keyword argument whose length differs from X's rows: 400, aimz's message.

    Issue 15, item 12: not a 500 or MLflow's generic "unexpected error".
    """
    import aimz_mlflow
    import aimz_mlflow_test_kernels
    from aimz_mlflow_test_kernels import offset_kernel

    t = np.linspace(-1.0, 1.0, len(data.X), dtype=np.float32)
    model = make_model(kernel=offset_kernel).fit_on_batch(
        data.X, data.y + t, t=t, num_steps=20, num_samples=10, progress=False
    )
    model_dir = tmp_path / "offset_model"
    aimz_mlflow.save_model(
        model,
        model_dir,
        input_example={"X": data.X[:5], "t": t[:5]},
        code_paths=[aimz_mlflow_test_kernels.__file__],
        pip_requirements=aimz_mlflow.get_default_pip_requirements(include_cloudpickle=True),
    )
    X = data.X[:6]
    requests = {
        "valid": {"X": X.tolist(), "t": t[:6].tolist()},
        "short": {"X": X.tolist(), "t": t[:4].tolist()},
        "long": {"X": X.tolist(), "t": t[:8].tolist()},
    }
    with _served(model_dir, tmp_path) as port:
        answers = {
            name: _post_strict(port, {"inputs": inputs, "params": {"seed": 0}})
            for name, inputs in requests.items()
        }

    status, body = answers["valid"]
    assert status == 200, body
    w, b = (np.asarray(model.posterior[site]) for site in ("w", "b"))
    mu = np.asarray(body["predictions"]["mu"], dtype=np.float32)
    np.testing.assert_allclose(mu, w @ X.T + b[:, None] + t[:6], rtol=1e-5, atol=1e-5)
    for name, rows in (("short", 4), ("long", 8)):
        status, body = answers[name]
        assert status == 400, (name, body)
        assert body["error_code"] == "INVALID_PARAMETER_VALUE", (name, body)
        message = body["message"]
        assert "leading" in message and "X=6" in message and f"t={rows}" in message, message
