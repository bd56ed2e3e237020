"""Fitting: SVI steps, SVI and MCMC runs, and sampling the fitted posterior.

Functions of an :class:`~aimz_core.model.ImpactModel` that the model's public
methods of the same name delegate to; they read and update the model's state
(inference state, posterior, key) through its private attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import random
from numpyro.infer import MCMC, SVI, Predictive
from numpyro.infer.svi import SVIRunResult
from tqdm.auto import tqdm

from aimz_core._locks import TRACE_LOCK
from aimz_core.arguments import check_aligned, is_array_like, reject_reserved
from aimz_core.backend import io_backend
from aimz_core.data import ArrayDataset, ArrayLoader, check_batch_size, is_loader
from aimz_core.exceptions import NotFittedError
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


def train_on_batch(
    model: ImpactModel, X: Any, y: Any, rng_key: jax.Array | None, kwargs: Mapping[str, Any]
) -> tuple[Any, jax.Array]:
    """One SVI step (see :meth:`~aimz_core.model.ImpactModel.train_on_batch`)."""
    svi = require_svi(model, "train_on_batch")
    bound = model._bind(X, y, kwargs)
    check_aligned(bound.arrays, model.param_input)
    args = {**bound.arrays, **bound.extras}
    if model._vi_state is None:
        model._build_kernel_spec(args, with_output=True)
        key = model._next_key(rng_key)
        with TRACE_LOCK:  # `init` runs the guide and kernel under handlers
            model._vi_state = svi.init(key, **args)
    elif rng_key is not None:
        coerce_key(rng_key)
    model._vi_state, loss = vi_update(model, bound.extras)(
        model._vi_state, **bound.arrays, **bound.extras
    )
    return model._vi_state, loss


def sample_guide(
    model: ImpactModel, key: jax.Array, num_samples: int, args: Mapping[str, Any]
) -> dict[str, jax.Array]:
    """``num_samples`` draws of the fitted SVI guide (guide-only sites dropped)."""
    svi = require_svi(model, "sample")
    assert model.vi_result is not None
    # parallel=True: eager vmap reuses cached primitives, while the default
    # (lax.map outside jit) compiles a new scan on every call.
    predictive = Predictive(
        svi.guide, params=model.vi_result.params, num_samples=num_samples, parallel=True
    )
    args = {k: v for k, v in args.items() if k != model.param_output}
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
    with TRACE_LOCK:  # SVI.run initialises, traces and compiles inside
        result = inference.run(
            train_key,
            num_steps,
            progress_bar=progress,
            init_state=model._vi_state,
            **args,
        )
    model._vi_state = result.state
    model.vi_result = SVIRunResult(result.params, result.state, np.asarray(result.losses))
    model._store_posterior(sample_guide(model, sample_key, num_samples, args), 1)


def _loader(
    model: ImpactModel,
    X: Any,
    y: Any,
    rng_key: jax.Array | None,
    batch_size: int | None,
    shuffle: bool,
    kwargs: Mapping[str, Any],
) -> tuple[Iterable[Mapping[str, Any]], dict[str, Any], jax.Array, jax.Array]:
    """The batches of a fit, its static arguments, and its training and sampling keys."""
    if is_loader(X):
        if y is not None:
            raise TypeError("`y` must be `None` when `X` is already a data loader.")
        reject_reserved(kwargs, model.param_input, model.param_output)
        if any(is_array_like(v) for v in kwargs.values()):
            raise ValueError(
                "Array keyword arguments are not supported alongside a data loader; "
                "add them to the loader's dataset instead."
            )
        train_key, sample_key = random.split(model._next_key(rng_key))
        return X, dict(kwargs), train_key, sample_key
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
    loader = ArrayLoader(
        ArrayDataset(**bound.arrays),
        train_key,
        batch_size=min(batch_size or n, n),
        shuffle=shuffle,
    )
    return loader, bound.extras, train_key, sample_key


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
    """SVI over minibatches for a number of epochs, then posterior draws."""
    require_svi(model, "fit")
    check_batch_size(num_samples, "num_samples")
    check_batch_size(epochs, "epochs")
    loader, extras, train_key, sample_key = _loader(
        model, X, y, rng_key, batch_size, shuffle, kwargs
    )
    param_input, param_output = model.param_input, model.param_output
    losses: list[float] = []
    last_batch: dict[str, Any] | None = None
    for epoch in range(1, epochs + 1):
        epoch_losses: list[jax.Array] = []
        bar = tqdm(loader, desc=f"Epoch {epoch}/{epochs}", disable=not progress, leave=False)
        for step, batch in enumerate(bar):
            if not isinstance(batch, Mapping) or param_input not in batch:
                raise ValueError(
                    f"Every batch of the loader must be a mapping with a {param_input!r} field."
                )
            batch = dict(batch)
            X_b = batch.pop(param_input)
            y_b = batch.pop(param_output, None)
            if y_b is None:
                raise ValueError(
                    f"Every batch of the loader must have a {param_output!r} field to fit."
                )
            _, loss = model.train_on_batch(
                X_b,
                y_b,
                rng_key=train_key if model._vi_state is None else None,
                **batch,
                **extras,
            )
            epoch_losses.append(loss)
            if progress and step % 10 == 0:
                bar.set_postfix(loss=f"{float(loss):.4f}")
            last_batch = {param_input: X_b, **batch, **extras}
        if not epoch_losses:
            raise ValueError("The data loader yielded no batches; nothing to fit.")
        host = np.asarray(jax.device_get(epoch_losses), dtype=float)
        losses.extend(host.tolist())
        if progress:
            tqdm.write(f"Epoch {epoch}/{epochs} - Average loss: {host.mean():.4f}")
    assert last_batch is not None
    svi = require_svi(model, "fit")
    model.vi_result = SVIRunResult(
        svi.get_params(model._vi_state), model._vi_state, np.asarray(losses)
    )
    model._store_posterior(sample_guide(model, sample_key, num_samples, last_batch), 1)


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
        if inference.last_state is None:
            raise NotFittedError(
                "There is no MCMC state to sample from; run `.fit_on_batch()` first."
            )
        if model.param_output not in kwargs:
            raise TypeError(f"{model.param_output!r} must be provided in `.sample()`.")
        X = kwargs.pop(model.param_input, None)
        y = kwargs.pop(model.param_output)
        bound = model._bind(X, y, kwargs)
        with TRACE_LOCK:
            inference.post_warmup_state = inference.last_state
            inference.num_samples = num_samples
            inference.run(inference.post_warmup_state.rng_key, **bound.arrays, **bound.extras)
        samples = jax.device_get(inference.get_samples(group_by_chain=False))
        num_chains = inference.num_chains
    else:
        if model.vi_result is None:
            raise NotFittedError(
                "There is no inference result to sample from; fit the model or set "
                "`vi_result` first."
            )
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


__all__ = ["fit", "fit_on_batch", "require_svi", "sample", "sample_guide", "train_on_batch"]
