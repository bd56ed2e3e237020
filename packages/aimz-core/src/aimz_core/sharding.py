"""Device layout: one mesh over local devices and the batched callables built on it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "obs"


@dataclass(frozen=True)
class DeviceLayout:
    """Local devices and the shardings built over them.

    Attributes:
        num_devices: ``jax.local_device_count()``.
        mesh: 1-D mesh with axis ``"obs"`` (``None`` on one device).
    """

    num_devices: int
    mesh: Mesh | None

    @classmethod
    def local(cls) -> DeviceLayout:
        """Layout over every local device."""
        n = jax.local_device_count()
        if n <= 1:
            return cls(1, None)
        mesh = jax.make_mesh((n,), (AXIS,), axis_types=(jax.sharding.AxisType.Explicit,))
        return cls(n, mesh)

    @property
    def partitioned(self) -> NamedSharding | None:
        """Sharding that splits the leading axis over devices."""
        return None if self.mesh is None else NamedSharding(self.mesh, P(AXIS))

    @property
    def replicated(self) -> NamedSharding | None:
        """Sharding that copies the value to every device."""
        return None if self.mesh is None else NamedSharding(self.mesh, P())


def shard_obs(fn: Callable, layout: DeviceLayout) -> Callable:
    """Shard ``fn(post, key, arrays, intervention, condition)`` over observations.

    The sharded function takes ``(key, batch_index)`` in place of ``key``.

    Arrays are split along axis 0; the posterior, key and handler data are
    replicated; every device folds its index into the key; outputs are split along
    axis 1 (axis 0 holds draws).
    """
    if layout.mesh is None:
        return fn

    def per_device(post, key_index, arrays, intervention, condition):
        key, index = key_index
        key = jax.random.fold_in(jax.random.fold_in(key, index), jax.lax.axis_index(AXIS))
        return fn(post, key, arrays, intervention, condition)

    return jax.shard_map(
        per_device,
        mesh=layout.mesh,
        in_specs=(P(), (P(), P()), P(AXIS), P(), P()),
        out_specs=P(None, AXIS),
        check_vma=False,
    )


def shard_draws(fn: Callable, layout: DeviceLayout) -> Callable:
    """Shard ``fn(post, keys, arrays, intervention, condition)`` over draws."""
    if layout.mesh is None:
        return fn
    return jax.shard_map(
        fn,
        mesh=layout.mesh,
        in_specs=(P(AXIS), (P(), P(AXIS)), P(), P(), P()),
        out_specs=P(AXIS),
        check_vma=False,
    )
