"""The benchmark workloads: kernels, data, posteriors and the cases (draws x rows)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

MLP_SIZES = (100, 128, 128, 128, 1)
LINEAR_FEATURES = 8
FIT_ROWS = 10_000


# ----------------------------------------------------------------------- kernels
def mlp_kernel(X, y=None):
    """Bayesian MLP 100 -> 128 -> 128 -> 128 -> 1 (tanh), sigmoid Bernoulli outcome."""
    h = X
    layers = list(itertools.pairwise(MLP_SIZES))
    for i, (fan_in, fan_out) in enumerate(layers, start=1):
        w = numpyro.sample(f"w{i}", dist.Normal(0.0, 1.0).expand([fan_in, fan_out]).to_event(2))
        b = numpyro.sample(f"b{i}", dist.Normal(0.0, 1.0).expand([fan_out]).to_event(1))
        h = jnp.matmul(h, w / math.sqrt(fan_in)) + b
        if i < len(layers):
            h = jnp.tanh(h)
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=h[..., 0]), obs=y)


def linear_kernel(X, y=None):
    """Linear regression with 8 features and Normal (float) outcomes."""
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[-1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(X @ w + b, sigma), obs=y)


def latent_kernel(X, y=None):
    """Linear model plus one latent effect per observation (``z``, obs-level)."""
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[-1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    tau = numpyro.sample("tau", dist.HalfNormal(1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("obs", X.shape[0]):
        z = numpyro.sample("z", dist.Normal(0.0, tau))
        numpyro.sample("y", dist.Normal(X @ w + b + z, sigma), obs=y)


# ------------------------------------------------------------------------ cases
@dataclass(frozen=True)
class Case:
    """One benchmark case: a workload at ``draws`` x ``rows``.

    Attributes:
        name: Case id (the full-size shape, also in quick mode).
        workload: ``mlp``, ``linear`` or ``latent``.
        draws, rows: Size actually run.
        shard_axis: Passed to every engine call.
        inter_per_cell: Bytes of intermediates per (draw, row) of a naive vmap over
            all draws (used to skip calls that would not fit in memory).
        target: Ratio to the floor that issue 7 asks of ``predict`` (or ``None``).
    """

    name: str
    workload: str
    draws: int
    rows: int
    shard_axis: str = "obs"
    inter_per_cell: int = 16
    target: float | None = None

    @property
    def cells(self) -> int:
        return self.draws * self.rows

    @property
    def out_bytes(self) -> int:
        return self.cells * 4

    def on_batch_bytes(self) -> int:
        """Estimated peak of ``predict_on_batch``: every row at once, draws vectorised in
        the engine's blocks (``planning.draw_block_size``: intermediates <= 32 MiB per
        block), so the output (and one copy of it) plus the posterior plus the block."""
        return 2 * self.out_bytes + self.posterior_bytes() + 64 * 2**20

    def predictive_bytes(self) -> int:
        """Estimated peak of NumPyro ``Predictive`` (``lax.map`` over draws)."""
        per_draw = self.rows * max(16, self.inter_per_cell)
        return 2 * self.out_bytes + per_draw + self.posterior_bytes()

    def posterior_bytes(self) -> int:
        return self.draws * self.rows * 4 if self.workload == "latent" else 0


MLP_INTER = 2 * 128 * 4  # two live 128-wide activations per (draw, row)

#: name -> (workload, full draws, full rows, quick draws, quick rows, shard axis, target)
CASES: dict[str, tuple] = {
    "mlp-1000x10K": ("mlp", 1000, 10_000, 100, 1_000, "obs", 1.03),
    "mlp-1000x50K": ("mlp", 1000, 50_000, None, None, "obs", 1.03),
    "mlp-100x200K": ("mlp", 100, 200_000, None, None, "obs", 1.03),
    "mlp-10x200K": ("mlp", 10, 200_000, 10, 10_000, "obs", 1.07),
    "linear-1000x500K": ("linear", 1000, 500_000, 1000, 20_000, "obs", 1.15),
    "latent-1000x100K": ("latent", 1000, 100_000, 1000, 10_000, "draw", None),
}


def cases(quick: bool, select: str | None = None) -> list[Case]:
    """The cases to run (quick mode runs a scaled-down subset)."""
    out = []
    wanted = {s.strip() for s in select.split(",")} if select else None
    for name, (wl, d, n, qd, qn, axis, target) in CASES.items():
        if wanted and name not in wanted and wl not in wanted:
            continue
        if quick:
            if qd is None:
                continue
            d, n = qd, qn
        inter = MLP_INTER if wl == "mlp" else 16
        out.append(Case(name, wl, d, n, axis, inter, target))
    return out


KERNELS = {"mlp": mlp_kernel, "linear": linear_kernel, "latent": latent_kernel}


# ------------------------------------------------------------------- data & fit
def make_X(workload: str, rows: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    features = MLP_SIZES[0] if workload == "mlp" else LINEAR_FEATURES
    return rng.standard_normal((rows, features), dtype=np.float32)


def _truth_y(workload: str, X: np.ndarray, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if workload == "mlp":
        h = X
        for fan_in, fan_out in itertools.pairwise(MLP_SIZES):
            h = h @ (rng.standard_normal((fan_in, fan_out), dtype=np.float32) / fan_in**0.5)
            if fan_out > 1:
                h = np.tanh(h)
        p = 1 / (1 + np.exp(-3 * h[:, 0]))
        return (rng.random(len(X)) < p).astype(np.int32)
    w = rng.standard_normal(X.shape[1]).astype(np.float32)
    return (X @ w + 0.5 + rng.standard_normal(len(X)).astype(np.float32)).astype(np.float32)


def new_model(workload: str, seed: int = 0) -> Any:
    from aimz_core import ImpactModel

    kernel = KERNELS[workload]
    guide = AutoNormal(kernel, init_scale=0.01)
    svi = SVI(kernel, guide, numpyro.optim.Adam(1e-2), Trace_ELBO())
    return ImpactModel(kernel, rng_key=jax.random.key(seed), inference=svi)


CACHE_DIR = Path(__file__).resolve().parent / ".cache"
#: Bump when a kernel, the data or the fit changes (invalidates cached posteriors).
FIT_VERSION = 1


def fit_posterior(workload: str, draws: int, quick: bool) -> dict[str, np.ndarray]:
    """A posterior of ``draws`` draws for ``workload`` (host arrays), cached on disk.

    ``mlp`` and ``linear`` are SVI-fitted briefly on 10,000 rows (fitting is not
    what is measured; ``mlp``: minibatches of 500, 2 epochs quick / 15 full);
    ``latent`` gets a synthetic posterior via ``set_posterior_sample`` (its ``z``
    is drawn per case, see :func:`posterior_for`). Fitted posteriors are kept in
    ``bench/.cache/`` so reruns skip the fit.
    """
    path = (
        CACHE_DIR
        / f"posterior-{workload}-{draws}-{'quick' if quick else 'full'}-v{FIT_VERSION}.npz"
    )
    if path.exists():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    post = _fit_posterior(workload, draws, quick)
    if workload != "latent":
        CACHE_DIR.mkdir(exist_ok=True)
        np.savez(path, **post)
    return post


def _fit_posterior(workload: str, draws: int, quick: bool) -> dict[str, np.ndarray]:
    if workload == "latent":
        rng = np.random.default_rng(2)
        return {
            "w": rng.normal(0, 0.1, (draws, LINEAR_FEATURES)).astype(np.float32) + 1.0,
            "b": rng.normal(0.5, 0.05, draws).astype(np.float32),
            "tau": np.abs(rng.normal(0.3, 0.02, draws)).astype(np.float32),
            "sigma": np.abs(rng.normal(1.0, 0.02, draws)).astype(np.float32),
        }
    X = make_X(workload, FIT_ROWS, seed=10)
    y = _truth_y(workload, X)
    model = new_model(workload)
    if workload == "mlp":
        model.fit(
            X, y, batch_size=500, epochs=2 if quick else 15, num_samples=draws, progress=False
        )
    else:
        model.fit_on_batch(X, y, num_steps=100 if quick else 300, num_samples=draws, progress=False)
    return {k: np.asarray(v) for k, v in model.posterior.items()}


def posterior_for(case: Case, base: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The first ``case.draws`` draws of ``base`` (plus ``z`` for the latent case)."""
    post = {k: np.ascontiguousarray(v[: case.draws]) for k, v in base.items()}
    if case.workload == "latent":
        rng = np.random.default_rng(3)
        post["z"] = (rng.standard_normal((case.draws, case.rows), dtype=np.float32) * 0.3).astype(
            np.float32
        )
    return post


def model_for(case: Case, post: dict[str, np.ndarray]) -> Any:
    model = new_model(case.workload)
    model.set_posterior_sample(post)
    return model
