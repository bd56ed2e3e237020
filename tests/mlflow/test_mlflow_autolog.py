"""Autologging of fit and fit_on_batch into a SQLite-backed tracking store."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aimz_mlflow
import numpy as np
import pytest
from aimz_core import ImpactModel
from aimz_mlflow_testing import NUM_SAMPLES, NUM_STEPS, make_model


@pytest.fixture
def autologging(tracking: str) -> Iterator[None]:
    originals = {m: ImpactModel.__dict__[m] for m in ("fit", "fit_on_batch")}
    aimz_mlflow.autolog()
    assert ImpactModel.__dict__["fit"] is not originals["fit"]
    yield
    aimz_mlflow.autolog(disable=True)
    assert {m: ImpactModel.__dict__[m] for m in originals} == originals


@pytest.fixture(scope="module")
def model() -> ImpactModel:
    return make_model(seed=1)


def check_run(
    run_id: str, model: ImpactModel, num_steps: int, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    import mlflow

    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    params = run.data.params
    assert params["param_input"] == "X"
    assert params["param_output"] == "y"
    assert params["inference_method"] == "SVI"
    assert params["optimizer"] == "Adam"
    assert params["num_samples"] == str(NUM_SAMPLES)
    assert "X" not in params and "rng_key" not in params

    history = client.get_metric_history(run_id, "elbo_loss")
    assert len(history) == num_steps
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(num_steps))
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert np.allclose(losses, np.asarray(model.vi_result.losses, dtype=float))

    (dataset_input,) = run.inputs.dataset_inputs
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "train"

    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert "model.py" in artifacts
    (logged,) = mlflow.search_logged_models(
        filter_string=f"source_run_id = '{run_id}'", output_format="list"
    )
    assert logged.name == "model"
    model_dir = Path(tmp_path_factory.mktemp("autologged"))
    loaded = aimz_mlflow.load_model(f"models:/{logged.model_id}", dst_path=str(model_dir))
    assert np.array_equal(loaded.posterior["w"], model.posterior["w"])
    # Environment inferred by MLflow (cached across fits): pinned aimz distributions.
    requirements = (model_dir / "requirements.txt").read_text().split()
    for name in ("aimz-core", "aimz-io", "aimz-mlflow", "jax", "numpyro", "cloudpickle"):
        assert f"{name}=={importlib.metadata.version(name)}" in requirements
    assert not any(r.startswith("-e") for r in requirements)
    return params


def test_autolog_fit_on_batch(
    autologging: None, model: ImpactModel, data: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import mlflow

    with mlflow.start_run() as run:
        model.fit_on_batch(
            data.X, data.y, num_steps=NUM_STEPS, num_samples=NUM_SAMPLES, progress=False
        )
    params = check_run(run.info.run_id, model, NUM_STEPS, tmp_path_factory)
    assert params["num_steps"] == str(NUM_STEPS)


def test_autolog_fit_starts_its_own_run(
    autologging: None, model: ImpactModel, data: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import mlflow

    assert mlflow.active_run() is None
    model.fit(data.X, data.y, batch_size=8, epochs=2, num_samples=NUM_SAMPLES, progress=False)
    run = mlflow.last_active_run()
    assert mlflow.active_run() is None  # the autolog run is ended again
    params = check_run(run.info.run_id, model, 2 * len(data.X) // 8, tmp_path_factory)
    assert (params["batch_size"], params["epochs"], params["shuffle"]) == ("8", "2", "True")
