"""Log a fitted model to MLflow, load it back, predict through pyfunc, and serve it
================================================================================

The run goes to a throwaway local tracking store (SQLite in a temporary folder).
:func:`aimz.mlflow.log_model` stores the pickled model (posterior included) as an
MLflow ``LoggedModel``; :func:`aimz.mlflow.load_model` returns the
:class:`~aimz.ImpactModel`, and :func:`mlflow.pyfunc.load_model` the generic wrapper
whose ``predict`` returns plain arrays with ``params={"return_datatree": False}``.

Serving is not started here (it blocks); the script prints the command and a request.

.. note::

   This example is not executed when the documentation is built: it needs MLflow's
   tracking store and prints the ``mlflow models serve`` command to run by hand.
   Run it yourself to see its output.

Run: ``python examples/06_mlflow_log_and_serve.py``
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import aimz.mlflow
import jax
import jax.numpy as jnp
import mlflow
import numpy as np
import numpyro
import numpyro.distributions as dist
from aimz import ImpactModel
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal


def model(X, y=None):
    """Linear regression kernel."""
    w = numpyro.sample("w", dist.Normal().expand([X.shape[1]]).to_event(1))
    sigma = numpyro.sample("sigma", dist.Exponential())
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(jnp.dot(X, w), sigma), obs=y)


def main() -> None:
    rng = np.random.default_rng(6)
    X = rng.normal(size=(500, 2)).astype(np.float32)
    y = (X @ np.array([2.0, -1.0]) + rng.normal(size=500)).astype(np.float32)
    im = ImpactModel(
        model,
        rng_key=jax.random.key(6),
        inference=SVI(model, AutoNormal(model), numpyro.optim.Adam(0.05), Trace_ELBO()),
    )
    im.fit_on_batch(X, y, num_steps=300, num_samples=200, progress=False)

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        experiment = mlflow.create_experiment("examples", (Path(tmp) / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_param("num_steps", 300)
            mlflow.log_metric("final_loss", float(im.vi_result.losses[-1]))
            info = aimz.mlflow.log_model(
                im,
                name="model",
                pip_requirements=aimz.mlflow.get_default_pip_requirements(),
            )
        print(f"logged run {run.info.run_id}: model URI {info.model_uri}")

        loaded = aimz.mlflow.load_model(info.model_uri)
        same = np.array_equal(loaded.posterior["w"], im.posterior["w"])
        print(f"load_model -> {type(loaded).__name__}, posterior identical: {same}")

        pyfunc_model = mlflow.pyfunc.load_model(info.model_uri)
        out = pyfunc_model.predict({"X": X[:3]}, params={"return_datatree": False, "seed": 0})
        print(f"pyfunc predict: {{'y': array of shape {np.shape(out['y'])}}}")

        print("serve it (blocks; run in another terminal with the same tracking URI):")
        print(f"  mlflow models serve -m {info.model_uri} --env-manager local -p 5000")
        request = {"inputs": {"X": X[:2].tolist()}, "params": {"seed": 0}}
        print("  curl -s localhost:5000/invocations -H 'Content-Type: application/json' \\")
        print(f"       -d '{json.dumps(request)}'")
        mlflow.set_tracking_uri(None)


if __name__ == "__main__":
    main()
