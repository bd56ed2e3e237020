"""The one rule that binds tables and mappings of arrays to kernel arguments.

Runs without pandas (slim install): tables are duck-typed with :class:`Table`; the
pandas cases skip when pandas is missing.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest
from aimz_core.table_input import BoundInput, bind_input, input_name, is_table

PARAMS = ("X", "t", "y")


class Table:
    """The least a table needs: ``.columns`` and ``table[column]``."""

    def __init__(self, **columns: Any) -> None:
        self._data = columns
        self.columns = list(columns)

    def __getitem__(self, name: str) -> Any:
        return self._data[name]


def bind(data: Any, params: tuple[str, ...] = PARAMS, **kwargs: Any) -> BoundInput:
    return bind_input(data, params, param_input="X", param_output="y", **kwargs)


# ------------------------------------------------------------------------ mappings
def test_mapping_input_kwargs_and_dropped_output() -> None:
    X = np.ones((4, 3), dtype=np.float64)
    bound = bind({"X": X, "t": np.zeros(4), "y": np.zeros(4)})
    assert bound.X is X  # used as given: no copy, no cast
    assert list(bound.kwargs) == ["t"]
    assert bound.dropped == ("y",)


def test_mapping_lists_become_arrays_and_scalars_stay() -> None:
    bound = bind({"X": [[1.0, 2.0]], "t": 2.0})
    assert isinstance(bound.X, np.ndarray) and bound.X.shape == (1, 2)
    assert bound.kwargs == {"t": 2.0}


def test_mapping_one_dimensional_input_is_kept() -> None:
    bound = bind({"X": np.arange(5.0)})
    assert bound.X.shape == (5,)


def test_mapping_x_fallback_and_missing_input() -> None:
    bound = bind_input(
        {"X": np.ones((2, 1))}, ("features", "y"), param_input="features", param_output="y"
    )
    assert bound.X.shape == (2, 1)
    with pytest.raises(KeyError, match="no array named 'X'"):
        bind({"Z": np.ones((2, 1))})


def test_mapping_rejects_names_that_are_not_parameters() -> None:
    with pytest.raises(ValueError, match=r"\['z'\] are not parameters of the kernel"):
        bind({"X": np.ones((2, 1)), "z": np.ones(2)})


def test_arrays_and_lists_are_the_input() -> None:
    X = np.ones((2, 3))
    assert bind(X).X is X
    assert bind(X).kwargs == {}
    assert bind([[1.0], [2.0]]).X.shape == (2, 1)


# -------------------------------------------------------------------------- tables
def test_table_feature_columns_form_x_in_order() -> None:
    table = Table(
        a=np.array([1.0, 2.0]), t=np.array([0, 1]), b=np.array([3, 4]), y=np.array([0.0, 0.0])
    )
    bound = bind(table)
    np.testing.assert_array_equal(bound.X, [[1.0, 3.0], [2.0, 4.0]])
    assert bound.X.dtype == np.float32
    assert bound.kwargs["t"].dtype.kind == "i"  # arguments keep their dtype
    assert bound.dropped == ("y",)


def test_table_scalar_input_column_is_a_feature() -> None:
    bound = bind(Table(a=np.array([1.0]), X=np.array([2.0])))
    np.testing.assert_array_equal(bound.X, [[1.0, 2.0]])


def test_table_dtype_none_keeps_numpy_result_type() -> None:
    bound = bind(Table(a=np.array([1.0]), b=np.array([2])), dtype=None)
    assert bound.X.dtype == np.float64


def test_table_row_cells_in_input_column() -> None:
    rows = np.empty(3, dtype=object)
    rows[:] = [np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.array([5.0, 6.0])]
    t = np.empty(3, dtype=object)
    t[:] = [[0.0], [1.0], [0.0]]
    bound = bind(Table(X=rows, t=t, y=np.zeros(3)))
    assert bound.X.shape == (3, 2) and bound.X.dtype == np.float32
    assert bound.kwargs["t"].shape == (3, 1)
    assert bound.dropped == ("y",)
    assert bind(Table(X=rows), dtype=None).X.dtype == np.float64


def test_table_row_cells_with_other_columns_is_an_error() -> None:
    rows = np.empty(2, dtype=object)
    rows[:] = [[1.0], [2.0]]
    with pytest.raises(ValueError, match=r"\['extra'\] are not parameters"):
        bind(Table(X=rows, extra=np.zeros(2)))


def test_table_without_features_or_with_text_is_an_error() -> None:
    with pytest.raises(ValueError, match="no feature columns left for X"):
        bind(Table(t=np.zeros(2), y=np.zeros(2)))
    with pytest.raises(ValueError, match="'name' must be numeric"):
        bind(Table(a=np.zeros(2), name=np.array(["u", "v"])))
    with pytest.raises(ValueError, match="only the input column"):
        cells = np.empty(2, dtype=object)
        cells[:] = [[1.0], [2.0]]
        bind(Table(a=np.zeros(2), b=cells))


def test_helpers() -> None:
    assert is_table(Table(a=[1]))
    assert not is_table({"a": [1]})
    assert input_name(["X"], ("X", "y"), "X") == "X"
    assert input_name(["X"], ("inputs", "X"), "inputs") is None  # "X" is a parameter


# -------------------------------------------------------------------------- pandas
@pytest.mark.skipif(importlib.util.find_spec("pandas") is None, reason="needs pandas")
def test_pandas_frames_follow_the_same_rule() -> None:
    import pandas as pd

    X = np.arange(6, dtype=np.float32).reshape(3, 2)
    expected = bind({"X": X})
    by_columns = bind(pd.DataFrame(X, columns=["a", "b"]).assign(t=[1, 2, 3], y=0.0))
    np.testing.assert_array_equal(by_columns.X, expected.X)
    assert list(by_columns.kwargs) == ["t"] and by_columns.dropped == ("y",)
    by_rows = bind(pd.DataFrame({"X": list(X)}))
    np.testing.assert_array_equal(by_rows.X, X)
    unnamed = bind(pd.DataFrame(X))  # integer column labels
    np.testing.assert_array_equal(unnamed.X, X)
