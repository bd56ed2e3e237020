"""Floor time at the engine's batch size with other draw blocks.

``python -m bench.blocksweep [--workload linear] [--rows 100000] [--blocks engine,4,none]``

Runs :class:`bench.modes.Floor` (the engine's per-draw pass and batch plan) with the
engine's draw block (``engine``, from ``planning.draw_block_size``), fixed blocks and
``none`` (one vmap over the draws of a batch), repeats interleaved in one process, and
prints median wall and CPU seconds. Used to check whether the planner's block is the
fastest one on this machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import numpy as np

from bench import modes as M
from bench.workloads import CASES, cases, fit_posterior, make_X, model_for, posterior_for


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.blocksweep", description=__doc__)
    p.add_argument("--workload", default="linear", help=", ".join(CASES))
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--blocks", default="engine,1,2,4,16,none")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    case = cases(False, a.workload)[0]
    base = fit_posterior(case.workload, case.draws, False)
    case = dataclasses.replace(case, rows=a.rows)
    post = posterior_for(case, base)
    X = make_X(case.workload, case.rows)
    model = model_for(case, post)
    size = model_batch_size(model, X, case.shard_axis)
    host = {k: np.asarray(v) for k, v in model.posterior.items()}
    engine_block = M.floor_draw_block(model.kernel, host, X, size, case.shard_axis)
    floors = {}
    for b in a.blocks.split(","):
        block = engine_block if b == "engine" else None if b == "none" else int(b)
        name = f"block {block}" + (" (engine)" if b == "engine" else "")
        floors[name] = M.Floor(model.kernel, host, case.shard_axis, block)
    key = jax.random.key(1)
    for f in floors.values():
        f(X, size, key)
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in floors}
    for _ in range(a.repeats):
        for n, f in floors.items():
            t0, c0 = time.perf_counter(), time.process_time()
            f(X, size, key)
            times[n].append((time.perf_counter() - t0, time.process_time() - c0))
    print(f"{case.workload}: {case.draws} draws x {case.rows} rows, batch {size}")
    for n, ts in times.items():
        wall = float(np.median([t for t, _ in ts]))
        cpu = float(np.median([c for _, c in ts]))
        print(f"  {n:22s} wall {wall:6.2f}s  cpu {cpu:6.2f}s")


def model_batch_size(model, X, shard_axis: str) -> int:
    """The engine's batch size for this call (read back through the probe)."""
    from bench.measure import EngineProbe, measure

    kwargs = {} if shard_axis == "obs" else {"shard_axis": shard_axis}
    with EngineProbe() as probe:
        res, _ = measure(
            lambda: model.predict(X, return_datatree=False, progress=False, **kwargs), probe
        )
    assert res.record is not None, "the engine did not stream"
    return res.record.chunk


if __name__ == "__main__":
    main()
