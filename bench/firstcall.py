"""First-call latency in a fresh process: ``python -m bench.firstcall SPEC.json``.

Imports aimz (lazy: no JAX), then JAX/NumPyro and the bench workloads, builds the
model from a saved posterior, and times the first ``predict`` (compile included)
and a second one. JAX's monitoring events split the first call into tracing,
lowering and backend compilation (or persistent-cache retrieval), and the count of
batch functions loaded as serialized executables. Prints one JSON line. The cache
directory comes from the environment (``AIMZ_CACHE_DIR``).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections import defaultdict


def _count_files(path: str | None) -> int:
    if not path or not os.path.isdir(path):
        return 0
    return sum(len(files) for _, _, files in os.walk(path))


def main(spec_path: str) -> None:
    t0 = time.perf_counter()
    with open(spec_path) as f:
        spec = json.load(f)
    import aimz  # noqa: F401  (lazy: must not import JAX)

    t_aimz = time.perf_counter() - t0
    aimz_pulled_jax = "jax" in sys.modules
    import jax
    import numpy as np

    from bench.workloads import new_model

    t_import = time.perf_counter() - t0
    durations: dict[str, float] = defaultdict(float)
    events: dict[str, int] = defaultdict(int)
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, secs, **kw: durations.__setitem__(name, durations[name] + secs)
    )
    jax.monitoring.register_event_listener(
        lambda name, **kw: events.__setitem__(name, events[name] + 1)
    )
    data = np.load(spec["posterior"])
    post = {k: data[k] for k in data.files}
    X = np.load(spec["X"])
    model = new_model(spec["workload"])
    model.set_posterior_sample(post)
    kwargs = {"progress": False}
    if spec["shard_axis"] != "obs":
        kwargs["shard_axis"] = spec["shard_axis"]
    tmp = tempfile.mkdtemp(prefix="aimz_bench_first_")

    def call():
        if spec["mode"] == "zarr":
            return model.predict(X, output_dir=tmp, **kwargs)
        return model.predict(X, return_datatree=False, **kwargs)

    # The I/O stack the first predict imports lazily (aimz_io -> xarray, pandas, zarr;
    # xarray's chunk managers load dask), timed apart so the first call is the
    # engine's work plus compilation. Sources are recompiled on every import when
    # PYTHONDONTWRITEBYTECODE is set (as on the bench machine).
    t_io = time.perf_counter()
    if spec["mode"] == "zarr":
        import aimz_io.backend  # noqa: F401
        import xarray  # noqa: F401
        import zarr  # noqa: F401

        try:
            import dask.array  # noqa: F401
            from xarray.namedarray.parallelcompat import list_chunkmanagers

            list_chunkmanagers()
        except Exception:
            pass
    io_import = time.perf_counter() - t_io
    t1 = time.perf_counter()
    call()
    first = time.perf_counter() - t1
    first_durations = dict(durations)
    first_events = dict(events)
    t2 = time.perf_counter()
    call()
    second = time.perf_counter() - t2
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)

    def d(name: str) -> float:
        return first_durations.get(f"/jax/core/compile/{name}", 0.0)

    cache_dir = jax.config.jax_compilation_cache_dir
    print(
        json.dumps(
            {
                "import_aimz_s": t_aimz,
                "aimz_imported_jax": aimz_pulled_jax,
                "import_s": t_import,
                "io_import_s": io_import,
                "pydontwritebytecode": bool(os.environ.get("PYTHONDONTWRITEBYTECODE")),
                "first_s": first,
                "second_s": second,
                "trace_s": d("jaxpr_trace_duration"),
                "lower_s": d("jaxpr_to_mlir_module_duration"),
                "compile_s": d("backend_compile_duration"),
                "cache_retrieval_s": first_durations.get(
                    "/jax/compilation_cache/cache_retrieval_time_sec", 0.0
                ),
                "cache_hits": first_events.get("/jax/compilation_cache/cache_hits", 0),
                "cache_misses": first_events.get("/jax/compilation_cache/cache_misses", 0),
                "cache_dir": cache_dir,
                "executables_from_disk": sum(
                    entry.fn.sources.count("disk")
                    for entry in model._functions._entries.values()
                    if hasattr(entry.fn, "sources")
                ),
                "cache_files": _count_files(cache_dir),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
