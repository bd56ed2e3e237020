"""The independent floor: the fastest of a fixed set of simple formulations (issue 16).

The engine-plan floor (``modes.Floor``) uses the engine's own batch size and draw
block, so it moves with the plan. This floor does not: it is the fastest of a fixed
set of plain formulations of the same per-draw forward pass (the workload's kernel
with one posterior draw substituted, written here with ``numpyro.handlers``), run batch
by batch with two batches in flight and each result copied to the host:

- ``map``: ``lax.map`` over draws (one draw at a time);
- ``vmap``: one ``vmap`` over all draws;
- ``block2`` ... ``block16``: ``lax.map`` over blocks of 2, 4, 8 or 16 draws with a
  ``vmap`` inside (``lax.map(..., batch_size=b)``);

each at row batches of 5K, 10K, 20K and 50K rows (the sizes <= the case's rows; all
rows when the case has fewer than 5K). Nothing here comes from the engine: no aimz
import (the fitted posterior is passed in as host arrays).

Timing, to stay inside the bench's time budget:

1. **Sweep**: every formulation is compiled, then timed once on a slice of the case of
   at most ``budget`` cells (draws x rows; default 5e6, half of
   ``mlp-1000x10K``): all rows of the slice in batches of the formulation's size, and
   fewer draws only when rows alone exceed the budget (never fewer than 16 draws; the
   ``vmap`` formulation then vectorises the slice's draws, and says so). A slice that
   runs in under 2 s is run again (best of up to 3 runs). The time is scaled to the
   whole case (time x case cells / slice cells).
2. **Re-time**: the sweep's winner runs on the whole case ``repeats`` times (default 3),
   alternating with the engine call; its median is the floor, and the engine's ratio is
   its median over that.

A formulation whose estimated memory (live intermediates of the draws vectorised at
once, plus two batches of output) exceeds the memory limit is skipped and listed as
such.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax import lax, random
from numpyro import handlers

ROW_BATCHES = (5_000, 10_000, 20_000, 50_000)
BLOCKS = (2, 4, 8, 16)
DEFAULT_BUDGET = 5_000_000
#: A sweep slice faster than this is run again (best of up to 3 runs).
MIN_SWEEP_S = 2.0
MiB = 2**20


@dataclass(frozen=True)
class Formulation:
    """One simple way to run the per-draw forward pass over a case.

    Attributes:
        kind: ``"map"``, ``"vmap"`` or ``"block"``.
        rows: Rows per batch.
        block: Draws per ``vmap`` block (``kind == "block"`` only).
    """

    kind: str
    rows: int
    block: int | None = None

    @property
    def name(self) -> str:
        if self.kind == "block":
            return f"block{self.block}"
        return self.kind

    def describe(self) -> str:
        return {
            "map": "`lax.map` over draws",
            "vmap": "`vmap` over all draws",
            "block": f"`lax.map` over blocks of {self.block} draws, `vmap` inside",
        }[self.kind]

    def vectorised(self, draws: int) -> int:
        """Draws whose intermediates are live at once."""
        return {"map": 1, "vmap": draws, "block": min(self.block or 1, draws)}[self.kind]


def formulations(rows: int) -> list[Formulation]:
    """The fixed set for a case of ``rows`` rows.

    Example:
        >>> [f.name for f in formulations(8_000)][:3], {f.rows for f in formulations(8_000)}
        (['map', 'vmap', 'block2'], {5000})
    """
    sizes = [s for s in ROW_BATCHES if s <= rows] or [rows]
    out = []
    for size in sizes:
        out.append(Formulation("map", size))
        out.append(Formulation("vmap", size))
        out.extend(Formulation("block", size, b) for b in BLOCKS)
    return out


def _one_draw(kernel: Callable, site: str) -> Callable:
    def one(key, draw, row_draw, X):
        model = handlers.substitute(kernel, data={**draw, **row_draw})
        tr = handlers.trace(handlers.seed(model, key)).get_trace(X=X)
        return tr[site]["value"]

    return one


def _batch_fn(kernel: Callable, form: Formulation, site: str) -> Callable:
    one = _one_draw(kernel, site)

    def run(post, row_post, key, index, X):
        num = next(iter(post.values())).shape[0]
        keys = random.split(random.fold_in(key, index), num)
        if form.kind == "vmap":
            return jax.vmap(one, in_axes=(0, 0, 0, None))(keys, post, row_post, X)
        batch = None if form.kind == "map" else form.block
        return lax.map(lambda a: one(a[0], a[1], a[2], X), (keys, post, row_post), batch_size=batch)

    return jax.jit(run)


def _pad(x: np.ndarray, size: int, axis: int = 0) -> np.ndarray:
    n = x.shape[axis]
    if n == size:
        return x
    last = np.take(x, [n - 1], axis=axis)
    return np.concatenate([x, np.repeat(last, size - n, axis=axis)], axis=axis)


class Runner:
    """Runs one formulation over ``X`` batch by batch (two in flight, copied to host)."""

    def __init__(
        self,
        kernel: Callable,
        form: Formulation,
        post: dict[str, np.ndarray],
        row_sites: tuple[str, ...] = (),
        site: str = "y",
    ) -> None:
        self.form = form
        self.fn = _batch_fn(kernel, form, site)
        self.post = jax.device_put({k: v for k, v in post.items() if k not in row_sites})
        self.row_post = {k: post[k] for k in row_sites}

    def __call__(self, X: np.ndarray, key: jax.Array, depth: int = 2) -> None:
        size = min(self.form.rows, X.shape[0])
        pending: deque = deque()
        for i, start in enumerate(range(0, X.shape[0], size)):
            stop = min(start + size, X.shape[0])
            rows = {k: _pad(v[:, start:stop], size, 1) for k, v in self.row_post.items()}
            out = self.fn(self.post, rows, key, i, _pad(X[start:stop], size))
            out.copy_to_host_async()
            pending.append(out)
            if len(pending) >= depth:
                np.asarray(pending.popleft())
        while pending:
            np.asarray(pending.popleft())


def memory_estimate(form: Formulation, draws: int, inter_per_cell: int) -> int:
    """Bytes: live intermediates of the vectorised draws plus two batches of output."""
    return form.vectorised(draws) * form.rows * inter_per_cell + 2 * draws * form.rows * 4


def _slice(draws: int, rows: int, form: Formulation, budget: int) -> tuple[int, int]:
    """(draws, rows) of the sweep slice for ``form``: <= ``budget`` cells where possible."""
    if draws * rows <= budget:
        return draws, rows
    rows_s = min(rows, max(form.rows, (budget // draws) // form.rows * form.rows))
    draws_s = max(min(draws, 16), min(draws, budget // rows_s))
    return draws_s, rows_s


def sweep(
    kernel: Callable,
    post: dict[str, np.ndarray],
    X: np.ndarray,
    key: jax.Array,
    *,
    inter_per_cell: int,
    mem_limit: int,
    budget: int = DEFAULT_BUDGET,
    row_sites: tuple[str, ...] = (),
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Compile and time every formulation once on its slice; estimated whole-case time."""
    draws, rows = next(iter(post.values())).shape[0], X.shape[0]
    out = []
    for form in formulations(rows):
        entry: dict[str, Any] = {"name": form.name, "rows": form.rows, "block": form.block}
        entry["describe"] = form.describe()
        est = memory_estimate(form, draws, inter_per_cell)
        entry["mem_est"] = est
        if est > mem_limit:
            entry["skipped"] = (
                f"estimated {est / 2**30:.1f} GiB > limit {mem_limit / 2**30:.0f} GiB"
            )
            log(f"  floor sweep skip {form.name}@{form.rows}: {entry['skipped']}")
            out.append(entry)
            continue
        d_s, r_s = _slice(draws, rows, form, budget)
        sub = {k: np.ascontiguousarray(v[:d_s]) for k, v in post.items()}
        runner = Runner(kernel, form, sub, row_sites)
        Xs = X[:r_s]
        t0 = time.perf_counter()
        runner(Xs[: min(r_s, form.rows)], key)  # compiles (one batch)
        entry["compile_s"] = time.perf_counter() - t0
        walls: list[float] = []
        while len(walls) < 3 and sum(walls) < MIN_SWEEP_S:  # short slices: best of up to 3
            gc.collect()
            t0 = time.perf_counter()
            runner(Xs, key)
            walls.append(time.perf_counter() - t0)
        wall = min(walls)
        entry |= {
            "runs": len(walls),
            "slice": [d_s, r_s],
            "slice_s": wall,
            "est_s": wall * (draws * rows) / (d_s * r_s),
        }
        log(
            f"  floor sweep {form.name:7s} rows/batch {form.rows:6d} on {d_s}x{r_s}: "
            f"{wall:.3f}s -> est. {entry['est_s']:.3f}s"
        )
        out.append(entry)
        del runner
    return out


def best(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The sweep entry with the lowest estimated whole-case time."""
    timed = [e for e in entries if "est_s" in e]
    if not timed:
        raise RuntimeError("every floor formulation was skipped (memory limit)")
    return min(timed, key=lambda e: e["est_s"])


def retime(
    kernel: Callable,
    post: dict[str, np.ndarray],
    X: np.ndarray,
    key: jax.Array,
    winner: dict[str, Any],
    engine: Callable[[], Any],
    *,
    repeats: int = 3,
    row_sites: tuple[str, ...] = (),
    after_engine: Callable[[], Any] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Time the winner on the whole case ``repeats`` times, alternating with ``engine``."""
    form = Formulation(
        "block" if winner["name"].startswith("block") else winner["name"],
        winner["rows"],
        winner["block"],
    )
    runner = Runner(kernel, form, post, row_sites)
    runner(X[: form.rows], key)  # compile at the whole case's draw count
    floor_t, engine_t = [], []
    for r in range(repeats):
        order = ("floor", "engine") if r % 2 == 0 else ("engine", "floor")
        for which in order:
            gc.collect()
            t0 = time.perf_counter()
            if which == "floor":
                runner(X, key)
                floor_t.append(time.perf_counter() - t0)
            else:
                out = engine()
                engine_t.append(time.perf_counter() - t0)
                del out
                if after_engine is not None:
                    after_engine()
        log(f"  floor retime rep {r}: floor {floor_t[-1]:.3f}s engine {engine_t[-1]:.3f}s")
    f_med, e_med = statistics.median(floor_t), statistics.median(engine_t)
    return {
        "formulation": f"{winner['name']}@{winner['rows']}",
        "floor_s": f_med,
        "engine_s": e_med,
        "floor_walls": floor_t,
        "engine_walls": engine_t,
        "ratio": e_med / f_med,
    }


def render(res: dict[str, Any], case_name: str, engine_label: str) -> list[str]:
    """Markdown lines: one row per formulation, then the engine's ratio."""
    entries = res["sweep"]
    top = best(entries)["est_s"]
    lines = [
        f"#### Independent floor: {case_name}",
        "",
        f"Sweep budget {res['budget']:.0e} cells per formulation (time scaled to the "
        "whole case when the slice is smaller); the winner re-timed on the whole case, "
        "alternating with the engine.",
        "",
        "| formulation | rows/batch | swept on (draws x rows) | sweep s | est. whole-case s "
        "| ratio to best |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for e in entries:
        if "skipped" in e:
            lines.append(
                f"| {e['name']} ({e['describe']}) | {e['rows']} | - | - | skipped: "
                f"{e['skipped']} | - |"
            )
            continue
        d_s, r_s = e["slice"]
        lines.append(
            f"| {e['name']} ({e['describe']}) | {e['rows']} | {d_s} x {r_s} | "
            f"{e['slice_s']:.3f} | {e['est_s']:.3f} | {e['est_s'] / top:.3f} |"
        )
    rt = res.get("retime")
    if rt:
        lines += [
            "",
            f"Winner `{rt['formulation']}` on the whole case: median {rt['floor_s']:.3f} s "
            f"({', '.join(f'{w:.3f}' for w in rt['floor_walls'])}); {engine_label}: median "
            f"{rt['engine_s']:.3f} s ({', '.join(f'{w:.3f}' for w in rt['engine_walls'])}). "
            f"**Engine / independent floor: {rt['ratio']:.3f}x.**",
        ]
    if res.get("loadavg"):
        lines += ["", f"`/proc/loadavg` at the sweep: {res['loadavg']}."]
    return [*lines, ""]
