"""A model saved with the flavor keeps working keys in a fresh process.

JAX pickles a typed key with a copy of its PRNG implementation, which
``jax.random.poisson`` rejects: a Poisson model loaded with ``aimz_mlflow.load_model``
failed to predict with its own key. Keys are now pickled as data plus the name of
their implementation.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aimz_mlflow
import jax
import numpy as np
import numpyro
import pytest
from aimz_core import ImpactModel
from aimz_mlflow_test_kernels import poisson_kernel
from aimz_mlflow_testing import OFFLINE_ENV, Background, free_port, subprocess_env
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

KERNELS_FILE = Path(__file__).resolve().parent / "aimz_mlflow_test_kernels.py"

CHILD = """
import sys
import numpy as np
import aimz_mlflow

model = aimz_mlflow.load_model(sys.argv[1])
X = np.load(sys.argv[2])["X"]
draws = model.predict_on_batch(X, return_datatree=False)  # the model's own key
np.savez(sys.argv[3], y=draws["y"])
"""


@pytest.fixture(scope="module")
def saved_poisson(tmp_path_factory: pytest.TempPathFactory) -> tuple[ImpactModel, Path, Any]:
    """A fitted Poisson model saved with the flavor: (model, model dir, X)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 2)).astype(np.float32)
    y = rng.poisson(np.exp(X @ np.array([0.5, -0.3]))).astype(np.float32)
    svi = SVI(poisson_kernel, AutoNormal(poisson_kernel), numpyro.optim.Adam(0.05), Trace_ELBO())
    model = ImpactModel(poisson_kernel, rng_key=jax.random.key(0), inference=svi)
    model.fit_on_batch(X, y, num_steps=20, num_samples=8, progress=False)
    path = tmp_path_factory.mktemp("poisson") / "model"
    aimz_mlflow.save_model(
        model,
        path,
        code_paths=[str(KERNELS_FILE)],
        pip_requirements=aimz_mlflow.get_default_pip_requirements(include_cloudpickle=True),
    )
    return model, path, X


@pytest.mark.slow
def test_loaded_poisson_model_predicts_with_its_own_key(
    saved_poisson: tuple[ImpactModel, Path, Any], tmp_path: Path
) -> None:
    model, path, X = saved_poisson
    # What this process draws next with the saved key (before the child runs, so it
    # may reuse the persistent compilation cache).
    expected = model.predict_on_batch(X, return_datatree=False)["y"]

    np.savez(tmp_path / "data.npz", X=X)
    env = {**os.environ, **OFFLINE_ENV}
    env.pop("PYTEST_CURRENT_TEST", None)
    proc = subprocess.run(
        [
            *(sys.executable, "-c", CHILD, str(path)),
            *(str(tmp_path / "data.npz"), str(tmp_path / "out.npz")),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(tmp_path / "out.npz") as child:
        assert child["y"].shape == (8, 16)
        np.testing.assert_array_equal(child["y"], expected)


@pytest.mark.slow
def test_served_poisson_model_answers_without_a_seed(
    saved_poisson: tuple[ImpactModel, Path, Any], tmp_path: Path
) -> None:
    _, path, X = saved_poisson
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [
                *(sys.executable, "-m", "mlflow", "models", "serve", "-m", str(path)),
                *("--env-manager", "local", "-p", str(port), "--host", "127.0.0.1"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=subprocess_env(f"sqlite:///{tmp_path / 'mlflow.db'}"),
            cwd=tmp_path,
            start_new_session=True,
        )
    handle = Background(server, log, port, server, tmp_path / "unused", log)
    try:
        handle.wait_for_server()
        answers = [handle.post({"inputs": {"X": X.tolist()}}) for _ in range(2)]
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn workers
        server.wait(timeout=30)
    for status, body in answers:
        assert status == 200, body
        counts = np.asarray(body["predictions"]["y"])
        assert counts.shape == (8, 16)
        assert np.all(counts >= 0) and np.array_equal(counts, np.round(counts))
    # Without a seed each request takes the next key of the model's own key.
    first, second = (np.asarray(body["predictions"]["y"]) for _, body in answers)
    assert not np.array_equal(first, second)
