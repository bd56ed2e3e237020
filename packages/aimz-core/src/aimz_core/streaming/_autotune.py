"""Plan choice by measurement: time a few formulations of a streamed call's batch
function on its first batches and keep the fastest.

A streamed call on the ``"obs"`` path with an automatic batch size computes every
batch with one program: the planner's draw block (``vmap`` over blocks of draws,
``lax.map`` over the blocks). Whether that, another block size or a plain
``lax.map`` over single draws is fastest depends on the model and the machine, so
a large enough call measures them:

* every batch is cut into a few slices of draws; each candidate computes whole
  slices of real batches (their results are written like any other), first once to
  compile, then twice timed, interleaved with the other candidates;
* the fastest (per draw, the better of its two timings) computes the rest of the
  call; the planner's own block is kept unless another candidate is faster by more
  than :data:`MARGIN`;
* the winner is stored in memory and, where the executable cache persists
  (:func:`~aimz_core._jit_cache.executable_cache_dir`), in
  ``<cache dir>/autotune/<key>.json``: the key digests the planner's batch program
  (kernel, shapes and dtypes, method, shard axis, devices) and the device kind, so
  the next call with the same program, in this process or another, uses the
  winner's whole-batch program without timing anything.

The key schedule is that of the planner (batch ``i`` uses ``fold_in(key, i)``,
split into one key per draw) whatever formulation computes it, so the draws are the
same and the values agree to floating-point rounding. Rows per batch are not tuned:
on the ``"obs"`` path they decide the key schedule, so another row count would
change the draws. The ``"draw"`` path, sharded calls, distributed runs and calls
with a fixed ``batch_size`` (or a data loader) are never tuned. ``AIMZ_AUTOTUNE=0``
switches tuning and stored choices off.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax, random

from aimz_core._jit_cache import (
    PersistentJit,
    call_signature,
    default_cache_dir,
    enabled_by_env,
    program_key,
)
from aimz_core._locks import TRACE_LOCK
from aimz_core._posterior import first_draw
from aimz_core._sizing import (
    CACHE_BYTES_PER_BLOCK,
    MAX_DRAWS_PER_BLOCK,
    MIN_DRAWS_PER_BLOCK,
    TEMP_BYTES_PER_BLOCK,
)

if TYPE_CHECKING:
    from aimz_core.streaming.blocks import BlockRunner
    from aimz_core.streaming.plan import StreamPlan

#: Bumped when the key or the stored format changes.
VERSION = 1
#: Slices of draws each batch is cut into while tuning.
SLICES_PER_BATCH = 8
#: Draws per slice at least (fewer slices when a batch has fewer draws).
MIN_SLICE_DRAWS = 8
#: Timed slices per candidate (after one untimed slice that compiles it).
TIMED_ROUNDS = 2
#: A call is tuned when it has at least this many slices (``AIMZ_AUTOTUNE_MIN_SLICES``
#: overrides it; tests set it low): 64 slices are 8 batches.
MIN_SLICES = 64
#: The planner's block is kept unless another candidate is this much faster.
MARGIN = 0.01

_LOCK = threading.Lock()
_MEMORY: dict[str, Formulation] = {}
_BUSY: set[str] = set()
#: Event counts (read by tests): timed slices, tuned calls, stored choices reused,
#: choices read from disk.
COUNTS: dict[str, int] = {"timed": 0, "tuned": 0, "reused": 0, "loaded": 0}
#: The last tuning of this process: ``units`` (label, timed, seconds, draws) of every
#: slice computed while tuning, ``winner`` and ``overhead_s``: their time beyond what
#: the winner would have taken for the same draws (compiling the candidates included).
LAST: dict[str, Any] = {}


@dataclasses.dataclass(frozen=True)
class Formulation:
    """How a batch function maps its draws.

    Attributes:
        mode: ``"vmap"`` (``lax.map`` over blocks of ``block`` vectorised draws, or
            one ``vmap`` over all draws when ``block`` is ``None``) or ``"map"``
            (``lax.map`` over single draws, nothing vectorised).
        block: Draws per block of ``"vmap"``.

    Example:
        >>> Formulation("map").label, Formulation("vmap", 4).label
        ('map', 'vmap-4')
    """

    mode: str
    block: int | None = None

    @property
    def label(self) -> str:
        """Short name (``"map"``, ``"vmap-4"``, ``"vmap-all"``)."""
        if self.mode == "map":
            return "map"
        return f"vmap-{self.block if self.block is not None else 'all'}"


def autotune_enabled() -> bool:
    """Whether ``AIMZ_AUTOTUNE`` allows tuning (default on; ``0``, ``false``,
    ``no`` or ``off`` switch it off).

    Example:
        >>> isinstance(autotune_enabled(), bool)
        True
    """
    value = os.environ.get("AIMZ_AUTOTUNE", "1").strip().lower()
    return value not in ("0", "false", "no", "off")


def min_slices() -> int:
    """Slices a call needs before it is tuned (see :data:`MIN_SLICES`).

    Example:
        >>> min_slices() >= 1
        True
    """
    raw = os.environ.get("AIMZ_AUTOTUNE_MIN_SLICES", "").strip()
    try:
        return max(1, int(raw)) if raw else MIN_SLICES
    except ValueError:
        return MIN_SLICES


def autotune_dir() -> Path | None:
    """Where choices are stored: next to the executable cache, ``None`` when it is off.

    Example:
        >>> path = autotune_dir()
        >>> path is None or path.name == "autotune"
        True
    """
    if not enabled_by_env():
        return None
    return default_cache_dir() / "autotune"


def slice_length(num_draws: int) -> int:
    """Draws per tuning slice of a batch of ``num_draws`` draws.

    Example:
        >>> slice_length(1000), slice_length(40), slice_length(10)
        (125, 8, 10)
    """
    slices = max(1, min(SLICES_PER_BATCH, num_draws // MIN_SLICE_DRAWS))
    return math.ceil(num_draws / slices)


def candidates(block: int | None, per_draw: int, length: int) -> list[Formulation]:
    """The formulations a call times: the planner's first, ``lax.map`` over single
    draws, and a block twice the planner's within the memory budget, or half of it
    when the planner's block already overflows the cache budget
    (:data:`~aimz_core._sizing.CACHE_BYTES_PER_BLOCK`: large draws, such as a wide
    layer over many rows, where vectorising draws only adds memory traffic).

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
    """
    most = min(MAX_DRAWS_PER_BLOCK, TEMP_BYTES_PER_BLOCK // max(1, per_draw))
    out = [Formulation("vmap", block)]
    if block != 1:  # a block of 1 is `lax.map` over single draws already
        out.append(Formulation("map"))
    if block is None:
        other = MIN_DRAWS_PER_BLOCK
    elif block * per_draw > CACHE_BYTES_PER_BLOCK and block >= 4:
        other = block // 2
    elif 2 * block <= most and 2 * block < length:
        other = 2 * block
    else:
        other = block // 2
    if 2 <= other < length and other <= max(most, 1):
        out.append(Formulation("vmap", other))
    return out


def build(
    one: Callable[..., dict[str, jax.Array]],
    num_draws: int,
    length: int,
    formulation: Formulation,
) -> PersistentJit:
    """A jitted ``f(post, (key, index), start, arrays, intervention, condition)``
    computing draws ``start .. start + length`` of batch ``index``.

    The keys are the planner's: ``split(fold_in(key, index), num_draws)``, sliced.
    With ``length == num_draws`` it computes the whole batch (``start`` unused).

    Example:
        >>> f = build(lambda k, d, a, i, c: {"y": d["w"] * a["x"]}, 4, 2, Formulation("map"))
        >>> post = {"w": jnp.arange(4.0)}
        >>> out = f(post, (random.key(0), 0), np.int32(2), {"x": jnp.ones(3)}, {}, {})
        >>> out["y"][:, 0].tolist()
        [2.0, 3.0]
    """

    def fn(post, key_index, start, arrays, intervention, condition):
        key, index = key_index
        keys = random.split(random.fold_in(key, index), num_draws)
        if length < num_draws:
            keys = lax.dynamic_slice_in_dim(keys, start, length)
            post = jax.tree.map(lambda v: lax.dynamic_slice_in_dim(v, start, length), post)

        def single(kp):
            return one(kp[0], kp[1], arrays, intervention, condition)

        if formulation.mode == "map":
            return lax.map(single, (keys, post))
        if formulation.block is None or formulation.block >= length:
            return jax.vmap(one, in_axes=(0, 0, None, None, None))(
                keys, post, arrays, intervention, condition
            )
        return lax.map(single, (keys, post), batch_size=formulation.block)

    return PersistentJit(jax.jit(fn))


_DEFAULT: Any = object()


def _store_path(key: str, directory: Path | None) -> Path | None:
    base = autotune_dir() if directory is _DEFAULT else directory
    return None if base is None else base / f"{key}.json"


def lookup(key: str, directory: Path | None = _DEFAULT) -> Formulation | None:
    """The stored choice for ``key``: from memory, else from ``directory`` (default
    :func:`autotune_dir`; then remembered in memory).

    Example:
        >>> lookup("no-such-program", directory=None) is None
        True
    """
    with _LOCK:
        if key in _MEMORY:
            return _MEMORY[key]
    path = _store_path(key, directory)
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        found = Formulation(str(data["mode"]), data["block"])
        if found.mode not in ("map", "vmap") or data.get("version") != VERSION:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable or foreign: tune again (and overwrite)
    with _LOCK:
        _MEMORY[key] = found
        COUNTS["loaded"] += 1
    return found


def store(
    key: str,
    winner: Formulation,
    timings: Mapping[str, float],
    directory: Path | None = _DEFAULT,
) -> None:
    """Remember ``winner`` for ``key`` in memory and in ``directory`` (default
    :func:`autotune_dir`, ``None``: memory only) as ``<key>.json``.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> store("doc-example", Formulation("map"), {"map": 1e-3}, directory=d)
        >>> forget()  # memory only: the file is read back
        >>> lookup("doc-example", directory=d), COUNTS["loaded"]
        (Formulation(mode='map', block=None), 1)
        >>> forget()
    """
    with _LOCK:
        _MEMORY[key] = winner
    path = _store_path(key, directory)
    if path is None:
        return
    payload = {
        "version": VERSION,
        "mode": winner.mode,
        "block": winner.block,
        "device_kind": jax.devices()[0].device_kind,
        "seconds_per_draw": dict(timings),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1)
        os.replace(tmp, path)
    except OSError:  # read-only cache: the choice stays in memory
        pass


def forget() -> None:
    """Drop the choices kept in memory (not those on disk) and reset :data:`COUNTS`.

    Example:
        >>> forget(); COUNTS["timed"]
        0
    """
    with _LOCK:
        _MEMORY.clear()
        for name in COUNTS:
            COUNTS[name] = 0


def choose(times: Mapping[Formulation, float], default: Formulation) -> Formulation:
    """The fastest formulation; ``default`` unless beaten by more than :data:`MARGIN`.

    Example:
        >>> a, b = Formulation("vmap", 4), Formulation("map")
        >>> choose({a: 1.0, b: 0.995}, a).label, choose({a: 1.0, b: 0.9}, a).label
        ('vmap-4', 'map')
    """
    best = min(times, key=times.__getitem__)
    if default in times and times[default] <= times[best] * (1 + MARGIN):
        return default
    return best


def tunable(plan: StreamPlan, runner: BlockRunner) -> bool:
    """Whether ``plan`` may run another formulation: an automatic batch size on the
    unsharded ``"obs"`` path, with tuning switched on."""
    config = runner.plan_config(plan)
    return (
        autotune_enabled()
        and plan.auto_batch
        and plan.shard_axis == "obs"
        and not config.sharded
        and config.chunk is None
    )


class TunedLaunch:
    """``launch(i, start, rows)`` of a tunable streamed call (see the module docstring).

    The first launch looks the call's program up: a stored choice runs every batch
    with its whole-batch program; otherwise a large enough call (and the only one
    tuning that program at the moment) times the candidates on slices of its first
    batches; any other call runs the planner's program, as without tuning.
    """

    def __init__(self, runner: BlockRunner, plan: StreamPlan) -> None:
        self.runner = runner
        self.plan = plan
        self.config = runner.plan_config(plan)
        self.entry = runner.function(self.config, plan.extras)
        self.num_draws = self.config.num_draws
        self.mode = ""  # "default", "stored" or "tune", set by the first launch
        self.key: str | None = None
        self.winner: Formulation | None = None
        self.length = slice_length(self.num_draws)
        self.queue: list[tuple[Formulation, bool]] = []
        self.candidates: list[Formulation] = []
        self.times: dict[Formulation, float] = {}
        self.last: Any = None
        self.units: list[tuple[str, bool, float, int]] = []

    def _program_id(self, args: tuple) -> str | None:
        def compute() -> str | None:
            with TRACE_LOCK:
                traced = self.entry.fn.jitted.trace(*args)
            digest = program_key(traced)
            if digest is None:
                return None
            parts = [
                f"autotune={VERSION}",
                digest,
                self.plan.kind,
                self.plan.caller,
                self.plan.shard_axis,
                str(self.runner.layout.num_devices),
                jax.devices()[0].device_kind,
            ]
            return hashlib.sha256("\n".join(parts).encode()).hexdigest()

        memo_key = ("autotune-id", self.config, call_signature(args))
        return self.runner.functions.remember(memo_key, compute)

    def _function(self, formulation: Formulation, length: int) -> PersistentJit:
        memo_key = ("autotune-fn", self.config, length, formulation)
        return self.runner.functions.remember(
            memo_key, lambda: build(self.entry.one, self.num_draws, length, formulation)
        )

    def _setup(self, args: tuple) -> None:
        self.mode = "default"
        try:
            self.key = self._program_id(args)
        except Exception:  # an unusual program: run the planner's, as without tuning
            self.key = None
        if self.key is None:
            return
        found = lookup(self.key)
        slices = math.ceil(self.num_draws / self.length)
        with _LOCK:
            found = _MEMORY.get(self.key, found)  # stored meanwhile by another thread
            if found is not None:
                COUNTS["reused"] += 1
            elif len(self.plan.ranges) * slices < min_slices() or self.key in _BUSY:
                return  # too small, or another thread tunes this program now
            else:
                _BUSY.add(self.key)
        if found is not None:
            if found != Formulation("vmap", self.config.draw_block):
                self.mode, self.winner = "stored", found
            return
        per_draw = self.entry.draw_bytes(
            (args[1][0], first_draw(args[0]), args[2], args[3], args[4])
        )
        self.candidates = candidates(self.config.draw_block, per_draw, self.length)
        self.queue = [(f, False) for f in self.candidates]
        for _ in range(TIMED_ROUNDS):
            self.queue += [(f, True) for f in self.candidates]
        self.times = {}
        self.mode = "tune"
        with _LOCK:
            COUNTS["tuned"] += 1

    def finish(self, completed: bool) -> None:
        """End of the call: store a winner when every candidate was timed (a call
        shorter than the tuning schedule, as in tests) and let other calls tune."""
        if self.mode != "tune" or self.key is None:
            return
        timed = bool(self.candidates) and set(self.candidates) <= set(self.times)
        if completed and self.winner is None and timed:
            self.queue = []
            self._winner()
        with _LOCK:
            _BUSY.discard(self.key)

    def __call__(self, i: int, start: int, rows: Mapping[str, Any]) -> dict[str, jax.Array]:
        args = self.runner.block_args(self.plan, i, start, rows)
        if not self.mode:
            self._setup(args)
        if self.mode == "default":
            return self.entry.fn(*args)
        post, (key, index), arrays, interv, cond = args
        index = np.int32(index)
        if self.mode == "stored":
            assert self.winner is not None
            fn = self._function(self.winner, self.num_draws)
            return fn(post, (key, index), np.int32(0), arrays, interv, cond)
        out = self._sliced(post, key, index, arrays, interv, cond)
        self.last = out
        return out

    def _sliced(self, post, key, index, arrays, interv, cond) -> dict[str, jax.Array]:
        length, total = self.length, self.num_draws
        parts: list[dict[str, jax.Array]] = []
        for first in range(0, total, length):
            start = min(first, total - length)  # the last slice may overlap the one before
            if self.queue:
                formulation, timed = self.queue.pop(0)
            else:
                formulation, timed = self._winner(), False
            fn = self._function(formulation, length)
            call_args = (post, (key, index), np.int32(start), arrays, interv, cond)
            if self.queue or timed:
                if self.last is not None:  # earlier batches still computing
                    jax.block_until_ready(self.last)
                    self.last = None
                if parts:
                    jax.block_until_ready(parts[-1])
                began = time.perf_counter()
                out = fn(*call_args)
                jax.block_until_ready(out)
                elapsed = time.perf_counter() - began
                self.units.append((formulation.label, timed, elapsed, length))
                if timed:
                    per_draw = elapsed / length
                    self.times[formulation] = min(self.times.get(formulation, math.inf), per_draw)
                    with _LOCK:
                        COUNTS["timed"] += 1
            else:
                out = fn(*call_args)
            if start < first:
                out = {k: v[first - start :] for k, v in out.items()}
            parts.append(out)
        if len(parts) == 1:
            return parts[0]
        return {k: jnp.concatenate([p[k] for p in parts], axis=0) for k in parts[0]}

    def _winner(self) -> Formulation:
        if self.winner is None:
            default = Formulation("vmap", self.config.draw_block)
            self.winner = choose(self.times, default)
            rate = self.times.get(self.winner, 0.0)
            spent = sum(u[2] for u in self.units)
            LAST.clear()
            LAST.update(
                units=list(self.units),
                winner=self.winner.label,
                overhead_s=spent - rate * sum(u[3] for u in self.units),
            )
            if self.key is not None:
                store(self.key, self.winner, {f.label: t for f, t in self.times.items()})
                with _LOCK:
                    _BUSY.discard(self.key)
        return self.winner


__all__ = [
    "COUNTS",
    "Formulation",
    "TunedLaunch",
    "autotune_dir",
    "autotune_enabled",
    "build",
    "candidates",
    "choose",
    "forget",
    "lookup",
    "min_slices",
    "slice_length",
    "store",
    "tunable",
]
