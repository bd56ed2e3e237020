"""pyfunc side of the flavor: the wrapper MLflow calls and the params it accepts."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, REQUEST_LIMIT_EXCEEDED
from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

# Inference params accepted by ``_AimzModelWrapper.predict`` (and declared in the
# signature so that ``mlflow models serve`` passes them on). ``None`` means "not
# given": the model's own default applies.
PARAM_SPECS: tuple[tuple[str, str, Any, tuple[int, ...] | None], ...] = (
    ("return_datatree", "boolean", False, None),
    ("seed", "long", None, None),
    ("intervention", "string", None, None),
    ("condition", "string", None, None),
    ("in_sample", "boolean", True, None),
    ("batch_size", "long", None, None),
    ("return_sites", "string", [], (-1,)),
    ("progress", "boolean", False, None),
)


_PARAM_NAMES = frozenset(spec[0] for spec in PARAM_SPECS)

#: Environment variable with the most input rows one pyfunc predict call (one
#: request of ``mlflow models serve``) accepts; ``0`` lifts the limit. A
#: ``max_rows`` entry of the pyfunc ``model_config`` takes precedence.
MAX_ROWS_ENV = "AIMZ_SERVE_MAX_ROWS"
#: The row limit when neither ``model_config`` nor :data:`MAX_ROWS_ENV` sets one.
DEFAULT_MAX_ROWS = 1_000_000

# Errors of aimz's input validation: answered as HTTP 400 with aimz's message.
_INPUT_ERRORS = (ValueError, TypeError, KeyError, NotImplementedError)


class InvalidInputError(MlflowException):
    """A request aimz refused (HTTP 400, ``INVALID_PARAMETER_VALUE``).

    It also derives from the built-in error aimz raised (``ValueError``,
    ``TypeError``, ...), so Python callers of the pyfunc model can still catch that.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


_INPUT_ERROR_CLASSES: dict[type, type] = {
    base: type(f"Invalid{base.__name__}", (InvalidInputError, base), {}) for base in _INPUT_ERRORS
}


class RequestTooLargeError(MlflowException):
    """A request over the row limit: HTTP 413 under ``mlflow models serve``.

    MLflow maps no error code to 413, so the error code is
    ``REQUEST_LIMIT_EXCEEDED`` (429 in MLflow's table) and the status is set here.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=REQUEST_LIMIT_EXCEEDED)

    def get_http_status_code(self) -> int:
        """Return 413 (Content Too Large)."""
        return 413


def _invalid(err: BaseException) -> MlflowException:
    message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    for base, cls in _INPUT_ERROR_CLASSES.items():
        if isinstance(err, base):
            return cls(str(message))
    return InvalidInputError(str(message))  # pragma: no cover - _INPUT_ERRORS only


def max_rows_limit(configured: Any = None) -> int | None:
    """Return the row limit of one predict call (``None``: no limit).

    ``configured`` (the ``max_rows`` of the pyfunc ``model_config``) wins over
    :data:`MAX_ROWS_ENV`, which wins over :data:`DEFAULT_MAX_ROWS`; ``0`` lifts it.

    Example:
        >>> max_rows_limit(), max_rows_limit(10), max_rows_limit(0)
        (1000000, 10, None)
    """
    value = configured
    source = "model_config['max_rows']"
    if value is None:
        value = os.environ.get(MAX_ROWS_ENV, "").strip() or None
        source = MAX_ROWS_ENV
    if value is None:
        return DEFAULT_MAX_ROWS
    try:
        limit = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source} must be an integer, got {value!r}.") from None
    if limit < 0:
        raise ValueError(f"{source} must be >= 0 (0: no limit), got {limit}.")
    return limit or None


def _serving() -> bool:
    """Whether this process is ``mlflow models serve`` (MLflow sets the variable)."""
    return os.environ.get("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "").lower() in {"true", "1"}


def json_safe(value: Any) -> Any:
    """Return ``value`` with NaN and infinities as ``None`` (JSON ``null``).

    Float arrays with non-finite values become object arrays; others are returned
    as they are.

    Example:
        >>> json_safe(np.array([1.0, np.nan, np.inf])).tolist()
        [1.0, None, None]
    """
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.inexact):
        return array
    bad = ~np.isfinite(array)
    if not bad.any():
        return array
    out = array.astype(object)
    out[bad] = None
    return out


def params_schema() -> ParamSchema:
    """Return the :class:`~mlflow.types.ParamSchema` of the pyfunc ``params``.

    ``intervention`` and ``condition`` are JSON object strings
    (``'{"t": 1.0}'``) in the schema, since MLflow params have no free-form mapping
    type; called directly, the wrapper also takes dicts.

    Example:
        >>> [p.name for p in params_schema().params][:2]
        ['return_datatree', 'seed']
    """
    return ParamSchema(
        [ParamSpec(name, dtype, default, shape) for name, dtype, default, shape in PARAM_SPECS]
    )


def _as_site_mapping(value: Any, name: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"`{name}` must be a JSON object of site names to values, such as "
                f"'{{\"t\": 1.0}}'; got {value!r} ({err})."
            ) from None
    if not isinstance(value, Mapping):
        raise TypeError(
            f"`{name}` must be a mapping (or a JSON object string) of site names to "
            f"values, got {type(value).__name__}."
        )
    return {str(k): np.asarray(v) for k, v in value.items()}


def predict_options(params: Mapping[str, Any] | None) -> tuple[bool, dict[str, Any]]:
    """Turn pyfunc ``params`` into ``ImpactModel.predict`` keyword arguments.

    Args:
        params: The pyfunc params (see :func:`params_schema`). Unknown names are passed
            on to ``predict`` (kernel keyword arguments or other predict options).

    Returns:
        ``(return_datatree, predict keyword arguments)``.

    Example:
        >>> tree, kw = predict_options({"seed": 0, "intervention": '{"t": 1}'})
        >>> tree, sorted(kw)
        (False, ['intervention', 'progress', 'rng_key'])
    """
    options = {k: v for k, v in dict(params or {}).items() if v is not None}
    return_datatree = bool(options.pop("return_datatree", False))
    kwargs: dict[str, Any] = {"progress": bool(options.pop("progress", False))}
    seed = options.pop("seed", None)
    if seed is not None:
        if "rng_key" in options:
            raise TypeError("Pass either `seed` or `rng_key` in `params`, not both.")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"`seed` must be an integer, got {seed!r}.")
        kwargs["rng_key"] = jax.random.key(int(seed))
    for name in ("intervention", "condition"):
        mapping = _as_site_mapping(options.pop(name, None), name)
        if mapping:
            kwargs[name] = mapping
    sites = options.pop("return_sites", None)
    if sites is not None and len(sites) > 0:
        kwargs["return_sites"] = sites if isinstance(sites, str) else [str(s) for s in sites]
    if "in_sample" in options:
        kwargs["in_sample"] = bool(options.pop("in_sample"))
    if "batch_size" in options:
        kwargs["batch_size"] = int(options.pop("batch_size"))
    kwargs.update(options)
    return return_datatree, kwargs


def split_input(data: Any, model: Any) -> tuple[Any, dict[str, Any]]:
    """Split pyfunc input into the model input and the kernel keyword arguments.

    The rule is :func:`aimz_core.table_input.bind_input`, the same one ``aimz
    predict`` uses for its files:

    * dict: ``data[param_input]`` (or ``data["X"]``) is the input; keys named like
      other kernel parameters are keyword arguments; the output key is dropped;
      any other key is an error.
    * NumPy array (or list): the input.
    * pandas DataFrame: columns named like kernel parameters are keyword arguments,
      a column named like the output is dropped, and the other columns form the
      input as a ``float32`` array; a column named like ``param_input`` whose cells
      are lists or arrays (one row per cell) is stacked into the input instead.

    Args:
        data: The pyfunc input.
        model: The :class:`~aimz_core.ImpactModel` (its kernel's parameter names,
            ``param_input`` and ``param_output``).

    Returns:
        ``(X, kwargs)``.

    Raises:
        KeyError: A dict has no entry for the input.
        ValueError: A name is not a kernel parameter, or a column is not numeric.

    Example:
        >>> import pandas as pd
        >>> from aimz_core.testing import make_model
        >>> X, kw = split_input(pd.DataFrame({"a": [1.0], "b": [2.0], "y": [0.0]}), make_model())
        >>> X, kw
        (array([[1., 2.]], dtype=float32), {})
    """
    from aimz_core.arguments import kernel_parameter_names
    from aimz_core.table_input import bind_input

    bound = bind_input(
        data,
        kernel_parameter_names(model.kernel),
        param_input=model.param_input,
        param_output=model.param_output,
    )
    return bound.X, bound.kwargs


def _variable_rows(outputs: Schema | None, num_rows: int | None) -> Schema | None:
    """Mark the row axis (axis 1, after draws) of output tensors as variable."""
    if outputs is None or num_rows is None or not outputs.is_tensor_spec():
        return outputs
    specs = []
    for spec in outputs.inputs:
        shape = list(spec.shape)
        if len(shape) >= 2 and shape[1] == num_rows:
            shape[1] = -1
        specs.append(TensorSpec(spec.type, tuple(shape), spec.name))
    return Schema(specs)


def infer_pyfunc_signature(
    model: Any, data: Any, params: Mapping[str, Any] | None = None
) -> ModelSignature:
    """Infer the pyfunc signature by predicting on ``data`` (an input example).

    The prediction uses an explicit key (``seed=0`` unless ``params`` has one), so
    the model's internal ``rng_key`` is left as it was. The signature gets the aimz
    :func:`params_schema` (plus schemas of any other names in ``params``), and the
    outputs' row axis is variable.

    Example:
        >>> from aimz_core.testing import fitted_linreg, linreg_data
        >>> X, _ = linreg_data(5)
        >>> signature = infer_pyfunc_signature(fitted_linreg(num_draws=10), {"X": X})
        >>> signature.inputs.input_names(), signature.params.params[1].name
        (['X'], 'seed')
    """
    call = {**dict(params or {}), "return_datatree": False}
    if call.get("seed") is None:
        call["seed"] = 0
    extra = {k: v for k, v in call.items() if k not in _PARAM_NAMES}
    prediction = _AimzModelWrapper(model).predict(data, params=call)
    signature = infer_signature(data, prediction)
    X, _ = split_input(data, model)
    signature.outputs = _variable_rows(signature.outputs, len(X) if np.ndim(X) else None)
    schema = params_schema()
    if extra:
        schema = ParamSchema([*schema.params, *infer_signature(params=extra).params.params])
    signature.params = schema
    return signature


class _AimzModelWrapper:
    """pyfunc implementation of an aimz model (what ``mlflow.pyfunc`` calls).

    Args:
        model: The fitted :class:`~aimz_core.ImpactModel`.

    Example:
        >>> from aimz_core.testing import fitted_linreg, linreg_data
        >>> wrapper = _AimzModelWrapper(fitted_linreg(num_draws=10))
        >>> X, _ = linreg_data(5)
        >>> wrapper.predict({"X": X}, params={"seed": 0})["y"].shape
        (10, 5)
    """

    def __init__(self, model: Any, max_rows: int | None = None) -> None:
        self.model = model
        self.max_rows = max_rows

    def _check_rows(self, X: Any) -> None:
        limit = max_rows_limit(self.max_rows)
        rows = len(X) if limit is not None and np.ndim(X) else 0
        if limit is not None and rows > limit:
            raise RequestTooLargeError(
                f"The request has {rows} input rows, more than the {limit} one prediction "
                f"accepts. Send fewer rows per request, or raise the limit with the "
                f"{MAX_ROWS_ENV} environment variable (0: no limit) or the model_config "
                "key 'max_rows'."
            )

    def get_raw_model(self) -> Any:
        """Return the wrapped :class:`~aimz_core.ImpactModel`.

        Example:
            >>> from aimz_core.testing import fitted_linreg
            >>> model = fitted_linreg(num_draws=10)
            >>> _AimzModelWrapper(model).get_raw_model() is model
            True
        """
        return self.model

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        """Posterior predictive draws for ``data``.

        Args:
            data: A dict of arrays (the model input under its ``param_input`` name,
                plus kernel keyword arguments), a NumPy array (the input) or a pandas
                DataFrame (see :func:`split_input`).
            params: ``return_datatree`` (bool, default False: return plain arrays),
                ``seed`` (int, key of this call), ``intervention`` / ``condition``
                (mapping or JSON object string), ``in_sample``, ``batch_size``,
                ``return_sites``, ``progress``; other names go to ``predict``.

        Returns:
            ``{site: ndarray}`` of shape ``(draws, ...)`` (JSON-serializable, what
            ``mlflow models serve`` answers), or a DataTree when
            ``return_datatree=True`` (needs ``aimz-io``).

        Example:
            >>> import pandas as pd
            >>> from aimz_core.testing import fitted_linreg, linreg_data
            >>> wrapper = _AimzModelWrapper(fitted_linreg(num_draws=10))
            >>> X, _ = linreg_data(5)
            >>> draws = wrapper.predict({"X": X}, params={"seed": 0})
            >>> draws["y"].shape
            (10, 5)
            >>> same = wrapper.predict(pd.DataFrame(X, columns=["a", "b"]), params={"seed": 0})
            >>> bool((same["y"] == draws["y"]).all())
            True
        """
        try:
            return_datatree, kwargs = predict_options(params)
            if return_datatree and _serving():
                raise ValueError(
                    "`return_datatree=true` is not available from a model server: a "
                    "DataTree cannot be answered as JSON. Omit it to get "
                    "{site: draws} arrays, or load the model in Python "
                    "(aimz_mlflow.load_model) for a DataTree."
                )
            X, data_kwargs = split_input(data, self.model)
            self._check_rows(X)
            call = {**data_kwargs, **kwargs}
            if return_datatree:
                return self.model.predict(X, store="memory", return_datatree=True, **call)
            out = self.model.predict(X, return_datatree=False, **call)
            requested = kwargs.get("return_sites")
            if requested is not None:
                wanted = [requested] if isinstance(requested, str) else list(requested)
                missing = [site for site in wanted if site not in out]
                if missing:
                    raise ValueError(
                        f"`return_sites` names sites the prediction does not record: "
                        f"{missing}; recorded sites: {sorted(out)}."
                    )
        except _INPUT_ERRORS as err:
            raise _invalid(err) from err
        if _serving():  # JSON has no NaN / Infinity: answer them as null
            return {site: json_safe(value) for site, value in out.items()}
        return {site: np.asarray(value) for site, value in out.items()}


__all__ = [
    "DEFAULT_MAX_ROWS",
    "MAX_ROWS_ENV",
    "InvalidInputError",
    "RequestTooLargeError",
    "infer_pyfunc_signature",
    "json_safe",
    "max_rows_limit",
    "params_schema",
    "predict_options",
    "split_input",
]
