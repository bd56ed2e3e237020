"""Where streamed batches go: the sink interface and the in-memory sink.

The batched engine (:mod:`aimz_core.engine`) computes one batch at a time and hands
each finished block to a :class:`Sink`. A sink is opened once with the full layout of
every site (so it can preallocate), receives region writes in any order, and is then
either committed (the result is complete) or aborted (nothing partial survives).

``aimz-io`` implements the same interface for Zarr stores and DataTrees; the core ships
:class:`MemorySink`, which returns ``{site: numpy array}``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SiteLayout:
    """Full layout of one output site of a streamed call.

    Attributes:
        name: Site name (also the array / variable name).
        shape: Full shape; axis 0 is the flattened draw axis (``chain * draw``).
        dtype: NumPy dtype of the values.
        stream_axis: Axis along which blocks arrive: ``1`` when observations are
            streamed (``shard_axis="obs"``), ``0`` when draws are (``"draw"``).
        chunk: Block length along ``stream_axis`` (every block but the last).
        dims: Names of the axes after the draw axis (plate names where known,
            otherwise ``"<site>_dim_<i>"``).
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    stream_axis: int
    chunk: int
    dims: tuple[str, ...]


@dataclass(frozen=True)
class StreamInfo:
    """Everything a sink needs to know before the first block arrives.

    Attributes:
        group: Output group (``"posterior_predictive"``, ``"predictions"``,
            ``"prior_predictive"`` or ``"log_likelihood"``).
        caller: Public method that started the stream (``"predict"``, ...).
        num_chains: Number of chains the flattened draw axis splits into.
        sites: Layout of every site, in output order.
        posterior: Posterior samples of the model as host arrays with a flattened
            leading draw axis (empty when the model has none).
        posterior_dims: Dim names (after the draw axis) of each posterior site.
        attrs: Extra attributes to record on the output (JSON-serializable).
    """

    group: str
    caller: str
    num_chains: int
    sites: dict[str, SiteLayout]
    posterior: dict[str, np.ndarray] = field(default_factory=dict)
    posterior_dims: dict[str, tuple[str, ...]] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)


class Sink(ABC):
    """Receives the blocks of one streamed call.

    Lifecycle: :meth:`open` once, :meth:`write` any number of times (blocks of one
    site never overlap, and may arrive in any order), then exactly one of
    :meth:`commit` or :meth:`abort`. ``abort`` must be safe to call at any point,
    including before ``open`` and after a failed ``commit``.
    """

    @abstractmethod
    def open(self, info: StreamInfo) -> None:
        """Prepare storage for every site described by ``info``."""

    @abstractmethod
    def write(self, site: str, start: int, block: np.ndarray) -> None:
        """Store ``block`` at offset ``start`` along the site's stream axis."""

    @abstractmethod
    def commit(self) -> Any:
        """Finish the call once every block was written and return its result."""

    @abstractmethod
    def abort(self) -> None:
        """Discard everything written so far and release resources."""


class MemorySink(Sink):
    """Collects blocks into preallocated host arrays; ``commit`` returns a dict.

    Example:
        >>> import numpy as np
        >>> from aimz_core.streaming import MemorySink, SiteLayout, StreamInfo
        >>> layout = SiteLayout("y", (2, 3), np.dtype("float32"), 1, 2, ("obs",))
        >>> sink = MemorySink()
        >>> sink.open(StreamInfo("predictions", "predict", 1, {"y": layout}))
        >>> sink.write("y", 0, np.ones((2, 2), "float32"))
        >>> sink.write("y", 2, np.zeros((2, 1), "float32"))
        >>> sink.commit()["y"].sum()
        np.float32(4.0)
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] | None = None
        self._info: StreamInfo | None = None

    def open(self, info: StreamInfo) -> None:
        self._info = info
        self._arrays = {
            name: np.empty(layout.shape, dtype=layout.dtype) for name, layout in info.sites.items()
        }

    def write(self, site: str, start: int, block: np.ndarray) -> None:
        assert self._arrays is not None and self._info is not None
        axis = self._info.sites[site].stream_axis
        index = [slice(None)] * block.ndim
        index[axis] = slice(start, start + block.shape[axis])
        self._arrays[site][tuple(index)] = block

    def commit(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            raise RuntimeError("MemorySink.commit() called before open().")
        arrays, self._arrays = self._arrays, None
        return arrays

    def abort(self) -> None:
        self._arrays = None
