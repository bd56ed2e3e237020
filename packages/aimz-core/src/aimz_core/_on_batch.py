"""Low-latency pieces of the on-batch call path (``predict_on_batch`` and friends).

A warm ``predict_on_batch`` of a few rows is dominated by fixed per-call costs, not by
the kernel. What depends only on the model and on the structure of the call (the
shapes, dtypes and placement of the arguments) is computed once and kept in the
model's :class:`~aimz_core.batched.FunctionCache` memo: the batch function with its
memory-safe draw block, the device array of draw indices, the compiled executable
and the output dim names. A repeated call then dispatches one executable and copies
its result to the host; keys are split by one jitted function instead of op by op.

The result is that of calling the batch function itself: the same batch function,
arguments and key schedule.

A repeat of a plain call (a NumPy ``X`` of the same shape and dtype, no keyword
arguments, interventions or conditions, the same ``return_sites``) skips even the
argument binding and the checks: :class:`RepeatCall` keeps what the first call
validated, together with the posterior, kernel spec and fitted parameters it was
validated against, and replays it only while those are the very same objects. The
fitted parameters are compared entry by entry: assigning a new value to an entry of
``vi_result.params`` (the dict itself unchanged) is seen, as the streaming methods
see it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import dtypes, random

from aimz_core._posterior import first_draw
from aimz_core._precision import precision_key
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
    lookup = getattr(entry.fn, "executable", None)
    found = lookup(args) if lookup is not None else None
    return entry.fn if found is None else found


@dataclass
class RepeatCall:
    """What a validated plain on-batch call needs to run again (see :func:`repeat_key`).

    The objects it was validated against (``post``, ``spec``, ``vi_result`` and the
    entries of ``vi_result.params``) are kept by reference and compared by identity,
    so a new posterior, a new kernel spec, a new fit or a parameter replaced in place
    (``model.vi_result.params["s"] = value``) never reuses an entry.

    Attributes:
        post: The posterior the call substituted (``{}`` for prior draws).
        spec: The model's kernel spec at the time.
        vi_result: The model's ``vi_result`` at the time (its fitted params are in
            ``intervention``).
        plan: The on-batch plan that ran it.
        name: The kernel argument ``X`` binds to.
        intervention: The batch function's intervention argument.
        condition: The batch function's condition argument.
        params: ``vi_result.params`` entries at the time (see :func:`param_entries`).
    """

    post: dict[str, Any]
    spec: Any
    vi_result: Any
    plan: OnBatchPlan
    name: str
    intervention: dict[str, Any]
    condition: dict[str, Any]
    params: tuple[tuple[str, Any], ...] = ()
    #: JAX's matmul precision setting the executable was compiled under.
    precision: str = field(default_factory=precision_key)

    def valid(self, post: dict[str, Any], spec: Any, vi_result: Any) -> bool:
        """Whether the model still holds the objects this call was validated against
        (and JAX's matmul precision setting is the one it was compiled under)."""
        same_post = self.post is post or not (self.post or post)
        if not (same_post and self.spec is spec and self.vi_result is vi_result):
            return False
        if self.precision != precision_key():
            return False
        now = param_entries(vi_result)
        return len(now) == len(self.params) and all(
            a[0] == b[0] and a[1] is b[1] for a, b in zip(now, self.params, strict=True)
        )

    def run(self, key: jax.Array, X: np.ndarray) -> tuple[dict[str, np.ndarray], dict]:
        """All draws for ``X`` with ``key``, as :func:`run_on_batch` returns them."""
        plan = self.plan
        args = (self.post, (key, plan.index), {self.name: X}, self.intervention, self.condition)
        out = plan.call(*args)
        return {k: np.asarray(v) for k, v in out.items()}, dict(plan.dims or {})


def param_entries(vi_result: Any) -> tuple[tuple[str, Any], ...]:
    """The ``(name, value)`` entries of ``vi_result.params`` (``()`` without a fit),
    values by reference: :meth:`RepeatCall.valid` compares them by identity.

    Example:
        >>> from types import SimpleNamespace
        >>> w = np.ones(2)
        >>> param_entries(SimpleNamespace(params={"w": w}))[0][1] is w, param_entries(None)
        (True, ())
    """
    params = getattr(vi_result, "params", None)
    if not params:
        return ()
    return tuple(params.items())


def repeat_key(
    kind: str,
    X: Any,
    num_draws: int,
    return_sites: Any,
    *handlers_and_kwargs: Any,
) -> tuple | None:
    """Memo key of a plain on-batch call, or ``None`` when the call is not plain.

    Plain: ``X`` is a NumPy array JAX takes as it is (see :func:`call_arrays`), every
    one of ``handlers_and_kwargs`` (intervention, condition, keyword arguments) is
    empty, and ``return_sites`` is ``None``, a string or a sequence of strings.

    Example:
        >>> repeat_key("predict", np.ones((2, 3), np.float32), 10, None, None, {})[:4]
        ('repeat', 'predict', 10, (2, 3))
        >>> repeat_key("predict", np.ones((2, 3), np.float32), 10, None, {"t": 1}) is None
        True
    """
    if type(X) is not np.ndarray or any(handlers_and_kwargs):
        return None
    dtype = X.dtype
    if dtype.kind not in "biufc" or dtypes.canonicalize_dtype(dtype) != dtype:
        return None
    if return_sites is not None and not isinstance(return_sites, str):
        if not isinstance(return_sites, (list, tuple)) or not all(
            isinstance(site, str) for site in return_sites
        ):
            return None
        return_sites = tuple(return_sites)
    return ("repeat", kind, num_draws, X.shape, dtype, return_sites, precision_key())


def run_on_batch(
    runner: BlockRunner,
    config: BatchConfig,
    extras: dict[str, Any],
    post: dict[str, jax.Array],
    key: jax.Array,
    arrays: dict[str, jax.Array],
    intervention: dict[str, Any],
    condition: dict[str, Any],
) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, ...]], OnBatchPlan]:
    """All draws of one in-memory batch, as host arrays and their dim names, and the
    plan that ran them.

    The batch function called on the whole batch, with the per-structure work
    memoised (see the module docstring).

    Example:
        >>> from aimz_core.testing import fitted_linreg, linreg_data
        >>> model = fitted_linreg()
        >>> X, _ = linreg_data()
        >>> model.predict_on_batch(X[:3], return_datatree=False)["y"].shape
        (100, 3)
    """
    from aimz_core.streaming.blocks import dim_names

    shape_key = (
        "on_batch",
        config,
        structure((post, arrays, intervention, condition)),
        precision_key(),  # the plan keeps a compiled executable
    )
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
    return host, dict(plan.dims), plan


__all__ = [
    "OnBatchPlan",
    "RepeatCall",
    "call_arrays",
    "param_entries",
    "repeat_key",
    "run_on_batch",
    "split_key",
    "structure",
]
