"""MLflow flavor for aimz models (re-exported from ``aimz_mlflow``).

Importing this module imports MLflow; ``import aimz`` alone does not.

Example:
    >>> import aimz.mlflow
    >>> aimz.mlflow.FLAVOR_NAME
    'aimz'
"""

from aimz_mlflow import (
    FLAVOR_NAME,
    SERIALIZATION_FORMAT_CLOUDPICKLE,
    SUPPORTED_SERIALIZATION_FORMATS,
    autolog,
    get_default_conda_env,
    get_default_pip_requirements,
    load_model,
    log_model,
    save_model,
)
from aimz_mlflow import (
    _AimzModelWrapper as _AimzModelWrapper,
)
from aimz_mlflow import (
    _load_pyfunc as _load_pyfunc,
)

__all__ = [
    "FLAVOR_NAME",
    "SERIALIZATION_FORMAT_CLOUDPICKLE",
    "SUPPORTED_SERIALIZATION_FORMATS",
    "autolog",
    "get_default_conda_env",
    "get_default_pip_requirements",
    "load_model",
    "log_model",
    "save_model",
]
