"""Where streamed batches go: the sink interface and the in-memory sink.

The batched engine (:mod:`aimz_core.engine`) computes one batch at a time and hands
each finished block to a :class:`Sink`. A sink is opened once with the full layout of
every site (so it can preallocate), receives region writes in any order, and is then
either committed (the result is complete) or aborted (nothing partial survives).

``aimz-io`` implements the same interface for Zarr stores and DataTrees; the core ships
:class:`MemorySink`, which returns ``{site: numpy array}``.
"""

from __future__ import annotations

import functools
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Attributes of an output group that decide whether the draws of two outputs are
#: paired: draw ``d`` of both used the same key (``"draw"`` path), or, on the
#: ``"obs"`` path, the same key per batch of the same rows on as many devices.
PAIRING_ATTRS = ("rng_key", "shard_axis", "num_devices", "batch_size")
#: Attribute with the :func:`posterior_digest` of the posterior an output was drawn from.
POSTERIOR_ATTR = "posterior_digest"
#: Bytes of each posterior site hashed by :func:`posterior_digest` (evenly spaced):
#: at 16 MiB the digest of the benchmark MLP's posterior (176 MiB) took 0.2 s of
#: every Zarr call, at 1 MiB it takes about 0.01 s.
DIGEST_BYTES = 2**20


def pairing_attrs(
    rng_key: Any,
    *,
    shard_axis: str,
    num_devices: int | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """The :data:`PAIRING_ATTRS` of one call, JSON-serializable.

    Args:
        rng_key: The call's key: a typed JAX key, raw key data or a list of ints.
        shard_axis: ``"obs"`` or ``"draw"`` (on-batch calls run the ``"draw"`` way).
        num_devices: Devices the batches were split over (``None``: not recorded).
        batch_size: Padded batch length along the streamed axis (``None``: not recorded).

    Returns:
        ``{"rng_key": [ints], "shard_axis": ..., ...}`` without the ``None`` entries.

    Example:
        >>> pairing_attrs([0, 7], shard_axis="obs", num_devices=1, batch_size=32)
        {'rng_key': [0, 7], 'shard_axis': 'obs', 'num_devices': 1, 'batch_size': 32}
    """
    dtype = getattr(rng_key, "dtype", None)
    if dtype is not None and not isinstance(dtype, np.dtype):
        rng_key = _key_data()(rng_key)
    attrs: dict[str, Any] = {
        "rng_key": [int(v) for v in np.asarray(rng_key).ravel()],
        "shard_axis": str(shard_axis),
    }
    if num_devices is not None:
        attrs["num_devices"] = int(num_devices)
    if batch_size is not None:
        attrs["batch_size"] = int(batch_size)
    return attrs


@functools.cache
def _key_data() -> Any:
    """Jitted ``jax.random.key_data`` (one dispatch: 0.017 ms against 0.05 ms op by
    op, which a warm 1-row on-batch DataTree would pay). JAX is imported here, only
    for typed keys: the sink types import no JAX."""
    import jax

    return jax.jit(jax.random.key_data)


def posterior_digest(posterior: Mapping[str, Any]) -> str:
    """A short digest of posterior samples: equal for the same samples, so two
    outputs tell whether they were drawn from the same posterior.

    Sites up to :data:`DIGEST_BYTES` are hashed whole; larger ones through evenly
    spaced values (a refit changes them all), so the cost stays bounded.

    Example:
        >>> a = posterior_digest({"w": np.zeros((4, 2))})
        >>> a == posterior_digest({"w": np.zeros((4, 2))}), a == posterior_digest(
        ...     {"w": np.ones((4, 2))})
        (True, False)
    """
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(posterior):
        array = np.asarray(posterior[name])
        h.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        flat = array.reshape(-1)
        step = max(1, -(-flat.nbytes // DIGEST_BYTES))
        h.update(np.ascontiguousarray(flat[::step]))  # hashed in place, no bytes copy
    return h.hexdigest()


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
        attrs: Extra attributes to record on the output (JSON-serializable), such
            as the call's :data:`PAIRING_ATTRS`. Sinks add :data:`POSTERIOR_ATTR`
            when ``posterior`` is not empty (see :func:`output_attrs`).
    """

    group: str
    caller: str
    num_chains: int
    sites: dict[str, SiteLayout]
    posterior: dict[str, np.ndarray] = field(default_factory=dict)
    posterior_dims: dict[str, tuple[str, ...]] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)


def output_attrs(info: StreamInfo) -> dict[str, Any]:
    """The attributes a sink records on the output of ``info``: ``info.attrs`` and
    the :func:`posterior_digest` of its posterior (when it has one).

    Example:
        >>> info = StreamInfo("predictions", "predict", 1, {}, attrs={"batch_size": 4})
        >>> output_attrs(info)
        {'batch_size': 4}
    """
    attrs = dict(info.attrs)
    if info.posterior and POSTERIOR_ATTR not in attrs:
        attrs[POSTERIOR_ATTR] = posterior_digest(info.posterior)
    return attrs


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
