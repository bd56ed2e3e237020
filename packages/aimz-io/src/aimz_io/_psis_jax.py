"""XLA-compiled PSIS-LOO block function (see :mod:`aimz_io._psis` for the estimator).

A block ``(samples, n)`` is transposed ``BATCH`` observations at a time (in steps of
``_DRAW_TILE`` draws), each row's tail is selected with ``np.partition`` and sorted,
its exceedances are computed with NumPy (bit-exact with ArviZ), and one ``jax.jit``
function computes ``elpd_i``, ``pareto_k`` and ``p_loo_i`` of the batch on the CPU:
the exponentials and sums over the draws, the Zhang & Stephens fit and the smoothed tail. The input
keeps its precision (float32 or float64) where ArviZ computes in it (the
exponentials, the ratios, the exceedances, the smoothed tail weights); everything
else is float64, traced under the thread-local ``jax.enable_x64`` context (the global
flag is never changed). The fit works observation-last (``(grid, n)`` arrays, which
XLA vectorises) and takes one logarithm per grid value: products of ``GROUP`` factors
are split into mantissa and exponent with bit operations. Batches are padded to
``BATCH`` observations, so each ``(samples, dtype, tail)`` is compiled once. The GIL
is released in NumPy and XLA, so blocks can run in parallel threads.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

#: Observations per compiled call (the last block of a chunk is padded).
BATCH = 512
#: Draws per step of the transpose into ``rows``: a step reads ``BATCH`` observations
#: of consecutive draws. Walking narrow column tiles instead hits cache-set conflicts
#: when a chunk's row length is a power of two (4,096 observations): on a 2 GHz Xeon
#: a 1,000 x 4,096 float32 chunk took 8 ms this way, 13-16 ms with 64-column tiles.
_DRAW_TILE = 100
#: Factors multiplied together before one logarithm in the GPD fit.
GROUP = 8
PRIOR_BS = 3.0
PRIOR_K_WEIGHT = 10.0
PRIOR_K_MEAN = 0.5
_EPS = float(np.finfo(float).eps)
_MANTISSA = (1 << 52) - 1
_ONE_BITS = 1023 << 52
#: Factor range whose products of ``GROUP`` factors stay normal float64 numbers.
_FACTOR_MIN, _FACTOR_MAX = 1e-38, 1e38


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
        rows = np.empty((BATCH, n_samples), values.dtype)  # reused: each call waits
        for lo in range(0, n_obs, BATCH):
            hi = min(lo + BATCH, n_obs)
            rows[hi - lo :] = 0.0  # padding: constant rows, dropped below
            for first in range(0, n_samples, _DRAW_TILE):
                last = min(first + _DRAW_TILE, n_samples)
                rows[: hi - lo, first:last] = values[first:last, lo:hi].T
            high = rows.max(axis=1)  # NumPy's row maximum is faster than XLA's
            rows.partition(tail, axis=1)  # rows[:, :tail]: the tail (smallest log-lik)
            head = np.sort(rows[:, : tail + 1], axis=1)
            exceed, cutoff = _exceedances(head)
            result = _compiled(rows, high, head, exceed, cutoff)
            out[:, lo:hi] = np.asarray(result)[:, : hi - lo]
    return out


def _exceedances(head: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tail exceedances ``(tail, n)`` (ascending down the columns) and cutoffs ``(n,)``.

    The ratios are computed in the input's precision with NumPy's ``exp``, as ArviZ
    computes them: the GPD fit is sensitive to the last bit of the smallest
    exceedances, and XLA's float32 ``exp`` rounds differently. Both are float64.
    """
    dist = head.astype(np.float64)
    dist -= dist[:, :1]
    with np.errstate(all="ignore"):
        cutoff = np.exp((-dist[:, -1]).astype(head.dtype))
        exceed = np.exp((-dist[:, -2::-1].T).astype(head.dtype))
        exceed -= cutoff[None, :]
    return exceed.astype(np.float64), cutoff.astype(np.float64)


@jax.jit
def _compiled(
    rows: jax.Array,
    high: jax.Array,
    head_in: jax.Array,
    exceed: jax.Array,
    cutoff: jax.Array,
) -> jax.Array:
    """PSIS output ``(3, n)`` of ``rows`` ``(n, S)`` partitioned at the tail.

    ``high``: the row maxima; ``head_in``: the ``tail + 1`` smallest values of each
    row, sorted; ``exceed`` ``(tail, n)`` and ``cutoff`` ``(n,)``: see
    :func:`_exceedances`.
    """
    f64 = jnp.float64
    n_samples = rows.shape[1]
    tail = head_in.shape[1] - 1
    low = head_in[:, :1]
    # Non-tail ratios exp(low - x); a mask rather than a slice (unaligned, slower).
    in_rest = lax.broadcasted_iota(jnp.int32, rows.shape, 1) >= tail
    shifted = jnp.where(in_rest, low - rows, -jnp.inf)
    non_tail = jnp.exp(shifted).astype(f64).sum(axis=1)
    lppd = jnp.log(jnp.exp(rows - high[:, None]).astype(f64).sum(axis=1))
    lppd = lppd + high.astype(f64) - np.log(n_samples)

    k_hat, sigma = _gpd_fit(exceed)
    finite = jnp.isfinite(k_hat)
    # Smoothed ratios (largest first, as the tail values in head_in), capped at the
    # largest raw ratio (1).
    smoothed = jnp.minimum(_gpd_quantiles(tail, k_hat, sigma, cutoff), 1.0)
    dist = head_in[:, :tail].astype(f64) - low.astype(f64)  # -log raw ratios

    def raw_sums(smoothed_sum: jax.Array) -> jax.Array:
        return jnp.where(finite, smoothed_sum, jnp.exp(-dist).sum(axis=1))

    ratio_sum = smoothed.sum(axis=1)
    ratio_sum = lax.cond(finite.all(), lambda t: t, raw_sums, ratio_sum)
    log_norm = jnp.log(non_tail + ratio_sum)
    # log sum_j smoothed_j / raw_j, around the largest distance (no overflow). The
    # factors exp(dist_j - top) are computed in the input's precision: ArviZ stores
    # the smoothed log weights in it.
    top = dist[:, tail - 1]
    factors = jnp.exp(head_in[:, :tail] - head_in[:, tail - 1 : tail]).astype(f64)
    paired = top + jnp.log((smoothed * factors).sum(axis=1))
    paired = jnp.where(finite, paired, np.log(tail))
    elpd = low[:, 0].astype(f64) + jnp.logaddexp(np.log(n_samples - tail), paired) - log_norm
    return jnp.stack([elpd, k_hat, lppd - elpd])


def _gpd_fit(exceed: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Zhang & Stephens fit of ``exceed`` ``(tail, n)``: ``k_hat`` and ``sigma`` ``(n,)``."""
    n_tail = exceed.shape[0]
    grid = 30 + int(n_tail**0.5)
    xstar = exceed[int(n_tail / 4 + 0.5) - 1]
    valid = xstar > exceed[0]
    steps = 1 - np.sqrt(grid / (np.arange(1, grid + 1) - 0.5))
    b = steps[:, None] / (PRIOR_BS * xstar[None, :]) + 1 / exceed[-1:]  # (grid, n)
    k_grid = _mean_log1p(-b, exceed)
    profile = n_tail * (jnp.log(-b / k_grid) - k_grid - 1)
    weights = jnp.exp(profile - profile.max(axis=0, keepdims=True))
    weights = weights / weights.sum(axis=0, keepdims=True)
    weights = jnp.where(weights >= 10 * _EPS, weights, 0.0)
    total = weights.sum(axis=0, keepdims=True)
    weights = jnp.where(total > 0, weights / jnp.where(total > 0, total, 1.0), 0.0)
    b_post = jnp.where(weights > 0, b * weights, 0.0).sum(axis=0)
    k_raw = _mean_log1p(-b_post[None, :], exceed)[0]
    sigma = -k_raw / b_post
    k_hat = (n_tail * k_raw + PRIOR_K_WEIGHT * PRIOR_K_MEAN) / (n_tail + PRIOR_K_WEIGHT)
    k_hat = jnp.where(jnp.isnan(k_hat), jnp.inf, k_hat)
    sigma = jnp.where(jnp.isinf(k_hat), jnp.nan, sigma)
    return jnp.where(valid, k_hat, jnp.nan), jnp.where(valid, sigma, jnp.nan)


def _mean_log1p(scale: jax.Array, exceed: jax.Array) -> jax.Array:
    """``mean_j log1p(scale[g] * exceed[j])`` ``(G, n)`` for ``scale`` ``(G, n)``.

    Products of ``GROUP`` factors are split into exponent and mantissa (bit
    operations); the mantissas of a row are multiplied together, so each grid value
    takes one logarithm. Rows with a factor that is not a positive normal number
    (or a non-finite product) are recomputed directly with ``log1p``.
    """
    n_tail, n = exceed.shape
    groups = -(-n_tail // GROUP)
    padded = jnp.pad(exceed, ((0, GROUP * groups - n_tail), (0, 0)))
    parts = padded.reshape(groups, GROUP, n)
    product = None
    for j in range(GROUP):
        factor = 1.0 + scale[:, None, :] * parts[None, :, j, :]
        product = factor if product is None else product * factor
    bits = lax.bitcast_convert_type(product, jnp.int64)
    exponent = (bits >> 52) & 0x7FF
    mantissa = lax.bitcast_convert_type((bits & _MANTISSA) | _ONE_BITS, jnp.float64)  # [1, 2)
    acc, exps = mantissa[:, 0], exponent[:, 0]
    for g in range(1, groups):  # at most 2**groups: no overflow
        acc, exps = acc * mantissa[:, g], exps + exponent[:, g]
    total = jnp.log(acc) + (exps - 1023 * groups).astype(jnp.float64) * np.log(2.0)
    # Factors are linear in the (ascending) exceedances: their range bounds the
    # products, which are then positive normal numbers (exponent and mantissa valid).
    ends = (scale * exceed[:1], scale * exceed[-1:])
    fine = (1 + jnp.minimum(*ends) > _FACTOR_MIN) & (1 + jnp.maximum(*ends) < _FACTOR_MAX)
    total = jnp.where(fine, total, jnp.nan)
    bad = ~jnp.isfinite(total).all(axis=0) & jnp.isfinite(scale).all(axis=0)

    def direct(total: jax.Array) -> jax.Array:
        exact = jnp.log1p(scale[:, None, :] * exceed[None, :, :]).sum(axis=1)
        return jnp.where(bad[None, :], exact, total)

    total = lax.cond(bad.any(), direct, lambda t: t, total)
    return total / n_tail


def _gpd_quantiles(n_tail: int, k: jax.Array, sigma: jax.Array, location: jax.Array) -> jax.Array:
    """GPD quantiles at ``(j - 0.5) / n_tail``, largest first: ``(n, n_tail)``."""
    log_tail = np.log1p(-(np.arange(n_tail)[::-1] + 0.5) / n_tail)[None, :]
    k, sigma, location = k[:, None], sigma[:, None], location[:, None]
    general = location + sigma * jnp.expm1(-k * log_tail) / k
    exponential = location - sigma * log_tail
    q = jnp.where(k == 0, exponential, general)
    return jnp.where(sigma > 0, q, jnp.nan)
