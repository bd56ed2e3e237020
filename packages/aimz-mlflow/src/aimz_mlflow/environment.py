"""Python environment of a saved aimz model: pinned pip requirements and conda env."""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
import os
from typing import Any

import mlflow
from mlflow.utils.environment import _mlflow_conda_env
from mlflow.utils.requirements_utils import _get_pinned_requirement

_logger = logging.getLogger(__name__)

# The aimz distributions a loaded model imports: the model class (core), the
# DataTree output backend (io, used by ``return_datatree``) and this flavor (the
# pyfunc loader module).
_AIMZ_DISTRIBUTIONS = ("aimz-core", "aimz-io", "aimz-mlflow")
# Third-party packages the pickled model needs at load time.
_RUNTIME_PACKAGES = ("jax", "numpyro")


def _installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def get_default_pip_requirements(*, include_cloudpickle: bool = False) -> list[str]:
    """Return the pinned pip requirements of a model saved by this flavor.

    The aimz distributions are pinned to their installed versions (found with
    :mod:`importlib.metadata`), together with ``jax`` and ``numpyro``.

    Args:
        include_cloudpickle: Also pin ``cloudpickle`` (used to write ``model.pkl``).

    Returns:
        Requirement strings such as ``"aimz-core==0.1.0"``.

    Example:
        >>> reqs = get_default_pip_requirements(include_cloudpickle=True)
        >>> sorted(r.split("==")[0] for r in reqs)  # doctest: +NORMALIZE_WHITESPACE
        ['aimz-core', 'aimz-io', 'aimz-mlflow', 'cloudpickle', 'jax', 'numpyro']
    """
    names = [name for name in _AIMZ_DISTRIBUTIONS if _installed(name)]
    names += list(_RUNTIME_PACKAGES)
    if include_cloudpickle:
        names.append("cloudpickle")
    return [_get_pinned_requirement(name) for name in names]


def get_default_conda_env(*, include_cloudpickle: bool = False) -> dict[str, Any]:
    """Return the default conda environment of a model saved by this flavor.

    Args:
        include_cloudpickle: Also pin ``cloudpickle`` in the pip section.

    Returns:
        A conda environment as a dict (what ``conda.yaml`` holds).

    Example:
        >>> env = get_default_conda_env()
        >>> env["dependencies"][-1]["pip"][0].startswith("mlflow")
        True
    """
    return _mlflow_conda_env(
        additional_pip_deps=get_default_pip_requirements(include_cloudpickle=include_cloudpickle)
    )


# Requirements inferred per model "shape" (see ``requirements_key``), for this process.
_INFERRED: dict[tuple[str, ...], list[str]] = {}


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', '?')}"


def requirements_key(model: Any, code_paths: list[str] | None, with_example: bool) -> tuple:
    """What the inferred requirements of a model depend on.

    The modules a model imports when it loads come from its class, kernel, inference
    object and guide (or sampler), plus the code paths saved with it.
    """
    inference = model.inference
    part = getattr(inference, "guide", None) or getattr(inference, "sampler", None)
    return (
        _qualname(type(model)),
        _qualname(model.kernel),
        _qualname(type(inference)),
        _qualname(type(part)),
        *sorted(os.path.abspath(p) for p in code_paths or []),
        str(with_example),
    )


def infer_requirements(
    model_dir: str, flavor_name: str, fallback: list[str], key: tuple | None = None
) -> list[str]:
    """Infer the requirements of a saved model by loading it in a subprocess.

    MLflow captures the modules imported while loading the model (and predicting on
    its input example), so packages imported by the kernel's module are found too.
    MLflow's ``uv export`` shortcut is bypassed: it would pin the whole project lock
    (dev tools, editable workspace paths) of the current directory, not what the
    model needs. On any failure ``fallback`` is returned.

    The subprocess takes seconds, so results are cached for the process under
    ``key`` (see :func:`requirements_key`): saving the same kind of model again, as
    autologging does on every fit, reuses them.

    Args:
        model_dir: Directory of the saved model (its ``MLmodel`` must exist).
        flavor_name: The flavor name.
        fallback: Requirements returned when inference fails (not cached).
        key: Cache key; ``None`` disables the cache.

    Returns:
        Inferred requirement strings.
    """
    if key is not None and key in _INFERRED:
        return list(_INFERRED[key])
    kwargs: dict[str, Any] = {"fallback": None}
    if "uv_project_dir" in inspect.signature(mlflow.models.infer_pip_requirements).parameters:
        # The model directory is never a uv project, so capture-based inference runs.
        kwargs["uv_project_dir"] = model_dir
    try:
        inferred = mlflow.models.infer_pip_requirements(model_dir, flavor_name, **kwargs)
    except Exception as err:  # MLflow falls back the same way, with this warning
        _logger.warning(
            "Could not infer the pip requirements of the model at %s (%s: %s); using the "
            "defaults %s. Pass `extra_pip_requirements` to add packages.",
            model_dir,
            type(err).__name__,
            err,
            fallback,
        )
        return list(fallback)
    if key is not None:
        _INFERRED[key] = list(inferred)
    return list(inferred)


__all__ = ["get_default_conda_env", "get_default_pip_requirements"]
