"""Namespace contract of the ``aimz`` meta-package: every name is a part's object."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

if importlib.util.find_spec("aimz") is None:  # slim install: only aimz-core
    pytest.skip("the aimz meta-package is not installed", allow_module_level=True)

import aimz
import aimz_core
import aimz_core.data

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("aimz_core", "aimz_io", "aimz_mlflow")

CORE_NAMES = [
    "ImpactModel",
    "KernelSpec",
    "NotFittedError",
    "KernelValidationError",
    "AimzWarning",
    "FitWarning",
    "OutputWarning",
    "PerformanceWarning",
]
IO_NAMES = [
    "open_tree",
    "summarize_effect",
    "format_summary",
    "effect_tree",
    "list_incomplete",
    "remove_incomplete",
    "IncompleteStore",
    "loo",
    "ppc_subsample",
    "summarize_group",
    "summarize_predictive",
]
MLFLOW_NAMES = [
    "save_model",
    "log_model",
    "load_model",
    "autolog",
    "get_default_pip_requirements",
    "get_default_conda_env",
    "FLAVOR_NAME",
    "SERIALIZATION_FORMAT_CLOUDPICKLE",
    "SUPPORTED_SERIALIZATION_FORMATS",
    "_load_pyfunc",
    "_AimzModelWrapper",
]


@pytest.mark.parametrize("name", CORE_NAMES)
def test_top_level_names_are_core_objects(name: str) -> None:
    assert getattr(aimz, name) is getattr(aimz_core, name)
    assert name in aimz.__all__


@pytest.mark.parametrize("name", IO_NAMES)
def test_top_level_names_are_io_objects(name: str) -> None:
    import aimz_io

    assert getattr(aimz, name) is getattr(aimz_io, name)
    assert name in aimz.__all__
    assert name in aimz_io.__all__
    assert name in dir(aimz)


def test_import_aimz_is_lazy_and_fast() -> None:
    """``import aimz`` loads no I/O stack and adds little to NumPy (which the core needs).

    The bound is on aimz's own share, in CPU time (``time.process_time``), so that a
    busy shared machine does not fail it: wall time there measures the other
    processes. It is relative to NumPy's import in the same process, so that it holds
    on a slow CPU too: a 2 GHz Xeon took 0.10-0.12 s of CPU for aimz and 0.23-0.26 s
    for NumPy (bytecode cached), where the former bound of 0.1 s failed. Importing
    JAX, xarray or MLflow would cost several times NumPy's import.
    """
    code = (
        "import sys, time\n"
        "t0 = time.process_time()\n"
        "import numpy\n"
        "t1 = time.process_time()\n"
        "import aimz\n"
        "t2 = time.process_time()\n"
        "heavy = ('aimz_io', 'xarray', 'zarr', 'pandas', 'mlflow', 'jax')\n"
        "loaded = sorted(m for m in heavy if m in sys.modules)\n"
        "assert not loaded, loaded\n"
        "print(t1 - t0, t2 - t1)\n"
    )
    # Best of three: the first run may compile bytecode.
    runs = [
        tuple(
            float(v)
            for v in subprocess.run(
                [sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, text=True
            ).stdout.split()
        )
        for _ in range(3)
    ]
    numpy_s, aimz_s = min(runs, key=lambda run: run[1])
    assert aimz_s < max(0.1, numpy_s), runs


def test_every_public_name_is_defined_by_a_part() -> None:
    for name in aimz.__all__:
        if name == "__version__":
            continue
        obj = getattr(aimz, name)
        module = sys.modules[obj.__module__]
        assert obj.__module__.split(".")[0] in PARTS, (name, obj.__module__)
        assert getattr(module, obj.__name__) is obj, name


def test_version_is_the_installed_distribution() -> None:
    assert aimz.__version__ == importlib.metadata.version("aimz")


def test_submodules_reexport_core_objects() -> None:
    import aimz.model
    import aimz.utils.data

    assert aimz.model.ImpactModel is aimz_core.ImpactModel
    assert aimz.model.KernelSpec is aimz_core.KernelSpec
    assert aimz.utils.data.ArrayDataset is aimz_core.data.ArrayDataset
    assert aimz.utils.data.ArrayLoader is aimz_core.data.ArrayLoader
    assert set(aimz.model.__all__) == {"ImpactModel", "KernelSpec"}
    assert set(aimz.utils.data.__all__) == {"ArrayDataset", "ArrayLoader"}


def test_null_handler_on_aimz_logger() -> None:
    import logging

    handlers = logging.getLogger("aimz").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


def test_mlflow_namespace_is_the_flavor() -> None:
    if not (importlib.util.find_spec("mlflow") and importlib.util.find_spec("aimz_mlflow")):
        pytest.skip("mlflow or aimz-mlflow is not installed")
    import aimz_mlflow

    if not all(hasattr(aimz_mlflow, name) for name in MLFLOW_NAMES):
        pytest.skip("aimz_mlflow does not define the whole flavor yet")
    import aimz.mlflow

    assert aimz.mlflow is aimz.__getattr__("mlflow")
    for name in MLFLOW_NAMES:
        assert getattr(aimz.mlflow, name) is getattr(aimz_mlflow, name), name
    public = {name for name in MLFLOW_NAMES if not name.startswith("_")}
    assert set(aimz.mlflow.__all__) == public


def test_import_aimz_does_not_import_mlflow() -> None:
    code = (
        "import sys, aimz\n"
        "assert 'mlflow' in dir(aimz)\n"
        "loaded = sorted(m for m in ('mlflow', 'aimz_mlflow', 'aimz.mlflow')"
        " if m in sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_compatible_window_matches_pyproject() -> None:
    pyproject = tomllib.loads((ROOT / "packages/aimz/pyproject.toml").read_text())
    required = {
        req.name: req.specifier
        for req in map(Requirement, pyproject["project"]["dependencies"])
        if req.name in aimz._COMPATIBLE
    }
    window = {
        name: Requirement(f"{name}>={low},<{high}").specifier
        for name, (low, high) in aimz._COMPATIBLE.items()
    }
    assert window == required


def test_compatible_window_contains_workspace_versions() -> None:
    for name, (low, high) in aimz._COMPATIBLE.items():
        path = ROOT / "packages" / name / "pyproject.toml"
        pyproject = tomllib.loads(path.read_text())
        release = aimz._release(pyproject["project"]["version"])
        assert aimz._release(low) <= release < aimz._release(high), name


def test_skew_guard_refuses_out_of_range_part() -> None:
    versions = {"aimz-core": "0.2.1", "aimz-io": "0.1.0", "aimz-mlflow": "0.1.0"}
    with pytest.raises(ImportError) as excinfo:
        aimz._check_parts(versions.__getitem__)
    message = str(excinfo.value)
    assert "aimz-core>=0.1,<0.2" in message
    assert "aimz-core 0.2.1 is installed" in message
    assert 'pip install "aimz-core>=0.1,<0.2"' in message


@pytest.mark.parametrize("installed", ["0.0.9", "0.2.0", "0.2.0rc1", "1.0"])
def test_skew_guard_window_edges(installed: str) -> None:
    versions = {"aimz-core": "0.1.0", "aimz-io": installed, "aimz-mlflow": "0.1.5"}
    with pytest.raises(ImportError, match=f"aimz-io {installed} is installed"):
        aimz._check_parts(versions.__getitem__)


def test_skew_guard_accepts_compatible_parts() -> None:
    versions = {"aimz-core": "0.1.0", "aimz-io": "0.1.7.post1", "aimz-mlflow": "0.1"}
    aimz._check_parts(versions.__getitem__)


def test_skew_guard_names_meta_package_for_missing_part() -> None:
    def version(name: str) -> str:
        if name == "aimz-io":
            raise importlib.metadata.PackageNotFoundError(name)
        return "0.1.0"

    with pytest.raises(ImportError) as excinfo:
        aimz._check_parts(version)
    assert str(excinfo.value) == "aimz requires aimz-io; install it with `pip install aimz`."


def test_skew_guard_runs_at_import_time() -> None:
    code = (
        "import importlib.metadata as md\n"
        "real = md.version\n"
        "md.version = lambda n: '0.3.0' if n == 'aimz-mlflow' else real(n)\n"
        "try:\n"
        "    import aimz\n"
        "except ImportError as e:\n"
        "    print(e)\n"
        "else:\n"
        "    raise SystemExit('import aimz did not refuse a skewed aimz-mlflow')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert "aimz-mlflow 0.3.0 is installed" in result.stdout
