"""The impact model and its kernel specification (re-exported from ``aimz_core``).

Example:
    >>> from aimz.model import ImpactModel, KernelSpec
"""

from aimz_core import ImpactModel, KernelSpec

__all__ = ["ImpactModel", "KernelSpec"]
