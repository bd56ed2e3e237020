"""Peak RSS of a streaming ``predict`` to Zarr for an input and one 10x larger.

Run: ``uv run --group bench python -m bench.rss_flatness [ROWS ...]``. Each size runs
in a fresh process, once with glibc's defaults and once with
``MALLOC_MMAP_THRESHOLD_=1048576`` (freed batch buffers go back to the OS at once);
RSS is sampled every 5 ms and the increase over the pre-call RSS reported with the
bound "(batches in flight + 1) x one batch of output + 32 MiB" of the planned call.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, tempfile, threading, time
import jax, numpy as np, numpyro, numpyro.distributions as dist, psutil
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from aimz_core import ImpactModel
from aimz_core.streaming.options import StreamOptions
from aimz_core.streaming.plan import plan_call, resolve_inputs

def linear(X, y=None):
    w = numpyro.sample("w", dist.Normal().expand([X.shape[1]]).to_event(1))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(X @ w, 1.0), obs=y)

n = int(sys.argv[1])
model = ImpactModel(linear, jax.random.key(0), SVI(linear, AutoNormal(linear),
                    numpyro.optim.Adam(0.01), Trace_ELBO()))
model.set_posterior_sample({"w": np.random.default_rng(0).normal(size=(1000, 8)).astype("f4")})
X = np.random.default_rng(1).normal(size=(n, 8)).astype("f4")
opts = StreamOptions(kind="predict", caller="predict", progress=False, store="persistent")
plan = plan_call(opts, resolve_inputs(model, X, None, opts), model._runner(), param_input="X")
batch_mib = plan.size * 1000 * 4 / 2**20
with tempfile.TemporaryDirectory() as out:
    model.predict(X[:4096], output_dir=out, progress=False)  # compile outside the window
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()
    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)
    t = threading.Thread(target=sample); t.start()
    start = time.perf_counter()
    model.predict(X, output_dir=out, progress=False)
    wall = time.perf_counter() - start
    done.set(); t.join()
    print(json.dumps({"rows": n, "draws": 1000, "output_mib": n * 1000 * 4 / 2**20,
                      "batch_rows": plan.size, "batch_output_mib": batch_mib,
                      "bound_mib": 3 * batch_mib + 32,
                      "peak_rss_increase_mib": (peak[0] - base) / 2**20, "wall_s": wall}))
"""


#: Child environments: glibc as it comes, and a fixed mmap threshold.
ALLOCATORS = {
    "glibc defaults": {},
    "MALLOC_MMAP_THRESHOLD_=1048576": {"MALLOC_MMAP_THRESHOLD_": "1048576"},
}


def main() -> None:
    rows = [int(a) for a in sys.argv[1:]] or [50_000, 500_000]
    for n in rows:
        for name, extra in ALLOCATORS.items():
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(n)],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, **extra},
            )
            res = json.loads(out.stdout.strip().splitlines()[-1])
            res["allocator"] = name
            res["within_bound"] = res["peak_rss_increase_mib"] <= res["bound_mib"]
            print(json.dumps(res))


if __name__ == "__main__":
    main()
