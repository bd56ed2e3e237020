"""Every script in ``examples/`` runs to completion and prints what it promises.

The scripts run as subprocesses, two at a time (most of each run is single-threaded
JAX compilation and imports), once per module; each test then checks one script.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

# script -> a line fragment its output must contain
EXPECTED = {
    "01_linear_regression_svi.py": "posterior mean of w:",
    "02_mcmc_sample.py": "MCMC posterior: 300 draws from 2 chains",
    "03_interventions_effects.py": "effect of do(treatment=1) vs do(treatment=0)",
    "04_posterior_samples_injection.py": "injected 1000 draws of w; fitted: True",
    "05_streaming_large_prediction.py": "xarray.open_zarr sees:",
    "06_mlflow_log_and_serve.py": "mlflow models serve -m models:/",
    "07_model_comparison.py": "elpd_loo difference (curve - line):",
}
NEEDS = {
    "03_interventions_effects.py": "aimz_io",
    "05_streaming_large_prediction.py": "aimz_io",
    "06_mlflow_log_and_serve.py": "aimz_mlflow",
    "07_model_comparison.py": "aimz_io",
}


def test_every_example_is_listed_and_documented() -> None:
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert scripts == sorted(EXPECTED)
    for name in scripts:
        tree = ast.parse((EXAMPLES / name).read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), f"{name} has no module docstring"


def _run(script: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, object]]:
    """Run every runnable example (two at a time); ``{script: (cwd, result)}``."""
    runnable = [s for s in sorted(EXPECTED) if s not in NEEDS or importlib.util.find_spec(NEEDS[s])]
    dirs = {s: tmp_path_factory.mktemp(Path(s).stem) for s in runnable}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {s: pool.submit(_run, s, dirs[s]) for s in runnable}
        return {s: (dirs[s], f.result()) for s, f in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs(script: str, runs: dict) -> None:
    if script not in runs:
        pytest.skip(f"{script} needs {NEEDS[script]}")
    cwd, proc = runs[script]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert EXPECTED[script] in proc.stdout, proc.stdout[-3000:]
    # Nothing is left behind in the working directory.
    assert list(cwd.iterdir()) == []
