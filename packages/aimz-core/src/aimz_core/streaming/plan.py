"""The plan of one streamed call: what every batch computes, without the batches.

:meth:`ImpactModel._plan_stream <aimz_core.impact_model.ImpactModel>` validates and
binds the arguments, draws the call's key and fixes the batch size, the batch
function's config and the output layout. The result, a :class:`StreamPlan`, is all
a process needs (besides the fitted model) to compute any batch with
:meth:`~aimz_core.impact_model.ImpactModel.compute_block`: the single-process
stream runs the batches in order, a distributed run ships the plan to workers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import jax
import numpy as np

from aimz_core.batched import BatchConfig
from aimz_core.rng import pack_keys, unpack_keys
from aimz_core.sinks import StreamInfo


def _digest(values: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for name in sorted(values):
        arr = np.ascontiguousarray(np.asarray(values[name]))
        h.update(f"{name}:{arr.dtype.str}:{arr.shape};".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


@dataclasses.dataclass(eq=False)
class StreamPlan:
    """Everything needed to compute any batch of one streamed call.

    Attributes:
        kind: ``"predict"``, ``"prior"`` or ``"loglik"``.
        caller: Public method that started the call.
        group: Output group.
        shard_axis: ``"obs"`` (batches of input rows) or ``"draw"`` (of draws).
        config: The batch function's config (memory-safe draw block included).
        extras: Static (non-array) kernel arguments.
        key: The call's typed PRNG key. Batch ``i`` of the ``"obs"`` path uses
            ``fold_in(key, i)``; draw ``d`` of the ``"draw"`` path uses
            ``fold_in(key, d)``.
        size: Padded batch length along the stream axis.
        total: Length of the stream axis (rows or draws).
        ranges: ``(start, stop)`` of every batch.
        stream_axis: Axis of the outputs the batches follow (1 for rows, 0 for draws).
        global_post: Input-independent prior draws shared by every batch (prior
            predictive on the ``"obs"`` path only).
        intervention: ``do`` values.
        condition: ``condition`` values.
        info: Output layout (``None`` on a copy made for workers without it).
        desc: Progress bar description.
        arrays: The input arrays (NumPy, JAX or lazy arrays such as Dask or Zarr);
            dropped by :meth:`for_workers`.
    """

    kind: str
    caller: str
    group: str
    shard_axis: str
    config: BatchConfig
    extras: dict[str, Any]
    key: jax.Array
    size: int
    total: int
    ranges: list[tuple[int, int]]
    stream_axis: int
    global_post: dict[str, Any]
    intervention: dict[str, Any]
    condition: dict[str, Any]
    info: StreamInfo | None
    desc: str
    arrays: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    runtime: dict[Any, Any] = dataclasses.field(default_factory=dict, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["runtime"] = {}  # device buffers, rebuilt where the plan is used
        # The key travels as data plus implementation name (see `aimz_core.rng`).
        return pack_keys(state)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(unpack_keys(state))

    def for_workers(self) -> StreamPlan:
        """A light copy to ship to workers: no input arrays, no posterior copy."""
        info = self.info
        if info is not None:
            info = dataclasses.replace(info, posterior={}, posterior_dims={})
        return dataclasses.replace(self, arrays={}, info=info, runtime={})

    def fingerprint(self, posterior: dict[str, Any] | None = None) -> str:
        """A digest of what the outputs depend on (except the input values).

        Two calls with the same fingerprint write the same regions with the same
        values (given the same input data), so a store started by one can be
        finished by the other.
        """
        info = self.info
        sites = {}
        if info is not None:
            sites = {
                name: [list(lay.shape), lay.dtype.str, lay.stream_axis, lay.chunk]
                for name, lay in info.sites.items()
            }
        described = {
            "kind": self.kind,
            "caller": self.caller,
            "group": self.group,
            "shard_axis": self.shard_axis,
            "size": self.size,
            "total": self.total,
            "num_draws": self.config.num_draws,
            "return_sites": list(self.config.return_sites),
            "extras": repr(sorted(self.extras.items())),
            "key": np.asarray(jax.random.key_data(self.key)).tolist(),
            "key_impl": str(jax.random.key_impl(self.key)),
            "sites": sites,
            "inputs": {k: [list(v.shape), np.dtype(v.dtype).str] for k, v in self.arrays.items()},
            "intervention": _digest(self.intervention),
            "condition": _digest(self.condition),
            "global_post": _digest(self.global_post),
            "posterior": _digest(posterior or {}),
        }
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


__all__ = ["StreamPlan"]
