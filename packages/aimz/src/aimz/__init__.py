"""aimz: scalable probabilistic impact modeling with NumPyro (all parts).

This meta-package only re-exports the parts (``aimz-core``, ``aimz-io``,
``aimz-mlflow``) and refuses to import when their installed versions fall outside
the window this release of ``aimz`` was built for.

Example:
    >>> from aimz import ImpactModel, open_tree
    >>> ImpactModel.__module__.split(".")[0], open_tree.__module__.split(".")[0]
    ('aimz_core', 'aimz_io')
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import re
from collections.abc import Callable
from typing import Any

# Compatible window of every part: (lowest allowed, first refused) release.
# Must agree with the dependencies in packages/aimz/pyproject.toml (a test checks it).
_COMPATIBLE: dict[str, tuple[str, str]] = {
    "aimz-core": ("0.1", "0.2"),
    "aimz-io": ("0.1", "0.2"),
    "aimz-mlflow": ("0.1", "0.2"),
}


def _release(version: str) -> tuple[int, ...]:
    """Return the numeric release part of a version, ``"0.1.3rc1"`` -> ``(0, 1, 3)``."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    if match is None:
        return ()
    return tuple(int(part) for part in match.group().split("."))


def _check_parts(version: Callable[[str], str] = importlib.metadata.version) -> None:
    """Raise ``ImportError`` when a part is missing or outside its compatible window.

    Args:
        version: Looks up the installed version of a distribution by name.

    Raises:
        ImportError: A part is not installed, or its version is not compatible.
    """
    for name, (low, high) in _COMPATIBLE.items():
        try:
            installed = version(name)
        except importlib.metadata.PackageNotFoundError:
            raise ImportError(
                f"aimz requires {name}; install it with `pip install aimz`."
            ) from None
        release = _release(installed)
        if not _release(low) <= release < _release(high):
            required = f"{name}>={low},<{high}"
            raise ImportError(
                f"aimz requires {required}, but {name} {installed} is installed. "
                f'Fix it with `pip install "{required}"`, or upgrade all parts '
                "together with `pip install --upgrade aimz`."
            )


_check_parts()

from aimz_core import (  # noqa: E402
    AimzWarning,
    FitWarning,
    KernelSpec,
    KernelValidationError,
    NotFittedError,
    OutputWarning,
    PerformanceWarning,
)

try:
    __version__ = importlib.metadata.version("aimz")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

logging.getLogger("aimz").addHandler(logging.NullHandler())


# Loaded on first access: `ImpactModel` (and the modules re-exporting it) import
# JAX, the `aimz_io` functions import xarray and zarr, and `aimz.mlflow` imports
# mlflow; `import aimz` itself stays fast.
_LAZY_MODULES = ("mlflow", "model", "utils")
# The user-facing functions of aimz-io (reading artifacts, summarizing effects).
_LAZY_IO = (
    "IncompleteStore",
    "effect_tree",
    "format_summary",
    "list_incomplete",
    "loo",
    "open_tree",
    "ppc_subsample",
    "remove_incomplete",
    "summarize_effect",
    "summarize_group",
    "summarize_predictive",
)


def __getattr__(name: str) -> Any:
    if name == "ImpactModel":
        import aimz_core

        value = aimz_core.ImpactModel
    elif name in _LAZY_IO:
        value = getattr(importlib.import_module("aimz_io"), name)
    elif name in _LAZY_MODULES:
        value = importlib.import_module(f"aimz.{name}")
    else:
        raise AttributeError(f"module 'aimz' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), "ImpactModel", *_LAZY_IO, *_LAZY_MODULES])


__all__ = [
    # aimz-core: the model, its kernel description, exceptions and warnings
    "AimzWarning",
    "FitWarning",
    "ImpactModel",
    "KernelSpec",
    "KernelValidationError",
    "NotFittedError",
    "OutputWarning",
    "PerformanceWarning",
    # aimz-io: reading artifacts back, stores of killed calls, summarizing effects
    *_LAZY_IO,
    "__version__",
]
