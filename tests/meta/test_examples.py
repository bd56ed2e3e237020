"""Every script in ``examples/`` runs to completion and prints what it promises.

The scripts run once per module in two child processes at a time (most of a run is
single-threaded imports and JAX compilation). Each child imports JAX, NumPyro and
aimz once and then runs its share of the scripts one after the other, each as
``__main__`` (as ``python script.py`` and the docs gallery run them) in its own
working directory, with its own stdout, stderr and exit status. Each test then
checks one script.
"""

from __future__ import annotations

import ast
import importlib.util
import json
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
# These import MLflow or ArviZ on top of what every script imports, so they share the
# second child; the others run in the first. Together the two take about as long.
SECOND_CHILD = {"06_mlflow_log_and_serve.py", "07_model_comparison.py"}

# Runs the scripts of a job file in turn: ``[{script, cwd, stdout, stderr, rc}, ...]``.
# Each script runs as ``__main__`` with ``sys.argv``, ``sys.path[0]`` and the working
# directory that ``python script.py`` gives it; its output goes, at the file
# descriptor level too, to its own files, and its exit status to its ``rc`` file.
RUNNER = """
import json, os, runpy, sys, traceback

jobs = json.loads(open(sys.argv[1], encoding="utf-8").read())
fds = os.dup(1), os.dup(2)
for job in jobs:
    os.chdir(job["cwd"])
    sys.argv = [job["script"]]
    sys.path[0] = os.path.dirname(job["script"])
    out = open(job["stdout"], "w", encoding="utf-8", buffering=1)
    err = open(job["stderr"], "w", encoding="utf-8", buffering=1)
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    sys.stdout, sys.stderr = out, err
    code = 0
    try:
        runpy.run_path(job["script"], run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (exc.code is not None)
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        out.close()
        err.close()
    with open(job["rc"], "w", encoding="utf-8") as f:
        f.write(str(int(code)))
"""


def test_every_example_is_listed_and_documented() -> None:
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert scripts == sorted(EXPECTED)
    for name in scripts:
        tree = ast.parse((EXAMPLES / name).read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), f"{name} has no module docstring"


def _run(scripts: list[str], dirs: dict[str, Path], logs: Path) -> dict[str, object]:
    """Run ``scripts`` in one child process; ``{script: CompletedProcess}``."""
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    files = {
        s: {k: logs / f"{Path(s).stem}.{k}" for k in ("stdout", "stderr", "rc")} for s in scripts
    }
    jobs = [
        {
            "script": str(EXAMPLES / s),
            "cwd": str(dirs[s]),
            **{k: str(v) for k, v in files[s].items()},
        }
        for s in scripts
    ]
    job_file = logs / f"jobs-{Path(scripts[0]).stem}.json"
    job_file.write_text(json.dumps(jobs), encoding="utf-8")
    child = subprocess.run(
        [sys.executable, "-c", RUNNER, str(job_file)],
        cwd=logs,
        env=env,
        capture_output=True,
        text=True,
        timeout=300 * len(scripts),
        check=False,
    )
    results = {}
    for s in scripts:
        out, err, rc = (files[s][k] for k in ("stdout", "stderr", "rc"))
        stdout = out.read_text(encoding="utf-8") if out.exists() else ""
        stderr = err.read_text(encoding="utf-8") if err.exists() else ""
        if rc.exists():
            returncode = int(rc.read_text(encoding="utf-8"))
        else:  # the child died before the script finished
            returncode = child.returncode or -1
            stderr += f"\n[child process exited with {child.returncode}]\n{child.stderr}"
        results[s] = subprocess.CompletedProcess([sys.executable, s], returncode, stdout, stderr)
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, object]]:
    """Run every runnable example (two children at a time); ``{script: (cwd, result)}``."""
    runnable = [s for s in sorted(EXPECTED) if s not in NEEDS or importlib.util.find_spec(NEEDS[s])]
    dirs = {s: tmp_path_factory.mktemp(Path(s).stem) for s in runnable}
    logs = tmp_path_factory.mktemp("example-logs")
    shares = [
        [s for s in runnable if s not in SECOND_CHILD],
        [s for s in runnable if s in SECOND_CHILD],
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(_run, share, dirs, logs) for share in shares if share]
        results = {s: r for f in futures for s, r in f.result().items()}
    return {s: (dirs[s], results[s]) for s in runnable}


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
