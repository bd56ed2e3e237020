"""A slim install (only the aimz-core wheel) pulls in no I/O or MLflow dependency."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("xarray", "zarr", "dask", "pandas", "mlflow")
# Variables that would point uv or Python at the workspace environment.
LEAKY = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "UV_PROJECT_ENVIRONMENT"}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not on PATH"),
]


def run(*args: str | Path, cwd: Path = ROOT) -> str:
    env = {k: v for k, v in os.environ.items() if k not in LEAKY}
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_core_wheel_installs_without_io_dependencies(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run("uv", "build", "--package", "aimz-core", "--wheel", "-o", dist)
    (wheel,) = dist.glob("aimz_core-*.whl")

    # The wheel's dependencies come from the index, constrained to the versions of this
    # environment so that the uv cache serves them and the test stays fast.
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(
        "\n".join(
            f"{d.metadata['Name']}=={d.version}"
            for d in importlib.metadata.distributions()
            if d.metadata["Name"] and not d.metadata["Name"].startswith("aimz")
        )
    )
    venv = tmp_path / "venv"
    run("uv", "venv", "--python", sys.executable, venv)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    run("uv", "pip", "install", "--python", python, "-c", constraints, wheel)

    listing = run("uv", "pip", "list", "--python", python, "--format", "json")
    installed = {entry["name"].lower() for entry in json.loads(listing)}
    assert "aimz-core" in installed
    assert not installed & {"aimz-io", "aimz-mlflow", "aimz"}
    assert not installed & set(HEAVY)

    code = (
        "import importlib.util, json, sys\n"
        "import aimz_core\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps({\n"
        "    'imported': sorted(m for m in sys.modules if m.split('.')[0] in heavy),\n"
        "    'findable': sorted(m for m in heavy if importlib.util.find_spec(m)),\n"
        "    'file': aimz_core.__file__,\n"
        "}))\n"
    )
    report = json.loads(run(python, "-I", "-c", code, cwd=tmp_path))
    assert report["imported"] == []
    assert report["findable"] == []
    assert Path(report["file"]).is_relative_to(venv)
