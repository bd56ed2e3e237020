"""Fixtures of the MLflow flavor tests: a real SQLite-backed tracking store.

One tiny model is fitted and logged once per session. Logging it also starts, in
the background, the two slow out-of-process checks (a fresh Python process that
loads the model, and ``mlflow models serve``), so that they boot while the
in-process tests run.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the helper modules next to this file

from aimz_mlflow_testing import (  # noqa: E402
    FRESH_KEY_SEED,
    FRESH_SCRIPT,
    NUM_SAMPLES,
    NUM_STEPS,
    Background,
    Data,
    free_port,
    make_model,
    subprocess_env,
)

KERNELS_FILE = HERE / "aimz_mlflow_test_kernels.py"

if importlib.util.find_spec("mlflow") is None or importlib.util.find_spec("aimz_mlflow") is None:
    collect_ignore_glob = ["test_*.py"]  # slim install: no MLflow flavor to test


@pytest.fixture(scope="session")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A SQLite tracking store with its artifacts, both in a temporary directory."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    experiment_id = mlflow.create_experiment("aimz-tests", artifact_location=str(root / "mlruns"))
    mlflow.set_experiment(experiment_id=experiment_id)
    yield uri
    mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="session")
def data() -> Data:
    import numpy as np

    rng = np.random.default_rng(0)
    X = rng.normal(size=(24, 3)).astype(np.float32)
    y = (X @ np.array([1.0, -1.0, 0.5], np.float32) + 0.3).astype(np.float32)
    y += 0.1 * rng.normal(size=24).astype(np.float32)
    return Data(X, y)


@pytest.fixture(scope="session")
def fitted(data: Data) -> Any:
    model = make_model()
    return model.fit_on_batch(
        data.X, data.y, num_steps=NUM_STEPS, num_samples=NUM_SAMPLES, progress=False
    )


@pytest.fixture(scope="session")
def logged(tracking: str, fitted: Any, data: Data) -> Any:
    """The fitted model logged with an input example and the kernel as a code path.

    Its requirements are the flavor defaults, given explicitly: MLflow's requirement
    inference (a subprocess) is exercised by the autolog tests instead.
    """
    import aimz_mlflow
    import mlflow

    with mlflow.start_run():
        return aimz_mlflow.log_model(
            fitted,
            name="model",
            input_example={"X": data.X[:5]},
            code_paths=[str(KERNELS_FILE)],
            pip_requirements=aimz_mlflow.get_default_pip_requirements(include_cloudpickle=True),
        )


@pytest.fixture(scope="session")
def background(
    logged: Any, tracking: str, data: Data, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Background]:
    import numpy as np

    root = tmp_path_factory.mktemp("background")
    env = subprocess_env(tracking)
    np.savez(root / "data.npz", X=data.X)

    port = free_port()
    server_log = root / "server.log"
    with open(server_log, "wb") as log:
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "mlflow", "models", "serve"),
                *("-m", logged.model_uri, "--env-manager", "local"),
                *("-p", str(port), "--host", "127.0.0.1"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
            start_new_session=True,
        )
    fresh_log = root / "fresh.log"
    with open(fresh_log, "wb") as log:
        fresh = subprocess.Popen(
            [
                *(sys.executable, "-c", FRESH_SCRIPT, logged.model_uri),
                *(str(root / "data.npz"), str(root / "fresh.npz"), str(FRESH_KEY_SEED)),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
        )
    handles = Background(server, server_log, port, fresh, root / "fresh.npz", fresh_log)
    try:
        yield handles
    finally:
        for process in (fresh, server):
            if process.poll() is None:
                if process is server:
                    os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn workers
                else:
                    process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()


@pytest.fixture(scope="session", autouse=True)
def _start_background(request: pytest.FixtureRequest) -> None:
    """Start the out-of-process checks as soon as the first MLflow test runs."""
    if any("background" in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue("background")


@pytest.fixture(scope="session")
def local_model_dir(logged: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local copy of the logged model's artifacts (modify copies of it, not it)."""
    import mlflow

    dst = tmp_path_factory.mktemp("downloaded")
    return Path(mlflow.artifacts.download_artifacts(logged.model_uri, dst_path=str(dst)))
