"""One typed, frozen record of the options of a streamed call.

The four streamed methods of :class:`~aimz_core.model.ImpactModel` (``predict``,
``sample_posterior_predictive``, ``sample_prior_predictive`` and
``log_likelihood``) keep explicit, documented keyword-only signatures; the
:func:`streamed` decorator binds a call to that signature once and turns it into a
:class:`StreamOptions`, so no method forwards its arguments by hand.
:meth:`StreamOptions.from_mapping` builds the same record from a dict of
``predict`` arguments (the scenarios of ``estimate_effect``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import jax

Kind = Literal["predict", "prior", "loglik"]
ShardAxis = Literal["obs", "draw"]
Store = Literal["persistent", "memory"]

#: Output group and progress bar text of each kind of streamed call.
_DESCRIPTIONS = {
    "predict": "Posterior predictive sampling",
    "prior": "Prior predictive sampling",
    "loglik": "Computing log-likelihood",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class StreamOptions:
    """Everything a streamed call was asked for (the input arrays aside).

    Attributes:
        kind: ``"predict"``, ``"prior"`` or ``"loglik"``.
        caller: Public method that started the call.
        intervention: ``{site: value}`` fixed with ``numpyro.handlers.do``.
        condition: ``{site: value}`` fixed with ``numpyro.handlers.condition``.
        rng_key: Key for this call only (``None``: split the model's key).
        in_sample: Group ``posterior_predictive`` (True) or ``predictions``.
        num_samples: Prior draws (``"prior"`` only).
        return_sites: Sites to return (``None``: the defaults of the kernel spec).
        shard_axis: Stream over observations (``"obs"``) or draws (``"draw"``).
        batch_size: Rows (or draws) per batch; automatic when ``None``.
        store: ``"persistent"`` (Zarr on disk) or ``"memory"``.
        output_dir: Base directory or object-store URL of persistent output.
        progress: Show a progress bar.
        return_datatree: Return a DataTree, or ``{site: array}``.
        client: A Dask client (or ``True`` for the current one).
        resume: Finish the newest incomplete store of the same call.
        storage_options: fsspec options for an object-store ``output_dir``.
        kwargs: Extra kernel arguments (arrays are batched with the input).

    Example:
        >>> opts = StreamOptions(kind="predict", caller="predict", in_sample=False)
        >>> opts.group, opts.desc
        ('predictions', 'Posterior predictive sampling')
    """

    kind: Kind
    caller: str
    intervention: Mapping[str, Any] | None = None
    condition: Mapping[str, Any] | None = None
    rng_key: jax.Array | None = None
    in_sample: bool = True
    num_samples: int = 1000
    return_sites: str | Iterable[str] | None = None
    shard_axis: ShardAxis = "obs"
    batch_size: int | None = None
    store: Store = "persistent"
    output_dir: str | Path | None = None
    progress: bool = True
    return_datatree: bool = True
    client: Any = None
    resume: bool = False
    storage_options: Mapping[str, Any] | None = None
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def group(self) -> str:
        """Output group of the call."""
        if self.kind == "prior":
            return "prior_predictive"
        if self.kind == "loglik":
            return "log_likelihood"
        return "posterior_predictive" if self.in_sample else "predictions"

    @property
    def desc(self) -> str:
        """Progress bar description."""
        return _DESCRIPTIONS[self.kind]

    @property
    def distributed(self) -> bool:
        """Whether the call runs through the IO backend's distributed runner."""
        from aimz_core.backend import is_url

        return self.client is not None or self.resume or is_url(self.output_dir)

    def validate(self, X: Any) -> None:
        """Check the options on their own (before any work or directory is made).

        Raises:
            ValueError: For an unknown ``shard_axis`` or ``store``, a bad
                ``batch_size``, an empty ``output_dir`` or an
                option that contradicts another one.
            TypeError: For ``shard_axis="draw"`` with a data loader.

        Example:
            >>> StreamOptions(kind="predict", caller="predict", store="memory").validate([1.0])
        """
        from aimz_core.backend import check_output_dir, is_url
        from aimz_core.data import check_batch_size, is_loader

        check_output_dir(self.output_dir)
        if self.shard_axis not in ("obs", "draw"):
            raise ValueError(
                f"`shard_axis` must be either 'obs' or 'draw', got {self.shard_axis!r}."
            )
        if self.shard_axis == "draw" and is_loader(X):
            raise TypeError(
                "`shard_axis='draw'` replicates the whole input across devices, so `X` "
                "must be an array, not a data loader. Pass the arrays, or use "
                "`shard_axis='obs'`."
            )
        if self.batch_size is not None:
            check_batch_size(self.batch_size)
        if self.store not in ("persistent", "memory"):
            raise ValueError(
                f"`store` must be either 'persistent' or 'memory', got {self.store!r}."
            )
        in_memory = self.store == "memory" or not self.return_datatree
        if self.output_dir is not None and in_memory:
            raise ValueError(
                "`output_dir` must be `None` when `store='memory'` or `return_datatree=False`."
            )
        if (self.client is not None or self.resume) and in_memory:
            what = "`client`" if self.client is not None else "`resume=True`"
            raise ValueError(
                f"{what} writes a persistent Zarr store: it needs `store='persistent'` "
                "and `return_datatree=True`."
            )
        if self.resume and self.output_dir is None:
            raise ValueError(
                "`resume=True` needs the `output_dir` of the interrupted run (a temporary "
                "directory does not survive the process)."
            )
        if self.resume and self.rng_key is None and self.kind != "loglik":
            raise ValueError(
                "`resume=True` needs the explicit `rng_key` of the interrupted run: the "
                "model's internal key has moved on since, so the draws would differ."
            )
        if self.storage_options is not None and not is_url(self.output_dir):
            raise ValueError(
                "`storage_options` only applies to an object-store `output_dir` URL "
                "(e.g. 's3://bucket/prefix')."
            )

    @classmethod
    def from_mapping(
        cls,
        kind: Kind,
        caller: str,
        call: Mapping[str, Any],
        *,
        param_input: str = "X",
        **defaults: Any,
    ) -> tuple[Any, StreamOptions]:
        """Split a dict of method arguments into the input ``X`` and the options.

        Keys naming an option field become options; ``"X"`` (or ``param_input``)
        is the input; every
        other key is an extra kernel argument. ``defaults`` apply to options the
        dict leaves out.

        Example:
            >>> X, opts = StreamOptions.from_mapping(
            ...     "predict", "estimate_effect", {"X": [1.0], "scale": 2.0}, progress=False)
            >>> X, opts.progress, dict(opts.kwargs)
            ([1.0], False, {'scale': 2.0})
        """
        call = dict(call)
        X = call.pop("X", call.pop(param_input, None))
        names = {f.name for f in dataclasses.fields(cls)} - {"kind", "caller", "kwargs"}
        given = {k: call.pop(k) for k in list(call) if k in names}
        return X, cls(kind=kind, caller=caller, **{**defaults, **given}, kwargs=call)


def streamed(kind: Kind) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make a documented signature the public face of one streamed call.

    The decorated method only declares the signature (and its docstring): a call
    is bound to that signature once, its defaults applied, and turned into a
    :class:`StreamOptions` handed to ``self._stream(X, y, options)``. Parameters
    the signature leaves out keep the defaults of :class:`StreamOptions`.

    Example:
        >>> class Model:
        ...     def _stream(self, X, y, options):
        ...         return X, options.group, options.batch_size
        ...     @streamed("predict")
        ...     def predict(self, X, *, in_sample=True, batch_size=None, **kwargs):
        ...         '''Stream predictions.'''
        >>> Model().predict([1.0], in_sample=False, batch_size=8)
        ([1.0], 'predictions', 8)
    """

    def decorate(method: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(method)
        params = list(signature.parameters.values())[1:]  # without self
        inputs = [p for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        named = {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
        caller = method.__name__

        @functools.wraps(method)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            # What `signature.bind` does, without its cost (tens of microseconds a
            # call): inputs by position or name, the named options, the rest are
            # kernel arguments. Anything unusual goes through `bind` for its error.
            if len(args) > len(inputs):
                signature.bind(self, *args, **kwargs)
            values = list(args)
            for p in inputs[len(args) :]:
                if p.name in kwargs:
                    values.append(kwargs.pop(p.name))
                elif p.default is inspect.Parameter.empty:
                    signature.bind(self, *args, **kwargs)
                else:
                    values.append(p.default)
            options = {name: kwargs.pop(name, default) for name, default in named.items()}
            stream_options = StreamOptions(kind=kind, caller=caller, **options, kwargs=kwargs)
            y = values[1] if len(values) > 1 else None
            return self._stream(values[0], y, stream_options)

        return call

    return decorate


__all__ = ["Kind", "ShardAxis", "Store", "StreamOptions", "streamed"]
