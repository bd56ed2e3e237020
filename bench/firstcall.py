"""First-call latency in a fresh process: ``python -m bench.firstcall SPEC.json``.

Imports aimz, builds the model from a saved posterior, and times the first
``predict`` (compile included) and a second one; prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time


def main(spec_path: str) -> None:
    t0 = time.perf_counter()
    with open(spec_path) as f:
        spec = json.load(f)
    import jax  # noqa: F401
    import numpy as np

    from bench.workloads import new_model

    t_import = time.perf_counter() - t0
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

    t1 = time.perf_counter()
    call()
    first = time.perf_counter() - t1
    t2 = time.perf_counter()
    call()
    second = time.perf_counter() - t2
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"import_s": t_import, "first_s": first, "second_s": second}))


if __name__ == "__main__":
    main(sys.argv[1])
