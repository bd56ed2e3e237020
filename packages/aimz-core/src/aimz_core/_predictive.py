"""The predictive methods of :class:`~aimz_core.model.ImpactModel`.

On-batch methods run one in-memory batch through a jitted batch function; the
four streamed methods declare their signatures only and share one call path
(:func:`~aimz_core.streaming.options.streamed` -> ``_stream``): the call's
:class:`~aimz_core.streaming.StreamOptions` are resolved against the model, planned
once (:func:`~aimz_core.streaming.plan_call`) and run
(:func:`~aimz_core.streaming.run_plan`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from aimz_core._on_batch import (
    RepeatCall,
    call_arrays,
    param_entries,
    repeat_key,
    run_on_batch,
)
from aimz_core._posterior import fitted_params
from aimz_core._row_dependence import check_posterior_rows, with_params
from aimz_core._scenarios import estimate
from aimz_core.arguments import as_jax_tree, check_aligned
from aimz_core.backend import io_backend
from aimz_core.batched import BatchConfig
from aimz_core.data import check_batch_size
from aimz_core.kernel_spec import check_handler_sites
from aimz_core.naming import without_reserved_dims
from aimz_core.streaming.axis import kernel_rows
from aimz_core.streaming.loop import run_plan
from aimz_core.streaming.options import ShardAxis, Store, StreamOptions, streamed
from aimz_core.streaming.plan import StreamPlan, plan_call, resolve_inputs
from aimz_core.streaming.sinks import pairing_attrs


class PredictiveMethods:
    """Predictive draws, log-likelihoods and effects of a fitted model.

    A mixin of :class:`~aimz_core.model.ImpactModel`, which provides the state
    (``_kernel``, ``_posterior``, ``_next_key``, ...) these methods use.

    Example:
        >>> from aimz_core.model import ImpactModel
        >>> issubclass(ImpactModel, PredictiveMethods)
        True
    """

    # ------------------------------------------------------------ on batch
    def _run_on_batch(
        self,
        kind: Literal["predict", "prior"],
        X: Any,
        *,
        num_draws: int,
        post: dict[str, jax.Array],
        intervention: Mapping[str, Any] | None,
        condition: Mapping[str, Any] | None,
        rng_key: jax.Array | None,
        return_sites: Any,
        kwargs: Mapping[str, Any],
    ) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, ...]], jax.Array | None]:
        """Host draws, dim names and the call's key (``None``: no key was drawn)."""
        memo_key = repeat_key(kind, X, num_draws, return_sites, intervention, condition, kwargs)
        if memo_key is not None:  # a repeat of a validated plain call: run it at once
            repeat = self._functions.memo.get(memo_key)
            if repeat is not None and repeat.valid(post, self._kernel_spec, self._vi_result):
                key = self._next_key(rng_key)
                return (*repeat.run(key, X), key)
        vi_result = self._vi_result
        params = param_entries(vi_result)  # before reading them (fitted_params below)
        bound = self._bind(X, None, kwargs)
        check_aligned(bound.arrays, self._param_input)
        arrays = call_arrays(bound.arrays)
        # A real trace before the site checks and defaults, also for a posterior given
        # by `set_posterior_sample` (no-op once traced; the key does not move).
        if self._kernel_spec is None or not self._kernel_spec.covers(False):
            traced = {k: jnp.asarray(v) for k, v in arrays.items()}
            self._build_kernel_spec({**traced, **bound.extras}, with_output=False)
        sites = self._sites_for(return_sites)
        interv = as_jax_tree(intervention, "intervention")
        cond = as_jax_tree(condition, "condition")
        check_handler_sites(self._kernel_spec, interv, "intervention")
        check_handler_sites(self._kernel_spec, cond, "condition")
        if not sites:  # `return_sites=[]`: no sites, no work, the key stays
            return {}, {}, None
        if post:  # per-row posterior sites must fit the batch's rows
            rows = kernel_rows(self._runner(), self.rng_key, bound)
            n_rows = int(arrays[self._param_input].shape[0])
            check_posterior_rows(self._host_posterior(), rows, n_rows)
            interv = with_params(interv, fitted_params(self, rows.params))
        key = self._next_key(rng_key)
        config = BatchConfig(
            kind=kind,
            shard_axis="draw",
            return_sites=sites,
            extras_key=bound.extras_key(),
            num_draws=num_draws,
            sharded=False,
        )
        runner = self._runner()
        host, dims, plan = run_on_batch(
            runner, config, bound.extras, post, key, arrays, interv, cond
        )
        if memo_key is not None:
            spec = self._kernel_spec
            repeat = RepeatCall(
                post, spec, vi_result, plan, self._param_input, interv, cond, params
            )
            runner.functions.put(memo_key, repeat)
        return host, dims, key

    def _as_result(
        self,
        group: str,
        out: dict[str, np.ndarray],
        dims: dict[str, tuple[str, ...]],
        return_datatree: bool,
        key: jax.Array | None = None,
    ) -> Any:
        if not return_datatree:
            return out
        groups: dict[str, Any] = {}
        dims = without_reserved_dims(dims, stacklevel=3)
        if self._posterior:
            groups["posterior"] = self._posterior_group(dims)
        groups[group] = out
        # Prior draws form one chain, whatever the posterior's chain layout.
        chains = 1 if group == "prior_predictive" else self._num_chains
        # On-batch draws key draw d by fold_in(key, d): the pairing attributes let
        # estimate_effect warn when two trees' draws are not paired.
        attrs = None if key is None else pairing_attrs(key, shard_axis="draw")
        return io_backend().tree_from_arrays(groups, num_chains=chains, dims=dims, attrs=attrs)

    def _posterior_group(self, dims: Mapping[str, tuple[str, ...]]) -> Any:
        """The ``posterior`` group of on-batch trees, built once per posterior (and
        per dim names of its sites) and kept in the model's memo."""
        posterior = self._posterior
        key = ("posterior_group", self._num_chains, tuple((s, dims.get(s)) for s in posterior))
        cached = self._functions.memo.get("posterior_group")
        if cached is not None and cached[0] is posterior and cached[1] == key:
            return cached[2]
        build = getattr(io_backend(), "posterior_dataset", None)  # an older aimz-io has none
        if build is None:
            return self._host_posterior()
        group = build(self._host_posterior(), num_chains=self._num_chains, dims=dims)
        self._functions.put("posterior_group", (posterior, key, group))
        return group

    def predict_on_batch(
        self,
        X: Any,
        *,
        intervention: Mapping[str, Any] | None = None,
        condition: Mapping[str, Any] | None = None,
        rng_key: jax.Array | None = None,
        in_sample: bool = True,
        return_sites: str | Iterable[str] | None = None,
        return_datatree: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Posterior predictive draws for one in-memory batch.

        Args:
            X: Input batch.
            intervention: ``{site: value}`` fixed with ``numpyro.handlers.do``.
            condition: ``{site: value}`` fixed with ``numpyro.handlers.condition``.
            rng_key: Key for this call only.
            in_sample: Group name ``posterior_predictive`` (True) or
                ``predictions`` (False).
            return_sites: Sites to return (default: output + deterministic sites).
                An empty collection returns no sites, without drawing a key.
            return_datatree: Return a DataTree (needs ``aimz-io``) or a dict.
            **kwargs: Extra kernel arguments.

        Returns:
            DataTree or ``{site: array of shape (draws, ...)}``.

        Raises:
            ValueError: For an empty ``X`` (0 rows), array keyword arguments whose
                leading size differs from ``X``'s, or an ``intervention`` /
                ``condition`` naming a non-sample site. A refused call does no work
                and leaves the model's key unchanged.

        Example:
            >>> from aimz_core.testing import fitted_linreg, linreg_data
            >>> X, _ = linreg_data()
            >>> fitted_linreg().predict_on_batch(X, return_datatree=False)["y"].shape
            (100, 60)
        """
        self._check_fitted()
        if return_datatree:
            io_backend()  # fail before any work when aimz-io is missing
        out, dims, key = self._run_on_batch(
            "predict",
            X,
            num_draws=self._num_samples,
            post=self._placed_posterior(),
            intervention=intervention,
            condition=condition,
            rng_key=rng_key,
            return_sites=return_sites,
            kwargs=kwargs,
        )
        group = "posterior_predictive" if in_sample else "predictions"
        return self._as_result(group, out, dims, return_datatree, key)

    def sample_posterior_predictive_on_batch(
        self,
        X: Any,
        *,
        intervention: Mapping[str, Any] | None = None,
        condition: Mapping[str, Any] | None = None,
        rng_key: jax.Array | None = None,
        return_sites: str | Iterable[str] | None = None,
        return_datatree: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Alias of :meth:`predict_on_batch` with ``in_sample=True``.

        Raises:
            ValueError: As :meth:`predict_on_batch` (empty ``X``, misaligned array
                arguments, a non-sample ``intervention`` / ``condition`` site).

        Example:
            >>> from aimz_core.testing import fitted_linreg, linreg_data
            >>> X, _ = linreg_data()
            >>> out = fitted_linreg().sample_posterior_predictive_on_batch(
            ...     X, return_sites="mu", return_datatree=False)
            >>> list(out)
            ['mu']
        """
        return self.predict_on_batch(
            X,
            intervention=intervention,
            condition=condition,
            rng_key=rng_key,
            in_sample=True,
            return_sites=return_sites,
            return_datatree=return_datatree,
            **kwargs,
        )

    def sample_prior_predictive_on_batch(
        self,
        X: Any,
        *,
        num_samples: int = 1000,
        intervention: Mapping[str, Any] | None = None,
        rng_key: jax.Array | None = None,
        return_sites: str | Iterable[str] | None = None,
        return_datatree: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Prior predictive draws for one in-memory batch (no fit needed).

        Raises:
            ValueError: As :meth:`predict_on_batch` (empty ``X``, misaligned array
                arguments, a non-sample ``intervention`` / ``condition`` site).

        Example:
            >>> from aimz_core.testing import linreg_data, make_model
            >>> X, _ = linreg_data()
            >>> out = make_model().sample_prior_predictive_on_batch(
            ...     X, num_samples=20, return_datatree=False)
            >>> out["y"].shape
            (20, 60)
        """
        check_batch_size(num_samples, "num_samples")
        if return_datatree:
            io_backend()  # fail before any work when aimz-io is missing
        out, dims, key = self._run_on_batch(
            "prior",
            X,
            num_draws=num_samples,
            post={},
            intervention=intervention,
            condition=None,
            rng_key=rng_key,
            return_sites=return_sites,
            kwargs=kwargs,
        )
        return self._as_result("prior_predictive", out, dims, return_datatree, key)

    # ------------------------------------------------------------ streamed
    def _stream(self, X: Any, y: Any, options: StreamOptions) -> Any:
        """The one path of every streamed call: resolve, plan once, run."""
        sites = options.return_sites
        if sites is not None and not isinstance(sites, str):
            sites = tuple(sites)  # an iterator is read once, here
            options = dataclasses.replace(options, return_sites=sites)
            if not sites:  # no sites: an in-memory empty result, nothing written
                return self._as_result(options.group, {}, {}, options.return_datatree)
        inputs = resolve_inputs(self, X, y, options)
        plan = plan_call(options, inputs, self._runner(), param_input=self._param_input)
        return run_plan(self, plan, options, inputs.dask_client)

    @streamed("predict")
    def predict(
        self,
        X: Any,
        *,
        intervention: Mapping[str, Any] | None = None,
        condition: Mapping[str, Any] | None = None,
        rng_key: jax.Array | None = None,
        in_sample: bool = True,
        return_sites: str | Iterable[str] | None = None,
        shard_axis: ShardAxis = "obs",
        batch_size: int | None = None,
        store: Store = "persistent",
        output_dir: str | Path | None = None,
        progress: bool = True,
        return_datatree: bool = True,
        client: Any = None,
        resume: bool = False,
        storage_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Posterior predictive draws for an input of any size, streamed in batches.

        Batches run through one jitted, sharded function; finished blocks stream
        into a Zarr store (``store="persistent"``, needs ``aimz-io``), an in-memory
        DataTree (``store="memory"``) or, with ``return_datatree=False``, host
        arrays.

        Args:
            X: Input array, :class:`~aimz_core.data.ArrayLoader` or iterable of
                mappings.
            intervention: ``{site: value}`` fixed with ``numpyro.handlers.do``.
            condition: ``{site: value}`` fixed with ``numpyro.handlers.condition``.
            rng_key: Key for this call only.
            in_sample: Group ``posterior_predictive`` (True) or ``predictions``.
            return_sites: Sites to return. An empty collection returns an empty
                in-memory result at once: no work, no files, the key unmoved.
            shard_axis: Stream over observations (``"obs"``) or draws (``"draw"``).
            batch_size: Rows (or draws) per batch; automatic by default.
            store: ``"persistent"`` (Zarr on disk) or ``"memory"``.
            output_dir: Base directory for persistent output (default: temp dir), or
                an object-store URL (``s3://bucket/prefix``).
            progress: Show a progress bar.
            return_datatree: Return a DataTree, or ``{site: array}``.
            client: A ``dask.distributed`` Client, or ``True`` to use the current one
                (``distributed.get_client()``): batches run on its workers and each
                writes its region of one preallocated Zarr store (needs
                ``pip install "aimz-io[dask]"``). ``X`` may be a NumPy, Dask or Zarr
                array. See the distributed user guide.
            resume: Finish the newest incomplete store of the same call (same
                arguments, ``rng_key`` and posterior) in ``output_dir``, computing
                only its missing regions. Needs ``output_dir`` and, except for
                ``log_likelihood``, an explicit ``rng_key``.
            storage_options: fsspec options (credentials, ``client_kwargs``) when
                ``output_dir`` is an object-store URL such as ``s3://bucket/prefix``
                (needs ``pip install "aimz-io[s3]"``).
            **kwargs: Extra kernel arguments (arrays are batched with ``X``).

        Returns:
            A DataTree (lazy when persistent) or a dict of arrays.

        Raises:
            ValueError: Before any work, directory or key is taken: for an empty
                ``X``, array arguments whose leading size differs from ``X``'s, an
                empty-string ``output_dir``, a non-sample ``intervention`` /
                ``condition`` site, or contradicting options.

        Example:
            >>> from aimz_core.testing import fitted_linreg, linreg_data
            >>> X, _ = linreg_data()
            >>> out = fitted_linreg().predict(
            ...     X, batch_size=16, progress=False, return_datatree=False)
            >>> out["y"].shape
            (100, 60)
        """

    @streamed("predict")
    def sample_posterior_predictive(
        self,
        X: Any,
        *,
        intervention: Mapping[str, Any] | None = None,
        condition: Mapping[str, Any] | None = None,
        rng_key: jax.Array | None = None,
        return_sites: str | Iterable[str] | None = None,
        shard_axis: ShardAxis = "obs",
        batch_size: int | None = None,
        store: Store = "persistent",
        output_dir: str | Path | None = None,
        progress: bool = True,
        return_datatree: bool = True,
        client: Any = None,
        resume: bool = False,
        storage_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Alias of :meth:`predict` with ``in_sample=True``.

        Raises:
            ValueError: As :meth:`predict`.

        Example:
            >>> from aimz_core.testing import fitted_linreg, linreg_data
            >>> X, _ = linreg_data()
            >>> out = fitted_linreg().sample_posterior_predictive(
            ...     X, return_sites=("y", "mu"), shard_axis="draw", progress=False,
            ...     return_datatree=False)
            >>> sorted(out)
            ['mu', 'y']
        """

    @streamed("prior")
    def sample_prior_predictive(
        self,
        X: Any,
        *,
        num_samples: int = 1000,
        intervention: Mapping[str, Any] | None = None,
        rng_key: jax.Array | None = None,
        return_sites: str | Iterable[str] | None = None,
        shard_axis: ShardAxis = "obs",
        batch_size: int | None = None,
        store: Store = "persistent",
        output_dir: str | Path | None = None,
        progress: bool = True,
        return_datatree: bool = True,
        client: Any = None,
        resume: bool = False,
        storage_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Prior predictive draws for an input of any size, streamed in batches.

        Input-independent (global) prior sites are drawn once and shared by every
        batch on the ``"obs"`` path. The arguments are those of :meth:`predict`;
        ``num_samples`` is the number of prior draws.

        Raises:
            ValueError: As :meth:`predict`.

        Example:
            >>> from aimz_core.testing import linreg_data, make_model
            >>> X, _ = linreg_data()
            >>> out = make_model().sample_prior_predictive(
            ...     X, num_samples=30, progress=False, return_datatree=False)
            >>> out["y"].shape
            (30, 60)
        """

    @streamed("loglik")
    def log_likelihood(
        self,
        X: Any,
        y: Any = None,
        *,
        rng_key: jax.Array | None = None,
        shard_axis: ShardAxis = "obs",
        batch_size: int | None = None,
        store: Store = "persistent",
        output_dir: str | Path | None = None,
        progress: bool = True,
        return_datatree: bool = True,
        client: Any = None,
        resume: bool = False,
        storage_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Pointwise log-likelihood of ``y`` under every posterior draw.

        The arguments are those of :meth:`predict`; ``y`` is the observed output
        (or a field of the data loader ``X``).

        Raises:
            ValueError: As :meth:`predict`; also when ``y`` is missing for an
                array ``X`` or its leading size differs from ``X``'s.

        Example:
            >>> from aimz_core.testing import fitted_linreg, linreg_data
            >>> X, y = linreg_data()
            >>> out = fitted_linreg().log_likelihood(
            ...     X, y, progress=False, return_datatree=False)
            >>> out["y"].shape
            (100, 60)
        """

    def compute_block(
        self,
        plan: StreamPlan,
        i: int,
        start: int,
        stop: int,
        rows: Mapping[str, Any] | None = None,
    ) -> dict[str, np.ndarray]:
        """Compute one batch of a planned streamed call, as trimmed host arrays.

        This is what a worker of a distributed run executes: the model and the
        plan are shipped once, then each task passes its batch's input rows.

        Args:
            plan: The call's :class:`~aimz_core.streaming.StreamPlan`.
            i: Batch index (``plan.ranges[i] == (start, stop)``).
            start: First entry of the batch along the stream axis.
            stop: End of the batch along the stream axis.
            rows: ``{argument: array}``: the input rows ``[start, stop)`` on the
                ``"obs"`` path, the whole inputs on the ``"draw"`` path. Default:
                sliced from ``plan.arrays``.

        Returns:
            ``{site: array}`` with ``stop - start`` entries along the stream axis.
            On the ``"obs"`` path batch ``i`` uses the key ``fold_in(key, i)``; on
            the ``"draw"`` path draw ``d`` uses ``fold_in(key, d)`` whatever the
            batch, so the draws use the keys of a single-process call. Their values
            are bit-identical to it when this host runs the same compiled program
            (same batch size, device count, CPU and ``XLA_FLAGS``), and equal to
            floating-point rounding otherwise.

        Example:
            >>> import numpy as np
            >>> from aimz_core.streaming import StreamOptions, plan_call, resolve_inputs
            >>> from aimz_core.testing import fitted_linreg
            >>> model = fitted_linreg()
            >>> opts = StreamOptions(kind="predict", caller="predict", batch_size=4,
            ...                      store="memory", return_datatree=False)
            >>> inputs = resolve_inputs(model, np.ones((10, 2)), None, opts)
            >>> plan = plan_call(opts, inputs, model._runner(), param_input="X")
            >>> model.compute_block(plan, 2, 8, 10)["y"].shape
            (100, 2)
        """
        return self._runner().compute_block(plan, i, start, stop, rows)

    # ------------------------------------------------------------ effects
    def estimate_effect(
        self,
        output_baseline: Any = None,
        output_intervention: Any = None,
        args_baseline: Mapping[str, Any] | None = None,
        args_intervention: Mapping[str, Any] | None = None,
        *,
        on_batch: bool = False,
    ) -> Any:
        """Effect of an intervention: intervention draws minus baseline draws.

        Each scenario is either a precomputed output (DataTree or dict) or a dict of
        :meth:`predict` arguments (``{"X": X, "intervention": {...}}``) that is run
        here. Scenarios run here share one key, so their draws are paired.

        Returns:
            A DataTree with the difference (and ``posterior`` when available), or
            ``{site: array}`` when both scenarios are dicts and ``aimz-io`` is not
            installed.

        Raises:
            ValueError: When a scenario has neither output nor arguments, its
                arguments are refused by :meth:`predict` (or
                :meth:`predict_on_batch`), or an output lacks the compared group.
                Both scenarios (and the precomputed outputs) are checked before
                either runs, so a refused call writes nothing and leaves the key
                unchanged.

        Warns:
            OutputWarning: When the draws of the two scenarios are not paired: their
                outputs record different ``rng_key``, ``shard_axis`` or (on the
                ``"obs"`` path) ``batch_size`` / ``num_devices`` attributes, or were
                drawn from different posteriors (the model was refit in between);
                also when dimension sizes or coordinate labels differ. Dim names
                that differ for the same axes are reconciled (the baseline's win).

        Example:
            >>> from aimz_core.testing import fitted_linreg, linreg_data
            >>> X, _ = linreg_data()
            >>> model = fitted_linreg()
            >>> base = model.predict_on_batch(X, return_datatree=False)
            >>> shifted = {k: v + 1.0 for k, v in base.items()}
            >>> effect = model.estimate_effect(base, shifted)
            >>> float(effect["posterior_predictive"]["y"].mean())
            1.0
        """
        return estimate(
            self,
            output_baseline,
            output_intervention,
            args_baseline,
            args_intervention,
            on_batch=on_batch,
        )


__all__ = ["PredictiveMethods"]
