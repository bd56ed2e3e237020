"""aimz io: xarray DataTree outputs and Zarr v3 streaming for aimz models.

The functions the core calls live in :mod:`aimz_io.backend`.
"""

from aimz_core.backend import register_backend

from aimz_io._loo import LooResult, loo
from aimz_io.backend import (
    IncompleteStore,
    effect_tree,
    format_summary,
    list_incomplete,
    make_sink,
    open_tree,
    remove_incomplete,
    summarize_effect,
    tree_from_arrays,
)
from aimz_io.ppc import ppc_subsample
from aimz_io.predictive_summary import summarize_predictive
from aimz_io.provenance import aimz_version
from aimz_io.summary import summarize_group

# The core finds its IO backend by registration (it never imports aimz_io itself).
register_backend("aimz_io.backend")

__version__ = aimz_version()

__all__ = [
    "IncompleteStore",
    "LooResult",
    "__version__",
    "effect_tree",
    "format_summary",
    "list_incomplete",
    "loo",
    "make_sink",
    "open_tree",
    "ppc_subsample",
    "remove_incomplete",
    "summarize_effect",
    "summarize_group",
    "summarize_predictive",
    "tree_from_arrays",
]
