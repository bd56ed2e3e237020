"""Routing of call arguments to the kernel: binding, reserved names, batching."""

from __future__ import annotations

import contextlib
import inspect
import warnings
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from aimz_core.data import ArrayLoader, is_loader
from aimz_core.exceptions import OutputWarning
from aimz_core.kernel import kernel_signature


def is_array_like(value: object) -> bool:
    """Whether ``value`` is batched with the input (arrays, lists, tuples).

    Example:
        >>> is_array_like([1, 2]), is_array_like("ab"), is_array_like({"a": 1})
        (True, False, False)
    """
    if isinstance(value, (str, bytes, bytearray, Mapping)):
        return False
    return hasattr(value, "__len__") or hasattr(value, "shape") or hasattr(value, "__array__")


def is_lazy_array(value: object) -> bool:
    """Whether ``value`` is an array object that is not NumPy/JAX (Dask, Zarr, ...).

    Such arrays are kept as they are and sliced per batch instead of being read
    whole into memory.

    Example:
        >>> is_lazy_array(np.zeros(2)), is_lazy_array([1.0])
        (False, False)
    """
    if isinstance(value, (np.ndarray, jax.Array, list, tuple)):
        return False
    return all(hasattr(value, a) for a in ("shape", "dtype", "ndim", "__getitem__"))


def host_rows(value: Any, start: int | None = None, stop: int | None = None) -> Any:
    """Rows ``[start, stop)`` of an array as a NumPy (or JAX) array, read lazily.

    Example:
        >>> host_rows(np.arange(5), 1, 3).tolist()
        [1, 2]
    """
    rows = value if start is None and stop is None else value[start:stop]
    return rows if isinstance(rows, (np.ndarray, jax.Array)) else np.asarray(rows)


def pad_rows(x: Any, size: int) -> Any:
    """Pad ``x`` along axis 0 to ``size`` rows by repeating the last row.

    Example:
        >>> import numpy as np
        >>> pad_rows(np.array([1, 2]), 4).tolist()
        [1, 2, 2, 2]
    """
    n = x.shape[0]
    if n == size:
        return x
    if isinstance(x, np.ndarray):
        return np.concatenate([x, np.repeat(x[-1:], size - n, axis=0)], axis=0)
    return jax.numpy.concatenate([x, jax.numpy.repeat(x[-1:], size - n, axis=0)], axis=0)


def as_array(value: Any, name: str, *, lazy: bool = False) -> Any:
    """Convert an array-like to a NumPy array (JAX arrays are kept) with ndim >= 1.

    With ``lazy=True``, array objects such as Dask or Zarr arrays are kept unread.
    """
    if lazy and is_lazy_array(value):
        if value.ndim == 0:
            raise ValueError(f"`{name}` must have at least 1 dimension, got a scalar.")
        return value
    arr = value if isinstance(value, (np.ndarray, jax.Array)) else np.asarray(value)
    if arr.ndim == 0:
        raise ValueError(f"`{name}` must have at least 1 dimension, got a scalar.")
    return arr


def reject_reserved(kwargs: Mapping[str, Any], param_input: str, param_output: str) -> None:
    """Refuse keyword arguments named like the kernel's input or output."""
    for name in (param_input, param_output):
        if name in kwargs:
            raise TypeError(
                f"{name!r} is a reserved kernel parameter and cannot be passed as a "
                "keyword argument; pass it positionally as the method's own argument."
            )


@dataclass(frozen=True)
class KernelArgs:
    """Call arguments split into arrays (batched along axis 0) and static extras.

    Attributes:
        arrays: Array-valued arguments, including the input (and output if given).
        extras: Everything else; passed whole and treated as static by ``jax.jit``.
        whole: Array keyword arguments given alongside a data loader: passed whole
            to every batch (not split by rows), as traced values.
    """

    arrays: dict[str, Any]
    extras: dict[str, Any]
    whole: dict[str, Any] = field(default_factory=dict)

    def kernel_extras(self) -> dict[str, Any]:
        """The arguments every batch gets unsplit: ``extras`` and ``whole``."""
        return {**self.extras, **self.whole}

    def extras_key(self) -> tuple[tuple[str, Any], ...]:
        """A hashable key of the static arguments (used by jit caches)."""
        items = []
        for k, v in sorted(self.extras.items()):
            try:
                hash(v)
                items.append((k, v))
            except TypeError:
                items.append((k, ("<unhashable>", id(v))))
        return tuple(items)


_SIGNATURES: weakref.WeakKeyDictionary[Any, inspect.Signature] = weakref.WeakKeyDictionary()


def _signature_of(kernel: Callable) -> inspect.Signature:
    """:func:`~aimz_core.kernel.kernel_signature`, kept per kernel object (weakly):
    reading a signature costs more than a warm on-batch call's other checks."""
    try:
        return _SIGNATURES[kernel]
    except (KeyError, TypeError):  # TypeError: not weakly referenceable
        pass
    sig = kernel_signature(kernel)
    with contextlib.suppress(TypeError):
        _SIGNATURES[kernel] = sig
    return sig


def bind_arguments(
    kernel: Callable,
    param_input: str,
    param_output: str,
    X: Any,
    y: Any = None,
    kwargs: Mapping[str, Any] | None = None,
    *,
    lazy: bool = False,
) -> KernelArgs:
    """Bind ``X``, ``y`` and extra kwargs to the kernel signature and split them.

    Raises:
        TypeError: For reserved, unknown or missing arguments.
        ValueError: For 0-D ``X`` or ``y``.

    With ``lazy=True`` Dask/Zarr-like arrays are kept unread (see :func:`as_array`).

    Example:
        >>> def k(X, y=None, scale=1.0): ...
        >>> bound = bind_arguments(k, "X", "y", [1.0, 2.0], None, {"scale": 2.0})
        >>> sorted(bound.arrays), bound.extras
        (['X'], {'scale': 2.0})
    """
    kwargs = dict(kwargs or {})
    reject_reserved(kwargs, param_input, param_output)
    values: dict[str, Any] = {param_input: X, **kwargs}
    if y is not None:
        values[param_output] = y
    try:
        _signature_of(kernel).bind(**values)
    except TypeError as err:
        raise TypeError(f"Arguments do not match the kernel signature: {err}") from None
    arrays: dict[str, Any] = {param_input: as_array(X, param_input, lazy=lazy)}
    if y is not None:
        arrays[param_output] = as_array(y, param_output, lazy=lazy)
    extras: dict[str, Any] = {}
    for name, value in kwargs.items():
        if value is None:
            extras[name] = None
        elif is_array_like(value):
            arrays[name] = as_array(value, name, lazy=lazy)
        else:
            extras[name] = value
    return KernelArgs(arrays=arrays, extras=extras)


def as_jax_tree(values: Mapping[str, Any] | None, name: str) -> dict[str, jax.Array]:
    """``intervention``/``condition`` values as ``{site: jax array}`` (``{}`` for None).

    Example:
        >>> as_jax_tree({"w": 1.0}, "intervention")["w"].dtype
        dtype('float32')
    """
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise TypeError(
            f"`{name}` must be a mapping of site names to values, got {type(values).__name__}."
        )
    return {str(k): jax.numpy.asarray(v) for k, v in values.items()}


def streaming_arguments(
    kernel: Callable,
    param_input: str,
    param_output: str,
    X: Any,
    y: Any,
    kwargs: Mapping[str, Any],
) -> tuple[KernelArgs, int | None]:
    """Bind arrays, an ``ArrayLoader`` or an iterable of mappings to the kernel.

    Lazy arrays (Dask, Zarr) stay unread. Returns the bound arguments and, for a
    loader, its batch size.

    Example:
        >>> def k(X, y=None): ...
        >>> bound, batch = streaming_arguments(k, "X", "y", np.zeros((3, 1)), None, {})
        >>> sorted(bound.arrays), batch
        (['X'], None)
    """
    reject_reserved(kwargs, param_input, param_output)
    if is_loader(X):
        if y is not None:
            raise TypeError("`y` must be `None` when `X` is already a data loader.")
        if isinstance(X, ArrayLoader):
            if X.shuffle:
                warnings.warn(
                    "The data loader shuffles; aimz reads its dataset in order so "
                    "results follow the data order.",
                    OutputWarning,
                    stacklevel=5,
                )
            fields = dict(X.dataset.arrays)
            loader_batch: int | None = X.batch_size
        else:
            batches = [dict(b) for b in X]
            if not batches:
                raise ValueError("The data loader yielded no batches.")
            fields = {k: np.concatenate([np.asarray(b[k]) for b in batches]) for k in batches[0]}
            loader_batch = len(next(iter(batches[0].values())))
        if param_input not in fields:
            raise ValueError(
                f"The data loader has no field named {param_input!r} for the model input. "
                f"Its fields: {sorted(fields)}."
            )
        X_f = fields.pop(param_input)
        y_f = fields.pop(param_output, None)
        # Array keyword arguments go whole to every batch (not split by rows).
        whole_names = [k for k, v in kwargs.items() if is_array_like(v)]
        both = sorted(set(whole_names) & set(fields))
        if both:
            raise ValueError(
                f"{both} given both as keyword arguments and as fields of the data "
                "loader; pass each argument once."
            )
        bound = bind_arguments(
            kernel, param_input, param_output, X_f, y_f, {**fields, **kwargs}, lazy=True
        )
        whole = {k: jax.numpy.asarray(bound.arrays.pop(k)) for k in whole_names}
        bound = KernelArgs(bound.arrays, bound.extras, whole)
        check_aligned(bound.arrays, param_input)
        return bound, loader_batch
    if not is_array_like(X):
        raise TypeError(f"`X` must be an array-like or a data loader, got {type(X).__name__!r}.")
    bound = bind_arguments(kernel, param_input, param_output, X, y, kwargs, lazy=True)
    check_aligned(bound.arrays, param_input)
    return bound, None


def check_aligned(arrays: Mapping[str, Any], param_input: str) -> int:
    """Check that every batched array shares the input's leading size; return it.

    Raises:
        ValueError: If the input is empty or sizes differ.
    """
    sizes = {name: int(arr.shape[0]) for name, arr in arrays.items()}
    n = sizes[param_input]
    if n == 0:
        raise ValueError(f"`{param_input}` must not be empty.")
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{k}={v}" for k, v in sizes.items())
        raise ValueError(
            f"All array arguments must share the leading-axis size of "
            f"`{param_input}`; got {listing}."
        )
    return n


def kernel_parameter_names(kernel: Callable) -> tuple[str, ...]:
    """Names of the kernel's parameters, in order."""
    return tuple(kernel_signature(kernel).parameters)


def required_parameters(kernel: Callable) -> tuple[str, ...]:
    """Names of the kernel's parameters without defaults."""
    return tuple(
        p.name
        for p in kernel_signature(kernel).parameters.values()
        if p.default is inspect.Parameter.empty
    )
