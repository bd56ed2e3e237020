"""Chunked PSIS-LOO (``aimz_io.loo``) against the time to read the store once.

Run: ``uv run --group bench python -m bench.loo [--rows N --draws D --chains C]``.

Builds (once, cached in ``bench/.cache/``) a float32 log-likelihood store laid out
as aimz writes it: one Zarr v3 group named like a ``log_likelihood`` call directory,
array ``y`` of shape ``(chain * draw, rows)``, uncompressed, chunked by
``--chunk-rows`` rows (the engine's batch for 1000 draws of a small model is ~4K rows,
16 MiB) with every draw in each chunk. The values are Normal log-densities of
synthetic rows under synthetic posterior draws, written chunk by chunk.

Then, in one process, ``--repeats`` rounds of (a) reading the store once (a Dask sum
over the lazy tree from ``open_tree``) and (b) ``aimz_io.loo(path)``; wall time, CPU
time and peak RSS (sampled every 5 ms, over the RSS before the call) are recorded;
medians are reported with the ratio loo / read. A cProfile of ``psis_loo`` on a few
chunks splits the CPU time between its steps, and :mod:`bench.loo_floor` times the
steps any exact PSIS-LOO must take (in their fastest NumPy or XLA formulation) on a
chunk of the store: the wall time they imply on this machine's cores, against the
1.5x target. Results go to
``bench/results/loo-<UTC>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import shutil
import statistics
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.loo_floor import render as render_floor
from bench.loo_floor import step_floor
from bench.measure import RssSampler, trim_heap

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / ".cache"
RESULTS = ROOT / "results"
CALL_DIR = "20260101T000000000000Z_log_likelihood"


def build_store(rows: int, draws: int, chains: int, chunk_rows: int) -> Path:
    """The cached store (built chunk by chunk under a temporary name if missing)."""
    import zarr

    path = CACHE / f"loo-{chains}x{draws}x{rows}-c{chunk_rows}" / CALL_DIR
    if (path / "zarr.json").exists() and zarr.open_group(str(path), mode="r").attrs.get(
        "aimz_complete"
    ):
        return path
    tmp = path.parent / f".{CALL_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    samples = chains * draws
    group = zarr.open_group(
        str(tmp),
        mode="w",
        zarr_format=3,
        attributes={"num_chains": chains, "group": "log_likelihood", "caller": "log_likelihood"},
    )
    array = group.create_array(
        "y",
        shape=(samples, rows),
        dtype="float32",
        chunks=(samples, chunk_rows),
        compressors=(),
        fill_value=float("nan"),
        dimension_names=("draw", "obs"),
    )
    rng = np.random.default_rng(0)
    slope = rng.normal(1.0, 0.05, size=(samples, 1)).astype("float32")
    sigma = np.abs(rng.normal(1.0, 0.05, size=(samples, 1))).astype("float32")
    t0 = time.perf_counter()
    for start in range(0, rows, chunk_rows):
        n = min(chunk_rows, rows - start)
        x = rng.normal(size=(1, n)).astype("float32")
        y = x + rng.standard_t(5, size=(1, n)).astype("float32")
        z = (y - slope * x) / sigma
        array[:, start : start + n] = -0.5 * z * z - np.log(sigma) - 0.9189385
    group.attrs.update({"aimz_complete": True})
    tmp.rename(path)
    print(f"built {path} in {time.perf_counter() - t0:.1f} s")
    return path


def read_once(path: Path) -> float:
    from aimz_io import open_tree

    return float(open_tree(path)["log_likelihood"]["y"].data.sum().compute())


def run_loo(path: Path) -> object:
    from aimz_io import loo

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return loo(path)


def warm_up(path: Path) -> None:
    """Imports and first-use costs outside the measured calls."""
    import xarray as xr
    from aimz_io import loo, open_tree

    open_tree(path)["log_likelihood"]["y"][..., :10].sum().compute()
    values = np.random.default_rng(0).normal(size=(1, 100, 20)) - 1
    loo(xr.DataArray(values, dims=("chain", "draw", "obs")).chunk({"obs": 10}))
    with warnings.catch_warnings():  # compiles the PSIS block function for this store
        warnings.simplefilter("ignore")
        loo(open_tree(path)["log_likelihood"]["y"][..., :20])


def measure(fn, *args) -> dict[str, float]:
    trim_heap()
    with RssSampler() as sampler:
        c0, t0 = time.process_time(), time.perf_counter()
        fn(*args)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall_s": wall, "cpu_s": cpu, "rss_increase_mib": sampler.increase / 2**20}


def floor_on_store(path: Path, samples: int) -> dict:
    """:func:`bench.loo_floor.step_floor` on the store's first chunk."""
    import zarr
    from aimz_io._psis import tail_length

    array = zarr.open_array(str(path / "y"), mode="r")
    chunk = np.ascontiguousarray(array[:, : array.chunks[1]])
    return step_floor(chunk, tail_length(samples))


def profile_chunks(path: Path, chunks: int = 3) -> dict[str, float]:
    """CPU seconds of ``psis_loo``'s steps on the first ``chunks`` chunks (cProfile)."""
    import zarr
    from aimz_io._psis import psis_loo

    array = zarr.open_array(str(path / "y"), mode="r")
    step = array.chunks[1]
    blocks, read = [], 0.0
    for i in range(chunks):
        t0 = time.process_time()
        blocks.append(np.asarray(array[:, i * step : (i + 1) * step]))
        read += time.process_time() - t0
    from aimz_io import _psis_jax

    compiled = _psis_jax._compiled

    def xla_block(*args):  # a Python frame around the jitted call, for cProfile
        return compiled(*args).block_until_ready()

    psis_loo(blocks[0][:, :10])  # compiles outside the profile
    profiler = cProfile.Profile(time.process_time)
    _psis_jax._compiled = xla_block
    try:
        t0 = time.process_time()
        profiler.enable()
        for block in blocks:
            psis_loo(block)
        profiler.disable()
    finally:
        _psis_jax._compiled = compiled
    total = time.process_time() - t0
    stats = pstats.Stats(profiler).stats
    parts = {"read (zarr, per-chunk CPU)": read, "psis_loo total": total}
    wanted = {
        "xla_block": "compiled XLA block function (exps, GPD fit, quantiles)",
        "psis_block": "tile transposes + padding (psis_block itself)",
        "partition": "np.partition",
        "sort": "np.sort of the tail",
        "_exceedances": "tail exceedances (NumPy float32 exp)",
    }
    for (_, _, name), row in stats.items():
        for key, label in wanted.items():
            if name == key or name in (
                f"<method '{key}' of 'numpy.ndarray' objects>",
                f"<built-in method numpy.{key}>",
            ):
                cumulative = key in ("_exceedances", "xla_block")
                parts[label] = parts.get(label, 0.0) + (row[3] if cumulative else row[2])
    numpy_parts = sum(parts.get(label, 0.0) for label in wanted.values())
    parts["other (output copies, Python)"] = total - numpy_parts
    return {"chunks": chunks, "rows_per_chunk": step, **parts}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loo", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=1)
    parser.add_argument("--chunk-rows", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    path = build_store(args.rows, args.draws, args.chains, args.chunk_rows)
    load_start = os.getloadavg()
    warm_up(path)
    rounds = []
    for i in range(args.repeats):
        read = measure(read_once, path)
        loo_run = measure(run_loo, path)
        rounds.append({"read": read, "loo": loo_run})
        print(
            f"round {i + 1}: read {read['wall_s']:.2f} s, loo {loo_run['wall_s']:.2f} s "
            f"(CPU {loo_run['cpu_s']:.1f} s), loo dRSS {loo_run['rss_increase_mib']:.0f} MiB"
        )
    result = run_loo(path)
    med = {
        kind: {
            key: statistics.median(r[kind][key] for r in rounds)
            for key in ("wall_s", "cpu_s", "rss_increase_mib")
        }
        for kind in ("read", "loo")
    }
    ratio = med["loo"]["wall_s"] / med["read"]["wall_s"]
    profile = profile_chunks(path)
    floor = floor_on_store(path, args.draws * args.chains)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or RESULTS / f"loo-{stamp}.md"
    load = os.getloadavg()
    record = {
        "argv": vars(args) | {"out": str(out)},
        "store": str(path),
        "store_bytes": args.rows * args.draws * args.chains * 4,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_at_start": load_start,
            "loadavg_at_end": load,
        },
        "rounds": rounds,
        "median": med,
        "ratio_loo_over_read": ratio,
        "targets": {"ratio_max": 1.5, "rss_max_mib": 300},
        "loo": {
            "elpd": result.elpd,
            "se": result.se,
            "p": result.p,
            "warning": result.warning,
            "good_k": result.good_k,
        },
        "profile_cpu_s": profile,
        "step_floor": floor,
    }
    cli = sys.argv[1:] if argv is None else argv
    lines = [
        f"# aimz_io.loo benchmark ({stamp})",
        "",
        f"`python -m bench.loo {' '.join(cli)}`: {args.chains} chain(s) x "
        f"{args.draws} draws x {args.rows:,} rows float32 "
        f"({record['store_bytes'] / 2**30:.2f} GiB), chunks of {args.chunk_rows} rows; "
        f"{args.repeats} rounds, medians. Machine: {os.cpu_count()} CPUs, load average "
        f"{load_start[0]:.1f} at the start, {load[0]:.1f} at the end (shared machine: wall "
        "times are inflated when others run; CPU s is the steadier figure).",
        "",
        "| step | wall s | CPU s | CPU / wall (cores used) | peak dRSS MiB |",
        "|---|---|---|---|---|",
    ]
    for kind, label in (("read", "read once (Dask sum)"), ("loo", "aimz_io.loo")):
        m = med[kind]
        lines.append(
            f"| {label} | {m['wall_s']:.2f} | {m['cpu_s']:.1f} | "
            f"{m['cpu_s'] / m['wall_s']:.2f} | {m['rss_increase_mib']:.0f} |"
        )
    lines += [
        "",
        f"- loo / read (wall): **{ratio:.2f}x** (target <= 1.5x): "
        f"{'PASS' if ratio <= 1.5 else 'FAIL'}",
        f"- loo peak RSS increase: **{med['loo']['rss_increase_mib']:.0f} MiB** "
        f"(target < 300 MiB): {'PASS' if med['loo']['rss_increase_mib'] < 300 else 'FAIL'}",
        f"- elpd {result.elpd:.1f} (se {result.se:.1f}), p_loo {result.p:.1f}, "
        f"warning {result.warning}",
        "",
        f"CPU profile (cProfile, process-time clock) of `psis_loo` on {profile['chunks']} "
        f"chunks of {profile['rows_per_chunk']} rows (seconds):",
        "",
        "| part | CPU s |",
        "|---|---|",
        *(
            f"| {k} | {v:.3f} |"
            for k, v in profile.items()
            if k not in ("chunks", "rows_per_chunk")
        ),
        "",
        "Step floor (`bench/loo_floor.py`): the steps every exact PSIS-LOO of a chunk "
        "takes, each in its fastest formulation, timed on the store's first chunk "
        "(CPU ms, medians of 7):",
        "",
        *render_floor(
            floor,
            chunks=-(-args.rows // args.chunk_rows),
            read_cpu_s=med["read"]["cpu_s"],
            read_wall_s=med["read"]["wall_s"],
            cpus=os.cpu_count() or 1,
        ),
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps(record, indent=2, default=float))
    print("\n".join(lines))
    print(f"written {out}")


if __name__ == "__main__":
    main()
