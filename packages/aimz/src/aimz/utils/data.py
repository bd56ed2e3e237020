"""Array datasets and batch loaders (re-exported from ``aimz_core.data``).

Example:
    >>> from aimz.utils.data import ArrayDataset, ArrayLoader
"""

from aimz_core.data import ArrayDataset, ArrayLoader

__all__ = ["ArrayDataset", "ArrayLoader"]
