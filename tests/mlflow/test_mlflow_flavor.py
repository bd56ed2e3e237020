"""Save, log and load through real MLflow (SQLite tracking store), plus trust checks."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import aimz_mlflow
import jax
import numpy as np
import pytest
import yaml
from aimz_core import ImpactModel
from aimz_mlflow.trust import file_checksum
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from packaging.requirements import Requirement

AIMZ_DISTS = {"aimz-core", "aimz-io", "aimz-mlflow"}


def edit_mlmodel(model_dir: Path, edit: Any) -> None:
    path = model_dir / "MLmodel"
    conf = yaml.safe_load(path.read_text())
    edit(conf)
    path.write_text(yaml.safe_dump(conf))


def test_constants_and_default_requirements() -> None:
    assert aimz_mlflow.FLAVOR_NAME == "aimz"
    assert aimz_mlflow.SERIALIZATION_FORMAT_CLOUDPICKLE == "cloudpickle"
    assert aimz_mlflow.SUPPORTED_SERIALIZATION_FORMATS == ["cloudpickle"]
    reqs = [Requirement(r) for r in aimz_mlflow.get_default_pip_requirements()]
    assert {r.name for r in reqs} == AIMZ_DISTS | {"jax", "numpyro"}
    for req in reqs:
        assert str(req.specifier) == f"=={importlib.metadata.version(req.name)}"
    with_pickle = aimz_mlflow.get_default_pip_requirements(include_cloudpickle=True)
    assert f"cloudpickle=={importlib.metadata.version('cloudpickle')}" in with_pickle
    pip_section = aimz_mlflow.get_default_conda_env()["dependencies"][-1]["pip"]
    assert set(aimz_mlflow.get_default_pip_requirements()) <= set(pip_section)


def test_logged_model_layout(logged: Any, local_model_dir: Path) -> None:
    files = {p.name for p in local_model_dir.iterdir()}
    assert {
        "MLmodel",
        "model.pkl",
        "conda.yaml",
        "python_env.yaml",
        "requirements.txt",
        "input_example.json",
        "serving_input_example.json",
        "code",
    } <= files
    mlmodel = Model.load(str(local_model_dir / "MLmodel"))
    pyfunc_conf = mlmodel.flavors["python_function"]
    assert pyfunc_conf["loader_module"] == "aimz_mlflow"
    assert pyfunc_conf["data"] == "model.pkl"
    assert pyfunc_conf["code"] == "code"
    conf = mlmodel.flavors["aimz"]
    assert conf["pickled_model"] == "model.pkl"
    assert conf["aimz_version"] == importlib.metadata.version("aimz-core")
    assert conf["model_class"] == "aimz_core.impact_model.ImpactModel"
    assert conf["serialization_format"] == "cloudpickle"
    assert conf["checksums"] == {
        rel: file_checksum(local_model_dir / rel)
        for rel in ("model.pkl", "code/aimz_mlflow_test_kernels.py")
    }
    # Signature inferred by predicting on the example: draws x variable rows.
    assert [s.name for s in mlmodel.signature.inputs.inputs] == ["X"]
    assert mlmodel.signature.inputs.inputs[0].shape == (-1, 3)
    outputs = {s.name: s.shape for s in mlmodel.signature.outputs.inputs}
    assert outputs == {"y": (-1, -1), "mu": (-1, -1)}
    params = {p.name for p in mlmodel.signature.params.params}
    assert {"seed", "intervention", "return_datatree", "in_sample", "return_sites"} <= params
    requirements = (local_model_dir / "requirements.txt").read_text().split()
    pinned = {Requirement(r).name: str(Requirement(r).specifier) for r in requirements}
    for name in AIMZ_DISTS | {"jax", "numpyro", "cloudpickle", "mlflow"}:
        assert pinned[name] == f"=={importlib.metadata.version(name)}", name
    assert not any(r.startswith("-e") for r in requirements)
    assert logged.model_id.startswith("m-")


def test_load_model_keeps_posterior_and_draws(logged: Any, fitted: ImpactModel, data: Any) -> None:
    loaded = aimz_mlflow.load_model(logged.model_uri)
    assert isinstance(loaded, ImpactModel) and loaded.is_fitted()
    assert loaded.posterior.keys() == fitted.posterior.keys()
    for site, value in fitted.posterior.items():
        restored = loaded.posterior[site]
        assert restored.dtype == value.dtype
        assert np.array_equal(np.asarray(restored), np.asarray(value)), site
    assert loaded.kernel_spec == fitted.kernel_spec
    assert np.array_equal(jax.random.key_data(loaded.rng_key), jax.random.key_data(fitted.rng_key))
    key = jax.random.key(11)
    expected = fitted.predict_on_batch(data.X, rng_key=key, return_datatree=False)
    actual = loaded.predict_on_batch(data.X, rng_key=key, return_datatree=False)
    for site in expected:
        assert np.array_equal(actual[site], expected[site]), site


def test_load_model_accepts_pickle_path(local_model_dir: Path, fitted: ImpactModel) -> None:
    loaded = aimz_mlflow.load_model(local_model_dir / "model.pkl")
    assert np.array_equal(loaded.posterior["w"], fitted.posterior["w"])


def test_save_model_refuses_existing_target(fitted: ImpactModel, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file.txt").write_text("x")
    with pytest.raises(MlflowException, match="already exists"):
        aimz_mlflow.save_model(fitted, tmp_path / "taken", pip_requirements=[])
    with pytest.raises(TypeError, match="ImpactModel"):
        aimz_mlflow.save_model(object(), tmp_path / "other")


def test_tampered_model_is_refused(local_model_dir: Path, tmp_path: Path) -> None:
    import mlflow

    changed = shutil.copytree(local_model_dir, tmp_path / "changed")
    with open(changed / "model.pkl", "ab") as f:
        f.write(b"\0")
    for load in (aimz_mlflow.load_model, mlflow.pyfunc.load_model):
        with pytest.raises(MlflowException, match=r"checksums.*'model\.pkl' has sha256:"):
            load(str(changed))

    added = shutil.copytree(local_model_dir, tmp_path / "added")
    (added / "code" / "numpy.py").write_text("raise SystemExit('shadowed')\n")
    with pytest.raises(MlflowException, match=r"'code/numpy\.py' was added after saving"):
        aimz_mlflow.load_model(str(added))

    missing = shutil.copytree(local_model_dir, tmp_path / "missing")
    (missing / "code" / "aimz_mlflow_test_kernels.py").unlink()
    with pytest.raises(MlflowException, match="is missing"):
        aimz_mlflow.load_model(str(missing))


def test_pickle_switch_is_honoured(
    local_model_dir: Path, fitted: ImpactModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    for load in (aimz_mlflow.load_model, mlflow.pyfunc.load_model):
        with pytest.raises(MlflowException, match="MLFLOW_ALLOW_PICKLE_DESERIALIZATION"):
            load(str(local_model_dir))
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    assert np.array_equal(
        aimz_mlflow.load_model(str(local_model_dir)).posterior["b"], fitted.posterior["b"]
    )


def test_unknown_serialization_format_is_refused(local_model_dir: Path, tmp_path: Path) -> None:
    model_dir = shutil.copytree(local_model_dir, tmp_path / "model")
    edit_mlmodel(model_dir, lambda c: c["flavors"]["aimz"].update(serialization_format="skops"))
    with pytest.raises(MlflowException, match="Unrecognized serialization format 'skops'"):
        aimz_mlflow.load_model(str(model_dir))


@pytest.mark.skipif(importlib.util.find_spec("aimz") is None, reason="needs the aimz package")
def test_old_loader_module_aimz_mlflow_still_loads(
    local_model_dir: Path,
    tmp_path: Path,
    fitted: ImpactModel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Models saved by the single-package layout name ``aimz.mlflow`` as loader module."""
    import mlflow

    model_dir = shutil.copytree(local_model_dir, tmp_path / "old")

    def to_old_layout(conf: dict) -> None:
        conf["flavors"]["python_function"]["loader_module"] = "aimz.mlflow"
        del conf["flavors"]["aimz"]["checksums"]  # older versions wrote none

    edit_mlmodel(model_dir, to_old_layout)
    with caplog.at_level(logging.WARNING, logger="aimz_mlflow"):
        pyfunc_model = mlflow.pyfunc.load_model(str(model_dir))
    assert pyfunc_model.loader_module == "aimz.mlflow"
    raw = pyfunc_model.get_raw_model()
    assert isinstance(raw, ImpactModel)
    assert np.array_equal(raw.posterior["w"], fitted.posterior["w"])
    assert "records no file checksums" in caplog.text


PLANTED = "aimz_planted_module"


def _loaders() -> tuple[Any, ...]:
    import mlflow

    return (aimz_mlflow.load_model, mlflow.pyfunc.load_model)


def _assert_not_importable(name: str) -> None:
    assert name not in sys.modules
    assert importlib.util.find_spec(name) is None


def test_refused_load_leaves_sys_path_and_code_untouched(
    local_model_dir: Path, tmp_path: Path
) -> None:
    """Verify first, then touch sys.path: a refused model's code is not importable."""
    planted = shutil.copytree(local_model_dir, tmp_path / "planted")
    (planted / "code" / f"{PLANTED}.py").write_text("raise SystemExit('planted code ran')\n")
    changed = shutil.copytree(local_model_dir, tmp_path / "changed")
    with open(changed / "code" / "aimz_mlflow_test_kernels.py", "a") as f:
        f.write("\nraise SystemExit('tampered code ran')\n")
    for model_dir, match in ((planted, "was added after saving"), (changed, "has sha256:")):
        for load in _loaders():
            before = list(sys.path)
            with pytest.raises(MlflowException, match=match):
                load(str(model_dir))
            assert sys.path == before, load.__module__
            _assert_not_importable(PLANTED)


def test_pickle_switch_off_leaves_sys_path_untouched(
    local_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    for load in _loaders():
        before = list(sys.path)
        with pytest.raises(MlflowException, match="MLFLOW_ALLOW_PICKLE_DESERIALIZATION"):
            load(str(local_model_dir))
        assert sys.path == before, load.__module__


def test_failed_unpickle_forgets_the_model_code(local_model_dir: Path, tmp_path: Path) -> None:
    """A verified model whose unpickling fails: sys.path and sys.modules are restored."""
    model_dir = shutil.copytree(local_model_dir, tmp_path / "model")
    (model_dir / "code" / f"{PLANTED}.py").write_text(
        "def boom():\n    raise RuntimeError('unpickling failed')\n"
    )
    # GLOBAL aimz_planted_module.boom, called with no arguments.
    (model_dir / "model.pkl").write_bytes(f"c{PLANTED}\nboom\n(tR.".encode())

    def rechecksum(conf: dict[str, Any]) -> None:
        sums = conf["flavors"]["aimz"]["checksums"]
        for rel in ("model.pkl", f"code/{PLANTED}.py"):
            sums[rel] = file_checksum(model_dir / rel)

    edit_mlmodel(model_dir, rechecksum)
    for load in _loaders():
        before = list(sys.path)
        with pytest.raises(RuntimeError, match="unpickling failed"):
            load(str(model_dir))
        assert sys.path == before, load.__module__
        _assert_not_importable(PLANTED)
