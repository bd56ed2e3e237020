"""Autologging of ``ImpactModel.fit`` and ``ImpactModel.fit_on_batch``."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import mlflow
import numpy as np
from mlflow.data.code_dataset_source import CodeDatasetSource
from mlflow.entities import Metric
from mlflow.tracking.context import registry as context_registry
from mlflow.utils.autologging_utils import (
    INPUT_EXAMPLE_SAMPLE_ROWS,
    autologging_integration,
    get_autologging_config,
    resolve_input_example_and_signature,
    safe_patch,
)
from mlflow.utils.validation import MAX_METRICS_PER_BATCH

from aimz_mlflow.flavor import FLAVOR_NAME, log_model
from aimz_mlflow.pyfunc import infer_pyfunc_signature

_logger = logging.getLogger(__name__)

# Call arguments that are data, keys or display options rather than settings.
_UNLOGGED_ARGS = frozenset({"X", "y", "rng_key", "num_samples", "progress", "kwargs"})
# ``fit_on_batch`` ignores ``num_steps`` with MCMC.
_UNLOGGED_MCMC_ARGS = _UNLOGGED_ARGS | {"num_steps"}
_MAX_PARAM_LENGTH = 500
LOSS_METRIC = "elbo_loss"


def _is_array(value: Any) -> bool:
    from aimz_core.arguments import is_array_like

    return is_array_like(value)


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= _MAX_PARAM_LENGTH else text[: _MAX_PARAM_LENGTH - 3] + "..."


def _model_params(model: Any) -> dict[str, Any]:
    from numpyro.infer import SVI

    inference = model.inference
    params: dict[str, Any] = {
        "param_input": model.param_input,
        "param_output": model.param_output,
        "inference_method": type(inference).__name__,
    }
    if isinstance(inference, SVI):
        params["optimizer"] = type(inference.optim).__name__
        params["loss"] = type(inference.loss).__name__
        params["guide"] = type(inference.guide).__name__
    else:
        params["sampler"] = type(inference.sampler).__name__
        params["num_warmup"] = inference.num_warmup
        params["num_chains"] = inference.num_chains
    return params


def _call_arguments(original: Callable, model: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    bound = inspect.signature(original).bind(model, *args, **kwargs)
    bound.apply_defaults()
    call = dict(bound.arguments)
    call.pop("self", None)
    call.update(call.pop("kwargs", {}) or {})
    return call


def _training_arrays(model: Any, call: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
    """Return the training arrays by kernel parameter name (``None`` when unknown)."""
    from aimz_core.data import ArrayLoader

    X = call.get("X")
    if isinstance(X, ArrayLoader):
        return {k: np.asarray(v) for k, v in X.dataset.arrays.items()}
    if not _is_array(X):
        return None  # a generic iterable of batches can only be read once
    arrays = {model.param_input: np.asarray(X)}
    if call.get("y") is not None:
        arrays[model.param_output] = np.asarray(call["y"])
    skip = {"X", "y", *_UNLOGGED_ARGS}
    for name, value in call.items():
        if name not in skip and _is_array(value) and name not in arrays:
            arrays[name] = np.asarray(value)
    return arrays


def _input_example(model: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    rows = INPUT_EXAMPLE_SAMPLE_ROWS
    inputs = {k: v[:rows] for k, v in arrays.items() if k != model.param_output}
    if len(inputs) == 1:
        return inputs[model.param_input]
    return inputs


def _log_losses(run_id: str, losses: np.ndarray, model_id: str | None) -> None:
    timestamp = int(time.time() * 1000)
    metrics = [
        Metric(LOSS_METRIC, float(value), timestamp, step, model_id=model_id)
        for step, value in enumerate(np.asarray(losses, dtype=float).ravel())
    ]
    client = mlflow.MlflowClient()
    for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[start : start + MAX_METRICS_PER_BATCH])


def _log_dataset(model: Any, arrays: Mapping[str, np.ndarray]) -> None:
    features = {k: v for k, v in arrays.items() if k != model.param_output}
    if list(features) == [model.param_input]:
        features = features[model.param_input]
    targets = arrays.get(model.param_output)
    source = CodeDatasetSource(context_registry.resolve_tags())
    dataset = mlflow.data.from_numpy(features, source=source, targets=targets)
    mlflow.log_input(dataset, context="train")


def _fit_and_log(original: Callable, model: Any, args: tuple, kwargs: dict) -> Any:
    run_id = mlflow.active_run().info.run_id
    call = _call_arguments(original, model, args, kwargs)
    params = _model_params(model)
    unlogged = _UNLOGGED_ARGS if params["inference_method"] == "SVI" else _UNLOGGED_MCMC_ARGS
    for name, value in call.items():
        if name not in unlogged and not _is_array(value) and name not in params:
            params[name] = value
    mlflow.log_params({k: _param_value(v) for k, v in params.items()})
    arrays = _training_arrays(model, call)

    result = original(model, *args, **kwargs)

    num_samples = model.describe()["num_samples"]
    mlflow.log_param("num_samples", num_samples)
    params["num_samples"] = num_samples
    try:
        mlflow.log_text(inspect.getsource(model.kernel), "model.py")
    except (OSError, TypeError):
        _logger.debug("Kernel source is unavailable; model.py is not logged.")

    model_id = None
    if get_autologging_config(FLAVOR_NAME, "log_models", True):

        def get_input_example() -> Any:
            if arrays is None:
                raise ValueError("the training data is not an array or ArrayLoader")
            return _input_example(model, arrays)

        input_example, signature = resolve_input_example_and_signature(
            get_input_example,
            lambda example: infer_pyfunc_signature(model, example),
            get_autologging_config(FLAVOR_NAME, "log_input_examples", False),
            get_autologging_config(FLAVOR_NAME, "log_model_signatures", True),
            _logger,
        )
        if signature is None and not get_autologging_config(
            FLAVOR_NAME, "log_model_signatures", True
        ):
            signature = False
        info = log_model(
            model,
            name="model",
            signature=signature,
            input_example=input_example,
            registered_model_name=get_autologging_config(
                FLAVOR_NAME, "registered_model_name", None
            ),
            params={k: _param_value(v) for k, v in params.items()},
        )
        model_id = info.model_id

    vi_result = getattr(model, "vi_result", None)
    if vi_result is not None and len(np.asarray(vi_result.losses)):
        _log_losses(run_id, vi_result.losses, model_id)

    if arrays is not None and get_autologging_config(FLAVOR_NAME, "log_datasets", True):
        _log_dataset(model, arrays)
    return result


@autologging_integration(FLAVOR_NAME)
def autolog(
    *,
    log_input_examples: bool = False,
    log_model_signatures: bool = True,
    log_models: bool = True,
    log_datasets: bool = True,
    disable: bool = False,
    exclusive: bool = False,
    disable_for_unsupported_versions: bool = False,
    silent: bool = False,
    registered_model_name: str | None = None,
    extra_tags: dict[str, str] | None = None,
) -> None:
    """Log ``ImpactModel.fit`` and ``ImpactModel.fit_on_batch`` calls to MLflow.

    Each call logs to the active run (or a new one): params (``param_input``,
    ``param_output``, ``inference_method``, the SVI ``optimizer``, ``loss`` and
    ``guide``, non-array call arguments, ``num_samples``), the per-step metric
    ``elbo_loss`` (SVI), the kernel source as ``model.py``, the training data as a
    dataset input with context ``"train"``, and the fitted model as a
    ``LoggedModel`` named ``"model"``.

    Args:
        log_input_examples: Save the first rows of the training input as the
            model's input example.
        log_model_signatures: Infer the model signature by predicting on the
            first rows of the training input.
        log_models: Log the fitted model.
        log_datasets: Log the training data as a dataset input.
        disable: Turn aimz autologging off.
        exclusive: Do not log into runs started by the user.
        disable_for_unsupported_versions: Accepted for MLflow's autolog protocol.
        silent: Suppress MLflow event logs and warnings from autologging.
        registered_model_name: Also register each logged model under this name.
        extra_tags: Tags set on runs created by autologging.

    Example:
        >>> import tempfile
        >>> import mlflow, aimz_mlflow
        >>> from aimz_core.testing import linreg_data, make_model
        >>> mlflow.set_tracking_uri(f"sqlite:///{tempfile.mkdtemp()}/mlflow.db")
        >>> _ = mlflow.set_experiment("aimz-example")  # a fresh store: its own experiment
        >>> aimz_mlflow.autolog(log_models=False, log_datasets=False)
        >>> X, y = linreg_data()
        >>> with mlflow.start_run() as run:
        ...     _ = make_model().fit_on_batch(X, y, num_steps=20, num_samples=10, progress=False)
        >>> logged = mlflow.get_run(run.info.run_id).data
        >>> logged.params["inference_method"], "elbo_loss" in logged.metrics
        ('SVI', True)
        >>> aimz_mlflow.autolog(disable=True)
    """
    from aimz_core import ImpactModel

    def patched_fit(original: Callable, self: Any, *args: Any, **kwargs: Any) -> Any:
        return _fit_and_log(original, self, args, kwargs)

    for method in ("fit", "fit_on_batch"):
        safe_patch(
            FLAVOR_NAME,
            ImpactModel,
            method,
            patched_fit,
            manage_run=True,
            extra_tags=extra_tags,
        )


__all__ = ["autolog"]
