"""Choosing the streamed axis of a call: rows when batches of rows are exact, else draws.

``shard_axis="obs"`` runs the kernel on each batch of rows alone. Before any batch
runs, :func:`choose_axis` checks that this gives the same numbers as one run on the
whole input, and otherwise streams over draws (``shard_axis="draw"``, each batch of
draws sees every row) with a :class:`~aimz_core.exceptions.PerformanceWarning` that
names the sites and how to silence it. The call streams over draws when

* the posterior has per-row sites (unless one batch holds every row),
* a returned site has no one-value-per-row axis (a global ``deterministic`` site, a
  lag plate of ``n - 1`` values), or
* the kernel computes across rows (``scan`` over time, a sum over rows): changing
  one row moves another row's value (:func:`~aimz_core._row_dependence.cross_row_sites`).

The analyses depend only on the kernel and the call's structure (sites, argument
shapes after the rows, dtypes), so they are memoised per model: a repeated call
traces nothing. The cross-row probe reads the first few rows of the first call of
a structure; a kernel whose dependence on other rows appears only for other data
(a branch on a sum that those rows do not take) is not caught: pass
``shard_axis="draw"`` for such kernels.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from aimz_core._draws import check_subsample_plates, forward_draw, loglik_draw
from aimz_core._row_dependence import (
    PERTURB_ROWS,
    PROBE_SIZES,
    SiteRows,
    check_posterior_rows,
    cross_row_sites,
    join_row_handlers,
    site_rows,
)
from aimz_core.arguments import KernelArgs, host_rows
from aimz_core.exceptions import PerformanceWarning

if TYPE_CHECKING:
    from aimz_core.streaming.blocks import BlockRunner
    from aimz_core.streaming.options import StreamOptions
    from aimz_core.streaming.plan import CallInputs

SILENCE = "Pass `shard_axis='draw'` to silence this warning."


@dataclasses.dataclass(frozen=True)
class AxisChoice:
    """The streamed axis of a call and the inputs its batches slice.

    Attributes:
        shard_axis: ``"obs"`` or ``"draw"``.
        batch_size: The batch size to plan with (``None``: automatic).
        arrays: Batched inputs, per-row ``intervention`` / ``condition`` values
            included (see :func:`~aimz_core._row_dependence.join_row_handlers`).
        intervention: ``do`` values passed whole to every batch.
        condition: ``condition`` values passed whole to every batch.
        plate_modes: How a log-likelihood evaluates subsampling plates.
        plate_sizes: Subsampling plates of constant size: name -> ``(size, mode)``.
    """

    shard_axis: str
    batch_size: int | None
    arrays: dict[str, Any]
    intervention: dict[str, Any]
    condition: dict[str, Any]
    plate_modes: tuple[tuple[str, str], ...] = ()
    plate_sizes: dict[str, tuple[int, str]] = dataclasses.field(default_factory=dict)


def _structure(values: Mapping[str, Any], skip_rows: bool) -> tuple:
    """Hashable shapes and dtypes of ``values`` (without the leading axis when
    ``skip_rows``)."""
    out = []
    for name in sorted(values):
        shape = tuple(np.shape(values[name]))
        out.append((name, shape[1:] if skip_rows else shape, str(np.dtype(values[name].dtype))))
    return tuple(out)


def _call_key(bound: KernelArgs) -> tuple:
    """The structure of a call's arguments (static values, shapes after the rows)."""
    return (
        bound.extras_key(),
        _structure(bound.arrays, skip_rows=True),
        _structure(bound.whole, skip_rows=False),
    )


def _plate_modes(rows: SiteRows) -> tuple[tuple[tuple[str, str], ...], dict[str, tuple[int, str]]]:
    """Per subsampling plate: evaluate in full or pin (see
    :class:`~aimz_core._draws.SubsamplePlates`), and the constant sizes to check."""
    modes, sizes = [], {}
    for name, (declared, subs) in sorted(rows.plates.items()):
        if declared == PROBE_SIZES:  # the plate is the input's rows; the kernel subsamples
            modes.append((name, "full"))
        elif subs == PROBE_SIZES:  # the input's rows are the subsample
            modes.append((name, "pin"))
            sizes[name] = (declared[0], "pin")
        else:
            modes.append((name, "full"))
            sizes[name] = (declared[0], "full")
    return tuple(modes), sizes


def _warn(message: str) -> None:
    warnings.warn(f"{message} {SILENCE}", PerformanceWarning, stacklevel=6)


def _names(sites: Any) -> str:
    return ", ".join(repr(s) for s in sites)


def kernel_rows(
    runner: BlockRunner,
    key: jax.Array,
    bound: KernelArgs,
    *,
    plate_modes: tuple[tuple[str, str], ...] = (),
) -> SiteRows:
    """:func:`~aimz_core._row_dependence.site_rows` of the call's arguments, memoised
    per model by their structure.

    Example:
        >>> import numpy as np
        >>> from aimz_core.arguments import bind_arguments
        >>> from aimz_core.testing import fitted_linreg
        >>> model = fitted_linreg()
        >>> bound = bind_arguments(model.kernel, "X", "y", np.ones((3, 2)), None, {})
        >>> sorted(kernel_rows(model._runner(), model.rng_key, bound).row_sites)
        ['mu', 'y']
    """
    shape_key = (*_call_key(bound), plate_modes)
    return runner.functions.remember(
        ("rows", *shape_key),
        lambda: site_rows(
            runner.kernel, key, bound.arrays, bound.kernel_extras(), plate_modes=plate_modes
        ),
    )


def pinned_plates(sizes: Mapping[str, tuple[int, str]]) -> dict[str, tuple[int, str]]:
    """The plates of ``sizes`` whose batches are the subsample (they bound a batch)."""
    return {k: v for k, v in sizes.items() if v[1] == "pin"}


def check_rows(
    runner: BlockRunner,
    key: jax.Array,
    bound: KernelArgs,
    kind: str,
    posterior: Mapping[str, Any],
    batch_size: int | None,
    shard_axis: str,
    n_obs: int,
) -> tuple[SiteRows, tuple[tuple[str, str], ...], dict[str, tuple[int, str]]]:
    """The refusals of the per-row analysis, run before a call draws its key.

    Returns the kernel's :class:`~aimz_core._row_dependence.SiteRows` (as a
    log-likelihood evaluates it), its subsampling plates' modes and constant sizes.

    Raises:
        ValueError: When per-row posterior sites do not fit the input's rows, or a
            log-likelihood's subsampling plate cannot hold the rows it would get.
    """
    rows = kernel_rows(runner, key, bound)
    modes: tuple[tuple[str, str], ...] = ()
    sizes: dict[str, tuple[int, str]] = {}
    if kind == "loglik" and rows.plates:
        modes, sizes = _plate_modes(rows)
        rows = kernel_rows(runner, key, bound, plate_modes=modes)
        full = {k: v for k, v in sizes.items() if v[1] == "full"}
        check_subsample_plates(full, n_obs)  # evaluated in full: exactly its rows
        if shard_axis == "draw":
            check_subsample_plates(sizes, n_obs)
        elif batch_size is not None:
            check_subsample_plates(pinned_plates(sizes), min(batch_size, n_obs))
    if kind != "prior":
        check_posterior_rows(posterior, rows, n_obs)
    return rows, modes, sizes


def choose_axis(
    options: StreamOptions,
    inputs: CallInputs,
    runner: BlockRunner,
    post: Mapping[str, Any],
    *,
    param_input: str,
) -> AxisChoice:
    """The streamed axis and batch size of a call, after the per-row checks.

    Raises:
        ValueError: When per-row posterior sites do not fit the input's rows, or a
            log-likelihood's subsampling plate cannot hold them.

    Example:
        >>> import numpy as np
        >>> from aimz_core.streaming.options import StreamOptions
        >>> from aimz_core.streaming.plan import resolve_inputs
        >>> from aimz_core.testing import fitted_linreg
        >>> model = fitted_linreg()
        >>> opts = StreamOptions(kind="predict", caller="predict", store="memory")
        >>> inputs = resolve_inputs(model, np.ones((8, 2)), None, opts)
        >>> runner = model._runner()
        >>> choose_axis(opts, inputs, runner, runner.placed(), param_input="X").shard_axis
        'obs'
    """
    kind, bound = options.kind, inputs.bound
    ndev = runner.layout.num_devices
    batch_size = options.batch_size or inputs.loader_batch
    n_obs = int(bound.arrays[param_input].shape[0])
    shard_axis = options.shard_axis
    if not post and kind != "prior":
        shard_axis = "obs"
    memo = runner.functions.remember
    shape_key = _call_key(bound)
    rows, modes, sizes = check_rows(
        runner, inputs.trace_key, bound, kind, inputs.posterior, batch_size, shard_axis, n_obs
    )
    if shard_axis == "obs" and batch_size is None:
        # Automatic batches of a pinned subsampling plate hold at most its size.
        caps = [size for size, mode in sizes.values() if mode == "pin" and size < n_obs]
        batch_size = min(caps) if caps else None
    arrays, interv, cond = join_row_handlers(
        bound.arrays, inputs.intervention, inputs.condition, rows, n_obs
    )

    def choice(axis: str, size: int | None = batch_size) -> AxisChoice:
        if axis == "draw":
            check_subsample_plates(sizes, n_obs)
        return AxisChoice(axis, size, arrays, interv, cond, modes, sizes)

    if shard_axis != "obs":
        return choice("draw")
    row_post = [k for k in post if rows.follows(k)] if kind != "prior" else []
    if row_post:
        fits_whole = ndev == 1 and (
            (batch_size is not None and batch_size >= n_obs)
            or (batch_size is None and n_obs * inputs.num_draws * 4 < 100_000_000)
        )
        if fits_whole:
            return choice("obs", n_obs)
        _warn(
            f"The posterior site(s) {_names(row_post)} are as long as the number of "
            "observations in each draw, so `shard_axis='obs'` cannot split them; "
            "rerunning with `shard_axis='draw'`."
        )
        return choice("draw")
    # Sites no trace records are passed through (and missing from the output).
    no_rows = [s for s in inputs.sites if s in rows.names and not rows.follows(s)]
    fixed = [s for s in no_rows if s in rows.fixed_sites]
    if fixed:
        _warn(
            f"Return site(s) {_names(fixed)} have no observation axis (their shape does "
            "not change with the number of observations), so `shard_axis='obs'` cannot "
            "split them; rerunning with `shard_axis='draw'`."
        )
        return choice("draw")
    if no_rows:
        what = "site" if len(no_rows) == 1 else "sites"
        _warn(
            f"The output {what} {_names(no_rows)} does not have one value per observation "
            "of the input, so `shard_axis='obs'` cannot split it; rerunning with "
            "`shard_axis='draw'`."
        )
        return choice("draw")
    one_batch = ndev == 1 and batch_size is not None and batch_size >= n_obs
    if n_obs > 1 and not one_batch:
        cross = memo(
            (
                "cross",
                kind,
                inputs.sites,
                modes,
                *shape_key,
                _structure(post, skip_rows=True),
            ),
            lambda: _cross_rows(kind, inputs, runner, post, rows, modes),
        )
        if cross:
            _warn(
                f"The kernel computes across observations at site(s) {_names(cross)}: the "
                "value for one observation depends on others, which batches of rows "
                "would split, so `shard_axis='obs'` cannot be used; rerunning with "
                "`shard_axis='draw'`."
            )
            return choice("draw")
    return choice("obs")


def _cross_rows(
    kind: str,
    inputs: CallInputs,
    runner: BlockRunner,
    post: Mapping[str, Any],
    rows: SiteRows,
    modes: tuple[tuple[str, str], ...],
) -> tuple[str, ...]:
    """Sites the kernel computes across rows, probed on the input's first rows.

    The probe runs the kernel without the call's ``intervention`` / ``condition``:
    whether a kernel computes across rows is a property of the kernel, so the two
    scenarios of :meth:`~aimz_core.model.ImpactModel.estimate_effect` (one of which
    may fix the site that links the rows) stream the same axis and keep their
    draws paired.
    """
    extras, kernel = inputs.bound.kernel_extras(), runner.kernel
    probe = {k: host_rows(v, 0, PERTURB_ROWS) for k, v in inputs.bound.arrays.items()}
    host = inputs.posterior  # host arrays: no device gather of a sharded posterior
    draw = {k: host[k][0] for k in post if k in host} if kind != "prior" else {}
    if kind == "loglik":
        checked = (runner.param_output,)

        def one(key: jax.Array, draw: Any, arrays: Mapping[str, Any]) -> dict[str, Any]:
            return loglik_draw(
                kernel,
                key,
                draw,
                {**arrays, **extras},
                param_output=runner.param_output,
                plate_modes=modes,
            )

    else:
        spec = inputs.kernel_spec
        samples = spec.sample_sites if spec is not None else ()
        checked = tuple(dict.fromkeys((*inputs.sites, *(s for s in samples if s in rows.names))))

        def one(key: jax.Array, draw: Any, arrays: Mapping[str, Any]) -> dict[str, Any]:
            return forward_draw(kernel, key, draw, {**arrays, **extras}, return_sites=checked)

    return cross_row_sites(one, inputs.key, draw, probe, rows, checked)


__all__ = ["AxisChoice", "choose_axis", "kernel_rows"]
