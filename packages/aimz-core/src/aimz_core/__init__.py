"""aimz-core: NumPyro impact models with JIT-compiled batched inference.

The slim distribution: no xarray, zarr, dask, pandas or mlflow. Results come back
as ``{site: numpy array}``; install ``aimz-io`` for DataTree and Zarr outputs.

Example:
    >>> from aimz_core import ImpactModel, KernelSpec
"""

from importlib.metadata import PackageNotFoundError, version

from aimz_core.data import ArrayDataset, ArrayLoader
from aimz_core.exceptions import (
    AimzWarning,
    FitWarning,
    KernelValidationError,
    NotFittedError,
    OutputWarning,
    PerformanceWarning,
)
from aimz_core.impact_model import ImpactModel
from aimz_core.kernel_spec import KernelSpec

try:
    __version__ = version("aimz-core")
except PackageNotFoundError:  # pragma: no cover - source checkout without install
    __version__ = "0+unknown"

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
