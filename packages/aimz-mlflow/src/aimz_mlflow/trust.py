"""Trust checks before unpickling a model: MLflow's pickle switch and file checksums.

Loading a pickled model runs code. Two checks happen before any byte is unpickled:

* MLflow's ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` switch (when the installed MLflow
  has it) must allow pickle deserialization.
* Every file written at save time that is executed or unpickled at load time
  (``model.pkl``, code paths, extra files) must still match the SHA-256 checksum
  recorded in the ``aimz`` flavor configuration of ``MLmodel``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import mlflow.environment_variables
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_STATE

_logger = logging.getLogger(__name__)

CHECKSUM_ALGORITHM = "sha256"
_CHUNK = 1 << 20


def file_checksum(path: str | os.PathLike[str]) -> str:
    """Return ``"sha256:<hex digest>"`` of a file.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> _ = p.write_bytes(b"aimz")
        >>> file_checksum(p)[:15]
        'sha256:b14b7eee'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return f"{CHECKSUM_ALGORITHM}:{digest.hexdigest()}"


def _files_under(root: Path, subpath: str) -> list[str]:
    base = root / subpath
    if base.is_file():
        return [subpath]
    return sorted(
        p.relative_to(root).as_posix()
        for p in base.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )


def model_files(model_dir: str | os.PathLike[str], flavor_conf: Mapping) -> list[str]:
    """List the files (relative, POSIX) that loading the model unpickles or runs.

    Args:
        model_dir: The saved model's directory.
        flavor_conf: The ``aimz`` flavor configuration (``pickled_model``, ``code``,
            ``extra_files``).

    Returns:
        Relative paths, sorted.
    """
    root = Path(model_dir)
    files = [str(flavor_conf["pickled_model"])]
    if flavor_conf.get("code"):
        files += _files_under(root, str(flavor_conf["code"]))
    for entry in flavor_conf.get("extra_files") or []:
        files += _files_under(root, str(entry["path"]))
    return sorted(set(files))


def compute_checksums(model_dir: str | os.PathLike[str], files: Iterable[str]) -> dict[str, str]:
    """Return ``{relative path: "sha256:<hex>"}`` for ``files`` under ``model_dir``."""
    root = Path(model_dir)
    return {rel: file_checksum(root / rel) for rel in files}


def verify_checksums(model_dir: str | os.PathLike[str], flavor_conf: Mapping) -> None:
    """Refuse a model whose files differ from the checksums recorded at save time.

    Models saved without checksums (older versions of the flavor) load with a
    warning.

    Args:
        model_dir: The saved model's directory.
        flavor_conf: The ``aimz`` flavor configuration.

    Raises:
        MlflowException: A recorded file is missing or changed, or a file was added
            to the model's code directory.

    Example:
        >>> import os, tempfile
        >>> import aimz_mlflow
        >>> from aimz_core.testing import fitted_linreg
        >>> from mlflow.models import Model
        >>> path = os.path.join(tempfile.mkdtemp(), "my_model")
        >>> aimz_mlflow.save_model(fitted_linreg(num_draws=10), path, pip_requirements=["numpyro"])
        >>> conf = Model.load(path).flavors["aimz"]
        >>> verify_checksums(path, conf)  # the files are as saved
        >>> with open(os.path.join(path, "model.pkl"), "ab") as f:
        ...     _ = f.write(b"tampered")
        >>> verify_checksums(path, conf)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mlflow.exceptions.MlflowException: ...
    """
    expected = flavor_conf.get("checksums")
    if not expected:
        _logger.warning(
            "The aimz model at %s records no file checksums (saved by an older aimz "
            "version), so its files cannot be verified. Only load models from trusted "
            "sources; re-save it with aimz-mlflow to record checksums.",
            model_dir,
        )
        return
    root = Path(model_dir)
    problems: list[str] = []
    for rel, recorded in sorted(expected.items()):
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel!r} is missing")
            continue
        algorithm = str(recorded).partition(":")[0]
        if algorithm != CHECKSUM_ALGORITHM:
            problems.append(f"{rel!r} has an unsupported checksum {recorded!r}")
            continue
        actual = file_checksum(path)
        if actual != recorded:
            problems.append(f"{rel!r} has {actual}, expected {recorded}")
    unexpected = sorted(set(model_files(root, flavor_conf)) - set(expected))
    problems += [f"{rel!r} was added after saving" for rel in unexpected]
    if problems:
        raise MlflowException(
            f"Refusing to load the aimz model at {str(model_dir)!r}: its files do not match "
            "the checksums recorded in MLmodel when it was saved (" + "; ".join(problems) + "). "
            "The model was modified or corrupted after saving. Loading a pickled model runs "
            "code, so only load models from trusted sources; save the model again if the "
            "change is intended.",
            error_code=INVALID_STATE,
        )


def _in_databricks() -> bool:
    try:
        from mlflow.utils.databricks_utils import (
            is_in_databricks_model_serving_environment,
            is_in_databricks_runtime,
        )
    except ImportError:  # pragma: no cover - older MLflow
        return False
    return is_in_databricks_runtime() or is_in_databricks_model_serving_environment()


def check_pickle_allowed() -> None:
    """Follow MLflow's switch for pickle deserialization (when MLflow has one).

    Raises:
        MlflowException: ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` is false (outside
            Databricks runtimes, which MLflow exempts as well).

    Example:
        >>> check_pickle_allowed()  # MLflow allows pickles by default
    """
    switch = getattr(mlflow.environment_variables, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION", None)
    if switch is None or switch.get() or _in_databricks():
        return
    raise MlflowException(
        "Loading this aimz model is disallowed because "
        f"'{switch.name}' is set to false. aimz models are pickled with cloudpickle, "
        "and unpickling can run arbitrary code. Only load models from trusted sources; "
        f"set '{switch.name}' to 'true' to allow loading."
    )


__all__ = [
    "CHECKSUM_ALGORITHM",
    "check_pickle_allowed",
    "compute_checksums",
    "file_checksum",
    "model_files",
    "verify_checksums",
]
