"""aimz-mlflow: the MLflow flavor of aimz impact models.

Save, log and load a fitted :class:`~aimz_core.ImpactModel` as an MLflow model,
serve it through pyfunc (``mlflow models serve``) and autolog its fits. The full
``aimz`` distribution re-exports this module as ``aimz.mlflow``.

Example:
    Log a fitted model to a local tracking store and load it back (explicit
    ``pip_requirements`` skip MLflow's slower requirement inference):

    >>> import tempfile
    >>> import mlflow, aimz_mlflow
    >>> from aimz_core.testing import fitted_linreg, linreg_data
    >>> model = fitted_linreg(num_draws=10)
    >>> X, _ = linreg_data(5)
    >>> mlflow.set_tracking_uri(f"sqlite:///{tempfile.mkdtemp()}/mlflow.db")
    >>> _ = mlflow.set_experiment("aimz-example")  # a fresh store: its own experiment
    >>> with mlflow.start_run():
    ...     info = aimz_mlflow.log_model(
    ...         model, name="model", input_example={"X": X}, pip_requirements=["aimz-mlflow"]
    ...     )
    >>> loaded = aimz_mlflow.load_model(info.model_uri)
    >>> loaded.predict_on_batch(X, return_datatree=False)["y"].shape
    (10, 5)
    >>> mlflow.pyfunc.load_model(info.model_uri).predict({"X": X}, params={"seed": 0})["y"].shape
    (10, 5)
"""

from aimz_mlflow.autolog import autolog
from aimz_mlflow.environment import get_default_conda_env, get_default_pip_requirements
from aimz_mlflow.flavor import (
    FLAVOR_NAME,
    SERIALIZATION_FORMAT_CLOUDPICKLE,
    SUPPORTED_SERIALIZATION_FORMATS,
    load_model,
    log_model,
    save_model,
)
from aimz_mlflow.flavor import (
    _load_pyfunc as _load_pyfunc,
)
from aimz_mlflow.pyfunc import _AimzModelWrapper as _AimzModelWrapper

__all__ = [
    "FLAVOR_NAME",
    "SERIALIZATION_FORMAT_CLOUDPICKLE",
    "SUPPORTED_SERIALIZATION_FORMATS",
    "autolog",
    "get_default_conda_env",
    "get_default_pip_requirements",
    "load_model",
    "log_model",
    "save_model",
]
