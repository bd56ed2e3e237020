"""XLA-compiled PSIS-LOO block function (see :mod:`aimz_io._psis` for the estimator).

One ``jax.jit`` function computes ``elpd_i``, ``pareto_k`` and ``p_loo_i`` of a block
``(samples, BATCH)`` of log-likelihood values, on the CPU, in one compiled program:
XLA fuses the exponentials and sums and vectorises them, and ``lax.top_k`` selects the
tail. The input keeps its precision (float32 or float64) where ArviZ computes in it
(the exponentials, the ratios and the exceedances); everything else is float64, traced
under the thread-local ``jax.enable_x64`` context (the global flag is never changed).
Blocks are padded to ``BATCH`` observations, so each ``(samples, dtype, tail)`` is
compiled once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

#: Observations per compiled call (the last block of a chunk is padded).
BATCH = 512
_TILE = 64
#: Factors multiplied together before one logarithm in the GPD fit.
GROUP = 8
PRIOR_BS = 3.0
PRIOR_K_WEIGHT = 10.0
PRIOR_K_MEAN = 0.5
_EPS = float(np.finfo(float).eps)


def psis_block(values: np.ndarray, tail: int) -> np.ndarray:
    """``(3, n)`` float64 PSIS output of ``values`` ``(samples, n)`` (float32/float64).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> out = psis_block((0.2 * rng.normal(size=(400, 5)) - 1).astype(np.float32), 60)
        >>> out.shape, bool(np.all(out[1] < 0.7))
        ((3, 5), True)
    """
    n_samples, n_obs = values.shape
    out = np.empty((3, n_obs))
    cpu = jax.devices("cpu")[0]
    with jax.enable_x64(True), jax.default_device(cpu):
        for lo in range(0, n_obs, BATCH):
            hi = min(lo + BATCH, n_obs)
            rows = np.empty((BATCH, n_samples), values.dtype)
            rows[hi - lo :] = 0.0  # padding: constant rows, dropped below
            for start in range(lo, hi, _TILE):  # NumPy transposes small tiles faster
                tile = np.ascontiguousarray(values[:, start : min(start + _TILE, hi)])
                rows[start - lo : start - lo + tile.shape[1]] = tile.T
            rows.partition(tail, axis=1)  # rows[:, :tail]: the tail (smallest log-lik)
            head = np.sort(rows[:, : tail + 1], axis=1)
            exceed, cutoff = _exceedances(head)
            out[:, lo:hi] = np.asarray(_compiled(rows, head, exceed, cutoff))[:, : hi - lo]
    return out


def _exceedances(head: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tail exceedances ``(n, tail)`` (ascending) and cutoffs ``(n,)``, float64.

    The ratios are computed in the input's precision with NumPy's ``exp``, as ArviZ
    computes them: the GPD fit is sensitive to the last bit of the smallest
    exceedances, and XLA's float32 ``exp`` rounds differently.
    """
    dist = head.astype(np.float64)
    dist -= dist[:, :1]
    with np.errstate(all="ignore"):
        cutoff = np.exp((-dist[:, -1]).astype(head.dtype))
        exceed = np.exp((-dist[:, -2::-1]).astype(head.dtype))
        exceed -= cutoff[:, None]
    return exceed.astype(np.float64), cutoff.astype(np.float64)


@jax.jit
def _compiled(
    rows: jax.Array, head_in: jax.Array, exceed: jax.Array, cutoff: jax.Array
) -> jax.Array:
    """``rows`` ``(n, S)`` partitioned at the tail, ``head_in`` its ``tail + 1`` smallest."""
    f64 = jnp.float64
    n_samples = rows.shape[1]
    tail = head_in.shape[1] - 1
    head = head_in.astype(f64)
    low = head[:, 0]
    dist = head - low[:, None]
    high = rows.max(axis=1)
    rest = rows[:, tail:]
    non_tail = jnp.exp(head_in[:, :1] - rest).astype(f64).sum(axis=1)
    lppd = jnp.log(jnp.exp(rows - high[:, None]).astype(f64).sum(axis=1))
    lppd = lppd + high.astype(f64) - np.log(n_samples)

    raw_tail = -dist[:, :tail][:, ::-1]  # log ratios of the tail, ascending
    k_hat, sigma = _gpd_fit(exceed)
    smoothed = jnp.log(_gpd_quantiles(tail, k_hat, sigma, cutoff))
    smoothed = jnp.where(smoothed > 0, 0.0, smoothed)
    log_tail = jnp.where(jnp.isfinite(k_hat)[:, None], smoothed, raw_tail)
    log_norm = jnp.log(non_tail + jnp.exp(log_tail).sum(axis=1))
    paired = jnp.exp(log_tail - raw_tail).sum(axis=1)
    elpd = low + jnp.log((n_samples - tail) + paired) - log_norm
    return jnp.stack([elpd, k_hat, lppd - elpd])


def _gpd_fit(exceed: jax.Array) -> tuple[jax.Array, jax.Array]:
    n_tail = exceed.shape[1]
    grid = 30 + int(n_tail**0.5)
    xstar = exceed[:, int(n_tail / 4 + 0.5) - 1]
    valid = xstar > exceed[:, 0]
    steps = 1 - np.sqrt(grid / (np.arange(1, grid + 1) - 0.5))
    b = steps[None, :] / (PRIOR_BS * xstar[:, None]) + 1 / exceed[:, -1:]
    k_grid = _mean_log1p(-b, exceed)
    profile = n_tail * (jnp.log(-b / k_grid) - k_grid - 1)
    weights = jnp.exp(profile - profile.max(axis=1, keepdims=True))
    weights = weights / weights.sum(axis=1, keepdims=True)
    weights = jnp.where(weights >= 10 * _EPS, weights, 0.0)
    total = weights.sum(axis=1, keepdims=True)
    weights = jnp.where(total > 0, weights / jnp.where(total > 0, total, 1.0), 0.0)
    b_post = jnp.where(weights > 0, b * weights, 0.0).sum(axis=1)
    k_raw = jnp.log1p(-b_post[:, None] * exceed).mean(axis=1)
    sigma = -k_raw / b_post
    k_hat = (n_tail * k_raw + PRIOR_K_WEIGHT * PRIOR_K_MEAN) / (n_tail + PRIOR_K_WEIGHT)
    k_hat = jnp.where(jnp.isnan(k_hat), jnp.inf, k_hat)
    sigma = jnp.where(jnp.isinf(k_hat), jnp.nan, sigma)
    return jnp.where(valid, k_hat, jnp.nan), jnp.where(valid, sigma, jnp.nan)


def _mean_log1p(scale: jax.Array, exceed: jax.Array) -> jax.Array:
    """``mean_j log1p(scale[:, g] * exceed[:, j])``: ``(n, G)``, one log per ``GROUP``."""
    n, n_tail = exceed.shape
    groups = -(-n_tail // GROUP)
    padded = jnp.pad(exceed, ((0, 0), (0, GROUP * groups - n_tail)))
    parts = padded.reshape(n, 1, groups, GROUP)
    product = jnp.prod(1.0 + scale[:, :, None, None] * parts, axis=3)
    total = jnp.log(product).sum(axis=2)
    bad = ~jnp.isfinite(total).all(axis=1) & jnp.isfinite(scale).all(axis=1)

    def direct(total: jax.Array) -> jax.Array:
        exact = jnp.log1p(scale[:, :, None] * exceed[:, None, :]).sum(axis=2)
        return jnp.where(bad[:, None], exact, total)

    total = lax.cond(bad.any(), direct, lambda t: t, total)
    return total / n_tail


def _gpd_quantiles(n_tail: int, k: jax.Array, sigma: jax.Array, location: jax.Array) -> jax.Array:
    log_tail = np.log1p(-(np.arange(n_tail) + 0.5) / n_tail)[None, :]
    k = k[:, None]
    general = location[:, None] + sigma[:, None] * jnp.expm1(-k * log_tail) / k
    exponential = location[:, None] - sigma[:, None] * log_tail
    q = jnp.where(k == 0, exponential, general)
    return jnp.where((sigma > 0)[:, None], q, jnp.nan)
