"""Save, log and load aimz models as MLflow models (the ``aimz`` flavor)."""

from __future__ import annotations

import copy
import importlib.metadata
import logging
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import cloudpickle
import yaml
from mlflow import pyfunc
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelInputExample, ModelSignature
from mlflow.models.model import MLMODEL_FILE_NAME, ModelInfo
from mlflow.models.utils import _save_example
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.tracking._model_registry import DEFAULT_AWAIT_MAX_SLEEP_SECONDS
from mlflow.tracking.artifact_utils import _download_artifact_from_uri
from mlflow.utils.environment import (
    _CONDA_ENV_FILE_NAME,
    _CONSTRAINTS_FILE_NAME,
    _PYTHON_ENV_FILE_NAME,
    _REQUIREMENTS_FILE_NAME,
    _process_conda_env,
    _process_pip_requirements,
    _PythonEnv,
    _validate_env_arguments,
)
from mlflow.utils.file_utils import get_total_file_size, write_to
from mlflow.utils.model_utils import (
    _add_code_from_conf_to_system_path,
    _copy_extra_files,
    _get_flavor_configuration,
    _validate_and_copy_code_paths,
    _validate_and_prepare_target_save_path,
)

from aimz_mlflow.environment import (
    get_default_pip_requirements,
    infer_requirements,
    requirements_key,
)
from aimz_mlflow.pyfunc import _AimzModelWrapper, infer_pyfunc_signature, params_schema
from aimz_mlflow.trust import (
    check_pickle_allowed,
    compute_checksums,
    model_files,
    verify_checksums,
)

_logger = logging.getLogger(__name__)

FLAVOR_NAME = "aimz"
SERIALIZATION_FORMAT_CLOUDPICKLE = "cloudpickle"
SUPPORTED_SERIALIZATION_FORMATS = [SERIALIZATION_FORMAT_CLOUDPICKLE]

# pyfunc loader module written into new models. Models saved by the single-package
# aimz (``loader_module: aimz.mlflow``) load through the ``aimz`` meta-package, which
# re-exports ``_load_pyfunc`` from here.
LOADER_MODULE = "aimz_mlflow"
_MODEL_FILE = "model.pkl"


def _aimz_version() -> str:
    try:
        return importlib.metadata.version("aimz-core")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source tree
        return "unknown"


def _check_model(model: Any) -> None:
    from aimz_core import ImpactModel

    if not isinstance(model, ImpactModel):
        raise TypeError(
            f"`model` must be an aimz ImpactModel, got {type(model).__name__}. Save other "
            "models with their own MLflow flavor."
        )


def _infer_signature(model: Any, example: Any) -> ModelSignature | None:
    """Infer the signature by running the pyfunc wrapper on the saved input example."""
    try:
        return infer_pyfunc_signature(
            model, copy.deepcopy(example.inference_data), example.inference_params
        )
    except Exception as err:  # a failed inference must not fail saving
        _logger.warning(
            "Could not infer the model signature from the input example (%s: %s); the "
            "model is saved without input/output schema. Pass `signature=` to set one.",
            type(err).__name__,
            err,
        )
        return None


def save_model(
    model: Any,
    path: str | os.PathLike[str],
    conda_env: dict[str, Any] | str | None = None,
    code_paths: list[str] | None = None,
    mlflow_model: Model | None = None,
    signature: ModelSignature | bool | None = None,
    input_example: ModelInputExample | None = None,
    pip_requirements: list[str] | str | None = None,
    extra_pip_requirements: list[str] | str | None = None,
    metadata: dict[str, Any] | None = None,
    extra_files: list[str] | None = None,
) -> None:
    """Save an :class:`~aimz_core.ImpactModel` as an MLflow model in a local directory.

    Writes ``model.pkl`` (the model pickled with cloudpickle: kernel, inference
    object and state, posterior samples, kernel spec, ``rng_key``), ``MLmodel`` with
    the ``python_function`` and ``aimz`` flavors (including SHA-256 checksums of the
    files that loading unpickles or runs), and the environment files ``conda.yaml``,
    ``python_env.yaml`` and ``requirements.txt``.

    Args:
        model: The model to save (usually fitted).
        path: Target directory; it must not exist (or be empty).
        conda_env: A conda environment (dict or path to a YAML file).
        code_paths: Local files or directories copied into the model and put on
            ``sys.path`` when it loads (for example the module defining the kernel).
        mlflow_model: The :class:`mlflow.models.Model` the flavor is added to.
        signature: The model signature. ``None`` infers it from ``input_example`` by
            running the pyfunc predict (without an example, only the params
            schema is saved); ``False`` saves no signature at all, so pyfunc then
            ignores ``params``. A signature without params gets the aimz params
            schema (``seed``, ``intervention``, ...), so serving accepts them.
        input_example: An example input (dict of arrays, NumPy array or DataFrame),
            optionally as ``(input, params)``.
        pip_requirements: Pip requirements replacing the inferred ones.
        extra_pip_requirements: Pip requirements added to the inferred ones.
        metadata: Custom metadata written to ``MLmodel``.
        extra_files: Extra files copied into the model (checksummed as well).

    Raises:
        TypeError: If ``model`` is not an ``ImpactModel``.
        MlflowException: If ``path`` exists and is not empty, or on invalid
            environment arguments.

    Example:
        >>> import os, tempfile
        >>> import aimz_mlflow
        >>> from aimz_core.testing import fitted_linreg, linreg_data
        >>> X, _ = linreg_data(5)
        >>> path = os.path.join(tempfile.mkdtemp(), "my_model")
        >>> aimz_mlflow.save_model(
        ...     fitted_linreg(num_draws=10), path, input_example={"X": X},
        ...     pip_requirements=["aimz-mlflow"],
        ... )
        >>> sorted(os.listdir(path))  # doctest: +NORMALIZE_WHITESPACE
        ['MLmodel', 'conda.yaml', 'input_example.json', 'model.pkl', 'python_env.yaml',
         'requirements.txt', 'serving_input_example.json']
    """
    _check_model(model)
    _validate_env_arguments(conda_env, pip_requirements, extra_pip_requirements)
    path = os.path.abspath(os.fspath(path))
    _validate_and_prepare_target_save_path(path)
    code_dir_subpath = _validate_and_copy_code_paths(code_paths, path)

    if mlflow_model is None:
        mlflow_model = Model()
    saved_example = _save_example(mlflow_model, input_example, path)
    if signature is False:
        signature = None
    elif signature is None:
        if saved_example is not None:
            signature = _infer_signature(model, saved_example)
        if signature is None:
            signature = ModelSignature(params=params_schema())
    elif signature.params is None:
        signature = copy.copy(signature)
        signature.params = params_schema()
    if signature is not None:
        mlflow_model.signature = signature
    if metadata is not None:
        mlflow_model.metadata = metadata

    with open(os.path.join(path, _MODEL_FILE), "wb") as f:
        cloudpickle.dump(model, f, protocol=pickle.DEFAULT_PROTOCOL)
    extra_files_config = _copy_extra_files(extra_files, path)

    flavor_conf: dict[str, Any] = {
        "pickled_model": _MODEL_FILE,
        "aimz_version": _aimz_version(),
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "serialization_format": SERIALIZATION_FORMAT_CLOUDPICKLE,
        "code": code_dir_subpath,
        **extra_files_config,
    }
    flavor_conf["checksums"] = compute_checksums(path, model_files(path, flavor_conf))

    pyfunc.add_to_model(
        mlflow_model,
        loader_module=LOADER_MODULE,
        data=_MODEL_FILE,
        conda_env=_CONDA_ENV_FILE_NAME,
        python_env=_PYTHON_ENV_FILE_NAME,
        code=code_dir_subpath,
        # Declared so that ``mlflow.pyfunc.load_model(..., model_config=...)`` and
        # ``MLFLOW_PYFUNC_INFERENCE_CONFIG`` may set it; None: AIMZ_SERVE_MAX_ROWS or
        # the default applies.
        model_config={"max_rows": None},
    )
    mlflow_model.add_flavor(FLAVOR_NAME, **flavor_conf)
    if size := get_total_file_size(path):
        mlflow_model.model_size_bytes = size
    mlflow_model.save(os.path.join(path, MLMODEL_FILE_NAME))

    if conda_env is None:
        if pip_requirements is None:
            default_reqs = get_default_pip_requirements(include_cloudpickle=True)
            # Needs the MLmodel file written above: MLflow loads the model in a
            # subprocess and records what it imports.
            key = requirements_key(model, code_paths, saved_example is not None)
            inferred = infer_requirements(path, FLAVOR_NAME, fallback=default_reqs, key=key)
            default_reqs = sorted(set(inferred).union(default_reqs))
        else:
            default_reqs = None
        conda_env, pip_requirements, pip_constraints = _process_pip_requirements(
            default_reqs, pip_requirements, extra_pip_requirements
        )
    else:
        conda_env, pip_requirements, pip_constraints = _process_conda_env(conda_env)

    with open(os.path.join(path, _CONDA_ENV_FILE_NAME), "w") as f:
        yaml.safe_dump(conda_env, stream=f, default_flow_style=False)
    if pip_constraints:
        write_to(os.path.join(path, _CONSTRAINTS_FILE_NAME), "\n".join(pip_constraints))
    write_to(os.path.join(path, _REQUIREMENTS_FILE_NAME), "\n".join(pip_requirements))
    _PythonEnv.current().to_yaml(os.path.join(path, _PYTHON_ENV_FILE_NAME))


def log_model(
    model: Any,
    artifact_path: str | None = None,
    conda_env: dict[str, Any] | str | None = None,
    code_paths: list[str] | None = None,
    registered_model_name: str | None = None,
    signature: ModelSignature | bool | None = None,
    input_example: ModelInputExample | None = None,
    await_registration_for: int = DEFAULT_AWAIT_MAX_SLEEP_SECONDS,
    pip_requirements: list[str] | str | None = None,
    extra_pip_requirements: list[str] | str | None = None,
    metadata: dict[str, Any] | None = None,
    extra_files: list[str] | None = None,
    name: str | None = None,
    params: dict[str, Any] | None = None,
    tags: dict[str, Any] | None = None,
    model_type: str | None = None,
    step: int = 0,
    model_id: str | None = None,
    **kwargs: Any,
) -> ModelInfo:
    """Log an :class:`~aimz_core.ImpactModel` as an MLflow ``LoggedModel``.

    A thin call of :meth:`mlflow.models.Model.log` with this flavor; the arguments
    of :func:`save_model` apply. A run is started when none is active.

    Args:
        model: The model to log.
        artifact_path: Deprecated by MLflow 3; use ``name``.
        conda_env: See :func:`save_model`.
        code_paths: See :func:`save_model`.
        registered_model_name: Also register the model under this name.
        signature: See :func:`save_model`.
        input_example: See :func:`save_model`.
        await_registration_for: Seconds to wait for the registered version.
        pip_requirements: See :func:`save_model`.
        extra_pip_requirements: See :func:`save_model`.
        metadata: See :func:`save_model`.
        extra_files: See :func:`save_model`.
        name: Name of the logged model.
        params: Parameters recorded on the logged model.
        tags: Tags recorded on the logged model.
        model_type: Type of the logged model.
        step: Training step the model belongs to.
        model_id: Log into an existing ``LoggedModel``.
        **kwargs: Passed to :meth:`mlflow.models.Model.log`.

    Returns:
        The :class:`~mlflow.models.model.ModelInfo` (``model_uri``, ``model_id``, ...).

    Example:
        >>> import tempfile
        >>> import mlflow, aimz_mlflow
        >>> from aimz_core.testing import fitted_linreg
        >>> mlflow.set_tracking_uri(f"sqlite:///{tempfile.mkdtemp()}/mlflow.db")
        >>> _ = mlflow.set_experiment("aimz-example")  # a fresh store: its own experiment
        >>> with mlflow.start_run():
        ...     info = aimz_mlflow.log_model(
        ...         fitted_linreg(num_draws=10), name="model", pip_requirements=["aimz-mlflow"]
        ...     )
        >>> info.model_uri.startswith("models:/")
        True
        >>> aimz_mlflow.load_model(info.model_uri).is_fitted()
        True
    """
    import aimz_mlflow

    return Model.log(
        artifact_path=artifact_path,
        name=name,
        flavor=aimz_mlflow,
        model=model,
        conda_env=conda_env,
        code_paths=code_paths,
        registered_model_name=registered_model_name,
        signature=signature,
        input_example=input_example,
        await_registration_for=await_registration_for,
        pip_requirements=pip_requirements,
        extra_pip_requirements=extra_pip_requirements,
        metadata=metadata,
        extra_files=extra_files,
        params=params,
        tags=tags,
        model_type=model_type,
        step=step,
        model_id=model_id,
        **kwargs,
    )


def _model_dir(local_path: str) -> str:
    return os.path.dirname(local_path) if os.path.isfile(local_path) else local_path


def _flavor_conf(model_dir: str) -> dict[str, Any]:
    return _get_flavor_configuration(model_path=model_dir, flavor_name=FLAVOR_NAME)


def _verify(model_dir: str, conf: dict[str, Any]) -> None:
    """Run every check that must pass before any of the model's code runs."""
    fmt = conf.get("serialization_format", SERIALIZATION_FORMAT_CLOUDPICKLE)
    if fmt not in SUPPORTED_SERIALIZATION_FORMATS:
        raise MlflowException(
            f"Unrecognized serialization format {fmt!r} of the aimz model at {model_dir!r}; "
            f"supported formats: {SUPPORTED_SERIALIZATION_FORMATS}. Upgrade aimz-mlflow or "
            "save the model again.",
            error_code=INVALID_PARAMETER_VALUE,
        )
    check_pickle_allowed()
    verify_checksums(model_dir, conf)


def _code_dir(model_dir: str, conf: dict[str, Any]) -> str | None:
    code = conf.get("code")
    return os.path.join(model_dir, code) if code else None


def _is_under(path: str | None, directory: str) -> bool:
    if not path:
        return False
    try:
        return os.path.commonpath([os.path.abspath(path), os.path.abspath(directory)]) == (
            os.path.abspath(directory)
        )
    except ValueError:  # different drives
        return False


def _forget_code(code_dir: str | None, sys_path: list[str], modules: set[str]) -> None:
    """Undo a failed load: restore ``sys.path``, drop modules imported from the code."""
    sys.path[:] = sys_path
    if code_dir is None:
        return
    for name in [n for n in list(sys.modules) if n not in modules]:
        module = sys.modules.get(name)
        if _is_under(getattr(module, "__file__", None), code_dir):
            del sys.modules[name]


def _unpickle(model_dir: str, conf: dict[str, Any]) -> Any:
    with open(os.path.join(model_dir, conf.get("pickled_model", _MODEL_FILE)), "rb") as f:
        return cloudpickle.load(f)


def load_model(model_uri: str | os.PathLike[str], dst_path: str | None = None) -> Any:
    """Load an :class:`~aimz_core.ImpactModel` saved or logged with this flavor.

    The model comes back as saved: posterior samples, kernel spec and ``rng_key``
    are restored, so it predicts without refitting. Loading unpickles (runs code):
    MLflow's ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` switch is honoured and the
    model's files must match the checksums recorded at save time.

    Args:
        model_uri: A model URI (``runs:/...``, ``models:/...``, a local directory or
            its ``model.pkl``).
        dst_path: Local directory to download the artifacts to.

    Returns:
        The model.

    Raises:
        MlflowException: Pickle loading is disallowed, a checksum does not match, or
            the serialization format is unknown.

    Example:
        >>> import os, tempfile
        >>> import aimz_mlflow
        >>> from aimz_core.testing import fitted_linreg, linreg_data
        >>> path = os.path.join(tempfile.mkdtemp(), "my_model")
        >>> aimz_mlflow.save_model(fitted_linreg(num_draws=10), path, pip_requirements=["numpyro"])
        >>> model = aimz_mlflow.load_model(path)  # or "runs:/<run_id>/model", "models:/<id>"
        >>> X, _ = linreg_data(5)
        >>> model.predict_on_batch(X, return_datatree=False)["y"].shape
        (10, 5)
    """
    local_path = _download_artifact_from_uri(
        artifact_uri=os.fspath(model_uri), output_path=dst_path
    )
    model_dir = _model_dir(local_path)
    conf = _flavor_conf(model_dir)
    # Verify before the model's code can run: its code directory goes on sys.path
    # only once the pickle switch and the checksums (code files included) pass.
    _verify(model_dir, conf)
    sys_path, modules = list(sys.path), set(sys.modules)
    try:
        _add_code_from_conf_to_system_path(model_dir, conf)
        return _unpickle(model_dir, conf)
    except BaseException:
        _forget_code(_code_dir(model_dir, conf), sys_path, modules)
        raise


def _load_pyfunc(path: str, model_config: dict[str, Any] | None = None) -> _AimzModelWrapper:
    """Load the pyfunc implementation (called by :func:`mlflow.pyfunc.load_model`).

    Args:
        path: The model's ``model.pkl`` (pyfunc ``data``) or its directory.
        model_config: Optional ``{"max_rows": N}``: the most input rows one predict
            call accepts (see :data:`aimz_mlflow.pyfunc.MAX_ROWS_ENV`).

    Example:
        ``mlflow.pyfunc.load_model`` calls this through ``loader_module``:

        >>> import os, tempfile
        >>> import aimz_mlflow
        >>> from aimz_core.testing import fitted_linreg
        >>> path = os.path.join(tempfile.mkdtemp(), "my_model")
        >>> aimz_mlflow.save_model(fitted_linreg(num_draws=10), path, pip_requirements=["numpyro"])
        >>> wrapper = _load_pyfunc(os.path.join(path, "model.pkl"))
        >>> wrapper.get_raw_model().is_fitted()
        True
    """
    model_dir = _model_dir(str(Path(path)))
    try:
        conf = _flavor_conf(model_dir)
    except MlflowException:
        _logger.warning(
            "No aimz flavor configuration in %s; assuming a cloudpickle model.", model_dir
        )
        conf = {"pickled_model": os.path.basename(path) if os.path.isfile(path) else _MODEL_FILE}
    # mlflow.pyfunc.load_model has already put the pyfunc code directory on sys.path
    # (before calling this loader); nothing of the model is imported or unpickled
    # here before the checks pass, and a refused model's code directory is taken off
    # sys.path again.
    code_dir = _code_dir(model_dir, conf)
    modules = set(sys.modules)
    try:
        _verify(model_dir, conf)
        model = _unpickle(model_dir, conf)
    except BaseException:
        sys_path = list(sys.path)
        if code_dir and sys_path and _same_path(sys_path[0], code_dir):
            del sys_path[0]  # the entry mlflow.pyfunc.load_model prepended for this load
        _forget_code(code_dir, sys_path, modules)
        raise
    return _AimzModelWrapper(model, max_rows=(model_config or {}).get("max_rows"))


def _same_path(a: str, b: str) -> bool:
    return os.path.abspath(a) == os.path.abspath(b)


__all__ = [
    "FLAVOR_NAME",
    "SERIALIZATION_FORMAT_CLOUDPICKLE",
    "SUPPORTED_SERIALIZATION_FORMATS",
    "load_model",
    "log_model",
    "save_model",
]
