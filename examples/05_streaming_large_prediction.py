"""Stream a prediction larger than you want in memory to a Zarr store on disk
==========================================================================

:meth:`aimz.ImpactModel.predict` computes the draws batch by batch (``batch_size``
rows at a time) with one jitted function and writes every finished block into a
preallocated Zarr v3 array under ``output_dir``. The result is a lazy DataTree: the
values stay on disk until they are read, and reductions run chunk by chunk.

Here: 100,000 rows x 200 draws (80 MB of float32) in batches of 20,000 rows.

Run: ``python examples/05_streaming_large_prediction.py``
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import xarray as xr
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
    rng = np.random.default_rng(5)
    X_train = rng.normal(size=(1_000, 4)).astype(np.float32)
    y_train = (X_train @ np.ones(4) + rng.normal(size=1_000)).astype(np.float32)
    im = ImpactModel(
        model,
        rng_key=jax.random.key(5),
        inference=SVI(model, AutoNormal(model), numpyro.optim.Adam(0.05), Trace_ELBO()),
    )
    im.fit_on_batch(X_train, y_train, num_steps=300, num_samples=200, progress=False)

    X_big = rng.normal(size=(100_000, 4)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        tree = im.predict(X_big, batch_size=20_000, output_dir=tmp, progress=False)
        seconds = time.perf_counter() - start
        path = Path(tree.attrs["artifact_path"])
        on_disk = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        y = tree["posterior_predictive"]["y"]
        print(f"streamed {y.shape} ({y.nbytes / 2**20:.0f} MiB) in {seconds:.1f} s")
        print(f"Zarr store: {path} ({on_disk / 2**20:.0f} MiB on disk)")
        # Lazy reduction, chunk by chunk; the store also opens without aimz.
        row_means = y.mean(("chain", "draw")).values
        print(f"mean prediction of the first rows: {np.round(row_means[:3], 2)}")
        plain = xr.open_zarr(path, consolidated=False)
        print(f"xarray.open_zarr sees: {dict(plain.sizes)}")


if __name__ == "__main__":
    main()
