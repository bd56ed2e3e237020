"""Turn a table or a mapping of arrays into a kernel's input and keyword arguments.

One rule, used by ``aimz predict`` (``.npy``, ``.npz``, ``.csv``, ``.parquet``
files) and by the MLflow pyfunc wrapper (dicts, arrays and DataFrames):

* Entries are matched to the kernel's parameters by name (``str(name)``).
* The **input** is the entry named like ``param_input``, or ``"X"`` when there is
  none and ``"X"`` is not another kernel parameter.
* Entries named like **other kernel parameters** become keyword arguments; the
  entry named like ``param_output`` (the observed output) is **dropped** and
  reported in :attr:`BoundInput.dropped`.
* A **mapping** (``{"X": X, "t": t}``, an ``.npz`` archive) must hold the input;
  its values are used as they are (lists become arrays), and any other name is an
  error.
* A **table** (any object with ``.columns`` and ``table[column]``, such as a pandas
  or polars DataFrame) either has an input column whose cells are rows (lists or
  arrays: they are stacked into ``X``), or its remaining columns, in order, are the
  feature columns of a 2-D ``X`` (a scalar column named like the input is one of
  them). Columns whose cells are lists or arrays are stacked as well.
* Anything else (an array, a list) is the input itself.

Table columns must be numeric; ``X`` from a table is cast to ``dtype``
(``float32`` by default), keyword-argument columns keep their dtype.

This module needs NumPy only (no pandas).

Example:
    >>> import numpy as np
    >>> table = {"a": np.array([1.0, 2.0]), "b": np.array([3.0, 4.0])}
    >>> class Table:  # anything with ``.columns`` and ``table[name]``
    ...     columns = ["a", "b", "t", "y"]
    ...     def __getitem__(self, name):
    ...         return {**table, "t": np.array([0, 1]), "y": np.zeros(2)}[name]
    >>> bound = bind_input(Table(), ["X", "t", "y"], param_input="X", param_output="y")
    >>> bound.X
    array([[1., 3.],
           [2., 4.]], dtype=float32)
    >>> bound.kwargs, bound.dropped
    ({'t': array([0, 1])}, ('y',))
"""

from __future__ import annotations

import numbers
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["BoundInput", "bind_input", "input_name", "is_table"]

#: Name of the input entry when none is named like the kernel's input parameter.
FALLBACK_INPUT = "X"

_NUMERIC_KINDS = "biufc"


@dataclass(frozen=True)
class BoundInput:
    """The kernel arguments found in a table or mapping.

    Attributes:
        X: The model input.
        kwargs: Kernel keyword arguments by parameter name.
        dropped: Names of entries that were ignored (the model output).

    Example:
        >>> bound = bind_input({"X": np.ones((2, 1)), "y": np.ones(2)}, ["X", "y"],
        ...                    param_input="X", param_output="y")
        >>> bound.X.shape, bound.kwargs, bound.dropped
        ((2, 1), {}, ('y',))
    """

    X: Any
    kwargs: dict[str, Any] = field(default_factory=dict)
    dropped: tuple[str, ...] = ()


def is_table(data: Any) -> bool:
    """Whether ``data`` is a table: not a mapping, with ``.columns`` and ``data[column]``.

    Example:
        >>> is_table({"X": [1.0]}), is_table([1.0])
        (False, False)
    """
    return (
        not isinstance(data, Mapping)
        and hasattr(data, "columns")
        and hasattr(type(data), "__getitem__")
    )


def input_name(
    names: Collection[str], param_names: Collection[str], param_input: str
) -> str | None:
    """The entry that holds the input: ``param_input``, else ``"X"`` if free, else none.

    Args:
        names: Names of the entries (columns or keys).
        param_names: The kernel's parameter names.
        param_input: Name of the kernel's input parameter.

    Returns:
        The name of the input entry, or ``None``.

    Example:
        >>> input_name(["X", "t"], ["features", "t", "y"], "features")
        'X'
    """
    if param_input in names:
        return param_input
    if FALLBACK_INPUT in names and FALLBACK_INPUT not in param_names:
        return FALLBACK_INPUT
    return None


def bind_input(
    data: Any,
    param_names: Collection[str],
    *,
    param_input: str,
    param_output: str,
    dtype: Any = np.float32,
) -> BoundInput:
    """Bind a table, a mapping of arrays or an array to the kernel's parameters.

    See the module docstring for the rule.

    Args:
        data: A table (``.columns`` and ``data[column]``), a mapping of arrays, or
            the input itself (an array or a list).
        param_names: The kernel's parameter names.
        param_input: Name of the kernel's input parameter.
        param_output: Name of the kernel's output parameter (dropped when present).
        dtype: dtype of ``X`` when it comes from a table (``None`` keeps NumPy's).

    Returns:
        The input, the keyword arguments and the dropped names.

    Raises:
        KeyError: A mapping has no entry for the input.
        ValueError: A name is not a kernel parameter, a table has no feature
            columns, or a table column is not numeric.

    Example:
        >>> import numpy as np
        >>> bound = bind_input({"X": [[1.0, 2.0]], "t": 2.0}, ["X", "t", "y"],
        ...                    param_input="X", param_output="y")
        >>> bound.X.shape, bound.kwargs
        ((1, 2), {'t': 2.0})
    """
    if is_table(data):
        return _bind_table(data, param_names, param_input, param_output, dtype)
    if isinstance(data, Mapping):
        return _bind_mapping(data, param_names, param_input, param_output)
    return BoundInput(np.asarray(data) if isinstance(data, list) else data)


def _bind_mapping(
    data: Mapping[str, Any], param_names: Collection[str], param_input: str, param_output: str
) -> BoundInput:
    arrays = {str(k): v for k, v in data.items()}
    name = input_name(arrays, param_names, param_input)
    if name is None:
        raise KeyError(
            f"The input has no array named {param_input!r} for the model input "
            f"(found: {', '.join(sorted(arrays)) or 'nothing'})."
        )
    X = arrays.pop(name)
    dropped = (param_output,) if param_output in arrays else ()
    arrays.pop(param_output, None)
    _check_known(arrays, param_names, "input arrays")
    kwargs = {k: np.asarray(v) if isinstance(v, list) else v for k, v in arrays.items()}
    return BoundInput(np.asarray(X) if isinstance(X, list) else X, kwargs, dropped)


def _bind_table(
    table: Any, param_names: Collection[str], param_input: str, param_output: str, dtype: Any
) -> BoundInput:
    columns = [str(c) for c in table.columns]
    by_name = dict(zip(columns, table.columns, strict=True))
    dropped = (param_output,) if param_output in by_name else ()
    name = input_name(by_name, param_names, param_input)
    X = None
    if name is not None:
        values = _column(table, by_name[name])
        if values.ndim > 1:  # one row per cell
            X = _numeric(values, name)
            X = X if dtype is None else X.astype(dtype, copy=False)
    kwargs = {
        c: _numeric(_column(table, by_name[c]), c)
        for c in columns
        if c in param_names and c not in (param_input, param_output) and c != name
    }
    rest = [c for c in columns if c not in kwargs and c != param_output]
    if X is not None:
        rest.remove(name)
        _check_known(rest, param_names, "columns")
        return BoundInput(X, kwargs, dropped)
    if not rest:
        raise ValueError(
            "The input table has no feature columns left for X "
            f"(columns: {', '.join(columns) or 'none'}; kernel arguments: "
            f"{', '.join(kwargs) or 'none'}; output: {param_output!r})."
        )
    features = [_numeric(_column(table, by_name[c]), c) for c in rest]
    if any(f.ndim != 1 for f in features):
        bad = [c for c, f in zip(rest, features, strict=True) if f.ndim != 1]
        raise ValueError(
            f"Feature column(s) {bad} hold lists or arrays; only the input column "
            f"({param_input!r}) may hold one row per cell."
        )
    out_dtype = np.result_type(*features) if dtype is None else np.dtype(dtype)
    X = np.empty((len(features[0]), len(features)), dtype=out_dtype)
    for j, values in enumerate(features):
        X[:, j] = values
    return BoundInput(X, kwargs, dropped)


def _column(table: Any, key: Any) -> np.ndarray:
    """A column as an array; cells that are lists or arrays are stacked (one per row)."""
    values = np.asarray(table[key])
    rows = values.dtype == object and values.ndim == 1 and len(values) > 0
    if rows and all(np.ndim(v) > 0 for v in values):
        try:
            return np.stack([np.asarray(v) for v in values])
        except ValueError:
            raise ValueError(
                f"Column {str(key)!r} holds lists or arrays of different shapes."
            ) from None
    return values


def _numeric(values: np.ndarray, name: str) -> np.ndarray:
    if values.dtype.kind in _NUMERIC_KINDS:
        return values
    if values.dtype == object and all(isinstance(v, numbers.Number) for v in values.flat):
        return np.array(values.tolist())
    raise ValueError(f"Column {name!r} must be numeric, got dtype {values.dtype}.")


def _check_known(names: Collection[str], param_names: Collection[str], what: str) -> None:
    unknown = sorted(set(names) - set(param_names))
    if unknown:
        raise ValueError(
            f"The {what} {unknown} are not parameters of the kernel "
            f"(parameters: {', '.join(param_names)}); rename or remove them."
        )
