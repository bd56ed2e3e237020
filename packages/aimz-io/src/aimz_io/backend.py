"""The entry points ``aimz_core`` calls (imported lazily as ``aimz_io.backend``).

* :func:`make_sink`: where a streamed call's blocks go (Zarr on disk or memory);
* :func:`tree_from_arrays`: DataTree of on-batch results;
* :func:`open_tree`: reopen a persistent artifact;
* :func:`list_incomplete` / :func:`remove_incomplete`: stores left by killed calls;
* :func:`resolve_client` / :func:`run_distributed`: Dask and resumable runs;
* :func:`effect_tree` / :func:`summarize_effect`: effects of interventions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from aimz_core.streaming import Sink

from aimz_io.artifact import open_tree
from aimz_io.datatree import posterior_dataset, tree_from_arrays
from aimz_io.distributed import resolve_client, run_distributed
from aimz_io.effects import effect_tree
from aimz_io.incomplete import IncompleteStore, list_incomplete, remove_incomplete
from aimz_io.memory_sink import MemoryTreeSink
from aimz_io.summary import format_summary, summarize_effect
from aimz_io.zarr_sink import ZarrSink

STORES = ("persistent", "memory")


def make_sink(
    *,
    store: Literal["persistent", "memory"],
    base_dir: Path | None,
    progress: bool = True,
    fingerprint: str | Callable[[], str] | None = None,
) -> Sink:
    """The sink of one streamed call.

    Args:
        store: ``"persistent"``: a Zarr v3 group in a new
            ``<base_dir>/<UTC timestamp>_<caller>/`` directory; ``commit`` returns
            a lazy DataTree read back from it. ``"memory"``: NumPy arrays in
            memory; ``commit`` returns an in-memory DataTree.
        base_dir: Parent of the per-call directories (required for
            ``"persistent"``; ignored for ``"memory"``).
        progress: Accepted for symmetry with the model methods; the sinks print
            nothing (the core owns the progress bars).
        fingerprint: The plan fingerprint a ``"persistent"`` store records (or a
            function returning it, called when the store opens), so that a killed
            call's store can be adopted by ``resume=True``.

    Returns:
        A fresh :class:`~aimz_core.sinks.Sink`.

    Example:
        >>> import numpy as np
        >>> from aimz_core.streaming import SiteLayout, StreamInfo
        >>> sink = make_sink(store="memory", base_dir=None)
        >>> layout = SiteLayout("y", (2, 3), np.dtype("float32"), 1, 3, ("obs",))
        >>> sink.open(StreamInfo("predictions", "predict", 1, {"y": layout}))
        >>> sink.write("y", 0, np.zeros((2, 3), "float32"))
        >>> list(sink.commit().children)
        ['predictions']
    """
    del progress
    if store == "persistent":
        if base_dir is None:
            raise ValueError("`base_dir` is required when `store='persistent'`.")
        return ZarrSink(Path(base_dir), fingerprint=fingerprint)
    if store == "memory":
        return MemoryTreeSink()
    raise ValueError(f"`store` must be one of {STORES}, got {store!r}.")


__all__ = [
    "IncompleteStore",
    "effect_tree",
    "format_summary",
    "list_incomplete",
    "make_sink",
    "open_tree",
    "remove_incomplete",
    "resolve_client",
    "run_distributed",
    "summarize_effect",
    "posterior_dataset",
    "tree_from_arrays",
]
