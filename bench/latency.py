"""Embedded latency: warm ``predict_on_batch`` on a small linear model (issue 16, item 4).

The slim install's use case is a service scoring a few rows per request. This times a
warm ``predict_on_batch`` of the bench's ``linear`` workload (8 features) with 100
posterior draws, on 1 row and on 100 rows, ``--calls`` calls each (default 200):

- ``datatree``: ``predict_on_batch(X)`` (a DataTree; needs ``aimz-io``);
- ``dict``: ``predict_on_batch(X, return_datatree=False)``;
- ``floor``: one bare jitted call of the same size (a ``vmap`` over the draws of the
  per-draw forward pass written with ``numpyro.handlers``), result copied to host;
- ``xarray``: xarray alone building a tree of the same content (``posterior`` and
  ``posterior_predictive`` groups, coordinates and attributes) from ready NumPy
  arrays with its public constructors (``Dataset``, ``DataTree.from_dict``): what
  any DataTree result costs on top of the computation, independent of aimz (needs
  ``aimz-io``).

The three take turns in runs of ``RUN`` (20) back-to-back calls, as a service scoring
request after request makes them (so load on a shared machine hits all three alike;
call-by-call interleaving measured each call cold: the floor's p50 was 0.29 ms
interleaved against 0.07 ms back to back), and p50 / p99 of wall time are reported,
with the p50 of the process CPU time per call (all threads; less sensitive to other
processes on a shared machine).
Across the timed calls it also counts JAX traces and backend compilations
(``jax.monitoring`` events) and the executables in the model's batch-function
cache: the target is no recompilation across calls with the same row count.

Usage::

    uv run --group bench python -m bench.latency [--calls 200] [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import warnings
from collections import Counter
from typing import Any

import jax
import numpy as np
from jax import random
from numpyro import handlers

from bench.workloads import LINEAR_FEATURES, linear_kernel

DRAWS = 100
ROWS = (1, 100)
TARGETS = {"datatree": 1.5e-3, "dict": 0.3e-3}
#: Calls of one variant in a row before the next variant takes its turn.
RUN = 20

_EVENTS: Counter[str] = Counter()
_listening = False


class _GcClock:
    """Python garbage collections (count and ms per generation) during timed calls."""

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.ms: Counter[int] = Counter()
        self._start = 0.0
        self.on = False

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if not self.on:
            return
        if phase == "start":
            self._start = time.perf_counter()
        else:
            gen = int(info["generation"])
            self.counts[gen] += 1
            self.ms[gen] += (time.perf_counter() - self._start) * 1e3

    def take(self) -> dict[str, Any]:
        out = {
            "collections": {str(g): n for g, n in sorted(self.counts.items())},
            "ms": {str(g): round(v, 3) for g, v in sorted(self.ms.items())},
        }
        self.counts.clear()
        self.ms.clear()
        return out


def _listen() -> None:
    global _listening
    if _listening:
        return
    _listening = True

    def on_duration(name: str, _secs: float, **_: Any) -> None:
        if name.startswith("/jax/core/compile/"):
            _EVENTS[name.rsplit("/", 1)[-1]] += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)


def posterior(draws: int = DRAWS, seed: int = 0) -> dict[str, np.ndarray]:
    """A fixed synthetic posterior for the linear workload (no fit needed)."""
    rng = np.random.default_rng(seed)
    return {
        "w": rng.normal(1.0, 0.1, (draws, LINEAR_FEATURES)).astype(np.float32),
        "b": rng.normal(0.5, 0.05, draws).astype(np.float32),
        "sigma": np.abs(rng.normal(1.0, 0.02, draws)).astype(np.float32),
    }


def make_model(post: dict[str, np.ndarray]) -> Any:
    from aimz_core import ImpactModel
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal
    from numpyro.optim import Adam

    svi = SVI(linear_kernel, AutoNormal(linear_kernel), Adam(1e-2), Trace_ELBO())
    model = ImpactModel(linear_kernel, rng_key=random.key(0), inference=svi)
    model.set_posterior_sample(post)
    return model


def bare_call(post: dict[str, np.ndarray]) -> Any:
    """The floor: one jitted vmap of the per-draw forward pass, copied to host."""

    def one(key, draw, X):
        model = handlers.substitute(linear_kernel, data=draw)
        tr = handlers.trace(handlers.seed(model, key)).get_trace(X=X)
        return tr["y"]["value"]

    @jax.jit
    def run(post, key, X):
        keys = random.split(key, DRAWS)
        return jax.vmap(one, in_axes=(0, 0, None))(keys, post, X)

    dev = jax.device_put(post)
    key = random.key(1)
    return lambda X: np.asarray(run(dev, key, X))


def xarray_tree(post: dict[str, np.ndarray], model: Any) -> Any:
    """The ``xarray`` variant: the same tree from ready arrays, xarray only."""
    import xarray as xr

    ready: dict[tuple[int, ...], np.ndarray] = {}
    attrs = {"created_at": "", "aimz_version": "", "num_chains": 1, "posterior_digest": ""}

    def build(X: np.ndarray) -> Any:
        if X.shape not in ready:  # the draws, computed once per shape, outside the timing
            ready[X.shape] = model.predict_on_batch(X, return_datatree=False)["y"]
        y = ready[X.shape]
        draws = {"chain": [0], "draw": np.arange(y.shape[0])}
        posterior = xr.Dataset(
            {
                "b": (("chain", "draw"), post["b"][None]),
                "sigma": (("chain", "draw"), post["sigma"][None]),
                "w": (("chain", "draw", "w_dim_0"), post["w"][None]),
            },
            coords={**draws, "w_dim_0": np.arange(post["w"].shape[1])},
            attrs=attrs,
        )
        predictive = xr.Dataset(
            {"y": (("chain", "draw", "obs"), y[None])},
            coords={**draws, "obs": np.arange(y.shape[1])},
            attrs=attrs,
        )
        return xr.DataTree.from_dict(
            {
                "/": xr.Dataset(attrs=attrs),
                "posterior": posterior,
                "posterior_predictive": predictive,
            },
            name="root",
        )

    return build


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run(calls: int = 200, warmup: int = 10, run: int = RUN) -> dict[str, Any]:
    """Time the three variants on 1 and 100 rows; return the figures (seconds)."""
    warnings.filterwarnings("ignore", message=".*observation-level sites.*")
    _listen()
    post = posterior()
    model = make_model(post)
    floor = bare_call(post)
    try:
        import aimz_io  # noqa: F401

        has_io = True
    except ImportError:
        has_io = False
    variants: dict[str, Any] = {
        "dict": lambda X: model.predict_on_batch(X, return_datatree=False),
        "floor": floor,
    }
    if has_io:
        variants = {"datatree": lambda X: model.predict_on_batch(X)} | variants
        variants["xarray"] = xarray_tree(post, model)
    out: dict[str, Any] = {
        "draws": DRAWS,
        "features": LINEAR_FEATURES,
        "calls": calls,
        "run": run,
        "loadavg": _loadavg(),
        "cases": [],
    }
    rng = np.random.default_rng(0)
    for rows in ROWS:
        X = rng.standard_normal((rows, LINEAR_FEATURES), dtype=np.float32)
        for fn in variants.values():
            for _ in range(warmup):
                fn(X)
        before = Counter(_EVENTS)
        compiled_before = model._functions.compiled()
        times: dict[str, list[float]] = {name: [] for name in variants}
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        gc_clocks = {name: _GcClock() for name in variants}
        for clock in gc_clocks.values():
            gc.callbacks.append(clock)
        try:
            for _ in range(max(1, calls // run)):
                for name, fn in variants.items():
                    clock = gc_clocks[name]
                    for _ in range(run):  # a service's back-to-back warm requests
                        c0, t0 = time.process_time(), time.perf_counter()
                        clock.on = True
                        fn(X)
                        clock.on = False
                        times[name].append(time.perf_counter() - t0)
                        cpu[name].append(time.process_time() - c0)
        finally:
            for clock in gc_clocks.values():
                gc.callbacks.remove(clock)
        events = {k: v - before.get(k, 0) for k, v in _EVENTS.items() if v - before.get(k, 0)}
        case = {
            "rows": rows,
            "traces": events.get("jaxpr_trace_duration", 0),
            "compiles": events.get("backend_compile_duration", 0),
            "new_executables": model._functions.compiled() - compiled_before,
            "variants": {},
        }
        for name, ts in times.items():
            case["variants"][name] = {
                "p50": statistics.median(ts),
                "p99": _pct(ts, 99),
                "mean": statistics.fmean(ts),
                "cpu_p50": statistics.median(cpu[name]),
                "gc": gc_clocks[name].take(),
            }
        out["cases"].append(case)
    out["loadavg_after"] = _loadavg()
    return out


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return f.read().strip()
    except OSError:  # pragma: no cover - not Linux
        return "n/a"


def render(res: dict[str, Any]) -> str:
    """Markdown table of :func:`run`'s figures."""
    lines = [
        f"Warm `predict_on_batch`, linear model ({res['features']} features), "
        f"{res['draws']} draws, {res['calls']} calls per variant, "
        f"in turns of {res.get('run', 1)} back-to-back calls. "
        f"loadavg before: {res['loadavg']}; after: {res['loadavg_after']}.",
        "",
        "| rows | variant | p50 ms | p99 ms | p99/p50 | CPU p50 ms | target p50 | status |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for case in res["cases"]:
        for name, v in case["variants"].items():
            target = TARGETS.get(name)
            ratio = v["p99"] / v["p50"]
            if target is None:
                status, tgt = "-", "-"
            else:
                ok = v["p50"] <= target and ratio < 2
                status, tgt = ("PASS" if ok else "FAIL"), f"{target * 1e3:.1f}"
            lines.append(
                f"| {case['rows']} | {name} | {v['p50'] * 1e3:.3f} | {v['p99'] * 1e3:.3f} "
                f"| {ratio:.2f} | {v.get('cpu_p50', float('nan')) * 1e3:.3f} | {tgt} | {status} |"
            )
    lines += ["", "| rows | JAX traces | backend compiles | new executables (model cache) |"]
    lines.append("|---:|---:|---:|---:|")
    for case in res["cases"]:
        lines.append(
            f"| {case['rows']} | {case['traces']} | {case['compiles']} | "
            f"{case['new_executables']} |"
        )
    lines.append("")
    lines.append("Target: p50 <= 1.5 ms (DataTree) / 0.3 ms (dict), p99 < 2x p50, 0 compiles.")
    for case in res["cases"]:
        v = case["variants"]
        if "xarray" in v and "dict" in v:
            bound = v["dict"]["p50"] + v["xarray"]["p50"]
            lines.append(
                f"- {case['rows']} row(s): the dict call plus xarray building the same tree "
                f"from ready arrays take {bound * 1e3:.3f} ms at p50 "
                f"({v['dict']['p50'] * 1e3:.3f} + {v['xarray']['p50'] * 1e3:.3f}); the "
                f"DataTree call takes {v['datatree']['p50'] * 1e3:.3f} ms."
            )
        collected = [
            f"{name} {sum(fig['gc']['collections'].values())} "
            f"({', '.join(f'gen{g} x{n}' for g, n in fig['gc']['collections'].items())}; "
            f"{sum(fig['gc']['ms'].values()):.1f} ms)"
            for name, fig in v.items()
            if fig.get("gc", {}).get("collections")
        ]
        if "gc" in next(iter(v.values()), {}):
            lines.append(
                f"- {case['rows']} row(s): Python garbage collections inside the timed calls: "
                + ("; ".join(collected) if collected else "none")
                + "."
            )
        floor = v.get("floor")
        if floor is not None:
            lines.append(
                f"- {case['rows']} row(s): the bare jitted call's own p99/p50 is "
                f"{floor['p99'] / floor['p50']:.2f} (host jitter every variant shares)."
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    p.add_argument("--calls", type=int, default=200, help="timed calls per variant and size")
    p.add_argument("--json", help="also write the raw figures to this path")
    args = p.parse_args(argv)
    if args.calls < 1:
        raise SystemExit("--calls must be >= 1")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    res = run(args.calls)
    print(render(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
