"""Which sites follow the input's rows, and which compute across them.

Streaming on ``shard_axis="obs"`` cuts the input into batches of rows and runs the
kernel on each batch alone. That is only right when every returned site has one
value per row (axis 0 of a draw follows the rows) and the value of row ``i`` depends
on row ``i`` alone. This module answers both questions before any batch runs:

* :func:`site_rows` traces the kernel abstractly at two row counts: a site whose
  leading axis grows with the rows *follows the rows*; one whose shape stays the
  same is *fixed* (a global site); anything else neither.
* :func:`cross_row_sites` runs one draw of the kernel on a few real rows, and again
  with each row changed in turn (one vectorised program, one key): a site whose
  value at another row moves, or a fixed site that moves at all, is computed
  across rows (``scan`` over time, lags, a sum over rows, ...).

Per-row ``intervention`` / ``condition`` values travel with the input arrays under
reserved names (:func:`join_row_handlers`), so batches slice, pad and shard them
like ``X``; :func:`split_row_handlers` takes them apart again inside the batch
function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np
from numpyro import handlers

from aimz_core._draws import SubsamplePlates
from aimz_core._locks import TRACE_LOCK

#: Abstract row counts of the shape probe (two, so growth is visible).
PROBE_SIZES = (5, 7)
#: Real rows the perturbation probe reads (at most).
PERTURB_ROWS = 6
#: Reserved input names of per-row handler values: ``prefix + site``.
HANDLER_PREFIXES = {"intervention": "\x00do:", "condition": "\x00condition:"}
#: Reserved ``intervention`` names of fitted ``numpyro.param`` values: ``prefix + site``.
PARAM_PREFIX = "\x00param:"
#: Reserved ``intervention`` names of kernel arguments passed whole to every batch.
ARG_PREFIX = "\x00arg:"


@dataclasses.dataclass(frozen=True)
class SiteRows:
    """What an abstract trace at two row counts says about the kernel's sites.

    Attributes:
        row_sites: Sites whose leading axis (of one draw) follows the input's rows.
        fixed_sites: Sites whose shape does not change with the rows.
        tails: Shape after the row axis of every row site.
        plates: Subsampling plates: name -> ``(sizes, subsample sizes)``, each a pair
            (one per probe row count).
        params: The kernel's ``numpyro.param`` sites.
        others: Sites that neither follow the rows nor keep their shape (a lag plate
            of ``n - 1`` values).

    Example:
        >>> rows = SiteRows(frozenset({"y"}), frozenset({"b"}), {"y": ()}, {})
        >>> rows.follows("y"), rows.follows("b")
        (True, False)
    """

    row_sites: frozenset[str]
    fixed_sites: frozenset[str]
    tails: dict[str, tuple[int, ...]]
    plates: dict[str, tuple[tuple[int, ...], tuple[int | None, ...]]]
    params: frozenset[str] = frozenset()
    others: frozenset[str] = frozenset()

    def follows(self, name: str) -> bool:
        """Whether ``name`` has one value per input row."""
        return name in self.row_sites

    @property
    def names(self) -> tuple[str, ...]:
        """Every sample or deterministic site the probe recorded."""
        return tuple(sorted(self.row_sites | self.fixed_sites | self.others))


def _abstract_rows(value: Any, rows: int) -> jax.ShapeDtypeStruct:
    dtype = jax.dtypes.canonicalize_dtype(np.dtype(value.dtype))
    return jax.ShapeDtypeStruct((rows, *tuple(value.shape)[1:]), dtype)


def site_rows(
    kernel: Callable,
    key: jax.Array,
    arrays: Mapping[str, Any],
    extras: Mapping[str, Any],
    *,
    plate_modes: tuple[tuple[str, str], ...] = (),
) -> SiteRows:
    """Classify the kernel's sites by tracing it (shapes only) at two row counts.

    ``arrays`` are the batched inputs (any row count: only their trailing shapes
    and dtypes are read); nothing is substituted, so every site takes its natural
    shape. With ``plate_modes`` subsampling plates run as a log-likelihood runs
    them (:class:`~aimz_core._draws.SubsamplePlates`).

    Example:
        >>> import numpy as np
        >>> from aimz_core.testing import linreg
        >>> rows = site_rows(linreg, jax.random.key(0), {"X": np.ones((3, 2))}, {})
        >>> sorted(rows.row_sites), sorted(rows.fixed_sites)
        (['mu', 'y'], ['b', 'sigma', 'w'])
    """
    plain = {k: v for k, v in arrays.items() if not _is_handler_name(k)}
    shapes: list[dict[str, tuple[int, ...]]] = []
    params: set[str] = set()
    plates: list[dict[str, tuple[int, int | None]]] = []
    for rows in PROBE_SIZES:
        # Subsampling plates run on their own rows (no random indices, no warning);
        # `declared` keeps the sizes the kernel asked for.
        plated = SubsamplePlates(kernel, modes=plate_modes)

        def trace_shapes(k: jax.Array, a: Mapping[str, Any], plated: Any = plated) -> dict:
            tr = handlers.trace(handlers.seed(plated, k)).get_trace(**a, **extras)
            params.update(n for n, s in tr.items() if s["type"] == "param")
            return {
                n: s["value"] for n, s in tr.items() if s["type"] in ("sample", "deterministic")
            }

        abstract = {k: _abstract_rows(v, rows) for k, v in plain.items()}
        with TRACE_LOCK:
            out = jax.eval_shape(trace_shapes, key, abstract)
        shapes.append({k: tuple(v.shape) for k, v in out.items()})
        plates.append(
            {k: (int(a), None if b is None else int(b)) for k, (a, b) in plated.declared.items()}
        )
    (one, two), (r1, r2) = shapes, PROBE_SIZES
    row_sites, fixed, tails = set(), set(), {}
    for name in one.keys() & two.keys():
        a, b = one[name], two[name]
        if a == b:
            fixed.add(name)
        elif len(a) >= 1 and (a[0], b[0]) == (r1, r2) and a[1:] == b[1:]:
            row_sites.add(name)
            tails[name] = a[1:]
    subsampled = {
        name: ((size, plates[1][name][0]), (sub, plates[1][name][1]))
        for name, (size, sub) in plates[0].items()
        if sub is not None and sub != size and name in plates[1]
    }
    others = frozenset(one.keys() | two.keys()) - row_sites - fixed
    return SiteRows(
        frozenset(row_sites), frozenset(fixed), tails, subsampled, frozenset(params), others
    )


def check_posterior_rows(posterior: Mapping[str, Any], rows: SiteRows, n_rows: int) -> None:
    """Refuse posterior draws of per-row sites that do not fit the input's rows.

    Raises:
        ValueError: Naming the site, its per-draw shape and the shape the kernel
            gives it for an input of ``n_rows`` rows.

    Example:
        >>> rows = SiteRows(frozenset({"z"}), frozenset(), {"z": ()}, {})
        >>> check_posterior_rows({"z": np.zeros((4, 10))}, rows, 10)
        >>> check_posterior_rows({"z": np.zeros((4, 10))}, rows, 5)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: Each posterior draw of site 'z' has shape (10,), which does not fit the shape (5,) ...
    """  # noqa: E501
    for name in sorted(rows.row_sites & set(posterior)):
        per_draw = tuple(np.shape(posterior[name])[1:])
        expected = (n_rows, *rows.tails[name])
        if per_draw != expected:
            raise ValueError(
                f"Each posterior draw of site {name!r} has shape {per_draw}, which does not "
                f"fit the shape {expected} that the kernel gives this site for an input of "
                f"{n_rows} rows. The site has one value per observation, so its posterior "
                f"only applies to inputs of {per_draw[0] if per_draw else 0} rows: pass "
                "inputs with that many rows, or refit the model on these rows."
            )


def _is_handler_name(name: str) -> bool:
    return any(name.startswith(p) for p in HANDLER_PREFIXES.values())


def join_row_handlers(
    arrays: Mapping[str, Any],
    intervention: Mapping[str, Any],
    condition: Mapping[str, Any],
    rows: SiteRows,
    n_rows: int,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Move per-row handler values into the batched inputs.

    A value is per row when its site follows the rows and its leading axis has
    ``n_rows`` entries; other values (scalars, broadcastable or global values) stay
    whole.

    Returns:
        ``(arrays, intervention, condition)`` with the per-row values moved.

    Example:
        >>> rows = SiteRows(frozenset({"z"}), frozenset(), {"z": ()}, {})
        >>> a, do, _ = join_row_handlers({"X": np.ones((3, 1))}, {"z": np.zeros(3)}, {},
        ...                              rows, 3)
        >>> sorted(k.replace(chr(0), "") for k in a), do
        (['X', 'do:z'], {})
    """
    out = dict(arrays)
    kept: list[dict[str, Any]] = []
    for kind, values in (("intervention", intervention), ("condition", condition)):
        whole = {}
        for name, value in values.items():
            if rows.follows(name) and np.ndim(value) >= 1 and np.shape(value)[0] == n_rows:
                out[HANDLER_PREFIXES[kind] + name] = value
            else:
                whole[name] = value
        kept.append(whole)
    return out, kept[0], kept[1]


def split_row_handlers(
    arrays: Mapping[str, Any],
    intervention: Mapping[str, Any],
    condition: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Inverse of :func:`join_row_handlers`: kernel inputs, ``do`` and ``condition`` values.

    Example:
        >>> split_row_handlers({"X": 1, "\\x00do:z": 2}, {}, {})
        ({'X': 1}, {'z': 2}, {})
    """
    plain: dict[str, Any] = {}
    do, cond = dict(intervention), dict(condition)
    for name, value in arrays.items():
        if name.startswith(HANDLER_PREFIXES["intervention"]):
            do[name[len(HANDLER_PREFIXES["intervention"]) :]] = value
        elif name.startswith(HANDLER_PREFIXES["condition"]):
            cond[name[len(HANDLER_PREFIXES["condition"]) :]] = value
        else:
            plain[name] = value
    return plain, do, cond


def with_params(
    intervention: Mapping[str, Any],
    params: Mapping[str, Any],
    whole: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``intervention`` plus fitted ``numpyro.param`` values and whole kernel arguments
    under reserved names.

    Both travel whole to every batch, like ``do`` values (so a refit or new values
    change arguments, not compiled programs); :func:`split_params` takes them out
    again. ``whole`` holds array keyword arguments given alongside a data loader,
    which every batch receives in full.

    Example:
        >>> sorted(k.replace(chr(0), "") for k in with_params({"t": 1}, {"a": 2.0}))
        ['param:a', 't']
    """
    return {
        **intervention,
        **{PARAM_PREFIX + k: v for k, v in params.items()},
        **{ARG_PREFIX + k: v for k, v in (whole or {}).items()},
    }


def split_params(
    intervention: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Inverse of :func:`with_params`: ``(intervention, params, whole arguments)``.

    Example:
        >>> split_params(with_params({"t": 1}, {"a": 2.0}, {"w": 3}))
        ({'t': 1}, {'a': 2.0}, {'w': 3})
    """
    do, params, whole = {}, {}, {}
    for name, value in intervention.items():
        if name.startswith(PARAM_PREFIX):
            params[name[len(PARAM_PREFIX) :]] = value
        elif name.startswith(ARG_PREFIX):
            whole[name[len(ARG_PREFIX) :]] = value
        else:
            do[name] = value
    return do, params, whole


#: Variants of each changed row: the next row's value, and a large shift either way
#: (so that a branch on a sum over rows flips whichever side it is on).
VARIANTS = 3


def _perturbed(value: np.ndarray, j: int, variant: int) -> np.ndarray:
    """``value`` with row ``j`` changed (see :data:`VARIANTS`)."""
    out = np.array(value, copy=True)
    orig = value[j]
    alt = value[(j + 1) % len(value)]
    if value.dtype == np.bool_:
        new = ~orig
    elif np.issubdtype(value.dtype, np.integer):
        new = np.where(alt != orig, alt, orig + 1) if variant == 0 else orig + variant
    elif variant == 0:
        new = np.where(alt != orig, alt, orig * 2 + 1)
    else:
        with np.errstate(over="ignore"):
            big = (np.abs(orig) + 1) * 1e3
            new = orig + big if variant == 1 else orig - big
    out[j] = new
    return out


def cross_row_sites(
    one: Callable[..., Mapping[str, jax.Array]],
    key: jax.Array,
    draw: Mapping[str, Any],
    arrays: Mapping[str, Any],
    rows: SiteRows,
    sites: Iterable[str],
) -> tuple[str, ...]:
    """Sites among ``sites`` whose value for one row depends on other rows.

    ``one(key, draw, arrays)`` runs one draw of the kernel and returns its sites;
    ``arrays`` hold at least two real rows. The kernel runs on the rows as they are
    and once with each row changed, in one vectorised program with one key (the
    same random numbers): a per-row site must keep its value at every other row,
    and a fixed site must keep its value. Each row is changed three ways (the next
    row's value, a large shift up and down), so that a branch on a sum over rows
    flips whichever side of its threshold the rows are on.

    Example:
        >>> import numpy as np
        >>> import jax.numpy as jnp
        >>> def one(key, draw, arrays):
        ...     x = arrays["X"][:, 0]
        ...     return {"own": 2 * x, "cum": jnp.cumsum(x)}
        >>> rows = SiteRows(frozenset({"own", "cum"}), frozenset(), {"own": (), "cum": ()}, {})
        >>> cross_row_sites(one, jax.random.key(0), {}, {"X": np.arange(4.0)[:, None]},
        ...                 rows, ["own", "cum"])
        ('cum',)
    """
    host = {k: np.asarray(v) for k, v in arrays.items()}
    n = min(len(v) for v in host.values())
    host = {k: v[:n] for k, v in host.items()}
    if n < 2:
        return ()
    try:
        changed, out = _probe(one, key, draw, host, n, VARIANTS)
    except Exception:  # a large shift may leave a kernel's domain: real values only
        changed, out = _probe(one, key, draw, host, n, 1)
    found = []
    for name in sites:
        if name not in out:
            continue
        base, variants = out[name][0], out[name][1:]
        if rows.follows(name) and base.shape[:1] == (n,):
            moved = any(
                not _same(np.delete(variants[i], j, axis=0), np.delete(base, j, axis=0))
                for i, (j, _) in enumerate(changed)
            )
        else:
            moved = any(not _same(v, base) for v in variants)
        if moved:
            found.append(name)
    return tuple(found)


def _probe(
    one: Callable[..., Mapping[str, jax.Array]],
    key: jax.Array,
    draw: Mapping[str, Any],
    host: Mapping[str, np.ndarray],
    n: int,
    variants: int,
) -> tuple[list[tuple[int, int]], dict[str, np.ndarray]]:
    """Run ``one`` on ``host`` and on every changed copy, vectorised: the changes
    ``(row, variant)`` and the outputs (the unchanged rows first).

    A kernel with an operation that cannot be vectorised over copies of its inputs
    (a ``jax.pure_callback`` without ``vmap_method``, an ordered ``io_callback``)
    runs the copies one after another instead: one compiled program, as many calls.
    """
    changed = [(j, variant) for j in range(n) for variant in range(variants)]
    copies = [dict(host), *({k: _perturbed(v, j, i) for k, v in host.items()} for j, i in changed)]
    stacked = {k: np.stack([c[k] for c in copies]) for k in host}
    with TRACE_LOCK:
        try:
            out = jax.jit(jax.vmap(one, in_axes=(None, None, 0)))(key, dict(draw), stacked)
            out = jax.device_get(out)
        except (NotImplementedError, ValueError):  # no batching rule: one copy at a time
            single = jax.jit(one)
            runs = [jax.device_get(single(key, dict(draw), c)) for c in copies]
            out = {k: np.stack([r[k] for r in runs]) for k in runs[0]}
    return changed, {k: np.asarray(v) for k, v in out.items()}


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype.kind in "fc":
        scale = float(np.nanmax(np.abs(b), initial=1.0)) if b.size else 1.0
        return bool(np.allclose(a, b, rtol=1e-6, atol=1e-6 * max(1.0, scale), equal_nan=True))
    return bool(np.array_equal(a, b))


__all__ = [
    "HANDLER_PREFIXES",
    "SiteRows",
    "check_posterior_rows",
    "cross_row_sites",
    "join_row_handlers",
    "split_params",
    "with_params",
    "site_rows",
    "split_row_handlers",
]
