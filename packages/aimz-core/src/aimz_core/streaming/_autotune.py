"""Plan choice by measurement: time a few formulations of a streamed call's batch
function on its first batches and keep the fastest.

A streamed call on the ``"obs"`` path with an automatic batch size computes every
batch with one program: the planner's draw block (``vmap`` over blocks of draws,
``lax.map`` over the blocks), one batch of rows per launch. Whether that, another
block size, a plain ``lax.map`` over single draws, or several batches per launch is
fastest depends on the model and the machine, so a large enough call measures them
(the candidates are :class:`~aimz_core.streaming._formulations.Formulation`):

* draws first: every batch is cut into a few slices of draws; each candidate
  computes whole slices of real batches (their results are written like any other),
  first once to compile, then twice timed, interleaved with the other candidates;
  the planner's own block is kept unless another candidate is faster by more than
  :data:`MARGIN`;
* then rows: the best mapping of draws computes 2 consecutive batches per launch
  (one ``vmap`` over the two batches, so each operation runs on twice the rows),
  timed the same way on slices of the next launch; when that is faster per draw by
  more than :data:`MARGIN`, 4 batches are tried next (at most
  :data:`~aimz_core.streaming._formulations.MAX_BATCHES_PER_LAUNCH`, and within
  :data:`LAUNCH_OUTPUT_BYTES` of output and twice the draw block's intermediates
  budget per launch);
* the winner computes the rest of the call (whole batches, one program per launch)
  and is stored in memory and, where the
  executable cache persists (:func:`~aimz_core._jit_cache.executable_cache_dir`),
  in ``<cache dir>/autotune/<key>.json``: the key digests the planner's batch
  program (kernel, shapes and dtypes, method, shard axis, devices) and the device
  kind, so the next call with the same program, in this process or another, uses
  the winner's whole-batch program without timing anything.

The key schedule is that of the planner whatever formulation computes a batch:
batch ``i`` (rows ``[i * size, (i + 1) * size)``) uses ``fold_in(key, i)``, split
into one key per draw, also inside a launch of several batches. So the draws are
the same and the values agree to floating-point rounding. A launch of several
batches covers whole batches, so its block is written to whole chunks; batches
left over at the end of a call (fewer than a launch holds) run one at a time.
The ``"draw"`` path, sharded calls, distributed runs and calls with a fixed
``batch_size`` (or a data loader) are never tuned. ``AIMZ_AUTOTUNE=0`` switches
tuning and stored choices off.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from aimz_core._jit_cache import (
    PersistentJit,
    call_signature,
    program_key,
)
from aimz_core._locks import TRACE_LOCK
from aimz_core._posterior import first_draw
from aimz_core._sizing import TEMP_BYTES_PER_BLOCK
from aimz_core.arguments import host_rows, pad_rows
from aimz_core.streaming._choices import (
    _BUSY,
    _LOCK,
    _MEMORY,
    COUNTS,
    VERSION,
    autotune_dir,
    forget,
    lookup,
    store,
)
from aimz_core.streaming._formulations import (
    MAX_BATCHES_PER_LAUNCH,
    Formulation,
    blocks_multiple,
    build,
    candidates,
    slice_length,
)

if TYPE_CHECKING:
    from aimz_core.streaming.blocks import BlockRunner
    from aimz_core.streaming.plan import StreamPlan

#: Timed slices per candidate (after one untimed slice that compiles it).
TIMED_ROUNDS = 2
#: A call is tuned when it has at least this many slices (``AIMZ_AUTOTUNE_MIN_SLICES``
#: overrides it; tests set it low): 160 slices are 20 batches of 1000 draws. Compiling
#: the candidates' slice programs is most of what tuning costs (2.7 of 3.05 s on the
#: benchmark MLP, 1000 draws x 100K rows in 13 batches: 3.9% of that call), and the
#: call compiles its winner's whole-batch program besides, so shorter calls cannot
#: amortise it.
MIN_SLICES = 160
#: The planner's block is kept unless another candidate is this much faster.
MARGIN = 0.01
#: Output bytes one launch of several batches may hold (128 MiB).
LAUNCH_OUTPUT_BYTES = 128 * 2**20
#: A rows candidate is tried only when compiling it (estimated from the draw
#: candidates' first slices) costs at most this share of the rest of the call. The
#: trial costs about twice its compile (on the benchmark MLP, 1000 draws x 160K rows:
#: 1.03 s to compile, 1.66 s in all, and it ran no faster), so 1% keeps it under 2%
#: of the call and the whole tuning under the 3% that issue 16 allows.
ROWS_TRIAL_SHARE = 0.01

logger = logging.getLogger("aimz")
#: The last tuning of this process: ``units`` (label, timed, seconds, draws x batches)
#: of every slice computed while tuning, the draw ``candidates``, ``winner`` and
#: ``overhead_s``: their time beyond what the winner would have taken for the same
#: draws (compiling the candidates included).
LAST: dict[str, Any] = {}


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


def batch_output_bytes(plan: StreamPlan) -> int:
    """Output bytes of one of ``plan``'s batches (padded rows included)."""
    total = 0
    for layout in plan.info.sites.values():
        cells = math.prod(layout.shape) // max(1, layout.shape[layout.stream_axis])
        total += cells * plan.size * layout.dtype.itemsize
    return total


class TunedLaunch:
    """``launch(i, start, stop, rows)`` of a tunable streamed call (see the module
    docstring); :meth:`span` says how many planner batches the launch at batch ``i``
    covers.

    The first launch looks the call's program up: a stored choice runs every launch
    with its whole-batch program; otherwise a large enough call (and the only one
    tuning that program at the moment) times the candidates on slices of its first
    launches and runs the rest with the winner's whole-batch program; any other call
    runs the planner's program, as without tuning.
    """

    def __init__(self, runner: BlockRunner, plan: StreamPlan) -> None:
        self.runner = runner
        self.plan = plan
        self.config = runner.plan_config(plan)
        self.entry = runner.function(self.config, plan.extras)
        self.num_draws = self.config.num_draws
        self.mode = ""  # "default", "stored" or "tune", set by the first launch
        self.key: str | None = None
        #: The formulation of the rest of the call, once chosen.
        self.winner: Formulation | None = None
        #: The fastest so far once the draw candidates are timed (rows phase).
        self.best: Formulation | None = None
        self.length = slice_length(self.num_draws)
        self.queue: list[tuple[Formulation, bool]] = []
        self.candidates: list[Formulation] = []
        #: Seconds per draw and batch, the better of each candidate's timed slices.
        self.times: dict[Formulation, float] = {}
        self.per_draw = 0
        #: Batches launched so far (this launch's included).
        self.launched = 0
        self._first: tuple[int, tuple] | None = None
        #: The first launch's arguments (shapes for tracing rows candidates).
        self._probe: tuple | None = None
        self.last: Any = None
        #: (label, timed, seconds, draws x batches) of every slice computed while tuning.
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
        post, key_index, arrays, interv, cond = args
        shapes = {k: jax.ShapeDtypeStruct(np.shape(v), v.dtype) for k, v in arrays.items()}
        self._probe = (post, key_index, shapes, interv, cond)
        self.per_draw = self.entry.draw_bytes(
            (args[1][0], first_draw(args[0]), args[2], args[3], args[4])
        )
        self.candidates = candidates(
            self.config.draw_block, self.per_draw, self.length, num_draws=self.num_draws
        )
        # Slices of whole blocks: no second program for a remainder to compile.
        self.length = slice_length(self.num_draws, blocks_multiple(self.candidates))
        self._queue(self.candidates)
        self.times = {}
        self.mode = "tune"
        with _LOCK:
            COUNTS["tuned"] += 1

    def _queue(self, formulations: list[Formulation]) -> None:
        """Time ``formulations``: one untimed (compiling) slice each, then rounds."""
        self.queue = [(f, False) for f in formulations]
        for _ in range(TIMED_ROUNDS):
            self.queue += [(f, True) for f in formulations]

    def _rows_allowed(self, batches: int) -> bool:
        """Whether a launch of ``batches`` batches stays within the budgets."""
        best = self.best
        if best is None or batches > MAX_BATCHES_PER_LAUNCH:
            return False
        block = 1 if best.mode == "map" else (best.block or self.num_draws)
        return (
            batches * batch_output_bytes(self.plan) <= LAUNCH_OUTPUT_BYTES
            and batches * min(block, self.length) * self.per_draw <= 2 * TEMP_BYTES_PER_BLOCK
        )

    def _worth_compiling(self, batches: int) -> bool:
        """Whether a rows candidate's compile is a small enough bet on the rest of
        the call (:data:`ROWS_TRIAL_SHARE`)."""
        assert self.best is not None
        first = {label: s for label, timed, s, _ in self.units if not timed}
        compiles = [
            first[f.label] - self.times[f] * self.length
            for f in self.candidates
            if f.label in first and f in self.times
        ]
        compile_s = max([0.0, *compiles])
        left = max(0, len(self.plan.ranges) - self.launched - batches)  # after the trial
        rest_s = left * self.num_draws * self.times[self.best]
        return compile_s <= ROWS_TRIAL_SHARE * rest_s

    def _traces(self, formulation: Formulation) -> bool:
        """Whether ``formulation`` traces on this call's inputs (shapes only, nothing
        compiled): a kernel whose operations cannot be batched over several batches
        of rows (an ordered ``io_callback``, say) keeps one batch per launch instead
        of failing the call."""
        if self._probe is None:
            return False
        post, (key, _), arrays, interv, cond = self._probe
        rows = {
            k: jax.ShapeDtypeStruct((formulation.batches * v.shape[0], *v.shape[1:]), v.dtype)
            for k, v in arrays.items()
        }
        fn = self._function(formulation, self.length)
        try:
            fn.eval_shape(post, (key, np.int32(0)), np.int32(0), rows, interv, cond)
        except Exception as err:
            logger.info("Rows candidate %s not tried: %s", formulation.label, err)
            return False
        return True

    def span(self, i: int) -> int:
        """Planner batches the launch at batch ``i`` computes (a launch never runs
        past the last batch). The first call looks the program up."""
        if not self.mode:
            start, stop = self.plan.ranges[i]
            rows = {k: host_rows(v, start, stop) for k, v in self.plan.arrays.items()}
            self._first = (i, self._args(i, start, rows, 1))
            self._setup(self._first[1])
        if self.mode == "tune" and self.queue:
            want = self.queue[0][0].batches
        else:
            want = self.winner.batches if self.winner is not None else 1
        if want > 1 and i + want > len(self.plan.ranges):
            if self.mode == "tune" and self.queue:  # too few batches left to time it
                self.queue = []
                self._finalize(self.best)
            return 1
        return want

    def finish(self, completed: bool) -> None:
        """End of the call: store a winner when every draw candidate was timed (a
        call shorter than the tuning schedule, as in tests) and let other calls tune."""
        if self.mode != "tune" or self.key is None:
            return
        timed = bool(self.candidates) and set(self.candidates) <= set(self.times)
        if completed and self.winner is None and timed:
            self.queue = []
            self._finalize(self.best or self._best_draws())
        with _LOCK:
            _BUSY.discard(self.key)

    def _args(self, i: int, start: int, rows: Mapping[str, Any], batches: int) -> tuple:
        if batches == 1:
            return self.runner.block_args(self.plan, i, start, rows)
        size = batches * self.plan.size
        arrays = {k: pad_rows(host_rows(v), size) for k, v in rows.items()}
        post = self.runner.posterior(self.plan)
        return (post, (self.plan.key, i), arrays, self.plan.intervention, self.plan.condition)

    def __call__(
        self, i: int, start: int, stop: int, rows: Mapping[str, Any]
    ) -> dict[str, jax.Array]:
        batches = max(1, math.ceil((stop - start) / self.plan.size))
        self.launched = i + batches
        first, self._first = self._first, None
        if first is not None and first[0] == i and batches == 1:
            args = first[1]  # built by `span` for the lookup
        else:
            args = self._args(i, start, rows, batches)
        if not self.mode:
            self._setup(args)
        if self.mode == "default":
            return self.entry.fn(*args)
        post, (key, index), arrays, interv, cond = args
        index = np.int32(index)
        if self.winner is not None and not self.queue:
            # Stored, or chosen by this call: whole launches from here on. Slices
            # cost a dispatch each and a concatenation per batch, which on the
            # benchmark MLP (1000 draws, 10 slices a batch) made the rest of the
            # tuning call far slower than the planner's program.
            if self.winner == Formulation("vmap", self.config.draw_block) and batches == 1:
                return self.entry.fn(*args)
            fn = self._function(self.winner.with_batches(batches), self.num_draws)
            return fn(post, (key, index), np.int32(0), arrays, interv, cond)
        out = self._sliced(post, key, index, arrays, interv, cond, batches)
        self.last = out
        return out

    def _sliced(self, post, key, index, arrays, interv, cond, batches) -> dict[str, jax.Array]:
        length, total = self.length, self.num_draws
        parts: list[dict[str, jax.Array]] = []
        for first in range(0, total, length):
            start = min(first, total - length)  # the last slice may overlap the one before
            queued = bool(self.queue) and self.queue[0][0].batches == batches
            if queued:
                formulation, timed = self.queue.pop(0)
            else:
                formulation, timed = self._current().with_batches(batches), False
            fn = self._function(formulation, length)
            call_args = (post, (key, index), np.int32(start), arrays, interv, cond)
            if queued:  # measured alone: compiling (untimed) or timed
                if self.last is not None:  # earlier batches still computing
                    jax.block_until_ready(self.last)
                    self.last = None
                if parts:
                    jax.block_until_ready(parts[-1])
                began = time.perf_counter()
                out = fn(*call_args)
                jax.block_until_ready(out)
                elapsed = time.perf_counter() - began
                self.units.append((formulation.label, timed, elapsed, length * batches))
                if timed:
                    rate = elapsed / (length * batches)
                    self.times[formulation] = min(self.times.get(formulation, math.inf), rate)
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

    def _best_draws(self) -> Formulation:
        default = Formulation("vmap", self.config.draw_block)
        return choose({f: t for f, t in self.times.items() if f.batches == 1}, default)

    def _current(self) -> Formulation:
        """The formulation for a slice once the queue is empty; moves the tuning on
        (draws, then rows, then the winner)."""
        if self.winner is not None:
            return self.winner
        if self.best is None:  # every draw candidate is timed
            self.best = self._best_draws()
        else:  # a rows candidate was timed: keep it when it is faster
            tried = self.best.with_batches(2 * self.best.batches)
            if tried in self.times:
                pair = {self.best: self.times[self.best], tried: self.times[tried]}
                if choose(pair, self.best) == tried:
                    self.best = tried
                else:
                    return self._finalize(self.best)
        following = self.best.with_batches(2 * self.best.batches)
        if (
            self.best in self.times
            and self._rows_allowed(following.batches)
            and self._worth_compiling(following.batches)
            and self._traces(following)
        ):
            self._queue([following])
            return self.best
        return self._finalize(self.best)

    def _finalize(self, winner: Formulation | None) -> Formulation:
        if self.winner is None:
            self.winner = winner or self._best_draws()
            rate = self.times.get(self.winner, 0.0)
            spent = sum(u[2] for u in self.units)
            LAST.clear()
            LAST.update(
                units=list(self.units),
                candidates=[f.label for f in self.candidates],
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
    "LAUNCH_OUTPUT_BYTES",
    "Formulation",
    "TunedLaunch",
    "autotune_dir",
    "batch_output_bytes",
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
