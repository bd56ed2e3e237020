"""A floor for chunked PSIS-LOO that does not depend on aimz: the steps every exact
PSIS-LOO of one chunk has to take, each timed in its fastest formulation from a fixed
set of NumPy and XLA ones.

Per observation (a column of a ``(draws, rows)`` chunk), ArviZ's PSIS-LOO needs

* the largest log-likelihood (for ``lppd = logsumexp(log_lik) - log S``),
* ``sum exp(log_lik - max)`` and ``sum exp(min - log_lik)`` (the normalisation of
  the importance weights): two exponentials per value,
* the ``M + 1`` largest importance ratios, that is the ``M + 1`` smallest
  log-likelihood values (``M = 94`` for 1,000 draws),
* the Zhang & Stephens profile likelihood: ``sum_j log1p(b_g * x_j)`` over the ``M``
  exceedances for each of the ``30 + floor(sqrt(M))`` grid values ``b_g``.

Smoothing the tail, the exceedances and the sums over rows are left out, and the
grid is timed in float32 (ArviZ's fit is float64), so the sum of the step floors is
a lower bound on the CPU time of any NumPy- or XLA-based implementation. Run with
``python -m bench.loo`` (it adds this floor to its report), or alone:
``python -m bench.loo_floor``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

#: Draws per step of the tiled transpose (see ``aimz_io._psis_jax._DRAW_TILE``).
DRAW_TILE = 100


def _cpu_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Median process CPU milliseconds of ``fn()`` (after one untimed call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return float(np.median(times) * 1e3)


def _tiled_transpose(chunk: np.ndarray) -> np.ndarray:
    draws, rows = chunk.shape
    out = np.empty((rows, draws), chunk.dtype)
    for first in range(0, draws, DRAW_TILE):
        out[:, first : first + DRAW_TILE] = chunk[first : first + DRAW_TILE].T
    return out


def formulations(chunk: np.ndarray, tail: int) -> dict[str, dict[str, Callable[[], Any]]]:
    """Step name -> {formulation name -> zero-argument callable} for ``chunk``."""
    import jax
    import jax.numpy as jnp

    rows = chunk.shape[1]
    dev = jax.device_put(chunk)
    high, low = chunk.max(axis=0), chunk.min(axis=0)
    dev_high, dev_low = jax.device_put(high), jax.device_put(low)
    grid = 30 + int(tail**0.5)
    rng = np.random.default_rng(0)
    exceed = rng.uniform(0.0, 1.0, (tail, rows)).astype(np.float32)
    scale = rng.uniform(-0.5, -0.01, (grid, rows)).astype(np.float32)
    dev_exceed, dev_scale = jax.device_put(exceed), jax.device_put(scale)
    buf = np.empty_like(exceed)

    def numpy_grid() -> None:
        for g in range(grid):
            np.multiply(exceed, scale[g], out=buf)
            np.log1p(buf, out=buf)
            buf.sum(axis=0)

    def numpy_select_tiled() -> None:
        _tiled_transpose(chunk).partition(tail, axis=1)

    xla_max = jax.jit(lambda c: jnp.max(c, axis=0))
    xla_lppd = jax.jit(lambda c, h: jnp.exp(c - h).sum(axis=0))
    xla_norm = jax.jit(lambda c, lo: jnp.exp(lo - c).sum(axis=0))
    xla_topk = jax.jit(lambda c: jax.lax.top_k(-c.T, tail + 1)[0])
    xla_grid = jax.jit(lambda s, e: jnp.log1p(s[:, None, :] * e[None]).sum(axis=1))

    def ready(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
        return lambda: jax.block_until_ready(fn(*args))

    return {
        "largest value": {
            "numpy max(axis=0)": lambda: chunk.max(axis=0),
            "xla max": ready(xla_max, dev),
        },
        "sum exp(log_lik - max)": {
            "numpy": lambda: np.exp(chunk - high).sum(axis=0),
            "xla fused": ready(xla_lppd, dev, dev_high),
        },
        "sum exp(min - log_lik)": {
            "numpy": lambda: np.exp(low - chunk).sum(axis=0),
            "xla fused": ready(xla_norm, dev, dev_low),
        },
        f"{tail + 1} smallest of each observation": {
            "numpy partition(axis=0)": lambda: np.partition(chunk, tail, axis=0),
            "numpy tiled transpose + partition": numpy_select_tiled,
            "xla top_k": ready(xla_topk, dev),
        },
        f"Zhang-Stephens grid ({grid} x {tail} log1p per observation, float32)": {
            "numpy": numpy_grid,
            "xla": ready(xla_grid, dev_scale, dev_exceed),
        },
    }


def step_floor(chunk: np.ndarray, tail: int, repeats: int = 7) -> dict[str, Any]:
    """CPU ms per chunk of every formulation of every step, and each step's fastest.

    Example:
        >>> chunk = np.random.default_rng(0).normal(size=(100, 64)).astype(np.float32)
        >>> out = step_floor(chunk, 20, repeats=1)
        >>> out["total_ms"] == sum(s["best_ms"] for s in out["steps"].values())
        True
    """
    steps = {}
    for step, variants in formulations(chunk, tail).items():
        times = {name: _cpu_ms(fn, repeats) for name, fn in variants.items()}
        best = min(times, key=times.__getitem__)
        steps[step] = {"formulations_ms": times, "best": best, "best_ms": times[best]}
    return {"steps": steps, "total_ms": sum(s["best_ms"] for s in steps.values())}


def render(
    floor: dict[str, Any], *, chunks: int, read_cpu_s: float, read_wall_s: float, cpus: int
) -> list[str]:
    """Markdown lines: the step table and the wall-time bound it implies."""
    lines = [
        "| step | formulations (CPU ms per chunk) | fastest |",
        "|---|---|---:|",
    ]
    for step, s in floor["steps"].items():
        variants = ", ".join(f"{k} {v:.1f}" for k, v in s["formulations_ms"].items())
        lines.append(f"| {step} | {variants} | {s['best_ms']:.1f} |")
    compute = floor["total_ms"] * chunks / 1e3
    bound = (compute + read_cpu_s) / cpus
    lines += [
        "",
        f"- Steps: **{floor['total_ms']:.1f} CPU ms per chunk**, {compute:.1f} CPU s over "
        f"{chunks} chunks; reading the store once took {read_cpu_s:.1f} CPU s.",
        f"- With perfect use of all {cpus} cores, no implementation built from these "
        f"formulations can finish in under **{bound:.2f} s** wall "
        f"(= {bound / read_wall_s:.2f}x the read's {read_wall_s:.2f} s; the target is 1.5x). "
        f"The steps alone, without reading: {compute / cpus:.2f} s "
        f"({compute / cpus / read_wall_s:.2f}x).",
    ]
    return lines


def main() -> None:
    """Time the floor on a synthetic 1,000 x 4,096 float32 chunk and print it."""
    rng = np.random.default_rng(0)
    chunk = (rng.normal(size=(1000, 4096)) * 0.7 - 1.5).astype(np.float32)
    floor = step_floor(chunk, 94)
    for step, s in floor["steps"].items():
        print(f"{step}: {s['formulations_ms']} -> {s['best']} {s['best_ms']:.1f} ms")
    print(f"total {floor['total_ms']:.1f} CPU ms per chunk")


if __name__ == "__main__":
    main()
