"""Low-latency pieces of the on-batch call path (``predict_on_batch`` and friends).

A warm ``predict_on_batch`` of a few rows is dominated by fixed per-call costs, not by
the kernel. What depends only on the model and on the structure of the call (the
shapes, dtypes and placement of the arguments) is computed once and kept in the
model's :class:`~aimz_core.batched.FunctionCache` memo: the batch function with its
memory-safe draw block, the device array of draw indices, the compiled executable
and the output dim names. A repeated call then dispatches one executable and copies
its result to the host; keys are split by one jitted function instead of op by op.

The result is the same as the general path's (``BlockRunner.run_on_batch``): the same
batch function, arguments and key schedule.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import dtypes, random

from aimz_core._jit_cache import call_signature
from aimz_core._posterior import first_draw
from aimz_core.batched import BatchConfig, BatchFunction

if TYPE_CHECKING:
    from aimz_core.streaming.blocks import BlockRunner


@jax.jit
def _split(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    new, sub = random.split(key)
    return new, sub


def split_key(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``random.split(key)`` as ``(next state, key for this call)``, in one dispatch.

    The same values as unpacking ``random.split(key)``; one jitted call instead of a
    split and two op-by-op index operations.

    Example:
        >>> k = random.key(0)
        >>> new, sub = split_key(k)
        >>> bool((random.key_data(sub) == random.key_data(random.split(k)[1])).all())
        True
    """
    return _split(key)


def call_arrays(arrays: dict[str, Any]) -> dict[str, Any]:
    """The call's arrays as the batch function takes them.

    NumPy arrays whose dtype JAX keeps as it is (numeric, and not 64-bit unless
    ``jax_enable_x64``) are passed as they are: the executable copies them to the
    device itself, cheaper than an op-by-op ``jnp.asarray`` first. Anything else goes
    through ``jnp.asarray`` (dtype conversion, and its errors for unsupported types).

    Example:
        >>> out = call_arrays({"X": np.ones(2, np.float32), "Z": np.ones(2)})
        >>> type(out["X"]).__name__, out["Z"].dtype
        ('ndarray', dtype('float32'))
    """
    out = {}
    for name, value in arrays.items():
        dtype = getattr(value, "dtype", None)
        if (
            isinstance(value, np.ndarray)
            and dtype.kind in "biufc"
            and dtypes.canonicalize_dtype(dtype) == dtype
        ):
            out[name] = value
        else:
            out[name] = jnp.asarray(value)
    return out


def structure(tree: Any) -> tuple:
    """Hashable structure of ``tree``: tree layout and, per leaf, shape, dtype, weak
    type and sharding (arrays) or type and shape (other leaves).

    Cheaper than :func:`~aimz_core._jit_cache.call_signature` (dtype objects are
    hashed as they are); two trees with equal structures run the same executable.

    Example:
        >>> structure({"x": np.zeros((2, 3))}) == structure({"x": np.ones((2, 3))})
        True
        >>> structure({"x": np.zeros((2, 3))}) == structure({"x": np.zeros((1, 3))})
        False
    """
    leaves, treedef = jax.tree.flatten(tree)
    out: list[Any] = [treedef]
    for leaf in leaves:
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and hasattr(leaf, "shape"):
            out.append(
                (
                    leaf.shape,
                    dtype,
                    getattr(leaf, "weak_type", False),
                    getattr(leaf, "sharding", None),
                )
            )
        else:
            out.append((type(leaf), np.shape(leaf)))
    return tuple(out)


@dataclass
class OnBatchPlan:
    """What a repeated on-batch call with one structure reuses.

    Attributes:
        entry: The batch function (draw block already chosen).
        index: Device array ``arange(num_draws)``: the draw indices of the key schedule.
        call: The compiled executable for this structure (the batch function itself
            until the first call has compiled it).
        dims: Output dim names per site, once known.
    """

    entry: BatchFunction
    index: jax.Array
    call: Callable[..., dict[str, jax.Array]]
    dims: dict[str, tuple[str, ...]] | None = None


def _executable(entry: BatchFunction, args: tuple) -> Callable[..., Any]:
    """The compiled executable the batch function keeps for ``args`` (after a call),
    or the batch function itself when it keeps none."""
    compiled = getattr(entry.fn, "_compiled", None)
    if not isinstance(compiled, dict):
        return entry.fn
    found = compiled.get(call_signature(args))
    return entry.fn if found is None else found


def run_on_batch(
    runner: BlockRunner,
    config: BatchConfig,
    extras: dict[str, Any],
    post: dict[str, jax.Array],
    key: jax.Array,
    arrays: dict[str, jax.Array],
    intervention: dict[str, Any],
    condition: dict[str, Any],
) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, ...]]]:
    """All draws of one in-memory batch, as host arrays and their dim names.

    The on-batch counterpart of ``BlockRunner.run_on_batch`` with the per-structure
    work memoised (see the module docstring).

    Example:
        >>> from aimz_core.testing import fitted_linreg, linreg_data
        >>> model = fitted_linreg()
        >>> X, _ = linreg_data()
        >>> model.predict_on_batch(X[:3], return_datatree=False)["y"].shape
        (100, 3)
    """
    from aimz_core.streaming.blocks import dim_names

    shape_key = ("on_batch", config, structure((post, arrays, intervention, condition)))
    memo = runner.functions.memo
    plan = memo.get(shape_key)
    if plan is not None:
        with contextlib.suppress(KeyError):  # dropped by another thread meanwhile
            memo.move_to_end(shape_key)  # least recently used plans are dropped first
    else:
        one_args = (key, first_draw(post), arrays, intervention, condition)
        entry = runner.blocked(config, extras, one_args)
        plan = OnBatchPlan(entry, jnp.arange(config.num_draws), entry.fn)
    args = (post, (key, plan.index), arrays, intervention, condition)
    out = plan.call(*args)
    host = {k: np.asarray(v) for k, v in out.items()}
    if plan.dims is None:
        plan.call = _executable(plan.entry, args)
        plan.dims = {k: dim_names(k, v.ndim - 1, plan.entry.dims) for k, v in host.items()}
        runner.functions.remember(shape_key, lambda: plan)
    return host, dict(plan.dims)


__all__ = ["OnBatchPlan", "call_arrays", "run_on_batch", "split_key", "structure"]
