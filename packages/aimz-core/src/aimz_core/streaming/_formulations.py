"""The formulations a tuned call may compute its batches with, and their programs.

A formulation fixes how draws are mapped (``lax.map`` over single draws or over
blocks of vectorised draws) and how many of the planner's batches of rows one
launch computes at once. Every formulation uses the planner's key schedule (batch
``i`` uses ``fold_in(key, i)``, split into one key per draw), so they all give the
same draws, equal to floating-point rounding.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax, random

from aimz_core._jit_cache import PersistentJit
from aimz_core._sizing import (
    CACHE_BYTES_PER_BLOCK,
    MAX_DRAWS_PER_BLOCK,
    TEMP_BYTES_PER_BLOCK,
    dividing_block,
)

#: Slices of draws each batch is cut into while tuning.
SLICES_PER_BATCH = 8
#: Draws per slice at least (fewer slices when a batch has fewer draws).
MIN_SLICE_DRAWS = 8
#: Most of the planner's batches one launch computes at once.
MAX_BATCHES_PER_LAUNCH = 4
#: The block tried against one ``vmap`` over every draw.
SPLIT_BLOCK = 4


@dataclasses.dataclass(frozen=True)
class Formulation:
    """How a launch maps its draws, and how many planner batches it computes.

    Attributes:
        mode: ``"vmap"`` (``lax.map`` over blocks of ``block`` vectorised draws, or
            one ``vmap`` over all draws when ``block`` is ``None``) or ``"map"``
            (``lax.map`` over single draws, nothing vectorised).
        block: Draws per block of ``"vmap"``.
        batches: Consecutive batches of the planner's rows computed by one launch
            (``vmap`` over the batches, each with its own key): 1, 2 or 4.

    Example:
        >>> Formulation("map").label, Formulation("vmap", 4).label
        ('map', 'vmap-4')
        >>> Formulation("vmap", 2, batches=2).label
        'vmap-2x2'
    """

    mode: str
    block: int | None = None
    batches: int = 1

    @property
    def label(self) -> str:
        """Short name (``"map"``, ``"vmap-4"``, ``"vmap-all"``; ``"x2"`` appended
        for two batches per launch)."""
        name = "map" if self.mode == "map" else f"vmap-{self.block or 'all'}"
        return name if self.batches == 1 else f"{name}x{self.batches}"

    def with_batches(self, batches: int) -> Formulation:
        """The same mapping of draws over ``batches`` batches per launch.

        Example:
            >>> Formulation("map").with_batches(2).label
            'mapx2'
        """
        return dataclasses.replace(self, batches=batches)


def slice_length(num_draws: int, multiple: int = 1) -> int:
    """Draws per tuning slice of a batch of ``num_draws`` draws.

    About :data:`SLICES_PER_BATCH` slices of at least :data:`MIN_SLICE_DRAWS`. With
    ``multiple`` (the candidates' draw blocks), a slice count up to twice that (never
    fewer: a short call still times every candidate) whose slices are equal and a
    multiple of ``multiple`` is preferred (the nearest): ``lax.map`` over blocks then
    needs no second program for a remainder, which on the benchmark MLP cut a
    block-2 slice's compile from 1.33 to 0.94 s.

    Example:
        >>> slice_length(1000), slice_length(40), slice_length(10)
        (125, 8, 10)
        >>> slice_length(1000, 2), slice_length(1000, 4), slice_length(1000, 16)
        (100, 100, 125)
    """
    slices = max(1, min(SLICES_PER_BATCH, num_draws // MIN_SLICE_DRAWS))
    if multiple > 1:
        counts = range(slices, 2 * slices + 1)
        even = [
            c
            for c in counts
            if num_draws % c == 0
            and (num_draws // c) % multiple == 0
            and num_draws // c >= MIN_SLICE_DRAWS
        ]
        if even:
            return num_draws // min(even, key=lambda c: (abs(c - slices), c))
    return math.ceil(num_draws / slices)


def blocks_multiple(formulations: list[Formulation]) -> int:
    """The least common multiple of the draw blocks of ``formulations``.

    Example:
        >>> blocks_multiple([Formulation("vmap", 4), Formulation("map"), Formulation("vmap", 2)])
        4
    """
    return math.lcm(*(f.block or 1 for f in formulations if f.mode == "vmap"), 1)


def candidates(
    block: int | None, per_draw: int, length: int, num_draws: int | None = None
) -> list[Formulation]:
    """The mappings of draws a call times: the planner's first, ``lax.map`` over
    single draws, and a block twice the planner's within the memory budget, or half
    of it when the planner's block already overflows the cache budget
    (:data:`~aimz_core._sizing.CACHE_BYTES_PER_BLOCK`: large draws, such as a wide
    layer over many rows, where vectorising draws only adds memory traffic). With
    ``num_draws`` (the whole batch's draws), that block is moved to a divisor of it
    (:func:`~aimz_core._sizing.dividing_block`), so a winner needs no remainder.

    Example:
        >>> [f.label for f in candidates(4, 2**20, 125)]
        ['vmap-4', 'map', 'vmap-8']
        >>> [f.label for f in candidates(4, 2**21, 125)]  # 8 MiB per block of 4
        ['vmap-4', 'map', 'vmap-2']
        >>> [f.label for f in candidates(16, 1000, 125)]
        ['vmap-16', 'map', 'vmap-8']
        >>> [f.label for f in candidates(1, 2**22, 125)]  # single draws: try pairs
        ['vmap-1', 'vmap-2']
        >>> [f.label for f in candidates(None, 1000, 8)]
        ['vmap-all', 'map', 'vmap-4']
        >>> [f.label for f in candidates(8, 1000, 125, num_draws=1000)]  # not 16
        ['vmap-8', 'map', 'vmap-10']
    """
    most = min(MAX_DRAWS_PER_BLOCK, TEMP_BYTES_PER_BLOCK // max(1, per_draw))
    out = [Formulation("vmap", block)]
    if block != 1:  # a block of 1 is `lax.map` over single draws already
        out.append(Formulation("map"))
    if block is None:
        other = SPLIT_BLOCK
    elif block * per_draw > CACHE_BYTES_PER_BLOCK and block >= 4:
        other = block // 2
    elif 2 * block <= most and 2 * block < length:
        other = 2 * block
    else:
        other = block // 2
    if num_draws is not None and other >= 1:
        other = dividing_block(other, num_draws)
    if 2 <= other < length and other <= max(most, 1) and Formulation("vmap", other) not in out:
        out.append(Formulation("vmap", other))
    return out


def _map_draws(
    one: Callable[..., dict[str, jax.Array]],
    formulation: Formulation,
    keys: jax.Array,
    post: dict[str, jax.Array],
    arrays: dict[str, jax.Array],
    intervention: dict[str, jax.Array],
    condition: dict[str, jax.Array],
) -> dict[str, jax.Array]:
    """Every draw of ``keys``/``post`` on one batch of rows, as ``formulation`` maps them."""

    def single(kp):
        return one(kp[0], kp[1], arrays, intervention, condition)

    count = keys.shape[0]
    if formulation.mode == "map" or formulation.block == 1:  # no axis of 1 to vmap over
        return lax.map(single, (keys, post))
    if formulation.block is None or formulation.block >= count:
        return jax.vmap(one, in_axes=(0, 0, None, None, None))(
            keys, post, arrays, intervention, condition
        )
    return lax.map(single, (keys, post), batch_size=formulation.block)


def build(
    one: Callable[..., dict[str, jax.Array]],
    num_draws: int,
    length: int,
    formulation: Formulation,
) -> PersistentJit:
    """A jitted ``f(post, (key, index), start, arrays, intervention, condition)``
    computing draws ``start .. start + length`` of batches ``index .. index +
    batches - 1``, whose rows ``arrays`` holds one after the other (``batches``
    times the planner's batch length).

    Batch ``index + j`` uses the planner's keys, ``split(fold_in(key, index + j),
    num_draws)``, sliced. With ``length == num_draws`` it computes whole batches
    (``start`` unused). Several batches are computed by one ``vmap`` over them, so
    the work of each row is that of the planner's program on larger arrays.

    Example:
        >>> import numpy as np
        >>> one = lambda k, d, a, i, c: {"y": d["w"] * a["x"]}
        >>> f = build(one, 4, 2, Formulation("map"))
        >>> post = {"w": jnp.arange(4.0)}
        >>> out = f(post, (random.key(0), 0), np.int32(2), {"x": jnp.ones(3)}, {}, {})
        >>> out["y"][:, 0].tolist()
        [2.0, 3.0]
        >>> two = build(one, 4, 4, Formulation("map", batches=2))
        >>> x = {"x": jnp.arange(6.0)}  # two batches of 3 rows
        >>> two(post, (random.key(0), 0), np.int32(0), x, {}, {})["y"].shape
        (4, 6)
    """
    batches = formulation.batches

    def draws_of(post, keys, arrays, intervention, condition):
        return _map_draws(one, formulation, keys, post, arrays, intervention, condition)

    def fn(post, key_index, start, arrays, intervention, condition):
        key, index = key_index
        if length < num_draws:
            post = jax.tree.map(lambda v: lax.dynamic_slice_in_dim(v, start, length), post)

        def batch_keys(i):
            keys = random.split(random.fold_in(key, i), num_draws)
            return lax.dynamic_slice_in_dim(keys, start, length) if length < num_draws else keys

        if batches == 1:
            return draws_of(post, batch_keys(index), arrays, intervention, condition)
        per_batch = jax.tree.map(lambda v: v.reshape(batches, -1, *v.shape[1:]), arrays)
        indices = index + jnp.arange(batches, dtype=jnp.asarray(index).dtype)
        out = jax.vmap(
            lambda i, rows: draws_of(post, batch_keys(i), rows, intervention, condition),
            out_axes=1,
        )(indices, per_batch)
        # (draws, batches, rows, ...) -> (draws, batches * rows, ...)
        return {k: v.reshape(v.shape[0], -1, *v.shape[3:]) for k, v in out.items()}

    return PersistentJit(jax.jit(fn))


__all__ = [
    "MAX_BATCHES_PER_LAUNCH",
    "MIN_SLICE_DRAWS",
    "SLICES_PER_BATCH",
    "Formulation",
    "blocks_multiple",
    "build",
    "candidates",
    "slice_length",
]
