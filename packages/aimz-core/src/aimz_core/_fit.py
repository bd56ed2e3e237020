"""Fitting: SVI steps, SVI and MCMC runs, and sampling the fitted posterior.

Functions of an :class:`~aimz_core.model.ImpactModel` that the model's public
methods of the same name delegate to; they read and update the model's state
(inference state, posterior, key) through its private attributes.

After training, the posterior always comes from the guide run once on the *whole*
training data, in input order, with the output passed (so an amortized guide that
reads ``y`` works, and a per-row latent covers every row).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import random
from numpyro.infer import MCMC, SVI, Predictive
from numpyro.infer.autoguide import AutoGuide
from numpyro.infer.svi import SVIRunResult
from tqdm.auto import tqdm

from aimz_core._fit_checks import minibatch_total, warn_minibatch_fit
from aimz_core._locks import TRACE_LOCK
from aimz_core.arguments import check_aligned, is_array_like, reject_reserved
from aimz_core.backend import io_backend
from aimz_core.data import ArrayDataset, ArrayLoader, check_batch_size, is_loader
from aimz_core.exceptions import FitWarning, NotFittedError
from aimz_core.recorded_sites import drop_guide_only_sites
from aimz_core.rng import coerce_key

if TYPE_CHECKING:
    from aimz_core.model import ImpactModel


def require_svi(model: ImpactModel, method: str) -> SVI:
    """The model's SVI object, or a ``TypeError`` naming ``method``."""
    if not isinstance(model.inference, SVI):
        raise TypeError(
            f"`.{method}()` is not supported for MCMC inference. Use `.fit_on_batch()` instead."
        )
    return model.inference


def vi_update(model: ImpactModel, extras: Mapping[str, Any]) -> Callable:
    """The jitted SVI update, cached per set of static argument names."""
    names = tuple(sorted(extras))
    fn = model._fn_vi_update.get(names)
    if fn is None:
        fn = _FirstCallLocked(jax.jit(model.inference.update, static_argnames=names))
        model._fn_vi_update[names] = fn
    return fn


class _FirstCallLocked:
    """A jitted function whose calls with new argument types (which trace the
    kernel) hold :data:`~aimz_core._locks.TRACE_LOCK`; other calls run unlocked."""

    def __init__(self, jitted: Callable) -> None:
        self.jitted = jitted
        self._seen: set[Any] = set()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        signature = _signature(args, kwargs)
        if signature is not None and signature in self._seen:
            return self.jitted(*args, **kwargs)
        with TRACE_LOCK:
            out = self.jitted(*args, **kwargs)
            if signature is not None:
                self._seen.add(signature)
        return out


def _signature(args: tuple, kwargs: Mapping[str, Any]) -> Any:
    """Shapes and dtypes of the array leaves, values of the others (static
    arguments); ``None`` when something is neither an array nor hashable."""
    leaves, treedef = jax.tree.flatten((args, dict(kwargs)))
    out: list[Any] = [treedef]
    for leaf in leaves:
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            out.append((tuple(leaf.shape), str(leaf.dtype), getattr(leaf, "weak_type", False)))
        else:
            try:
                hash(leaf)
            except TypeError:
                return None
            out.append((type(leaf), leaf))
    return tuple(out)


# ---------------------------------------------------------------- warm start
def set_vi_result(model: ImpactModel, value: SVIRunResult | None) -> None:
    """Store ``vi_result``; its SVI state becomes the state training continues from.

    Setting a result obtained elsewhere (``svi.run(...)``, another model) makes the
    next :meth:`~aimz_core.model.ImpactModel.fit`, ``fit_on_batch`` or
    ``train_on_batch`` continue from its parameters and optimizer state.
    """
    if value is not None and not isinstance(value, SVIRunResult):
        raise TypeError(
            f"`vi_result` must be a numpyro SVIRunResult or None, got {type(value).__name__}."
        )
    if value is not None and not np.all(np.isfinite(np.asarray(value.losses))):
        warnings.warn(
            "Loss contains NaN or Inf, indicating numerical instability. The fit may have "
            "diverged; check the learning rate, priors and data scaling.",
            FitWarning,
            stacklevel=3,
        )
    model._vi_result = value
    if value is not None and value.state is not None:
        model._vi_state = value.state


def _guide_needs_setup(guide: Any) -> bool:
    """Whether ``guide`` is an auto guide that has not recorded its prototype yet."""
    return isinstance(guide, AutoGuide) and guide.prototype_trace is None


def prepare_svi(
    model: ImpactModel, args: Mapping[str, Any], method: str, *, training: bool
) -> None:
    """Set up SVI and its guide for a state that was not made here (warm start).

    This happens when ``vi_result`` was set by hand on a fresh model: training needs
    the SVI object initialised (its parameter transforms), and an auto guide records
    the kernel's structure on its first call. That call must see the output as
    observed (or the guide would treat ``y`` as a latent site) and must not happen
    inside ``jax.jit`` or ``vmap`` (its prototype would hold leaked tracers), so
    ``SVI.init`` runs here, eagerly; its state is discarded and the model's key is
    read, not advanced.

    Args:
        model: The model.
        args: The kernel arguments of the call.
        method: The public method, for the error message.
        training: Whether an SVI update follows (rather than guide sampling only).

    Raises:
        ValueError: If a set-up is needed and ``args`` lack the output.
    """
    svi = require_svi(model, method)
    needed = _guide_needs_setup(svi.guide) or (training and svi.constrain_fn is None)
    if not needed:
        return
    output = model.param_output
    if args.get(output) is None:
        raise ValueError(
            f"{output!r} must be provided in .{method}() to set up the guide: the guide of "
            f"`vi_result` has not run on this model yet, and it needs the observed "
            f"{output!r} to tell the latent sites from the output. Pass the training data, "
            f"e.g. `.{method}({model.param_input}=X, {output}=y)`."
        )
    with TRACE_LOCK:  # the guide and kernel run under handlers
        svi.init(model.rng_key, **args)


# ------------------------------------------------------------------ training
def _step(
    model: ImpactModel, arrays: Mapping[str, Any], extras: Mapping[str, Any], rng_key: Any
) -> tuple[Any, jax.Array]:
    """One SVI update with ``arrays`` (traced) and ``extras`` (static); SVI is
    initialised (with ``rng_key``, or a split of the model's key) on the first call."""
    svi = require_svi(model, "train_on_batch")
    args = {**arrays, **extras}
    spec = model.kernel_spec
    if spec is None or not spec.covers(True):
        model._build_kernel_spec(args, with_output=True)
    if model._vi_state is None:
        key = model._next_key(rng_key)
        with TRACE_LOCK:  # `init` runs the guide and kernel under handlers
            model._vi_state = svi.init(key, **args)
    else:
        if rng_key is not None:
            coerce_key(rng_key)
        prepare_svi(model, args, "train_on_batch", training=True)  # warm start
    model._vi_state, loss = vi_update(model, extras)(model._vi_state, **arrays, **extras)
    return model._vi_state, loss


def train_on_batch(
    model: ImpactModel, X: Any, y: Any, rng_key: jax.Array | None, kwargs: Mapping[str, Any]
) -> tuple[Any, jax.Array]:
    """One SVI step (see :meth:`~aimz_core.model.ImpactModel.train_on_batch`)."""
    require_svi(model, "train_on_batch")
    bound = model._bind(X, y, kwargs)
    check_aligned(bound.arrays, model.param_input)
    return _step(model, bound.arrays, bound.extras, rng_key)


def sample_guide(
    model: ImpactModel, key: jax.Array, num_samples: int, args: Mapping[str, Any]
) -> dict[str, jax.Array]:
    """``num_samples`` draws of the fitted SVI guide (guide-only sites dropped).

    ``args`` are passed to the guide as they are, the output included: an
    amortized guide computes its distributions from the data.
    """
    svi = require_svi(model, "sample")
    assert model.vi_result is not None
    # parallel=True: eager vmap reuses cached primitives, while the default
    # (lax.map outside jit) compiles a new scan on every call.
    predictive = Predictive(
        svi.guide, params=model.vi_result.params, num_samples=num_samples, parallel=True
    )
    with TRACE_LOCK:  # eager: the guide runs under handlers in Python
        draws = predictive(key, **args)
    # Guide-only sites (`_auto_latent` of the AutoContinuous guides) stay internal.
    return drop_guide_only_sites(draws, model.kernel_spec, svi.guide)


def fit_on_batch(
    model: ImpactModel,
    X: Any,
    y: Any,
    *,
    num_steps: int,
    num_samples: int,
    rng_key: jax.Array | None,
    progress: bool,
    kwargs: Mapping[str, Any],
) -> None:
    """SVI for ``num_steps`` or a full MCMC run on one batch."""
    for name, value in (("num_steps", num_steps), ("num_samples", num_samples)):
        check_batch_size(value, name)
    if y is None:
        raise ValueError(f"`{model.param_output}` is required for `.fit_on_batch()`.")
    bound = model._bind(X, y, kwargs)
    if len(bound.arrays[model.param_input]) != len(bound.arrays[model.param_output]):
        raise ValueError(
            f"`{model.param_input}` and `{model.param_output}` must have the same "
            "leading-axis size."
        )
    check_aligned(bound.arrays, model.param_input)
    arrays = {k: jnp.asarray(v) for k, v in bound.arrays.items()}
    args = {**arrays, **bound.extras}
    model._build_kernel_spec(args, with_output=True)
    key = model._next_key(rng_key)
    inference = model.inference
    if isinstance(inference, MCMC):
        with TRACE_LOCK:  # MCMC traces, compiles and runs in one call
            inference.run(key, **args)
        samples = jax.device_get(inference.get_samples(group_by_chain=False))
        model._store_posterior(samples, inference.num_chains)
        return
    train_key, sample_key = random.split(key)
    if model._vi_state is not None:
        prepare_svi(model, args, "fit_on_batch", training=True)  # warm start
    with TRACE_LOCK:  # SVI.run initialises, traces and compiles inside
        result = inference.run(
            train_key,
            num_steps,
            progress_bar=progress,
            init_state=model._vi_state,
            **args,
        )
    model.vi_result = SVIRunResult(result.params, result.state, np.asarray(result.losses))
    model._store_posterior(sample_guide(model, sample_key, num_samples, args), 1)


# ------------------------------------------------------------------------ fit
@dataclass
class _FitData:
    """The batches of a fit and the arguments every batch shares.

    Attributes:
        batches: The loader (re-iterated once per epoch).
        whole: Array keyword arguments passed whole to every batch (with a loader).
        extras: Non-array keyword arguments (static).
        keys: Training and sampling keys; drawn lazily for a loader, once its first
            batch has passed the checks.
    """

    batches: Iterable[Mapping[str, Any]]
    whole: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    keys: tuple[jax.Array, jax.Array] | None = None


def _fit_data(
    model: ImpactModel,
    X: Any,
    y: Any,
    rng_key: jax.Array | None,
    batch_size: int | None,
    shuffle: bool,
    epochs: int,
    kwargs: Mapping[str, Any],
) -> _FitData:
    """Check the inputs of a fit and build its batches (see :func:`fit`)."""
    if is_loader(X):
        if y is not None:
            raise TypeError("`y` must be `None` when `X` is already a data loader.")
        reject_reserved(kwargs, model.param_input, model.param_output)
        if epochs > 1 and isinstance(X, Iterator):
            raise ValueError(
                "The data loader yielded no batches in epoch 2; pass a loader that can be "
                f"iterated once per epoch. `{model.param_input}` is an iterator (such as a "
                "generator), which is exhausted after one pass: pass a list of batches or "
                "an ArrayLoader, or use `epochs=1`."
            )
        whole = {k: v for k, v in kwargs.items() if v is not None and is_array_like(v)}
        extras = {k: v for k, v in kwargs.items() if k not in whole}
        return _FitData(X, whole, extras)
    if batch_size is not None:
        check_batch_size(batch_size)
    if y is None:
        raise ValueError(
            f"`{model.param_output}` is required for `fit()` when "
            f"`{model.param_input}` is array-like."
        )
    bound = model._bind(X, y, kwargs)
    n = check_aligned(bound.arrays, model.param_input)
    # The key is drawn only once every input check has passed.
    train_key, sample_key = random.split(model._next_key(rng_key))
    size = n if batch_size is None else min(batch_size, n)
    loader = ArrayLoader(
        ArrayDataset(**bound.arrays),
        train_key,
        batch_size=size,
        shuffle=shuffle and size < n,  # one batch covering the data keeps its order
    )
    return _FitData(loader, extras=bound.extras, keys=(train_key, sample_key))


def _batch_arguments(
    model: ImpactModel, batch: Any, data: _FitData
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The arrays (batched ones and ``data.whole``) and static extras of one loader
    batch, checked."""
    param_input, param_output = model.param_input, model.param_output
    if not isinstance(batch, Mapping):
        raise ValueError(
            f"Every batch of the loader must be a mapping with a {param_input!r} field; "
            f"got {type(batch).__name__}."
        )
    if param_input not in batch:
        raise ValueError(
            f"The data loader has no field named {param_input!r} for the model input. "
            f"Every batch of the loader must be a mapping with a {param_input!r} field."
        )
    if batch.get(param_output) is None:
        raise ValueError(
            f"The data loader has no field named {param_output!r}. Every batch of the "
            f"loader must have a {param_output!r} field to fit."
        )
    rest = {k: v for k, v in batch.items() if k not in (param_input, param_output)}
    clash = sorted(set(rest) & (set(data.whole) | set(data.extras)))
    if clash:
        raise ValueError(
            f"The argument(s) {clash} are given both as keyword arguments and as fields of "
            "the data loader's batches; pass each in one place only."
        )
    kwargs = {**rest, **data.whole, **data.extras}
    bound = model._bind(batch[param_input], batch[param_output], kwargs)
    check_aligned({k: v for k, v in bound.arrays.items() if k not in data.whole}, param_input)
    return bound.arrays, bound.extras


def _concatenate(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """The batches' arrays joined along axis 0, field by field, in order."""
    if len(batches) == 1:
        return batches[0]
    return {k: jnp.concatenate([jnp.asarray(b[k]) for b in batches]) for k in batches[0]}


class _MinibatchCheck:
    """The minibatch warnings of one fit (:mod:`aimz_core._fit_checks`), issued once,
    before the first step (an unsized loader: before the second, once it has shown
    that there are several batches), on the first batch."""

    def __init__(self) -> None:
        self.done = False
        self.seen: list[int] = []
        self.first: tuple[dict[str, Any], dict[str, Any]] | None = None

    def see(
        self,
        model: ImpactModel,
        data: _FitData,
        arrays: Mapping[str, Any],
        extras: Mapping[str, Any],
    ) -> None:
        """Record a batch of the first epoch; check once the number of batches is known."""
        self.seen.append(len(arrays[model.param_input]))
        if self.first is None:  # arrays passed whole to every batch are not split
            split = {k: v for k, v in arrays.items() if k not in data.whole}
            shared = {**extras, **{k: arrays[k] for k in data.whole}}
            self.first = (split, shared)
        total = minibatch_total(data.batches, self.seen)
        if total is None and not isinstance(data.batches, Sized) and len(self.seen) < 2:
            return  # an unsized loader: wait for a second batch
        self.done = True
        if total is not None:
            warn_minibatch_fit(
                model.kernel,
                model.inference.guide,
                model.rng_key,  # read, not advanced
                *self.first,
                param_output=model.param_output,
                total=total[0],
                exact=total[1],
                stacklevel=4,
            )
        self.first = None


def fit(
    model: ImpactModel,
    X: Any,
    y: Any,
    *,
    num_samples: int,
    rng_key: jax.Array | None,
    progress: bool,
    batch_size: int | None,
    epochs: int,
    shuffle: bool,
    kwargs: Mapping[str, Any],
) -> None:
    """SVI over minibatches for a number of epochs, then posterior draws of the guide
    run on the whole data (see :meth:`~aimz_core.model.ImpactModel.fit`).

    Warns:
        FitWarning: When the fit has several batches (``batch_size`` below the rows, or
            a loader of several batches) and, on the first batch, the output site is not
            scaled to the whole data, a site computes across rows, or a per-row latent
            site is not computed from the batch by the guide: one warning per kind,
            naming the sites, once per call, before training (an unsized loader: before
            its second step). See :mod:`aimz_core._fit_checks`.
    """
    require_svi(model, "fit")
    check_batch_size(num_samples, "num_samples")
    check_batch_size(epochs, "epochs")
    data = _fit_data(model, X, y, rng_key, batch_size, shuffle, epochs, kwargs)
    # The guide's final run: an ArrayLoader's dataset in its own order, otherwise the
    # batches of the last epoch in the order the loader yielded them.
    in_order = isinstance(data.batches, ArrayLoader)
    losses: list[float] = []
    last: list[dict[str, Any]] = []
    whole: dict[str, Any] = {}
    extras: dict[str, Any] = dict(data.extras)
    check = _MinibatchCheck()
    for epoch in range(1, epochs + 1):
        epoch_losses: list[jax.Array] = []
        last.clear()
        bar = tqdm(data.batches, desc=f"Epoch {epoch}/{epochs}", disable=not progress, leave=False)
        for step, batch in enumerate(bar):
            arrays, extras = _batch_arguments(model, batch, data)
            if not check.done:
                check.see(model, data, arrays, extras)
            if data.keys is None:
                data.keys = tuple(random.split(model._next_key(rng_key)))
            _, loss = _step(
                model, arrays, extras, data.keys[0] if model._vi_state is None else None
            )
            epoch_losses.append(loss)
            if progress and step % 10 == 0:
                bar.set_postfix(loss=f"{float(loss):.4f}")
            if not in_order and epoch == epochs:
                last.append({k: v for k, v in arrays.items() if k not in data.whole})
                whole = {k: arrays[k] for k in data.whole}
        if not epoch_losses:
            if epoch == 1:
                raise ValueError("The data loader yielded no batches; nothing to fit.")
            raise ValueError(
                f"The data loader yielded no batches in epoch {epoch}; pass a loader that "
                "can be iterated once per epoch."
            )
        host = np.asarray(jax.device_get(epoch_losses), dtype=float)
        losses.extend(host.tolist())
        if progress:
            tqdm.write(f"Epoch {epoch}/{epochs} - Average loss: {host.mean():.4f}")
    assert data.keys is not None
    if in_order:
        arrays, extras = _batch_arguments(model, data.batches.dataset.arrays, data)
    else:
        arrays = {**_concatenate(last), **whole}
    svi = require_svi(model, "fit")
    model.vi_result = SVIRunResult(
        svi.get_params(model._vi_state), model._vi_state, np.asarray(losses)
    )
    args = {**arrays, **extras}
    model._store_posterior(sample_guide(model, data.keys[1], num_samples, args), 1)


# --------------------------------------------------------------------- sample
def _sample_mcmc(model: ImpactModel, mcmc: MCMC, num_samples: int, kwargs: dict) -> dict:
    """Continue the chains from their last state for ``num_samples`` draws; the
    sampler's ``num_samples`` and ``post_warmup_state`` are restored afterwards."""
    if mcmc.last_state is None:
        raise NotFittedError("There is no MCMC state to sample from; run `.fit_on_batch()` first.")
    if model.param_output not in kwargs:
        raise TypeError(f"{model.param_output!r} must be provided in `.sample()`.")
    X = kwargs.pop(model.param_input, None)
    y = kwargs.pop(model.param_output)
    bound = model._bind(X, y, kwargs)
    saved = (mcmc.num_samples, mcmc.post_warmup_state)
    try:
        with TRACE_LOCK:
            mcmc.post_warmup_state = mcmc.last_state
            mcmc.num_samples = num_samples
            mcmc.run(mcmc.post_warmup_state.rng_key, **bound.arrays, **bound.extras)
    finally:
        mcmc.num_samples, mcmc.post_warmup_state = saved
    return jax.device_get(mcmc.get_samples(group_by_chain=False))


def sample(
    model: ImpactModel,
    *,
    num_samples: int,
    rng_key: jax.Array | None,
    return_sites: str | Iterable[str] | None,
    return_datatree: bool,
    kwargs: dict[str, Any],
) -> Any:
    """Posterior draws from the SVI guide, or by continuing the MCMC chains."""
    check_batch_size(num_samples, "num_samples")
    if return_datatree:
        io_backend()  # fail before any work when aimz-io is missing
    inference = model.inference
    if isinstance(inference, MCMC):
        samples = _sample_mcmc(model, inference, num_samples, kwargs)
        num_chains = inference.num_chains
    else:
        if model.vi_result is None:
            raise NotFittedError(
                "There is no inference result to sample from; fit the model or set "
                "`vi_result` first."
            )
        prepare_svi(model, kwargs, "sample", training=False)  # before taking a key
        key = model._next_key(rng_key)
        samples = jax.device_get(sample_guide(model, key, num_samples, kwargs))
        if return_sites is not None:
            sites = model._sites_for(return_sites)
            samples = {k: v for k, v in samples.items() if k in sites}
        num_chains = 1
    samples = {k: np.asarray(v) for k, v in samples.items()}
    if not return_datatree:
        return samples
    return io_backend().tree_from_arrays({"posterior": samples}, num_chains=num_chains)


__all__ = [
    "fit",
    "fit_on_batch",
    "prepare_svi",
    "require_svi",
    "sample",
    "sample_guide",
    "set_vi_result",
    "train_on_batch",
]
