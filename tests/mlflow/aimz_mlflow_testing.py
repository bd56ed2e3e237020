"""Helpers shared by the MLflow flavor tests (constants, model factory, processes)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# MLflow must never reach the network from the tests (telemetry is on by default).
OFFLINE_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
os.environ.update(OFFLINE_ENV)

NUM_STEPS = 100
NUM_SAMPLES = 50
SERVER_TIMEOUT_S = 150
FRESH_KEY_SEED = 7

FRESH_SCRIPT = """
import sys
import jax
import numpy as np
import aimz_mlflow

uri, data_file, out_file, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
model = aimz_mlflow.load_model(uri)
X = np.load(data_file)["X"]
draws = model.predict_on_batch(X, rng_key=jax.random.key(seed), return_datatree=False)
posterior = {f"posterior/{k}": np.asarray(v) for k, v in model.posterior.items()}
np.savez(out_file, **{f"draws/{k}": v for k, v in draws.items()}, **posterior)
"""


@dataclass
class Data:
    X: Any
    y: Any


@dataclass
class Background:
    """Out-of-process checks started right after the model is logged."""

    server: subprocess.Popen
    server_log: Path
    port: int
    fresh: subprocess.Popen
    fresh_out: Path
    fresh_log: Path

    def wait_for_server(self) -> None:
        deadline = time.monotonic() + SERVER_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                pytest.fail(f"mlflow models serve exited early:\n{self.server_log.read_text()}")
            try:
                with urllib.request.urlopen(self.url("/ping"), timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1.0)
        pytest.fail(f"mlflow models serve did not answer /ping:\n{self.server_log.read_text()}")

    def url(self, route: str) -> str:
        return f"http://127.0.0.1:{self.port}{route}"

    def post(self, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            self.url("/invocations"),
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env(tracking_uri: str) -> dict[str, str]:
    """Environment of the test subprocesses: offline, this tracking store, this venv.

    ``mlflow models serve`` starts ``uvicorn`` from ``PATH``, so the directory of the
    running interpreter goes first (the tests need not run under ``uv run``).
    """
    env = {**os.environ, **OFFLINE_ENV, "MLFLOW_TRACKING_URI": tracking_uri}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def make_model(seed: int = 0, kernel: Any = None) -> Any:
    """A fresh, unfitted SVI model over ``kernel`` (default: the linear test kernel)."""
    import jax
    import numpyro
    from aimz_core import ImpactModel
    from aimz_mlflow_test_kernels import linear_kernel
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal

    kernel = linear_kernel if kernel is None else kernel
    svi = SVI(kernel, AutoNormal(kernel), numpyro.optim.Adam(0.05), Trace_ELBO())
    return ImpactModel(kernel, rng_key=jax.random.key(seed), inference=svi)
