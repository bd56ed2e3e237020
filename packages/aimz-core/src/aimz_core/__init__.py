"""aimz-core: NumPyro impact models with JIT-compiled batched inference.

The slim distribution: no xarray, zarr, dask, pandas or mlflow. Results come back
as ``{site: numpy array}``; install ``aimz-io`` for DataTree and Zarr outputs.

Public submodules: :mod:`aimz_core.model`, :mod:`aimz_core.data`,
:mod:`aimz_core.exceptions`, :mod:`aimz_core.streaming` (options, plans, sinks),
:mod:`aimz_core.backend` (the IO backend protocol) and :mod:`aimz_core.testing`
(canonical kernels and fitted models). Modules whose name starts with ``_`` are
internal.

Example:
    >>> from aimz_core import ImpactModel, KernelSpec
"""

from importlib.metadata import PackageNotFoundError, version

from aimz_core._lazy import lazy_attributes
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


__getattr__, __dir__ = lazy_attributes("aimz_core", globals(), _LAZY)


__all__ = [
    # the model
    "ImpactModel",
    "KernelSpec",
    # data
    "ArrayDataset",
    "ArrayLoader",
    # exceptions and warnings
    "AimzWarning",
    "FitWarning",
    "KernelValidationError",
    "NotFittedError",
    "OutputWarning",
    "PerformanceWarning",
    # metadata
    "__version__",
]
