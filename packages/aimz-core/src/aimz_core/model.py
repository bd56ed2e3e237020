"""`ImpactModel`: fit a NumPyro kernel and draw samples from it in batches."""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import jax
import jax.numpy as jnp
import numpy as np
from jax import random
from numpyro.infer import MCMC, SVI, Predictive
from numpyro.infer.svi import SVIRunResult
from tqdm.auto import tqdm

from aimz_core.arguments import (
    KernelArgs,
    bind_arguments,
    check_aligned,
    host_rows,
    is_array_like,
    kernel_parameter_names,
    reject_reserved,
)
from aimz_core.batched import BatchConfig, FunctionCache
from aimz_core.compilation_cache import ensure_compilation_cache
from aimz_core.data import ArrayDataset, ArrayLoader, check_batch_size, is_loader
from aimz_core.engine import pad_rows, split_range, stream, take_draws, trim_block
from aimz_core.exceptions import (
    FitWarning,
    NotFittedError,
    OutputWarning,
    PerformanceWarning,
)
from aimz_core.kernel import (
    RESERVED_SITE_NAMES,
    kernel_name,
    validate_kernel_body,
    validate_kernel_signature,
)
from aimz_core.kernel_spec import KernelSpec, coerce_return_sites
from aimz_core.output import io_backend, is_url, resolve_output_dir
from aimz_core.plan import StreamPlan
from aimz_core.planning import (
    auto_batch_size,
    balanced_batch_size,
    block_for_draw_bytes,
    rows_for_intermediates,
)
from aimz_core.recorded_sites import drop_guide_only_sites, recorded_sites
from aimz_core.rng import coerce_key, pack_keys, unpack_keys
from aimz_core.sampling import check_subsample_plates, global_trace
from aimz_core.sharding import DeviceLayout
from aimz_core.sinks import MemorySink, SiteLayout, StreamInfo

logger = logging.getLogger("aimz")

ShardAxis = Literal["obs", "draw"]
Store = Literal["persistent", "memory"]

# Attributes rebuilt on unpickling (never serialized).
_RUNTIME_ATTRS = ("_layout", "_functions", "_temp_dir", "_placed", "_fn_vi_update")


def _not_fitted() -> NotFittedError:
    return NotFittedError(
        "This ImpactModel instance is not fitted yet. Call `.fit()`, `.fit_on_batch()` "
        "or `.set_posterior_sample()` before using this method."
    )


def _first_draw(post: Mapping[str, Any]) -> dict[str, Any]:
    # Abstract values: indexing a draw-sharded array on an explicit mesh would need
    # an out_sharding, and only shapes matter for planning.
    return {k: jax.ShapeDtypeStruct(np.shape(v)[1:], v.dtype) for k, v in post.items()}


def _as_jax_tree(values: Mapping[str, Any] | None, name: str) -> dict[str, jax.Array]:
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise TypeError(
            f"`{name}` must be a mapping of site names to values, got {type(values).__name__}."
        )
    return {str(k): jnp.asarray(v) for k, v in values.items()}


class ImpactModel:
    """A NumPyro kernel with its inference, posterior and batched sampling.

    Args:
        kernel: The NumPyro model. It must accept ``param_input`` (no default) and
            ``param_output`` (default ``None``) and no ``*args``/``**kwargs``.
        rng_key: A typed key from ``jax.random.key`` (legacy keys are converted).
        inference: A ``numpyro.infer.SVI`` or ``numpyro.infer.MCMC`` object.
        param_input: Name of the kernel's input parameter.
        param_output: Name of the kernel's output parameter and output site.

    Raises:
        KernelValidationError: If the kernel signature breaks the contract.
        TypeError: If ``inference`` is neither SVI nor MCMC.

    Example:
        >>> import jax, numpyro, numpyro.distributions as dist
        >>> from numpyro.infer import SVI, Trace_ELBO
        >>> from numpyro.infer.autoguide import AutoNormal
        >>> def model(X, y=None):
        ...     w = numpyro.sample("w", dist.Normal())
        ...     numpyro.sample("y", dist.Normal(w * X, 1.0), obs=y)
        >>> svi = SVI(model, AutoNormal(model), numpyro.optim.Adam(0.05), Trace_ELBO())
        >>> im = ImpactModel(model, rng_key=jax.random.key(0), inference=svi)
        >>> im.is_fitted()
        False
    """

    _models: ClassVar[weakref.WeakSet[ImpactModel]] = weakref.WeakSet()

    def __init__(
        self,
        kernel: Callable,
        rng_key: jax.Array,
        inference: SVI | MCMC,
        *,
        param_input: str = "X",
        param_output: str = "y",
    ) -> None:
        for name, value in (
            ("param_input", param_input),
            ("param_output", param_output),
        ):
            if not isinstance(value, str) or not value:
                raise TypeError(f"`{name}` must be a non-empty string, got {value!r}.")
        if param_input == param_output:
            raise ValueError("`param_input` and `param_output` must differ.")
        validate_kernel_signature(kernel, param_input, param_output)
        if not isinstance(inference, (SVI, MCMC)):
            raise TypeError(
                f"Unsupported inference object: `{type(inference).__name__}`. Expected "
                "`SVI` or `MCMC` from `numpyro.infer`."
            )
        if isinstance(inference, SVI) and inference.static_kwargs:
            raise ValueError(
                "SVI `static_kwargs` are not supported: pass extra kernel arguments as "
                "keyword arguments of the model's methods instead (non-array values are "
                f"static automatically); got {sorted(inference.static_kwargs)}."
            )
        self._kernel = kernel
        self._rng_key = coerce_key(rng_key)
        self._inference = inference
        self._param_input = param_input
        self._param_output = param_output
        self._kernel_spec: KernelSpec | None = None
        self._vi_result: SVIRunResult | None = None
        self._vi_state: Any = None
        self._posterior: dict[str, Any] | None = None
        self._num_samples: int = 0
        self._num_chains: int = 1
        self._is_fitted = False
        self._init_runtime()

    # ------------------------------------------------------------------ runtime
    def _init_runtime(self) -> None:
        ensure_compilation_cache()
        self._layout = DeviceLayout.local()
        self._functions = FunctionCache()
        self._fn_vi_update: dict[tuple[str, ...], Callable] = {}
        self._temp_dir: tempfile.TemporaryDirectory | None = None
        self._placed: tuple[int, dict[str, jax.Array]] | None = None
        ImpactModel._models.add(self)
        logger.info(
            "ImpactModel on backend %s with %d device(s).",
            jax.default_backend(),
            self._layout.num_devices,
        )

    def __getstate__(self) -> dict[str, Any]:
        # Keys (own, SVI/MCMC states, `vi_result`, inference object) are stored as key
        # data plus implementation name: see `aimz_core.rng.pack_keys`.
        return pack_keys({k: v for k, v in self.__dict__.items() if k not in _RUNTIME_ATTRS})

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(unpack_keys(state))
        state.setdefault("_is_fitted", False)
        state.setdefault("_num_chains", 1)
        self.__dict__.update(state)
        self._init_runtime()
        mcmc = self.__dict__.get("_inference")
        if (
            isinstance(mcmc, MCMC)
            and mcmc.chain_method == "parallel"
            and mcmc.num_chains > self._layout.num_devices
        ):
            warnings.warn(
                f"The pickled MCMC runs {mcmc.num_chains} parallel chains but this host has "
                f"{self._layout.num_devices} device(s); chains will run sequentially.",
                PerformanceWarning,
                stacklevel=2,
            )
            mcmc.chain_method = "sequential"

    def __del__(self) -> None:
        # No `contextlib.suppress` here: at interpreter exit module globals may
        # already be None, and `__del__` must stay silent.
        try:  # noqa: SIM105
            self.cleanup()
        except (AttributeError, OSError, TypeError):
            pass

    # --------------------------------------------------------------- properties
    @property
    def kernel(self) -> Callable:
        """The NumPyro kernel."""
        return self._kernel

    @property
    def inference(self) -> SVI | MCMC:
        """The inference object (``SVI`` or ``MCMC``)."""
        return self._inference

    @property
    def param_input(self) -> str:
        """Name of the kernel's input parameter."""
        return self._param_input

    @property
    def param_output(self) -> str:
        """Name of the kernel's output parameter and site."""
        return self._param_output

    @property
    def kernel_spec(self) -> KernelSpec | None:
        """Sites discovered by tracing the kernel (``None`` before any trace)."""
        return self._kernel_spec

    @property
    def posterior(self) -> dict[str, Any] | None:
        """Posterior samples (flattened draw axis first); treat as read-only."""
        return self._posterior

    @property
    def rng_key(self) -> jax.Array:
        """The model's current internal PRNG key."""
        return self._rng_key

    @property
    def temp_dir(self) -> str | None:
        """Path of the model-owned temporary output directory, if one exists."""
        return None if self._temp_dir is None else self._temp_dir.name

    @property
    def vi_result(self) -> SVIRunResult | None:
        """Result of the last SVI fit (params, state, losses)."""
        return self._vi_result

    @vi_result.setter
    def vi_result(self, value: SVIRunResult | None) -> None:
        if value is not None and not isinstance(value, SVIRunResult):
            raise TypeError(
                f"`vi_result` must be a numpyro SVIRunResult or None, got {type(value).__name__}."
            )
        if value is not None and not np.all(np.isfinite(np.asarray(value.losses))):
            warnings.warn(
                "Loss contains NaN or Inf values; the fit may have diverged. Check the "
                "learning rate, priors and data scaling.",
                FitWarning,
                stacklevel=2,
            )
        self._vi_result = value

    def is_fitted(self) -> bool:
        """Whether posterior samples are available.

        Example:
            >>> # after ``fit``, ``fit_on_batch`` or ``set_posterior_sample``
            >>> # ``model.is_fitted()`` is True
        """
        return self._is_fitted and bool(self._posterior)

    def __str__(self) -> str:
        lines = [
            "<ImpactModel>",
            f"  kernel: {kernel_name(self._kernel)}",
            f"  inference: {type(self._inference).__name__}",
            f"  param_input: {self._param_input!r}",
            f"  param_output: {self._param_output!r}",
            f"  fitted: {self.is_fitted()}",
        ]
        if self.is_fitted():
            lines.append(f"  draws: {self._num_samples} ({self._num_chains} chain(s))")
        if self.temp_dir is not None:
            lines.append(f"  temp_dir: {self.temp_dir}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        key_data = np.asarray(random.key_data(self._rng_key)).tolist()
        return (
            f"<ImpactModel kernel_name={kernel_name(self._kernel)}; "
            f"rng_key_data={key_data}; inference_method={type(self._inference).__name__}; "
            f"param_input={self._param_input!r}; param_output={self._param_output!r}; "
            f"kernel_spec={self._kernel_spec!r}; fitted={self.is_fitted()}; "
            f"temp_dir={self.temp_dir!r}>"
        )

    def describe(self) -> dict[str, Any]:
        """Summarise the model as a plain dict.

        Returns:
            Kernel name and arguments, parameter names, inference class, fitted
            flag, chain and draw counts, and for every known site its kind
            (``latent``, ``observed`` or ``deterministic``) and draw shape.

        Example:
            >>> # model.describe()["sites"]["w"] -> {"kind": "latent", ...}
        """
        spec = self._kernel_spec
        sites: dict[str, dict[str, Any]] = {}
        if spec is not None:
            for name in spec.sample_sites:
                kind = "observed" if name == self._param_output else "latent"
                sites[name] = {"kind": kind, "dims": None, "draw_shape": None}
            for name in spec.return_sites:
                if name not in sites:
                    sites[name] = {
                        "kind": "deterministic",
                        "dims": None,
                        "draw_shape": None,
                    }
        for name, value in (self._posterior or {}).items():
            entry = sites.setdefault(name, {"kind": "latent", "dims": None})
            entry["draw_shape"] = list(np.shape(value)[1:])
        return {
            "kernel": kernel_name(self._kernel),
            "arguments": list(kernel_parameter_names(self._kernel)),
            "param_input": self._param_input,
            "param_output": self._param_output,
            "inference": type(self._inference).__name__,
            "fitted": self.is_fitted(),
            "num_chains": self._num_chains if self.is_fitted() else None,
            "num_samples": self._num_samples if self.is_fitted() else None,
            "sites": sites,
        }

    # ---------------------------------------------------------------- helpers
    def _next_key(self, rng_key: jax.Array | None) -> jax.Array:
        if rng_key is None:
            self._rng_key, key = random.split(self._rng_key)
            return key
        return coerce_key(rng_key, stacklevel=4)

    def _bind(self, X: Any, y: Any, kwargs: Mapping[str, Any], *, lazy: bool = False) -> KernelArgs:
        return bind_arguments(
            self._kernel, self._param_input, self._param_output, X, y, kwargs, lazy=lazy
        )

    def _build_kernel_spec(self, args: Mapping[str, Any], with_output: bool) -> KernelSpec:
        if self._kernel_spec is not None and self._kernel_spec.covers(with_output):
            return self._kernel_spec
        if not with_output:
            args = {k: v for k, v in args.items() if k != self._param_output}
        trace = global_trace(self._kernel, self._rng_key, args)
        validate_kernel_body(
            trace,
            param_output=self._param_output,
            with_output=with_output,
            kernel_params=kernel_parameter_names(self._kernel),
        )
        spec = KernelSpec.from_trace(
            trace, param_output=self._param_output, with_output=with_output
        )
        if self._kernel_spec is not None:
            spec = self._kernel_spec.merge(spec)
        self._kernel_spec = spec
        return spec

    def _check_fitted(self) -> None:
        if not self.is_fitted():
            raise _not_fitted()

    def _substitutable(self) -> dict[str, Any]:
        """Posterior sites that forward sampling substitutes (no deterministic ones)."""
        post = self._posterior or {}
        spec = self._kernel_spec
        deterministic = set()
        if spec is not None:
            deterministic = set(spec.return_sites) - set(spec.sample_sites)
        return {k: v for k, v in post.items() if k not in deterministic and k != self._param_output}

    def _placed_posterior(self) -> dict[str, jax.Array]:
        """Substitutable posterior on the default device, cached by identity."""
        post = self._posterior or {}
        if self._placed is None or self._placed[0] != id(post):
            self._placed = (id(post), jax.device_put(self._substitutable()))
        return self._placed[1]

    def _host_posterior(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in (self._posterior or {}).items()}

    def _check_handler_sites(self, values: Mapping[str, Any], name: str) -> None:
        """``intervention``/``condition`` may only name sample sites a trace has seen."""
        spec = self._kernel_spec
        if not values or spec is None or not spec.traced:
            return
        unknown = [k for k in values if k not in spec.sample_sites]
        if unknown:
            raise ValueError(
                f"`{name}` names {', '.join(map(repr, unknown))}, which is not a sample "
                f"site of the kernel; sample sites are: {', '.join(spec.sample_sites)}."
            )

    def _sites_for(self, return_sites: Any) -> tuple[str, ...]:
        return coerce_return_sites(return_sites, self._kernel_spec, self._param_output)

    # ---------------------------------------------------------------- training
    def _vi_update(self, extras: Mapping[str, Any]) -> Callable:
        names = tuple(sorted(extras))
        fn = self._fn_vi_update.get(names)
        if fn is None:
            fn = jax.jit(self._inference.update, static_argnames=names)
            self._fn_vi_update[names] = fn
        return fn

    def _require_svi(self, method: str) -> SVI:
        if not isinstance(self._inference, SVI):
            raise TypeError(
                f"`.{method}()` is not supported for MCMC inference. Use `.fit_on_batch()` instead."
            )
        return self._inference

    def train_on_batch(
        self, X: Any, y: Any, *, rng_key: jax.Array | None = None, **kwargs: Any
    ) -> tuple[Any, jax.Array]:
        """Run one SVI step on a batch (training resumes from the last state).

        Args:
            X: Input batch.
            y: Output batch.
            rng_key: Key used to initialise SVI on the first call only.
            **kwargs: Extra kernel arguments.

        Returns:
            The new SVI state and the loss (a device scalar).

        Example:
            >>> # state, loss = model.train_on_batch(X, y)
        """
        svi = self._require_svi("train_on_batch")
        bound = self._bind(X, y, kwargs)
        args = {**bound.arrays, **bound.extras}
        if self._vi_state is None:
            self._build_kernel_spec(args, with_output=True)
            key = self._next_key(rng_key)
            self._vi_state = svi.init(key, **args)
        elif rng_key is not None:
            coerce_key(rng_key)
        self._vi_state, loss = self._vi_update(bound.extras)(
            self._vi_state, **bound.arrays, **bound.extras
        )
        return self._vi_state, loss

    def _sample_guide(
        self, key: jax.Array, num_samples: int, args: Mapping[str, Any]
    ) -> dict[str, jax.Array]:
        svi = self._require_svi("sample")
        assert self._vi_result is not None
        # parallel=True: eager vmap reuses cached primitives, while the default
        # (lax.map outside jit) compiles a new scan on every call.
        predictive = Predictive(
            svi.guide, params=self._vi_result.params, num_samples=num_samples, parallel=True
        )
        args = {k: v for k, v in args.items() if k != self._param_output}
        # Guide-only sites (`_auto_latent` of the AutoContinuous guides) stay internal.
        return drop_guide_only_sites(predictive(key, **args), self._kernel_spec, svi.guide)

    def _store_posterior(self, posterior: Mapping[str, Any], num_chains: int) -> None:
        self._posterior = dict(posterior)
        self._num_samples = int(next(iter(self._posterior.values())).shape[0])
        self._num_chains = num_chains
        self._placed = None
        self._is_fitted = True

    def fit_on_batch(
        self,
        X: Any,
        y: Any,
        *,
        num_steps: int = 10000,
        num_samples: int = 1000,
        rng_key: jax.Array | None = None,
        progress: bool = True,
        **kwargs: Any,
    ) -> Self:
        """Fit on one in-memory batch: SVI for ``num_steps`` or a full MCMC run.

        Args:
            X: Input.
            y: Observed output (same leading size as ``X``).
            num_steps: SVI steps (ignored for MCMC).
            num_samples: Posterior draws taken from the SVI guide (ignored for MCMC).
            rng_key: Key for this call only (default: split the internal key).
            progress: Show NumPyro's progress bar.
            **kwargs: Extra kernel arguments.

        Returns:
            The fitted model.

        Example:
            >>> # model.fit_on_batch(X, y, num_steps=1000)
        """
        for name, value in (("num_steps", num_steps), ("num_samples", num_samples)):
            check_batch_size(value, name)
        if y is None:
            raise ValueError(f"`{self._param_output}` is required for `.fit_on_batch()`.")
        bound = self._bind(X, y, kwargs)
        if len(bound.arrays[self._param_input]) != len(bound.arrays[self._param_output]):
            raise ValueError(
                f"`{self._param_input}` and `{self._param_output}` must have the same "
                "leading-axis size."
            )
        arrays = {k: jnp.asarray(v) for k, v in bound.arrays.items()}
        args = {**arrays, **bound.extras}
        self._build_kernel_spec(args, with_output=True)
        key = self._next_key(rng_key)
        if isinstance(self._inference, MCMC):
            mcmc = self._inference
            mcmc.run(key, **args)
            samples = jax.device_get(mcmc.get_samples(group_by_chain=False))
            self._store_posterior(samples, mcmc.num_chains)
            return self
        train_key, sample_key = random.split(key)
        result = self._inference.run(
            train_key,
            num_steps,
            progress_bar=progress,
            init_state=self._vi_state,
            **args,
        )
        self._vi_state = result.state
        self.vi_result = SVIRunResult(result.params, result.state, np.asarray(result.losses))
        self._store_posterior(self._sample_guide(sample_key, num_samples, args), 1)
        return self

    def fit(
        self,
        X: Any,
        y: Any = None,
        *,
        num_samples: int = 1000,
        rng_key: jax.Array | None = None,
        progress: bool = True,
        batch_size: int | None = None,
        epochs: int = 1,
        shuffle: bool = True,
        **kwargs: Any,
    ) -> Self:
        """Fit with SVI over minibatches for a number of epochs.

        Args:
            X: Input array, an :class:`~aimz_core.data.ArrayLoader` or any iterable
                of mappings (batches keyed by kernel parameter names).
            y: Output (required with array ``X``; must be ``None`` with a loader).
            num_samples: Posterior draws taken from the guide after training.
            rng_key: Key for this call only.
            progress: Show a progress bar per epoch with the running loss.
            batch_size: Rows per step (default: all rows).
            epochs: Passes over the data.
            shuffle: Reshuffle rows every epoch.
            **kwargs: Extra kernel arguments (arrays are batched with ``X``).

        Returns:
            The fitted model.

        Example:
            >>> # model.fit(X, y, batch_size=256, epochs=20)
        """
        self._require_svi("fit")
        check_batch_size(num_samples, "num_samples")
        check_batch_size(epochs, "epochs")
        if is_loader(X):
            if y is not None:
                raise TypeError("`y` must be `None` when `X` is already a data loader.")
            reject_reserved(kwargs, self._param_input, self._param_output)
            if any(is_array_like(v) for v in kwargs.values()):
                raise ValueError(
                    "Array keyword arguments are not supported alongside a data loader; "
                    "add them to the loader's dataset instead."
                )
            loader: Iterable[Mapping[str, Any]] = X
            extras = dict(kwargs)
            key = self._next_key(rng_key)
            train_key, sample_key = random.split(key)
        else:
            if batch_size is not None:
                check_batch_size(batch_size)
            if y is None:
                raise ValueError(
                    f"`{self._param_output}` is required for `fit()` when "
                    f"`{self._param_input}` is array-like."
                )
            bound = self._bind(X, y, kwargs)
            n = check_aligned(bound.arrays, self._param_input)
            # The key is drawn only once every input check has passed.
            key = self._next_key(rng_key)
            train_key, sample_key = random.split(key)
            loader = ArrayLoader(
                ArrayDataset(**bound.arrays),
                train_key,
                batch_size=min(batch_size or n, n),
                shuffle=shuffle,
            )
            extras = bound.extras
        losses: list[float] = []
        last_batch: dict[str, Any] | None = None
        for epoch in range(1, epochs + 1):
            epoch_losses: list[jax.Array] = []
            bar = tqdm(
                loader,
                desc=f"Epoch {epoch}/{epochs}",
                disable=not progress,
                leave=False,
            )
            for step, batch in enumerate(bar):
                if not isinstance(batch, Mapping) or self._param_input not in batch:
                    raise ValueError(
                        f"Every batch of the loader must be a mapping with a "
                        f"{self._param_input!r} field."
                    )
                batch = dict(batch)
                X_b = batch.pop(self._param_input)
                y_b = batch.pop(self._param_output, None)
                if y_b is None:
                    raise ValueError(
                        f"Every batch of the loader must have a {self._param_output!r} "
                        "field to fit."
                    )
                _, loss = self.train_on_batch(
                    X_b,
                    y_b,
                    rng_key=train_key if self._vi_state is None else None,
                    **batch,
                    **extras,
                )
                epoch_losses.append(loss)
                if progress and step % 10 == 0:
                    bar.set_postfix(loss=f"{float(loss):.4f}")
                last_batch = {self._param_input: X_b, **batch, **extras}
            if not epoch_losses:
                raise ValueError("The data loader yielded no batches; nothing to fit.")
            host = np.asarray(jax.device_get(epoch_losses), dtype=float)
            losses.extend(host.tolist())
            if progress:
                tqdm.write(f"Epoch {epoch}/{epochs} - Average loss: {host.mean():.4f}")
        assert last_batch is not None
        svi = self._inference
        assert isinstance(svi, SVI)
        self.vi_result = SVIRunResult(
            svi.get_params(self._vi_state), self._vi_state, np.asarray(losses)
        )
        self._store_posterior(self._sample_guide(sample_key, num_samples, last_batch), 1)
        return self

    # ---------------------------------------------------------------- posterior
    def sample(
        self,
        *,
        num_samples: int = 1000,
        rng_key: jax.Array | None = None,
        return_sites: str | Iterable[str] | None = None,
        return_datatree: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Draw posterior samples (from the SVI guide or by continuing MCMC).

        Does not change :attr:`posterior`.

        Returns:
            A DataTree with a ``posterior`` group, or ``{site: array}`` when
            ``return_datatree=False``.

        Example:
            >>> # model.sample(num_samples=100, return_datatree=False)["w"].shape
        """
        check_batch_size(num_samples, "num_samples")
        if return_datatree:
            io_backend()  # fail before any work when aimz-io is missing
        if isinstance(self._inference, MCMC):
            mcmc = self._inference
            if mcmc.last_state is None:
                raise NotFittedError(
                    "There is no MCMC state to sample from; run `.fit_on_batch()` first."
                )
            if self._param_output not in kwargs:
                raise TypeError(f"{self._param_output!r} must be provided in `.sample()`.")
            X = kwargs.pop(self._param_input, None)
            y = kwargs.pop(self._param_output)
            bound = self._bind(X, y, kwargs)
            mcmc.post_warmup_state = mcmc.last_state
            mcmc.num_samples = num_samples
            mcmc.run(mcmc.post_warmup_state.rng_key, **bound.arrays, **bound.extras)
            samples = jax.device_get(mcmc.get_samples(group_by_chain=False))
            num_chains = mcmc.num_chains
        else:
            if self._vi_result is None:
                raise NotFittedError(
                    "There is no inference result to sample from; fit the model or set "
                    "`vi_result` first."
                )
            key = self._next_key(rng_key)
            samples = jax.device_get(self._sample_guide(key, num_samples, kwargs))
            if return_sites is not None:
                sites = self._sites_for(return_sites)
                samples = {k: v for k, v in samples.items() if k in sites}
            num_chains = 1
        samples = {k: np.asarray(v) for k, v in samples.items()}
        if not return_datatree:
            return samples
        return io_backend().tree_from_arrays({"posterior": samples}, num_chains=num_chains)

    def set_posterior_sample(
        self, posterior_sample: Mapping[str, Any], *, num_chains: int = 1
    ) -> Self:
        """Use posterior samples drawn elsewhere; the model counts as fitted.

        Sites are checked against the traces of the kernel known without tracing
        again: the kernel spec once a fit or prior predictive call has traced the
        kernel, and the prototype trace of an initialised SVI auto guide. A site that
        none of them records (a guide-only site such as ``_auto_latent``) is kept but
        warned about; the kernel is never traced here, so on a model with no known
        trace nothing is checked.

        Args:
            posterior_sample: ``{site: array}`` with a shared leading draw axis
                (``num_chains * draws``). Deterministic sites should be left out.
            num_chains: Chains the leading axis is made of (chain-major).

        Raises:
            ValueError: For an empty dict, 0-D values, differing leading sizes or a
                leading size not divisible by ``num_chains``.

        Warns:
            OutputWarning: If the output site is given (it is removed), or if no
                known trace of the kernel records a site of ``posterior_sample``.

        Example:
            >>> # model.set_posterior_sample({"w": np.random.randn(500)})
        """
        if not isinstance(posterior_sample, Mapping):
            raise TypeError(
                "`posterior_sample` must be a mapping of site names to arrays, got "
                f"{type(posterior_sample).__name__}."
            )
        check_batch_size(num_chains, "num_chains")
        samples = dict(posterior_sample)
        if self._param_output in samples:
            warnings.warn(
                f"The output site {self._param_output!r} is removed.",
                OutputWarning,
                stacklevel=2,
            )
            samples.pop(self._param_output)
        reserved = [k for k in samples if k in RESERVED_SITE_NAMES]
        if reserved:
            raise ValueError(f"Site names {reserved} are reserved for output dimensions.")
        if not samples:
            raise ValueError("`posterior_sample` cannot be empty.")
        for name, value in samples.items():
            if not isinstance(value, (np.ndarray, jax.Array)):
                value = np.asarray(value)
            if value.ndim == 0:
                raise ValueError(f"`posterior_sample[{name!r}]` must have at least 1 dimension.")
            samples[name] = value
        shapes = {k: v.shape[0] for k, v in samples.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"Inconsistent batch shapes found in `posterior_sample`: {shapes}")
        n = next(iter(shapes.values()))
        if n % num_chains:
            raise ValueError(
                f"The leading size {n} of `posterior_sample` is not divisible by "
                f"`num_chains={num_chains}`."
            )
        recorded = recorded_sites(self._kernel_spec, getattr(self._inference, "guide", None))
        unknown = [k for k in samples if recorded is not None and k not in recorded]
        if unknown:
            warnings.warn(
                f"No trace of the kernel records the site(s) {', '.join(map(repr, unknown))} "
                "of `posterior_sample`; they are kept in `posterior`, but the predictive "
                "methods ignore them unless the kernel records them.",
                OutputWarning,
                stacklevel=2,
            )
        if self._kernel_spec is None:
            self._kernel_spec = KernelSpec(
                traced=False,
                sample_sites=tuple(samples),
                return_sites=(self._param_output,),
                output_observed=False,
            )
        self._store_posterior(samples, num_chains)
        return self

    # --------------------------------------------------------- on-batch methods
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
    ) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, ...]]]:
        bound = self._bind(X, None, kwargs)
        arrays = {k: jnp.asarray(v) for k, v in bound.arrays.items()}
        if kind == "prior":
            self._build_kernel_spec({**arrays, **bound.extras}, with_output=False)
        sites = self._sites_for(return_sites)
        interv = _as_jax_tree(intervention, "intervention")
        cond = _as_jax_tree(condition, "condition")
        self._check_handler_sites(interv, "intervention")
        self._check_handler_sites(cond, "condition")
        key = self._next_key(rng_key)
        config = BatchConfig(
            kind=kind,
            shard_axis="draw",
            return_sites=sites,
            extras_key=bound.extras_key(),
            num_draws=num_draws,
            sharded=False,
        )
        entry = self._blocked(config, bound.extras, (key, _first_draw(post), arrays, interv, cond))
        out = entry.fn(post, (key, jnp.arange(num_draws)), arrays, interv, cond)
        host = {k: np.asarray(v) for k, v in jax.device_get(out).items()}
        return host, {k: self._dim_names(k, v.ndim - 1, entry.dims) for k, v in host.items()}

    @staticmethod
    def _dim_names(site: str, ndim: int, dims: Mapping[str, Mapping[int, str]]) -> tuple[str, ...]:
        known = dims.get(site, {})
        return tuple(known.get(i, f"{site}_dim_{i}") for i in range(ndim))

    def _as_result(
        self,
        group: str,
        out: dict[str, np.ndarray],
        dims: dict[str, tuple[str, ...]],
        return_datatree: bool,
    ) -> Any:
        if not return_datatree:
            return out
        groups: dict[str, dict[str, np.ndarray]] = {}
        if self._posterior:
            groups["posterior"] = self._host_posterior()
        groups[group] = out
        return io_backend().tree_from_arrays(groups, num_chains=self._num_chains, dims=dims)

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
            return_datatree: Return a DataTree (needs ``aimz-io``) or a dict.
            **kwargs: Extra kernel arguments.

        Returns:
            DataTree or ``{site: array of shape (draws, ...)}``.

        Example:
            >>> # model.predict_on_batch(X, return_datatree=False)["y"].shape
        """
        self._check_fitted()
        if return_datatree:
            io_backend()  # fail before any work when aimz-io is missing
        out, dims = self._run_on_batch(
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
        return self._as_result(group, out, dims, return_datatree)

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

        Example:
            >>> # model.sample_posterior_predictive_on_batch(X)
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

        Example:
            >>> # model.sample_prior_predictive_on_batch(X, num_samples=200)
        """
        check_batch_size(num_samples, "num_samples")
        if return_datatree:
            io_backend()  # fail before any work when aimz-io is missing
        out, dims = self._run_on_batch(
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
        return self._as_result("prior_predictive", out, dims, return_datatree)

    # -------------------------------------------------------- streaming methods
    def _base_dir(self, output_dir: str | Path | None) -> Path | str:
        if output_dir is not None:
            return resolve_output_dir(output_dir)
        if self._temp_dir is None:
            self._temp_dir = tempfile.TemporaryDirectory(prefix="aimz_")
            logger.info("Created temporary output directory %s", self._temp_dir.name)
        return Path(self._temp_dir.name)

    def _streaming_inputs(
        self, X: Any, y: Any, kwargs: Mapping[str, Any]
    ) -> tuple[KernelArgs, int | None]:
        """Turn arrays, an ArrayLoader or an iterable of mappings into arrays."""
        reject_reserved(kwargs, self._param_input, self._param_output)
        if is_loader(X):
            if y is not None:
                raise TypeError("`y` must be `None` when `X` is already a data loader.")
            if any(is_array_like(v) for v in kwargs.values()):
                raise ValueError(
                    "Array keyword arguments are not supported alongside a data loader; "
                    "add them to the loader's dataset instead."
                )
            if isinstance(X, ArrayLoader):
                if X.shuffle:
                    warnings.warn(
                        "The data loader shuffles; aimz reads its dataset in order so "
                        "results follow the data order.",
                        OutputWarning,
                        stacklevel=4,
                    )
                fields = dict(X.dataset.arrays)
                loader_batch: int | None = X.batch_size
            else:
                batches = [dict(b) for b in X]
                if not batches:
                    raise ValueError("The data loader yielded no batches.")
                fields = {
                    k: np.concatenate([np.asarray(b[k]) for b in batches]) for k in batches[0]
                }
                loader_batch = len(next(iter(batches[0].values())))
            if self._param_input not in fields:
                raise ValueError(
                    f"The data loader must provide a field named {self._param_input!r}; "
                    f"got {sorted(fields)}."
                )
            X_f = fields.pop(self._param_input)
            y_f = fields.pop(self._param_output, None)
            bound = self._bind(X_f, y_f, {**fields, **kwargs}, lazy=True)
            check_aligned(bound.arrays, self._param_input)
            return bound, loader_batch
        if not is_array_like(X):
            raise TypeError(
                f"`X` must be an array-like or a data loader, got {type(X).__name__!r}."
            )
        bound = self._bind(X, y, kwargs, lazy=True)
        check_aligned(bound.arrays, self._param_input)
        return bound, None

    def _stream_call(
        self,
        kind: Literal["predict", "prior", "loglik"],
        caller: str,
        group: str,
        X: Any,
        y: Any,
        *,
        progress: bool,
        **options: Any,
    ) -> Any:
        """Plan a streamed call (``options`` as in :meth:`_plan_stream`) and run it."""
        plan, dask_client = self._plan_stream(kind, caller, group, X, y, **options)
        store, output_dir = options["store"], options["output_dir"]
        client, resume = options.get("client"), options.get("resume", False)
        storage_options = options.get("storage_options")
        if client is not None or resume or is_url(output_dir):
            return io_backend("Distributed and resumable runs").run_distributed(
                self,
                plan,
                client=dask_client,
                base_dir=self._base_dir(output_dir),
                resume=resume,
                progress=progress,
                storage_options=storage_options,
            )
        if options["return_datatree"]:
            base = self._base_dir(output_dir) if store == "persistent" else None
            sink = io_backend().make_sink(store=store, base_dir=base, progress=progress)
        else:
            sink = MemorySink()
        arrays = plan.arrays
        if plan.shard_axis == "obs":

            def launch(i: int, start: int, stop: int) -> dict[str, jax.Array]:
                rows = {k: host_rows(v, start, stop) for k, v in arrays.items()}
                return self._launch_block(plan, i, start, rows)

        else:

            def launch(i: int, start: int, stop: int) -> dict[str, jax.Array]:
                return self._launch_block(plan, i, start, arrays)

        assert plan.info is not None
        return stream(
            plan.ranges,
            launch,
            stream_axis=plan.stream_axis,
            sink=sink,
            info=plan.info,
            progress=progress,
            desc=plan.desc,
        )

    def _plan_stream(
        self,
        kind: Literal["predict", "prior", "loglik"],
        caller: str,
        group: str,
        X: Any,
        y: Any,
        *,
        num_samples: int | None,
        intervention: Mapping[str, Any] | None,
        condition: Mapping[str, Any] | None,
        rng_key: jax.Array | None,
        return_sites: Any,
        shard_axis: ShardAxis,
        batch_size: int | None,
        store: Store,
        output_dir: str | Path | None,
        return_datatree: bool,
        kwargs: Mapping[str, Any],
        desc: str,
        client: Any = None,
        resume: bool = False,
        storage_options: Mapping[str, Any] | None = None,
    ) -> tuple[StreamPlan, Any]:
        """Validate, bind and plan a streamed call: everything but the batches."""
        # Validation, in order, before any work or directory is created.
        if kind in ("predict", "loglik"):
            self._check_fitted()
        if shard_axis not in ("obs", "draw"):
            raise ValueError(f"`shard_axis` must be either 'obs' or 'draw', got {shard_axis!r}.")
        if shard_axis == "draw" and is_loader(X):
            raise TypeError(
                "`shard_axis='draw'` needs an array-like input; got a data loader. Pass "
                "the arrays, or use `shard_axis='obs'`."
            )
        if batch_size is not None:
            check_batch_size(batch_size)
        if store not in ("persistent", "memory"):
            raise ValueError(f"`store` must be either 'persistent' or 'memory', got {store!r}.")
        if output_dir is not None and (store == "memory" or not return_datatree):
            raise ValueError(
                "`output_dir` must be `None` when `store='memory'` or `return_datatree=False`."
            )
        if (client is not None or resume) and (store == "memory" or not return_datatree):
            what = "`client`" if client is not None else "`resume=True`"
            raise ValueError(
                f"{what} writes a persistent Zarr store: it needs `store='persistent'` "
                "and `return_datatree=True`."
            )
        if resume and output_dir is None:
            raise ValueError(
                "`resume=True` needs the `output_dir` of the interrupted run (a temporary "
                "directory does not survive the process)."
            )
        if resume and rng_key is None and kind != "loglik":
            raise ValueError(
                "`resume=True` needs the explicit `rng_key` of the interrupted run: the "
                "model's internal key has moved on since, so the draws would differ."
            )
        if storage_options is not None and not is_url(output_dir):
            raise ValueError(
                "`storage_options` only applies to an object-store `output_dir` URL "
                "(e.g. 's3://bucket/prefix')."
            )
        dask_client = None
        if client is not None:
            dask_client = io_backend("Distributed runs").resolve_client(client)
        interv = _as_jax_tree(intervention, "intervention")
        cond = _as_jax_tree(condition, "condition")
        bound, loader_batch = self._streaming_inputs(X, y, kwargs)
        if kind == "loglik" and self._param_output not in bound.arrays:
            raise ValueError(
                f"`{self._param_output}` is required for `log_likelihood()` with array "
                f"`{self._param_input}`."
            )
        if return_datatree:
            io_backend()
        n_obs = int(bound.arrays[self._param_input].shape[0])
        if kind == "prior":
            probe = {k: host_rows(v, 0, 1) for k, v in bound.arrays.items()}
            self._build_kernel_spec({**probe, **bound.extras}, with_output=False)
        sites = (self._param_output,) if kind == "loglik" else self._sites_for(return_sites)
        self._check_handler_sites(interv, "intervention")
        self._check_handler_sites(cond, "condition")
        if (
            batch_size is not None
            and loader_batch is None
            and (batch_size % self._layout.num_devices)
        ):
            warnings.warn(
                f"The `batch_size` ({batch_size}) is not divisible by the number of "
                f"devices ({self._layout.num_devices}); batches are padded.",
                PerformanceWarning,
                stacklevel=4,
            )
        batch_size = batch_size or loader_batch
        post = self._placed_posterior() if kind != "prior" else {}
        num_draws = self._num_samples if kind != "prior" else int(num_samples or 0)
        # `log_likelihood` never consumes the internal key (spec 4.3).
        key = self._rng_key if kind == "loglik" and rng_key is None else self._next_key(rng_key)

        if not post and kind != "prior":
            shard_axis = "obs"
        obs_post = kind != "prior" and any(
            v.ndim >= 2 and v.shape[1] == n_obs for v in post.values()
        )
        # `condition` values are passed whole to every batch: observation-aligned ones
        # are only right when the batch is the whole input (or on the draw path).
        obs_cond = any(v.ndim >= 1 and v.shape[0] == n_obs for v in cond.values())
        if shard_axis == "obs" and (obs_post or obs_cond):
            fits_whole = self._layout.num_devices == 1 and (
                (batch_size is not None and batch_size >= n_obs)
                or (batch_size is None and n_obs * num_draws * 4 < 100_000_000)
            )
            if fits_whole:
                batch_size = n_obs
            else:
                what = (
                    "The posterior has observation-level sites"
                    if obs_post
                    else "`condition` has observation-level values"
                )
                warnings.warn(
                    f"{what}, which are not compatible with `shard_axis='obs'` for this "
                    "input; rerunning with `shard_axis='draw'`.",
                    PerformanceWarning,
                    stacklevel=4,
                )
                shard_axis = "draw"
        global_post: dict[str, jax.Array] = {}
        if kind == "prior" and shard_axis == "obs":
            key, prior_key = random.split(key)
            global_post = self._global_prior(bound, sites, num_draws, prior_key)

        sharded = self._layout.num_devices > 1
        config = BatchConfig(
            kind=kind,
            shard_axis=shard_axis,
            return_sites=sites,
            extras_key=bound.extras_key(),
            num_draws=num_draws,
            sharded=sharded,
        )
        ndev = self._layout.num_devices
        arrays = bound.arrays
        total = n_obs if shard_axis == "obs" else num_draws
        plan = StreamPlan(
            kind=kind,
            caller=caller,
            group=group,
            shard_axis=shard_axis,
            config=config,
            extras=bound.extras,
            key=key,
            size=0,
            total=total,
            ranges=[],
            stream_axis=1 if shard_axis == "obs" else 0,
            global_post=global_post,
            intervention=interv,
            condition=cond,
            info=None,
            desc=desc,
            arrays=arrays,
        )

        def args_for(size: int) -> tuple:
            return self._abstract_block_args(plan, size)

        if batch_size is None:
            entry = self._functions.get(
                self._kernel, config, bound.extras, self._param_output, self._layout
            )
            probe_size = min(total, ndev)
            probe_size = max(ndev, probe_size)
            probe = args_for(probe_size)
            shapes = entry.fn.eval_shape(*probe)
            batch_size = auto_batch_size(shapes, probe_size, total, ndev)
            if shard_axis == "obs" and total > ndev:
                # Rows are also bounded by intermediates: a wide layer over many rows
                # can need far more memory per draw than the draw's output.
                measured = []
                for rows in (min(total, max(ndev, 256)), min(total, max(ndev, 2048))):
                    rows = math.ceil(rows / ndev) * ndev
                    one = args_for(rows)
                    one_args = (key, _first_draw(one[0]), one[2], interv, cond)
                    measured.extend((entry.draw_bytes(one_args), rows))
                cap = rows_for_intermediates(*measured)
                if cap is not None:
                    batch_size = min(batch_size, max(ndev, cap))
            batch_size = balanced_batch_size(batch_size, total, ndev)
        size = min(batch_size, total)
        size = max(ndev, math.ceil(size / ndev) * ndev)
        # The chunk convention of the draw path follows the plan (`_plan_config`).
        plan = dataclasses.replace(plan, size=size)
        config = self._plan_config(plan)
        plan = dataclasses.replace(plan, config=config)
        if kind == "loglik" and shard_axis == "obs":
            probe_rows = {k: v[:1] for k, v in bound.arrays.items()}
            check_subsample_plates(
                global_trace(self._kernel, self._rng_key, {**probe_rows, **bound.extras}),
                min(size, total),
            )
        probe_args = self._abstract_block_args(plan, size)
        config = self._blocked_config(
            config,
            bound.extras,
            (key, _first_draw(probe_args[0]), probe_args[2], interv, cond),
            num_draws=num_draws if shard_axis == "obs" else size,
        )
        entry = self._functions.get(
            self._kernel, config, bound.extras, self._param_output, self._layout
        )
        shapes = entry.fn.eval_shape(*probe_args)
        stream_axis = plan.stream_axis
        layouts: dict[str, SiteLayout] = {}
        for name, sds in shapes.items():
            if shard_axis == "obs" and (len(sds.shape) < 2 or sds.shape[1] != size):
                raise NotImplementedError(
                    f"Site {name!r} has shape {tuple(sds.shape[1:])} per draw, which does "
                    "not follow the input's rows; slice writing requires each site's "
                    "axis-1 size to match the input batch size. Leave it out of "
                    "`return_sites` or use `shard_axis='draw'`."
                )
            full = list(sds.shape)
            full[stream_axis] = total
            layouts[name] = SiteLayout(
                name=name,
                shape=tuple(full),
                dtype=np.dtype(jnp.float32 if sds.dtype == jnp.bfloat16 else sds.dtype),
                stream_axis=stream_axis,
                chunk=min(size, total),
                dims=self._dim_names(name, len(sds.shape) - 1, entry.dims),
            )
        host_post = self._host_posterior()
        info = StreamInfo(
            group=group,
            caller=caller,
            num_chains=self._num_chains if kind != "prior" else 1,
            sites=layouts,
            posterior=host_post,
            posterior_dims={k: self._dim_names(k, v.ndim - 1, {}) for k, v in host_post.items()},
        )
        plan = dataclasses.replace(
            plan,
            config=config,
            size=size,
            ranges=split_range(total, size),
            info=info,
            desc=f"{desc} [{', '.join(layouts)}]",
        )
        return plan, dask_client

    def _plan_config(self, plan: StreamPlan) -> BatchConfig:
        """The plan's batch config, adapted to this host's devices (workers may differ)."""
        ndev = self._layout.num_devices
        sharded = ndev > 1 and plan.size % ndev == 0
        chunk = plan.size if plan.shard_axis == "draw" and not sharded else None
        if (plan.config.sharded, plan.config.chunk) == (sharded, chunk):
            return plan.config
        return dataclasses.replace(plan.config, sharded=sharded, chunk=chunk)

    def _block_args(
        self,
        plan: StreamPlan,
        i: int,
        start: int,
        rows: Mapping[str, Any],
    ) -> tuple:
        """Arguments of the batch function for batch ``i`` (rows already sliced on "obs")."""
        size = plan.size
        config = self._plan_config(plan)
        sharded = config.sharded
        if plan.kind == "prior":
            post: Mapping[str, Any] = plan.global_post
        else:
            post = self._placed_posterior()
        if plan.shard_axis == "obs":
            batch = {k: pad_rows(host_rows(v), size) for k, v in rows.items()}
            if sharded:
                batch = jax.device_put(batch, self._layout.partitioned)
            return (post, (plan.key, i), batch, plan.intervention, plan.condition)
        cache = plan.runtime
        ident = ("inputs", tuple(id(v) for v in rows.values()), sharded)
        if ident not in cache:
            dev = {k: jnp.asarray(host_rows(v)) for k, v in rows.items()}
            if sharded:
                dev = jax.device_put(dev, self._layout.replicated)
            cache[ident] = (dev, rows)
        dev_arrays = cache[ident][0]
        if config.chunk is not None:  # the batch function gathers its own chunk
            return (post, (plan.key, start), dev_arrays, plan.intervention, plan.condition)
        # One jitted gather per chunk (the last one repeats the last draw as
        # padding): no padded copy of the posterior, no eager slice per site.
        chunk, idx = take_draws(post, start, size)
        if sharded:  # shard_map on an explicit mesh needs inputs laid out as P("obs")
            chunk, idx = jax.device_put((chunk, idx), self._layout.partitioned)
        return (chunk, (plan.key, idx), dev_arrays, plan.intervention, plan.condition)

    def _abstract_block_args(self, plan: StreamPlan, size: int) -> tuple:
        """Shapes-only arguments of the batch function for a batch of ``size``.

        Planning traces the batch function with these (``jax.eval_shape``, one-draw
        jaxprs): no input rows are read or padded and no posterior is copied.
        The avals equal those of :meth:`_block_args`, so the trace is reused by
        the first real dispatch. When the plan's config has ``chunk`` set, the
        draw path passes the whole posterior and the first draw's index.
        """
        sharded = self._layout.num_devices > 1

        def spec(value: Any, shape: tuple[int, ...], sharding: Any) -> jax.ShapeDtypeStruct:
            dtype = jax.dtypes.canonicalize_dtype(value.dtype)
            return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding if sharded else None)

        post = plan.global_post if plan.kind == "prior" else self._placed_posterior()
        if plan.shard_axis == "obs":
            batch = {
                k: spec(v, (size, *v.shape[1:]), self._layout.partitioned)
                for k, v in plan.arrays.items()
            }
            return (post, (plan.key, 0), batch, plan.intervention, plan.condition)
        inputs = {
            k: spec(v, tuple(v.shape), self._layout.replicated) for k, v in plan.arrays.items()
        }
        if plan.config.chunk is not None:
            return (post, (plan.key, 0), inputs, plan.intervention, plan.condition)
        chunk = {
            k: spec(v, (size, *v.shape[1:]), self._layout.partitioned) for k, v in post.items()
        }
        idx = spec(np.empty(0, np.int32), (size,), self._layout.partitioned)
        return (chunk, (plan.key, idx), inputs, plan.intervention, plan.condition)

    def _launch_block(
        self, plan: StreamPlan, i: int, start: int, rows: Mapping[str, Any]
    ) -> dict[str, jax.Array]:
        config = self._plan_config(plan)
        entry = self._functions.get(
            self._kernel, config, plan.extras, self._param_output, self._layout
        )
        return entry.fn(*self._block_args(plan, i, start, rows))

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
            plan: The call's :class:`~aimz_core.plan.StreamPlan`.
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
        """
        if rows is None:
            if plan.shard_axis == "obs":
                rows = {k: host_rows(v, start, stop) for k, v in plan.arrays.items()}
            else:
                rows = plan.arrays
        out = self._launch_block(plan, i, start, rows)
        return {
            k: trim_block(np.asarray(v), plan.stream_axis, stop - start) for k, v in out.items()
        }

    def _blocked_config(
        self,
        config: BatchConfig,
        extras: dict[str, Any],
        one_args: tuple,
        num_draws: int | None = None,
    ) -> BatchConfig:
        """``config`` with the memory-safe draw block size set (when one is needed)."""
        entry = self._functions.get(self._kernel, config, extras, self._param_output, self._layout)
        block = block_for_draw_bytes(entry.draw_bytes(one_args), num_draws or config.num_draws)
        if block is None:
            return config
        return dataclasses.replace(config, draw_block=block)

    def _blocked(
        self,
        config: BatchConfig,
        extras: dict[str, Any],
        one_args: tuple,
        num_draws: int | None = None,
    ) -> Any:
        """The batch function for ``config``, vectorising draws in memory-safe blocks."""
        config = self._blocked_config(config, extras, one_args, num_draws)
        return self._functions.get(self._kernel, config, extras, self._param_output, self._layout)

    def _global_prior(
        self, bound: KernelArgs, sites: tuple[str, ...], num_draws: int, key: jax.Array
    ) -> dict[str, jax.Array]:
        """Draw the input-independent prior sites once, to share across batches."""
        spec = self._kernel_spec
        assert spec is not None
        candidates = tuple(
            s for s in spec.sample_sites if s not in sites and s != self._param_output
        )
        if not candidates:
            return {}
        args = {**{k: host_rows(v, 0, 1) for k, v in bound.arrays.items()}, **bound.extras}
        args2 = {
            **{k: pad_rows(host_rows(v, 0, 1), 2) for k, v in bound.arrays.items()},
            **bound.extras,
        }

        def shapes_for(a: Mapping[str, Any]) -> dict[str, Any]:
            return jax.eval_shape(
                lambda k: {
                    n: s["value"]
                    for n, s in global_trace(self._kernel, k, a).items()
                    if n in candidates
                },
                key,
            )

        one, two = shapes_for(args), shapes_for(args2)
        globals_ = tuple(n for n in candidates if n in one and one[n].shape == two[n].shape)
        if not globals_:
            return {}
        config = BatchConfig(
            kind="prior",
            shard_axis="draw",
            return_sites=globals_,
            extras_key=bound.extras_key(),
            num_draws=num_draws,
            sharded=False,
        )
        entry = self._functions.get(
            self._kernel, config, bound.extras, self._param_output, self._layout
        )
        probe = {k: jnp.asarray(host_rows(v, 0, 1)) for k, v in bound.arrays.items()}
        return entry.fn({}, (key, jnp.arange(num_draws)), probe, {}, {})

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
            return_sites: Sites to return.
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

        Example:
            >>> # tree = model.predict(X, batch_size=10_000)
        """
        return self._stream_call(
            "predict",
            "predict",
            "posterior_predictive" if in_sample else "predictions",
            X,
            None,
            num_samples=None,
            intervention=intervention,
            condition=condition,
            rng_key=rng_key,
            return_sites=return_sites,
            shard_axis=shard_axis,
            batch_size=batch_size,
            store=store,
            output_dir=output_dir,
            progress=progress,
            return_datatree=return_datatree,
            kwargs=kwargs,
            desc="Posterior predictive sampling",
            client=client,
            resume=resume,
            storage_options=storage_options,
        )

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

        Example:
            >>> # model.sample_posterior_predictive(X)
        """
        return self._stream_call(
            "predict",
            "sample_posterior_predictive",
            "posterior_predictive",
            X,
            None,
            num_samples=None,
            intervention=intervention,
            condition=condition,
            rng_key=rng_key,
            return_sites=return_sites,
            shard_axis=shard_axis,
            batch_size=batch_size,
            store=store,
            output_dir=output_dir,
            progress=progress,
            return_datatree=return_datatree,
            kwargs=kwargs,
            desc="Posterior predictive sampling",
            client=client,
            resume=resume,
            storage_options=storage_options,
        )

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
        batch on the ``"obs"`` path.

        Example:
            >>> # model.sample_prior_predictive(X, num_samples=500)
        """
        check_batch_size(num_samples, "num_samples")
        return self._stream_call(
            "prior",
            "sample_prior_predictive",
            "prior_predictive",
            X,
            None,
            num_samples=num_samples,
            intervention=intervention,
            condition=None,
            rng_key=rng_key,
            return_sites=return_sites,
            shard_axis=shard_axis,
            batch_size=batch_size,
            store=store,
            output_dir=output_dir,
            progress=progress,
            return_datatree=return_datatree,
            kwargs=kwargs,
            desc="Prior predictive sampling",
            client=client,
            resume=resume,
            storage_options=storage_options,
        )

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

        Example:
            >>> # model.log_likelihood(X, y)["log_likelihood"]["y"]
        """
        return self._stream_call(
            "loglik",
            "log_likelihood",
            "log_likelihood",
            X,
            y,
            num_samples=None,
            intervention=None,
            condition=None,
            rng_key=rng_key,
            return_sites=None,
            shard_axis=shard_axis,
            batch_size=batch_size,
            store=store,
            output_dir=output_dir,
            progress=progress,
            return_datatree=return_datatree,
            kwargs=kwargs,
            desc="Computing log-likelihood",
            client=client,
            resume=resume,
            storage_options=storage_options,
        )

    # ------------------------------------------------------------------ effects
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

        Example:
            >>> # model.estimate_effect(args_baseline={"X": X},
            >>> #     args_intervention={"X": X, "intervention": {"t": 1.0}})
        """
        outputs = []
        shared_key = None
        needs_run = [out is None for out in (output_baseline, output_intervention)]
        if any(needs_run):
            self._check_fitted()
            explicit = [a for a in (args_baseline, args_intervention) if a and "rng_key" in a]
            if not explicit:
                shared_key = self._next_key(None)
        for name, out, args in (
            ("baseline", output_baseline, args_baseline),
            ("intervention", output_intervention, args_intervention),
        ):
            if out is None:
                if args is None:
                    raise ValueError(f"Either `output_{name}` or `args_{name}` must be provided.")
                if not isinstance(args, Mapping):
                    raise TypeError(f"`args_{name}` must be a dict of predict arguments.")
                call = dict(args)
                if shared_key is not None:
                    call.setdefault("rng_key", shared_key)
                if on_batch:
                    out = self.predict_on_batch(**call)
                else:
                    call.setdefault("progress", False)
                    out = self._stream_call_from_args("estimate_effect", call)
            outputs.append(out)
        baseline, intervention = outputs
        if isinstance(baseline, Mapping) and isinstance(intervention, Mapping):
            try:
                backend = io_backend()
            except ImportError:
                return {k: np.asarray(intervention[k]) - np.asarray(baseline[k]) for k in baseline}
        else:
            backend = io_backend()
        in_sample = all(
            (args or {}).get("in_sample", True) for args in (args_baseline, args_intervention)
        )
        return backend.effect_tree(
            baseline,
            intervention,
            posterior=self._host_posterior() or None,
            num_chains=self._num_chains,
            group="posterior_predictive" if in_sample else "predictions",
        )

    def _stream_call_from_args(self, caller: str, call: dict[str, Any]) -> Any:
        call = dict(call)
        X = call.pop("X", call.pop(self._param_input, None))
        if X is None:
            raise ValueError(f"Scenario arguments must include {self._param_input!r}.")
        in_sample = call.pop("in_sample", True)
        named = {
            k: call.pop(k)
            for k in (
                "intervention",
                "condition",
                "rng_key",
                "return_sites",
                "shard_axis",
                "batch_size",
                "store",
                "output_dir",
                "progress",
                "return_datatree",
                "client",
                "resume",
                "storage_options",
            )
            if k in call
        }
        return self._stream_call(
            "predict",
            caller,
            "posterior_predictive" if in_sample else "predictions",
            X,
            None,
            num_samples=None,
            intervention=named.get("intervention"),
            condition=named.get("condition"),
            rng_key=named.get("rng_key"),
            return_sites=named.get("return_sites"),
            shard_axis=named.get("shard_axis", "obs"),
            batch_size=named.get("batch_size"),
            store=named.get("store", "persistent"),
            output_dir=named.get("output_dir"),
            progress=named.get("progress", False),
            return_datatree=named.get("return_datatree", True),
            kwargs=call,
            desc="Posterior predictive sampling",
            client=named.get("client"),
            resume=named.get("resume", False),
            storage_options=named.get("storage_options"),
        )

    # ------------------------------------------------------------------ cleanup
    def cleanup(self) -> None:
        """Remove the model-owned temporary directory (explicit ``output_dir`` s stay).

        Example:
            >>> # model.cleanup()
        """
        temp = getattr(self, "_temp_dir", None)
        if temp is not None:
            path = temp.name
            temp.cleanup()
            self._temp_dir = None
            logger.info("Removed temporary output directory %s", path)

    @classmethod
    def cleanup_models(cls) -> None:
        """Call :meth:`cleanup` on every live model; errors are logged, not raised.

        Example:
            >>> ImpactModel.cleanup_models()
        """
        for model in list(cls._models):
            try:
                model.cleanup()
            except OSError as err:
                logger.warning("Could not clean up %r: %s", model, err)


__all__ = ["ImpactModel"]
