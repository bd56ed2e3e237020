"""Checks of a minibatch fit: kernels and guides that minibatches fit wrongly.

:meth:`~aimz_core.model.ImpactModel.fit` with ``batch_size`` below the number of
rows (or a data loader of several batches) takes each SVI step on one batch of rows
alone. That fits the model of the whole data only when

* the output's log-likelihood is scaled to the whole data (its plate declares the
  data size and the batch as the subsample: ``numpyro.plate("obs", N,
  subsample_size=len(X))``), otherwise each batch counts as the whole data set;
* no site computes across rows (a ``scan`` over rows, a mean over rows, ...), which
  the batches split;
* every per-row latent site (a latent with one value per row, in the row plate) is
  computed by the guide from the batch (an amortized guide); auto guides keep one
  parameter per row of the first batch's shape instead.

:func:`minibatch_problems` finds these on the first batch before training, from one
eager trace of the kernel with the output observed, the abstract row probe of
:func:`~aimz_core._row_dependence.site_rows` and the perturbation probe of
:func:`~aimz_core._row_dependence.cross_row_sites`; :func:`warn_minibatch_fit`
turns them into :class:`~aimz_core.exceptions.FitWarning`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence, Sized
from typing import Any

import jax
import numpy as np
from numpyro import handlers
from numpyro.distributions import Independent
from numpyro.infer.autoguide import AutoGuide, AutoGuideList

from aimz_core._draws import SubsamplePlates, global_trace
from aimz_core._row_dependence import PERTURB_ROWS, SiteRows, cross_row_sites, site_rows
from aimz_core.data import ArrayLoader
from aimz_core.exceptions import FitWarning

#: Prefix of the per-row log-likelihood entries of the perturbation probe.
_LOGP = "\x00logp:"
#: Relative shortfall of the output's scale below ``total / batch`` that warns.
_SCALE_RTOL = 1e-3


@dataclasses.dataclass(frozen=True)
class FitProblem:
    """One reason why a minibatch fit does not fit the model of the whole data.

    Attributes:
        kind: ``"unscaled"`` (output not scaled to the whole data), ``"cross_row"``
            (sites computed across rows) or ``"per_row_latent"`` (per-row latents the
            guide does not compute from the batch).
        sites: The sites concerned.
        message: The warning's text: the sites, why the fit is wrong, how to fix it.

    Example:
        >>> FitProblem("cross_row", ("mu",), "...").sites
        ('mu',)
    """

    kind: str
    sites: tuple[str, ...]
    message: str


def minibatch_total(batches: Any, seen: Sequence[int]) -> tuple[int, bool] | None:
    """Rows of the whole data when a fit has several batches, else ``None``.

    Args:
        batches: The fit's loader.
        seen: Rows of the batches seen so far in the first epoch (one or two).

    Returns:
        ``(rows, exact)``: the rows of an :class:`~aimz_core.data.ArrayLoader`'s
        dataset (exact), or a lower bound for another loader of several batches;
        ``None`` for one batch, or while an unsized loader has yielded one batch.

    Example:
        >>> import numpy as np
        >>> from aimz_core.data import ArrayDataset
        >>> data, key = ArrayDataset(X=np.zeros((40, 1))), jax.random.key(0)
        >>> minibatch_total(ArrayLoader(data, key, batch_size=10), [10])
        (40, True)
        >>> minibatch_total(ArrayLoader(data, key, batch_size=40), [40]) is None
        True
        >>> minibatch_total([{}, {}, {}], [10]), minibatch_total(iter([]), [10, 10])
        ((12, False), (20, False))
    """
    if isinstance(batches, ArrayLoader):
        total = len(batches.dataset)
        return (total, True) if seen[0] < total else None
    if isinstance(batches, Sized):
        count = len(batches)
        return (seen[0] + count - 1, False) if count > 1 else None
    return (sum(seen), False) if len(seen) > 1 else None


def minibatch_problems(
    kernel: Callable,
    guide: Callable | None,
    key: jax.Array,
    arrays: Mapping[str, Any],
    extras: Mapping[str, Any],
    *,
    param_output: str,
    total: int,
    exact: bool = True,
) -> list[FitProblem]:
    """What a fit on batches like ``arrays`` would get wrong (empty when nothing).

    Args:
        kernel: The NumPyro kernel.
        guide: The SVI guide (``None``: skip the per-row latent check).
        key: Key of the traces (the same random numbers in every probe).
        arrays: The first batch's arrays, split by rows, the output included.
        extras: The other kernel arguments (arrays passed whole included).
        param_output: The output site.
        total: Rows of the whole data (a lower bound when not ``exact``).
        exact: Whether ``total`` is the exact number of rows.

    Returns:
        One :class:`FitProblem` per kind found, in the order unscaled, cross-row,
        per-row latent. A probe the kernel or guide cannot run (fixed sizes, ...)
        finds nothing.

    Example:
        >>> from aimz_core.testing import linreg, linreg_data
        >>> X, y = linreg_data(40)
        >>> found = minibatch_problems(linreg, None, jax.random.key(0),
        ...                            {"X": X[:10], "y": y[:10]}, {}, param_output="y",
        ...                            total=40)
        >>> [(p.kind, p.sites) for p in found]
        [('unscaled', ('y',))]
    """
    batch = min(int(np.shape(v)[0]) for v in arrays.values())
    args = {**arrays, **extras}
    try:
        trace = global_trace(kernel, key, args)
    except Exception:  # the fit reports the kernel's own errors
        return []
    problems = []
    unscaled = _unscaled_output(trace, param_output, batch, total, exact)
    if unscaled is not None:
        problems.append(unscaled)
    try:
        rows = site_rows(kernel, key, arrays, extras)
    except Exception:  # a kernel of fixed row count: no row probe
        return problems
    cross = _cross_row(kernel, key, arrays, extras, trace, rows, batch)
    if cross is not None:
        problems.append(cross)
    latents = tuple(
        name
        for name, site in trace.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and not (site.get("infer") or {}).get("is_auxiliary")
        and rows.follows(name)
    )
    if latents and guide is not None:
        unamortized = _unamortized(guide, key, arrays, extras, latents)
        if unamortized:
            problems.append(_per_row_latent_problem(guide, unamortized, batch))
    return problems


def warn_minibatch_fit(
    kernel: Callable,
    guide: Callable | None,
    key: jax.Array,
    arrays: Mapping[str, Any],
    extras: Mapping[str, Any],
    *,
    param_output: str,
    total: int,
    exact: bool = True,
    stacklevel: int = 2,
) -> list[FitProblem]:
    """Issue one :class:`~aimz_core.exceptions.FitWarning` per problem found by
    :func:`minibatch_problems` (same arguments), and return the problems.

    Example:
        >>> import warnings
        >>> from aimz_core.testing import linreg, linreg_data
        >>> X, y = linreg_data(40)
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     _ = warn_minibatch_fit(linreg, None, jax.random.key(0),
        ...                            {"X": X[:10], "y": y[:10]}, {}, param_output="y",
        ...                            total=40)
        >>> [type(w.message).__name__ for w in caught]
        ['FitWarning']
    """
    problems = minibatch_problems(
        kernel, guide, key, arrays, extras, param_output=param_output, total=total, exact=exact
    )
    for problem in problems:
        warnings.warn(problem.message, FitWarning, stacklevel=stacklevel + 1)
    return problems


# --------------------------------------------------------------------- checks
def _names(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _unscaled_output(
    trace: Mapping[str, Any], output: str, batch: int, total: int, exact: bool
) -> FitProblem | None:
    """The problem of an observed output whose scale does not reach ``total / batch``."""
    site = trace.get(output)
    if site is None or site["type"] != "sample" or not site["is_observed"]:
        return None
    scale = 1.0 if site["scale"] is None else float(np.mean(np.asarray(site["scale"])))
    if scale * batch >= total * (1 - _SCALE_RTOL):
        return None
    frames = [f for f in site["cond_indep_stack"] if f.size == batch]
    plate = frames[0].name if frames else "obs"
    rows = f"{total}" if exact else f"at least {total}"
    return FitProblem(
        "unscaled",
        (output,),
        f"Fitting on minibatches of {batch} rows out of {rows}, but the output site "
        f"{output!r} is not scaled to the whole data (its log-likelihood scale is "
        f"{scale:g} for a batch of {batch} rows; the whole data needs {total / batch:g}"
        f"{'' if exact else ' or more'}): each batch counts as if it were the whole data "
        "set, so the prior weighs too much and the posterior is too wide. Declare the "
        f"output's plate with the size of the whole data and the batch as the subsample, "
        f"e.g. `numpyro.plate({plate!r}, N, subsample_size=len(X))` with N the number of "
        "rows of the data (passed as a keyword argument), or fit with `batch_size=None` "
        "(one batch).",
    )


def _row_log_prob(site: Mapping[str, Any]) -> Any:
    """Log-density of an observed site before summing event dimensions."""
    fn = site["fn"]
    while isinstance(fn, Independent):
        fn = fn.base_dist
    return fn.log_prob(site["value"])


def _cross_row(
    kernel: Callable,
    key: jax.Array,
    arrays: Mapping[str, Any],
    extras: Mapping[str, Any],
    trace: Mapping[str, Any],
    rows: SiteRows,
    batch: int,
) -> FitProblem | None:
    """The problem of sites (or observed log-likelihoods) computed across rows."""
    sites = tuple(n for n in trace if n in rows.row_sites or n in rows.fixed_sites)
    observed = tuple(n for n in sites if trace[n]["type"] == "sample" and trace[n]["is_observed"])
    logp = tuple(_LOGP + n for n in observed)
    probe_rows = dataclasses.replace(rows, row_sites=rows.row_sites | frozenset(logp))

    def one(k: jax.Array, draw: Any, a: Mapping[str, Any]) -> dict[str, Any]:
        plated = SubsamplePlates(kernel)
        tr = handlers.trace(handlers.seed(plated, k)).get_trace(**a, **extras)
        out = {n: tr[n]["value"] for n in sites if n in tr}
        for name in observed:
            if name in tr:
                value = _row_log_prob(tr[name])
                if np.ndim(value) >= 1:  # per row; a joint density over rows is not probed
                    out[_LOGP + name] = value
        return out

    probe = {k: np.asarray(v)[:PERTURB_ROWS] for k, v in arrays.items()}
    try:
        found = cross_row_sites(one, key, {}, probe, probe_rows, (*sites, *logp))
    except Exception:  # a kernel the probe rows do not fit
        return None
    names = tuple(dict.fromkeys(n.removeprefix(_LOGP) for n in found))
    if not names:
        return None
    return FitProblem(
        "cross_row",
        names,
        f"The kernel computes across rows at site(s) {_names(names)}: the value (or "
        "log-likelihood) for one row depends on other rows (a scan over rows, lags, a "
        f"sum or mean over rows, ...), and each minibatch of {batch} rows sees only its "
        "own rows, so every step fits another model than the one of the whole data. Fit "
        "with `batch_size=None` (one batch), or compute what crosses rows outside the "
        "kernel and pass it in per row.",
    )


def _custom_parts(guide: Callable) -> list[Callable]:
    """The parts of ``guide`` that are not auto guides (which compute no site from
    the data)."""
    if isinstance(guide, AutoGuideList):
        return [p for part in guide._guides for p in _custom_parts(part)]
    if isinstance(guide, AutoGuide):
        return []
    return [guide]


def _unamortized(
    guide: Callable,
    key: jax.Array,
    arrays: Mapping[str, Any],
    extras: Mapping[str, Any],
    latents: tuple[str, ...],
) -> tuple[str, ...]:
    """The sites of ``latents`` whose guide value does not move with the batch's data.

    Auto guides are never run here (they would record their prototype); every other
    part of the guide runs on the first rows and on each of them changed in turn.
    """
    computed: set[str] = set()
    probe = {k: np.asarray(v)[:PERTURB_ROWS] for k, v in arrays.items()}
    fixed = SiteRows(frozenset(), frozenset(latents), {}, {})  # moves at all: computed
    for part in _custom_parts(guide):

        def one(k: jax.Array, draw: Any, a: Mapping[str, Any], part: Callable = part) -> dict:
            tr = handlers.trace(handlers.seed(part, k)).get_trace(**a, **extras)
            return {n: tr[n]["value"] for n in latents if n in tr}

        try:
            computed.update(cross_row_sites(one, key, {}, probe, fixed, latents))
        except Exception:  # a guide the probe rows do not fit: no claim
            computed.update(latents)
    return tuple(n for n in latents if n not in computed)


def _per_row_latent_problem(guide: Callable, names: tuple[str, ...], batch: int) -> FitProblem:
    kind = type(guide).__name__
    how = (
        f"the guide ({kind}) keeps fixed per-row parameters (one per row of the first "
        "batch's shape, or indexed by the plate's random subsample), not tied to the rows "
        "of each batch"
        if isinstance(guide, AutoGuide)
        else "the guide's values for them do not change with the batch's data"
    )
    return FitProblem(
        "per_row_latent",
        names,
        f"The kernel has per-row latent site(s) {_names(names)} (one value per row, in "
        f"the row plate) that the guide does not compute from the batch: {how}. On "
        f"minibatches of {batch} rows the same parameters serve other rows in every batch, "
        "so the posterior of these sites does not follow the rows of the data. "
        "Fit with `batch_size=None` (one batch), or use an amortized guide that computes "
        "these sites from the batch's data (for example from `X` and `y`).",
    )


__all__ = ["FitProblem", "minibatch_problems", "minibatch_total", "warn_minibatch_fit"]
