"""The ``aimz demo`` job: a synthetic marketing campaign, end to end.

The data are **generated** (no download): :func:`make_marketing_data` simulates
customers of an online shop. Each has three standardized features
(``past_spend``, ``tenure``, ``engagement``); more engaged, higher-spending
customers were more likely to receive a marketing campaign (``t = 1``), so the
treatment is confounded by the features. Revenue over the next month is linear::

    P(t = 1)  = sigmoid(-0.3 + 0.4 * past_spend + 0.9 * engagement)
    y         = 1.0 + 0.5 * past_spend + 0.3 * tenure + 0.8 * engagement
                + 0.6 * t + Normal(0, 0.5)

so the true effect of the campaign is ``+0.6`` revenue units per customer who gets
it. The kernel :func:`marketing_model` models both the treatment assignment and the
revenue, and the demo asks "what if every customer had received the campaign?" with
a real ``numpyro.handlers.do`` intervention on the ``treatment`` site
(``intervention={"treatment": 1.0}``) against the baseline in which ``t`` is what
was observed. Treated customers change nothing, untreated ones gain ``0.6``, so the
true average effect is ``0.6 * share of untreated customers``
(:func:`true_average_effect`).

:func:`run_demo` fits the model with SVI, streams both scenarios to Zarr, estimates
and summarizes the effect, streams the pointwise log-likelihood of the revenue to
Zarr and computes PSIS-LOO from it (``aimz_io.loo``), plots the effect
against the true one (arviz-plots, or Matplotlib where ArviZ 1.x is not installed)
and logs the run and the model to a local MLflow store; every artifact goes under
one folder.

Example:
    >>> data = make_marketing_data(n_rows=10, seed=0)
    >>> data["X"].shape, data["t"].shape, data["y"].shape
    ((10, 3), (10,), (10,))
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np

from aimz._demo_plot import arviz_plots_missing, plot_effect

#: Names of the columns of ``X``, in order.
FEATURES = ("past_spend", "tenure", "engagement")
#: Parameters the data are simulated with (see the module docstring).
TRUE_PARAMS: dict[str, Any] = {
    "propensity_intercept": -0.3,
    "propensity_coef": (0.4, 0.0, 0.9),
    "intercept": 1.0,
    "beta": (0.5, 0.3, 0.8),
    "tau": 0.6,
    "sigma": 0.5,
}
#: Defaults of the demo run.
N_ROWS = 2_000
N_SCORING_ROWS = 500
NUM_STEPS = 400
NUM_SAMPLES = 500
LEARNING_RATE = 0.05
BATCH_SIZE = 500
EXPERIMENT = "aimz-demo"


def make_marketing_data(n_rows: int = N_ROWS, seed: int = 0) -> dict[str, np.ndarray]:
    """Simulate the campaign data set described in the module docstring.

    Args:
        n_rows: Number of customers.
        seed: Seed of the NumPy generator; the same seed gives the same data.

    Returns:
        ``{"X": (n_rows, 3) float32, "t": (n_rows,) float32 in {0, 1},
        "y": (n_rows,) float32}``.

    Example:
        >>> d = make_marketing_data(5, seed=1)
        >>> sorted(d), d["X"].dtype.name
        (['X', 't', 'y'], 'float32')
    """
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, len(FEATURES)))
    p = TRUE_PARAMS
    logits = p["propensity_intercept"] + X @ np.asarray(p["propensity_coef"])
    t = rng.binomial(1, 1.0 / (1.0 + np.exp(-logits)))
    mu = p["intercept"] + X @ np.asarray(p["beta"]) + p["tau"] * t
    y = mu + rng.normal(scale=p["sigma"], size=n_rows)
    return {
        "X": X.astype(np.float32),
        "t": t.astype(np.float32),
        "y": y.astype(np.float32),
    }


def true_average_effect(t: Any) -> float:
    """The true average effect of ``do(treatment=1)`` against the observed treatment.

    In the simulation the campaign adds ``tau`` to a customer's revenue, so forcing
    it on everyone changes nothing for those already treated and adds ``tau`` for
    the others: the average over customers is ``tau * (1 - mean(t))``. It is the
    value the demo's effect estimate targets.

    Args:
        t: Observed treatment (0/1) per customer.

    Returns:
        ``TRUE_PARAMS["tau"]`` times the share of untreated customers.

    Raises:
        ValueError: When ``t`` is empty or not all 0/1.

    Example:
        >>> true_average_effect(np.array([0.0, 1.0, 0.0, 1.0]))
        0.3
    """
    values = np.asarray(t, dtype=float).ravel()
    if values.size == 0 or not np.isin(values, (0.0, 1.0)).all():
        raise ValueError("`t` must be a non-empty array of 0/1 treatment indicators.")
    return float(TRUE_PARAMS["tau"] * (1.0 - values.mean()))


def marketing_model(X: Any, t: Any = None, y: Any = None) -> None:
    """NumPyro kernel: who gets the campaign (``treatment``) and what they spend (``y``).

    Args:
        X: Customer features, shape ``(n, k)``.
        t: Observed treatment (0/1) per customer; when ``None`` it is drawn from the
            fitted propensity model.
        y: Observed revenue per customer; ``None`` when predicting.

    Example:
        >>> import jax, numpyro
        >>> d = make_marketing_data(4)
        >>> with numpyro.handlers.seed(rng_seed=0):
        ...     marketing_model(d["X"], d["t"])
    """
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    n, k = X.shape
    a0 = numpyro.sample("propensity_intercept", dist.Normal(0.0, 1.0))
    a = numpyro.sample("propensity_coef", dist.Normal(0.0, 1.0).expand([k]).to_event(1))
    b0 = numpyro.sample("intercept", dist.Normal(0.0, 2.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([k]).to_event(1))
    tau = numpyro.sample("tau", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("customer", n):
        treatment = numpyro.sample("treatment", dist.Bernoulli(logits=a0 + X @ a), obs=t)
        mu = b0 + jnp.dot(X, beta) + tau * treatment
        numpyro.sample("y", dist.Normal(mu, sigma), obs=y)


@dataclass
class DemoResult:
    """Where everything the demo wrote lives, plus its headline numbers.

    Attributes:
        out_dir: The demo folder; every other path is inside it.
        data_csv: The generated training data (features, ``t``, ``y``).
        scoring_npy: New customers' features, for ``aimz predict``.
        scoring_npz: The same, with their planned treatment ``t``.
        baseline_zarr: Zarr store of the baseline posterior predictive draws.
        intervention_zarr: Zarr store of the ``do(treatment=1)`` draws.
        loglik_zarr: Zarr store of the pointwise log-likelihood of ``y`` on the
            training data (the input of PSIS-LOO).
        summary_csv: The effect summary table.
        plot_png: The effect plot: posterior of the average effect, its HDI, mean
            and the true effect.
        tracking_uri: MLflow tracking URI (SQLite file in ``out_dir``).
        artifact_root: MLflow artifact location of the experiment.
        run_id: MLflow run id.
        model_uri: URI of the logged model (``runs:/<run_id>/model``).
        logged_model_uri: The same model as ``models:/<model_id>``.
        model_dir: Local folder of the logged model's files (``MLmodel``,
            ``model.pkl``, ...); also a valid model URI.
        summary: The summary table as text.
        stats: Headline numbers (effect mean, sd, HDI, ``elpd_loo``, ...), all
            logged as MLflow metrics.
        loo: The PSIS-LOO result (``aimz_io.loo``'s return value).
        true_effect: The true average effect (:func:`true_average_effect`).
        plot_backend: ``"arviz"`` or ``"matplotlib"``: what drew the plot.
        timings: Seconds spent in each step.
        seconds: Wall time of the run.
    """

    out_dir: Path
    data_csv: Path
    scoring_npy: Path
    scoring_npz: Path
    baseline_zarr: Path
    intervention_zarr: Path
    loglik_zarr: Path
    summary_csv: Path
    plot_png: Path
    tracking_uri: str
    artifact_root: str
    run_id: str
    model_uri: str
    logged_model_uri: str
    model_dir: Path
    summary: str
    stats: dict[str, float] = field(default_factory=dict)
    loo: Any = None
    true_effect: float = float("nan")
    plot_backend: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


class _Background:
    """Run ``fn`` in a daemon thread; :meth:`result` re-runs it inline on failure.

    Used to overlap the slow MLflow import and SQLite schema creation with the fit.
    """

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._fn = fn
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn()
        except BaseException as err:  # re-raised (or retried) in the caller's thread
            self._error = err

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            return self._fn()
        return self._value


def _prepare_mlflow(tracking_uri: str, artifact_root: str) -> str:
    """Import MLflow, create the SQLite store and the experiment; return its id.

    Also imports the plotting and LOO stacks, so that the slow imports overlap the fit.
    """
    import mlflow

    import aimz.mlflow  # noqa: F401

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        experiment_id = client.create_experiment(EXPERIMENT, artifact_location=artifact_root)
    else:
        experiment_id = experiment.experiment_id
    with contextlib.suppress(Exception):
        import matplotlib

        matplotlib.use("Agg")
    for name in ("matplotlib.pyplot", "arviz_plots", "arviz_stats", "aimz_io._loo"):
        # Optional or broken: the step that needs it reports it.
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    return experiment_id


def run_demo(
    out_dir: str | Path = "aimz-demo",
    *,
    seed: int = 0,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> DemoResult:
    """Run the whole workflow and write every artifact under ``out_dir``.

    Steps: generate data, fit :func:`marketing_model` with SVI, stream the baseline
    and the ``do(treatment=1)`` scenario to Zarr, estimate and summarize the effect,
    stream the log-likelihood of ``y`` to Zarr and compute PSIS-LOO from it, plot the
    effect against the true one, and log params, metrics (effect and LOO), plot and
    model to MLflow (SQLite). The LOO line (``elpd_loo ± se``) and, where
    arviz-plots is missing, a note on the Matplotlib fallback go to ``echo``.

    Args:
        out_dir: The demo folder (created if missing; reruns add new outputs).
        seed: Seed of the data and of the model's JAX key.
        progress: Show progress bars.
        echo: Where the step messages go.

    Returns:
        A :class:`DemoResult` with every path.

    Example:
        The whole run takes a minute or so: ``aimz demo`` runs it and prints where
        everything went (``run_demo("aimz-demo").model_uri`` is the logged model).
        Its training data are :func:`make_marketing_data` at the default size:

        >>> data = make_marketing_data(N_ROWS, seed=0)
        >>> data["X"].shape, round(float(data["t"].mean()), 2)  # share treated
        ((2000, 3), 0.42)
    """
    start = time.perf_counter()
    # MLflow's INFO lines (schema creation, uv detection) and its pip-version warning
    # are noise here.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("mlflow.utils.environment").setLevel(logging.ERROR)
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {str(out)!r} exists and is not a directory.")
    out.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{out / 'mlflow.db'}"
    artifact_root = (out / "mlartifacts").as_uri()
    mlflow_ready = _Background(lambda: _prepare_mlflow(tracking_uri, artifact_root))

    from tqdm.auto import tqdm

    steps = tqdm(total=7, desc="aimz demo", unit="step", disable=not progress, file=sys.stderr)
    timings: dict[str, float] = {}
    clock = [time.perf_counter(), ""]

    def step(message: str) -> None:
        now = time.perf_counter()
        if clock[1]:
            timings[str(clock[1])] = now - float(clock[0])
        clock[:] = [now, message]
        if message:
            steps.set_postfix_str(message)
            if not progress:
                echo(f"- {message}")

    # 1. data -----------------------------------------------------------------
    step("generating data")
    data = make_marketing_data(N_ROWS, seed=seed)
    scoring = make_marketing_data(N_SCORING_ROWS, seed=seed + 1)
    data_csv = out / "data.csv"
    header = ",".join([*FEATURES, "t", "y"])
    table = np.column_stack([data["X"], data["t"], data["y"]])
    np.savetxt(data_csv, table, delimiter=",", header=header, comments="", fmt="%.6g")
    scoring_npy = out / "x.npy"
    np.save(scoring_npy, scoring["X"])
    scoring_npz = out / "inputs.npz"
    np.savez(scoring_npz, X=scoring["X"], t=scoring["t"])
    steps.update()

    # 2. fit ------------------------------------------------------------------
    step("fitting with SVI")
    import jax
    import numpyro
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal

    from aimz import ImpactModel

    svi = SVI(
        marketing_model,
        AutoNormal(marketing_model),
        numpyro.optim.Adam(LEARNING_RATE),
        Trace_ELBO(),
    )
    model = ImpactModel(marketing_model, rng_key=jax.random.key(seed), inference=svi)
    model.fit_on_batch(
        data["X"],
        data["y"],
        t=data["t"],
        num_steps=NUM_STEPS,
        num_samples=NUM_SAMPLES,
        progress=progress,
    )
    steps.update()

    # 3. scenarios --------------------------------------------------------------
    step("streaming scenarios to Zarr")
    outputs = out / "outputs"
    key = jax.random.key(seed + 1)  # one key for both scenarios: paired draws
    common = {
        "t": data["t"],
        "rng_key": key,
        "batch_size": BATCH_SIZE,
        "output_dir": outputs,
        "progress": progress,
    }
    baseline = model.predict(data["X"], **common)
    intervention = model.predict(data["X"], intervention={"treatment": 1.0}, **common)
    steps.update()

    # 4. effect -----------------------------------------------------------------
    step("estimating the effect")
    from aimz import format_summary, summarize_effect

    effect = model.estimate_effect(output_baseline=baseline, output_intervention=intervention)
    summary_table = summarize_effect(effect, hdi_prob=0.94)
    summary = format_summary(summary_table)
    summary_csv = out / "effect_summary.csv"
    summary_table.to_csv(summary_csv, index=False)
    y_effect = effect["posterior_predictive"]["y"]
    sample_dims = [d for d in y_effect.dims if d not in ("chain", "draw")]
    average = np.asarray(y_effect.mean(dim=sample_dims).values).reshape(-1)
    row = summary_table.iloc[0]
    stats = {
        "effect_mean": float(row["mean"]),
        "effect_sd": float(row["sd"]),
        "effect_hdi_low": float(row["hdi_low"]),
        "effect_hdi_high": float(row["hdi_high"]),
        "effect_prob_positive": float(row["prob_positive"]),
        "tau_mean": float(np.mean(model.posterior["tau"])),
        "final_elbo_loss": float(model.vi_result.losses[-1]),
        "share_untreated": float(1.0 - data["t"].mean()),
    }
    steps.update()

    # 5. PSIS-LOO ---------------------------------------------------------------
    step("computing PSIS-LOO")
    from aimz_io import loo

    loglik = model.log_likelihood(
        data["X"],
        data["y"],
        t=data["t"],
        rng_key=jax.random.key(seed + 2),
        batch_size=BATCH_SIZE,
        output_dir=outputs,
        progress=progress,
    )
    elpd = loo(loglik, var_name="y", write=True)  # pointwise results: <store>/loo/y
    bad_k = float((np.asarray(elpd.pareto_k) > elpd.good_k).mean())
    stats.update(
        {
            "elpd_loo": float(elpd.elpd),
            "elpd_loo_se": float(elpd.se),
            "p_loo": float(elpd.p),
            "pareto_k_bad_share": bad_k,
        }
    )
    echo(
        f"PSIS-LOO of y: elpd_loo {stats['elpd_loo']:.2f} ± {stats['elpd_loo_se']:.2f}"
        f" (p_loo {stats['p_loo']:.2f}; {bad_k:.1%} of Pareto k > {elpd.good_k:.2f})"
    )
    steps.update()

    # 6. plot -------------------------------------------------------------------
    step("plotting the effect")
    plot_png = out / "effect.png"
    true_effect = true_average_effect(data["t"])
    plot_backend = plot_effect(
        average,
        plot_png,
        true_effect=true_effect,
        hdi_prob=0.94,
        num_chains=int(effect.attrs.get("num_chains", 1)),
    )
    if plot_backend == "matplotlib":
        reason = arviz_plots_missing() or "arviz-plots failed (see the warning above)"
        echo(f"{reason}; drew the plot with matplotlib")
    steps.update()

    # 7. MLflow -----------------------------------------------------------------
    step("logging to MLflow")
    experiment_id = mlflow_ready.result()
    import mlflow

    from aimz.mlflow import get_default_pip_requirements, log_model

    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name="aimz-demo") as run:
        mlflow.log_params(
            {
                "seed": seed,
                "n_rows": N_ROWS,
                "num_steps": NUM_STEPS,
                "num_samples": NUM_SAMPLES,
                "learning_rate": LEARNING_RATE,
                "batch_size": BATCH_SIZE,
                "kernel": "aimz.demo.marketing_model",
                "intervention": "do(treatment=1)",
                "true_tau": TRUE_PARAMS["tau"],
                "true_average_effect": round(true_effect, 6),
                "loo_var_name": "y",
                "loo_pareto_k_threshold": round(float(elpd.good_k), 6),
            }
        )
        mlflow.log_metrics(stats)
        mlflow.log_artifact(str(plot_png))
        mlflow.log_artifact(str(summary_csv))
        # Explicit requirements skip MLflow's slow import-capturing inference.
        info = log_model(
            model,
            name="model",
            pip_requirements=get_default_pip_requirements(include_cloudpickle=True),
        )
        run_id = run.info.run_id
    location = mlflow.get_logged_model(info.model_id).artifact_location
    model_dir = Path(url2pathname(urlparse(location).path))
    step("")
    steps.update()
    steps.close()
    return DemoResult(
        out_dir=out,
        data_csv=data_csv,
        scoring_npy=scoring_npy,
        scoring_npz=scoring_npz,
        baseline_zarr=Path(baseline.attrs["artifact_path"]),
        intervention_zarr=Path(intervention.attrs["artifact_path"]),
        loglik_zarr=Path(loglik.attrs["artifact_path"]),
        summary_csv=summary_csv,
        plot_png=plot_png,
        tracking_uri=tracking_uri,
        artifact_root=artifact_root,
        run_id=run_id,
        model_uri=f"runs:/{run_id}/model",
        logged_model_uri=info.model_uri,
        model_dir=model_dir,
        summary=summary,
        stats=stats,
        loo=elpd,
        true_effect=true_effect,
        plot_backend=plot_backend,
        timings=timings,
        seconds=time.perf_counter() - start,
    )


__all__ = [
    "FEATURES",
    "TRUE_PARAMS",
    "DemoResult",
    "make_marketing_data",
    "marketing_model",
    "true_average_effect",
    "plot_effect",
    "run_demo",
]
