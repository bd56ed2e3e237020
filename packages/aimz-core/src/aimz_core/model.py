"""`ImpactModel`: fit a NumPyro kernel and draw samples from it in batches."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

import jax
import numpy as np
from jax import random
from numpyro.infer import MCMC, SVI
from numpyro.infer.svi import SVIRunResult

from aimz_core import _fit
from aimz_core._draws import global_trace
from aimz_core._jit_cache import ensure_compilation_cache
from aimz_core._locks import TRACE_LOCK
from aimz_core._on_batch import split_key
from aimz_core._posterior import (
    not_fitted,
    substitutable,
    to_host,
    validate_posterior_sample,
)
from aimz_core._predictive import PredictiveMethods
from aimz_core._properties import ModelProperties
from aimz_core.arguments import (
    KernelArgs,
    bind_arguments,
    kernel_parameter_names,
)
from aimz_core.backend import resolve_output_dir
from aimz_core.batched import FunctionCache
from aimz_core.exceptions import PerformanceWarning
from aimz_core.kernel import kernel_name, validate_kernel_body, validate_model_arguments
from aimz_core.kernel_spec import KernelSpec, coerce_return_sites, describe_sites
from aimz_core.rng import coerce_key, pack_keys, unpack_keys
from aimz_core.sharding import DeviceLayout
from aimz_core.streaming.blocks import BlockRunner

logger = logging.getLogger("aimz")

# Attributes rebuilt on unpickling (never serialized).
_RUNTIME_ATTRS = ("_layout", "_functions", "_temp_dir", "_placed", "_fn_vi_update", "_lock")


class ImpactModel(ModelProperties, PredictiveMethods):
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
        validate_model_arguments(kernel, inference, param_input, param_output)
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
        self._placed: tuple[Any, dict[str, jax.Array]] | None = None
        # Guards taking the next key and creating the temp dir (calls from threads).
        self._lock = threading.Lock()
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

    def is_fitted(self) -> bool:
        """Whether posterior samples are available.

        True after ``fit``, ``fit_on_batch`` or ``set_posterior_sample``.

        Example:
            >>> from aimz_core.testing import fitted_linreg, make_model
            >>> make_model().is_fitted(), fitted_linreg().is_fitted()
            (False, True)
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
            Kernel name and arguments, parameter names, inference class, fitted flag,
            chain and draw counts (1 and 0 before a fit), and per known site its kind
            (``latent``, ``observed`` or ``deterministic``), ``dims`` and draw shape.

        Example:
            >>> from aimz_core.testing import fitted_linreg
            >>> fitted_linreg().describe()["sites"]["w"]["kind"]
            'latent'
        """
        return {
            "kernel": kernel_name(self._kernel),
            "arguments": list(kernel_parameter_names(self._kernel)),
            "param_input": self._param_input,
            "param_output": self._param_output,
            "inference": type(self._inference).__name__,
            "fitted": self.is_fitted(),
            "num_chains": self._num_chains if self.is_fitted() else 1,
            "num_samples": self._num_samples if self.is_fitted() else 0,
            "sites": describe_sites(self._kernel_spec, self._posterior, self._param_output),
        }

    # ---------------------------------------------------------------- helpers
    def _next_key(self, rng_key: jax.Array | None) -> jax.Array:
        if rng_key is None:
            with self._lock:  # read, split and write back as one step
                self._rng_key, key = split_key(self._rng_key)
            return key
        return coerce_key(rng_key, stacklevel=4)

    def _bind(self, X: Any, y: Any, kwargs: Mapping[str, Any], *, lazy: bool = False) -> KernelArgs:
        names = (self._kernel, self._param_input, self._param_output)
        return bind_arguments(*names, X, y, kwargs, lazy=lazy)

    def _build_kernel_spec(self, args: Mapping[str, Any], with_output: bool) -> KernelSpec:
        with TRACE_LOCK:  # one trace at a time, no merge lost; an untraced spec is replaced
            spec = self._kernel_spec
            if spec is None or not spec.covers(with_output):
                drop = () if with_output else (self._param_output,)
                args = {k: v for k, v in args.items() if k not in drop}
                trace = global_trace(self._kernel, self._rng_key, args)
                validate_kernel_body(
                    trace,
                    param_output=self._param_output,
                    with_output=with_output,
                    kernel_params=kernel_parameter_names(self._kernel),
                )
                new = KernelSpec.from_trace(
                    trace, param_output=self._param_output, with_output=with_output
                )
                self._kernel_spec = spec = spec.merge(new) if spec and spec.traced else new
            return spec

    def _check_fitted(self) -> None:
        if not self.is_fitted():
            raise not_fitted()

    def _placed_posterior(self) -> dict[str, jax.Array]:
        """Substitutable posterior on the default device, cached by identity."""
        post, key = self._posterior or {}, (id(self._posterior), self._kernel_spec)
        if self._placed is None or self._placed[0] != key:  # a trace may change the spec
            placed = substitutable(post, self._kernel_spec, self._param_output)
            self._placed = (key, jax.device_put(placed))
        return self._placed[1]

    def _host_posterior(self) -> dict[str, np.ndarray]:
        return to_host(self._posterior)

    def _sites_for(self, return_sites: Any) -> tuple[str, ...]:
        return coerce_return_sites(return_sites, self._kernel_spec, self._param_output)

    def _store_posterior(self, posterior: Mapping[str, Any], num_chains: int) -> None:
        self._posterior = dict(posterior)  # empty for a kernel with no latent sites
        self._num_samples = max((int(v.shape[0]) for v in self._posterior.values()), default=0)
        self._num_chains = num_chains
        self._placed = None
        self._is_fitted = True

    def _runner(self) -> BlockRunner:
        """What computes this model's batches on this host."""
        return BlockRunner(
            self._kernel, self._param_output, self._layout, self._functions, self._placed_posterior
        )

    def _base_dir(self, output_dir: str | Path | None) -> Path | str:
        if output_dir is not None:
            return resolve_output_dir(output_dir)
        with self._lock:  # created once, mode 0700 (`mkdtemp`), removed by `cleanup`
            if self._temp_dir is None:
                self._temp_dir = tempfile.TemporaryDirectory(prefix="aimz_")
                logger.info("Created temporary output directory %s", self._temp_dir.name)
            return Path(self._temp_dir.name)

    # ---------------------------------------------------------------- training
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
            >>> from aimz_core.testing import linreg_data, make_model
            >>> X, y = linreg_data()
            >>> state, loss = make_model().train_on_batch(X, y)
            >>> loss.shape
            ()
        """
        return _fit.train_on_batch(self, X, y, rng_key, kwargs)

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
            >>> from aimz_core.testing import linreg_data, make_model
            >>> X, y = linreg_data()
            >>> model = make_model().fit_on_batch(
            ...     X, y, num_steps=20, num_samples=10, progress=False)
            >>> model.posterior["w"].shape
            (10, 2)
        """
        _fit.fit_on_batch(
            self,
            X,
            y,
            num_steps=num_steps,
            num_samples=num_samples,
            rng_key=rng_key,
            progress=progress,
            kwargs=kwargs,
        )
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

        Shuffling is keyed: the call's key ``K`` (``rng_key``, else a split of the model's key)
        gives ``train_key, sample_key = jax.random.split(K)``, and rows are shuffled exactly as by
        ``ArrayLoader(ArrayDataset(X=X, y=y), train_key, batch_size=batch_size, shuffle=True)``;
        never when one batch covers the data. The posterior is the guide run on the whole data in
        input order, with ``y`` (a loader: its dataset, or its last epoch's batches, in order).

        Args:
            X: Input array, an :class:`~aimz_core.data.ArrayLoader` or any iterable
                of mappings (batches keyed by kernel parameter names).
            y: Output (required with array ``X``; must be ``None`` with a loader).
            num_samples: Posterior draws taken from the guide after training.
            rng_key: Key for this call only.
            progress: Show a progress bar per epoch with the running loss.
            batch_size: Rows per step (default: all rows).
            epochs: Passes over the data.
            shuffle: Reshuffle rows every epoch (when ``batch_size`` is below the rows).
            **kwargs: Kernel arguments; arrays are batched with array ``X``, whole with a loader.

        Returns:
            The fitted model.

        Warns:
            FitWarning: Minibatches with an unscaled output, cross-row sites or per-row latents.

        Example:
            >>> from aimz_core.testing import linreg_data, make_model
            >>> X, y = linreg_data()
            >>> model = make_model().fit(X, y, epochs=2, num_samples=10, progress=False)
            >>> len(model.vi_result.losses)
            2
        """
        _fit.fit(
            self,
            X,
            y,
            num_samples=num_samples,
            rng_key=rng_key,
            progress=progress,
            batch_size=batch_size,
            epochs=epochs,
            shuffle=shuffle,
            kwargs=kwargs,
        )
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

        Does not change :attr:`posterior`. After setting ``vi_result`` by hand, pass
        ``X`` and ``y`` (the guide is set up with the output observed).

        Returns:
            A DataTree with a ``posterior`` group, or ``{site: array}`` when
            ``return_datatree=False``.

        Example:
            >>> from aimz_core.testing import linreg_data, make_model
            >>> X, y = linreg_data()
            >>> model = make_model().fit_on_batch(
            ...     X, y, num_steps=20, num_samples=10, progress=False)
            >>> model.sample(num_samples=5, return_datatree=False, X=X)["w"].shape
            (5, 2)
        """
        return _fit.sample(
            self,
            num_samples=num_samples,
            rng_key=rng_key,
            return_sites=return_sites,
            return_datatree=return_datatree,
            kwargs=kwargs,
        )

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
            ValueError: For a site named ``chain`` or ``draw``, an empty dict, 0-D
                values, differing leading sizes or a size not divisible by ``num_chains``.

        Warns:
            OutputWarning: If the output site is given (it is removed), if no known
                trace records a site, or if latent sites lack draws (drawn from the prior).

        Example:
            >>> import numpy as np
            >>> from aimz_core.testing import make_model
            >>> model = make_model().set_posterior_sample(
            ...     {"w": np.zeros((4, 2)), "b": np.zeros(4), "sigma": np.ones(4)})
            >>> model.is_fitted()
            True
        """
        samples = validate_posterior_sample(
            posterior_sample,
            num_chains=num_chains,
            param_output=self._param_output,
            kernel_spec=self._kernel_spec,
            guide=getattr(self._inference, "guide", None),
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

    # ------------------------------------------------------------------ cleanup
    def cleanup(self) -> None:
        """Remove the model-owned temporary directory (explicit ``output_dir`` s stay).

        Example:
            >>> from aimz_core.testing import make_model
            >>> model = make_model()
            >>> model.cleanup()
            >>> model.temp_dir is None
            True
        """
        lock = getattr(self, "_lock", None)
        with lock if lock is not None else contextlib.nullcontext():
            temp = getattr(self, "_temp_dir", None)
            self._temp_dir = None
        if temp is not None:
            path = temp.name
            temp.cleanup()
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


# Pickles, MLflow's ``MLmodel`` files and older aimz-core versions name the class
# by its original path, which stays an alias module. The alias must be imported
# whenever the class exists: cloudpickle pickles a class whose module is not in
# ``sys.modules`` by value.
ImpactModel.__module__ = "aimz_core.impact_model"
import aimz_core.impact_model  # noqa: E402, F401

# Its doctests are collected here (doctest skips classes of another module).
__test__ = {"ImpactModel": ImpactModel}

__all__ = ["ImpactModel"]
