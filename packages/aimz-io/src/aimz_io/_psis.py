"""Pareto-smoothed importance sampling (PSIS) for blocks of log-likelihood values.

Vectorised over observations: a block ``(samples, n_obs)`` is processed a few hundred
observations at a time by one XLA-compiled function (:mod:`aimz_io._psis_jax`, JAX
imported on first use), with no Python loop per observation. The estimates follow
ArviZ (``arviz_stats`` 1.x) step for step:

* the importance ratios of observation ``i`` are ``1 / p(y_i | theta_s)``, i.e. log
  weights ``-log_lik``; the right tail holds the ``M`` largest of them, with
  ``M = floor(3 * sqrt(S / r_eff))`` when ``S * r_eff > 225`` and ``floor(S / 5)``
  otherwise (``S`` samples);
* a generalized Pareto distribution is fitted to the tail's exceedances over the
  largest non-tail ratio (the Zhang & Stephens empirical-Bayes estimator with
  ``30 + floor(sqrt(M))`` grid points, its prior for the scale grid (``3``) and the
  weakly informative prior pulling ``k`` towards ``0.5`` with weight ``10``);
* when ``k-hat`` is finite the tail ratios are replaced by the fitted quantiles at
  ``(j - 0.5) / M`` (capped at the largest raw ratio); the weights are normalised;
* ``elpd_i = logsumexp(log_w + log_lik)``, ``lppd_i = logsumexp(log_lik) - log S``
  and ``p_loo_i = lppd_i - elpd_i``.

Only the ``M + 1`` smallest log-likelihood values of each observation need their
order (``np.partition``); the smoothed tail pairs with the sorted tail values, so the
full weight vector is never built. The Zhang & Stephens profile log-likelihood needs
``sum_j log(1 - b * y_j)`` for every grid value ``b``: it is computed as logarithms of
products of a few factors (factors are bounded), which takes one logarithm per group
of values.

The relative efficiency helpers (NumPy) compute ArviZ's ``ess(method="mean")`` (split
chains, Geyer's initial positive and monotone sequences) vectorised over variables.
"""

from __future__ import annotations

import numpy as np

#: Observations per step of the relative-efficiency FFTs (bounds their temporaries).
OBS_BATCH = 256


def tail_length(n_samples: int, reff: float = 1.0) -> int:
    """Number of draws in the smoothed right tail, as ArviZ chooses it.

    Example:
        >>> tail_length(1000), tail_length(100), tail_length(1000, 0.1)
        (94, 20, 200)
    """
    if n_samples * reff > 225:
        return int(np.floor(3 * np.sqrt(n_samples / reff)))
    return int(np.floor(n_samples / 5))


def good_k_threshold(n_samples: int) -> float:
    """Largest reliable Pareto ``k``: ``min(1 - 1 / log10(S), 0.7)`` (0.7 for ``S <= 1``).

    Example:
        >>> round(good_k_threshold(100), 3), good_k_threshold(4000)
        (0.5, 0.7)
    """
    return float(min(1 - 1 / np.log10(n_samples), 0.7)) if n_samples > 1 else 0.7


def check_samples(n_samples: int, reff: float = 1.0) -> int:
    """Tail length for ``n_samples`` draws; ``ValueError`` when PSIS cannot run.

    Example:
        >>> check_samples(1000)
        94
    """
    tail = tail_length(n_samples, reff)
    if tail < 5 or tail >= n_samples:
        raise ValueError(
            f"PSIS needs a tail of at least 5 of the {n_samples} posterior draws (got "
            f"{tail} with reff={reff!r}); draw at least 25 samples."
        )
    return tail


def psis_loo(log_lik: np.ndarray, reff: float = 1.0) -> np.ndarray:
    """Pointwise PSIS-LOO of a block of log-likelihood values.

    Args:
        log_lik: ``(samples, n_obs)`` log-likelihood values (float32 or float64; the
            order of the samples does not matter).
        reff: Relative efficiency of the samples (sets the tail length).

    Returns:
        Array ``(3, n_obs)`` float64: ``elpd_i``, ``pareto_k`` and ``p_loo_i``. ``k``
        is NaN where the tail cannot be fitted (e.g. tied largest ratios); the
        weights of such an observation are left unsmoothed, as ArviZ does.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> out = psis_loo(0.2 * rng.normal(size=(400, 5)) - 1)
        >>> out.shape, bool(np.all(out[1] < 0.7))
        ((3, 5), True)
    """
    values = np.asarray(log_lik)
    if values.ndim != 2:
        raise ValueError(f"`log_lik` must be 2-D (samples, n_obs), got shape {values.shape}.")
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float64)
    tail = check_samples(values.shape[0], reff)
    from aimz_io._psis_jax import psis_block  # imports JAX on first use

    return psis_block(values, tail)


def ess_mean(values: np.ndarray) -> np.ndarray:
    """Effective sample size of the mean (split chains), over the last two axes.

    The same estimator as ArviZ's ``ess(method="mean")``: chains are split in
    halves, autocovariances are summed with Geyer's initial positive and initial
    monotone sequences; NaN when a value is NaN or there are fewer than 4 draws;
    the number of draws when the values are constant.

    Args:
        values: ``(..., chain, draw)``.

    Returns:
        ESS per leading index, shape ``values.shape[:-2]``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> float(ess_mean(rng.normal(size=(4, 500)))) > 1500
        True
    """
    x = np.asarray(values, dtype=np.float64)
    lead = x.shape[:-2]
    n_chain, n_draw = x.shape[-2:]
    x = x.reshape(-1, n_chain, n_draw)
    out = np.full(x.shape[0], np.nan)
    if n_draw < 4 or x.shape[0] == 0:
        return out.reshape(lead)
    half = n_draw // 2
    x = np.concatenate([x[:, :, :half], x[:, :, n_draw - half :]], axis=1)
    n_chain = x.shape[1]
    size = n_chain * half
    flat = x.reshape(x.shape[0], -1)
    has_nan = np.isnan(flat).any(axis=1)
    constant = ~has_nan & (flat.max(axis=1) - flat.min(axis=1) < np.finfo(float).resolution)
    out[constant] = size
    todo = ~(has_nan | constant)
    if todo.any():
        out[todo] = _geyer_ess(x[todo])
    return out.reshape(lead)


def _geyer_ess(x: np.ndarray) -> np.ndarray:
    """ESS of ``x`` ``(E, chain, draw)`` (finite, not constant), vectorised over ``E``."""
    n_chain, n = x.shape[1:]
    centred = x - x.mean(axis=2, keepdims=True)
    spectrum = np.fft.rfft(centred, n=2 * n, axis=2)
    acov = np.fft.irfft(spectrum * np.conjugate(spectrum), n=2 * n, axis=2)[:, :, :n] / n
    mean_var = acov[:, :, 0].mean(axis=1) * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n + np.var(x.mean(axis=2), axis=1, ddof=1)
    rho = 1.0 - (mean_var[:, None] - acov.mean(axis=1)) / var_plus[:, None]  # (E, n)
    steps = max(0, (n - 3) // 2)  # iterations of Geyer's loop allowed by the length
    sums = np.empty((x.shape[0], steps + 1))
    sums[:, 0] = 1.0 + rho[:, 1]
    for k in range(steps):
        sums[:, k + 1] = rho[:, 2 + 2 * k] + rho[:, 3 + 2 * k]
    positive = sums[:, :steps] > 0
    taken = np.where(positive.all(axis=1), steps, positive.argmin(axis=1))  # iterations
    monotone = np.minimum.accumulate(sums, axis=1)
    pairs = np.where(np.arange(steps + 1)[None, :] < taken[:, None], monotone, 0.0).sum(axis=1)
    rows = np.arange(x.shape[0])
    even = rho[rows, 2 * taken]
    last_sum = sums[rows, np.minimum(taken, steps)]
    kept = (last_sum >= 0) | (even > 0)
    end = np.where(taken == 0, 1.0, np.where(kept, even, 0.0))
    tau = -1.0 + 2.0 * pairs + end
    total = n_chain * n
    return total / np.maximum(tau, 1 / np.log10(total))


def relative_eff(values: np.ndarray) -> np.ndarray:
    """Relative efficiency ``ess_mean / (chain * draw)`` over the last two axes.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> float(relative_eff(rng.normal(size=(2, 4, 100))).mean()) > 0.7
        True
    """
    x = np.asarray(values)
    return ess_mean(x) / (x.shape[-2] * x.shape[-1])
