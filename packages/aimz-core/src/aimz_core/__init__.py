"""aimz-core: NumPyro impact models with JIT-compiled batched inference.

The slim distribution: no xarray, zarr, dask, pandas or mlflow. Results come back
as ``{site: numpy array}``; install ``aimz-io`` for DataTree and Zarr outputs.

Example:
    >>> from aimz_core import ImpactModel, KernelSpec
"""

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aimz_core.exceptions import (
    AimzWarning,
    FitWarning,
    KernelValidationError,
    NotFittedError,
    OutputWarning,
    PerformanceWarning,
)
from aimz_core.kernel_spec import KernelSpec

try:
    __version__ = version("aimz-core")
except PackageNotFoundError:  # pragma: no cover - source checkout without install
    __version__ = "0+unknown"

# Names whose modules import JAX: loaded on first access so that importing the
# package (for its exceptions, sinks or version) stays cheap.
_LAZY = {
    "ImpactModel": "aimz_core.model",
    "ArrayDataset": "aimz_core.data",
    "ArrayLoader": "aimz_core.data",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aimz_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "AimzWarning",
    "ArrayDataset",
    "ArrayLoader",
    "FitWarning",
    "ImpactModel",
    "KernelSpec",
    "KernelValidationError",
    "NotFittedError",
    "OutputWarning",
    "PerformanceWarning",
    "__version__",
]
