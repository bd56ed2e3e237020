"""Run the cases: warm up, interleave repeats of every mode, collect the figures."""

from __future__ import annotations

import cProfile
import dataclasses
import gc
import inspect
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from aimz_core.streaming import _autotune as autotune

from bench import floor as FL
from bench import modes as M
from bench.measure import EngineProbe, measure, median
from bench.workloads import Case, make_X, model_for, posterior_for

MiB = 2**20


def has_io() -> bool:
    try:
        import aimz_io.backend as backend

        return hasattr(backend, "make_sink")
    except ImportError:
        return False


def engine_depth() -> int:
    from aimz_core.engine import stream

    return int(inspect.signature(stream).parameters["depth"].default)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _summarise(calls: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "n": len(calls),
        "wall": median([c["wall"] for c in calls]),
        "cpu": median([c["cpu"] for c in calls]),
        "rss": median([c["rss"] for c in calls]),
        "rss_max": max(c["rss"] for c in calls),
        "walls": [c["wall"] for c in calls],
    }
    if any("bytes" in c for c in calls):
        out["bytes"] = median([c["bytes"] for c in calls if "bytes" in c])
    stream_keys = calls[0].get("stream", {}).keys()
    out["stream"] = {
        k: median([c["stream"][k] for c in calls if k in c.get("stream", {})]) for k in stream_keys
    }
    if any("chunk_write_s" in c for c in calls):
        out["chunk_write_s"] = median([c["chunk_write_s"] for c in calls if "chunk_write_s" in c])
    return out


def run_case(
    case: Case,
    base_post: dict[str, np.ndarray],
    *,
    repeats: int,
    quick: bool,
    modes: list[str],
    mem_limit: int,
    io_ok: bool,
    profile: str | None,
    profile_dir: Path | None,
    warm_io: bool = True,
    floor_sweep: bool = True,
    floor_budget: int = FL.DEFAULT_BUDGET,
    floor_repeats: int = 3,
) -> dict[str, Any]:
    log(f"case {case.name}: {case.draws} draws x {case.rows} rows")
    autotune.forget()  # per-case counts; choices stored on disk are read again
    post = posterior_for(case, base_post)
    model = model_for(case, post)
    X = make_X(case.workload, case.rows)
    key = jax.random.key(42)
    result: dict[str, Any] = {
        "case": case.__dict__ | {"out_bytes": case.out_bytes},
        "modes": {},
        "skipped": {},
    }

    with EngineProbe() as probe:
        # 1. first engine call in this process: compiles, and tells the batch size.
        first, out = measure(
            M.run_mode(
                "dict", model, X, shard_axis=case.shard_axis, floor=None, batch_size=None, key=key
            ),
            probe,
        )
        del out
        rec = first.record
        assert rec is not None, "the engine did not stream (probe saw no batch)"
        size = rec.chunk
        total = case.rows if case.shard_axis == "obs" else case.draws
        nb = rec.n_batches
        result["plan"] = {
            "batch_size": size,
            "n_batches": nb,
            "batch_out_bytes": rec.batch_out_bytes,
            "padded_frac": (nb * size - total) / total,
            "first_call_in_process_s": first.wall,
            "depth": engine_depth(),
        }
        log(
            f"  engine plan: batch {size} ({'rows' if case.shard_axis == 'obs' else 'draws'}), "
            f"{nb} batches, {rec.batch_out_bytes / MiB:.1f} MiB/batch; first call {first.wall:.2f}s"
        )

        host_post = M_post(model)
        block = M.floor_draw_block(model.kernel, host_post, X, size, case.shard_axis)
        eng_blocks = engine_draw_blocks(model)
        result["plan"]["draw_block"] = block
        result["plan"]["engine_draw_blocks"] = eng_blocks
        if eng_blocks and max(b or 0 for b in eng_blocks) != (block or 0):
            log(f"  WARNING: floor draw block {block} != engine's {eng_blocks}")
        floor = M.Floor(model.kernel, host_post, case.shard_axis, block)
        t0 = time.perf_counter()
        floor(X[: min(len(X), size)] if case.shard_axis == "obs" else X, size, key)
        result["plan"]["floor_compile_s"] = time.perf_counter() - t0
        result["plan"]["batch_temp_bytes"] = floor.temp_bytes(X, size)
        per_batch_draws = case.draws if case.shard_axis == "obs" else size
        per_batch_rows = size if case.shard_axis == "obs" else case.rows
        vmap_est = per_batch_draws * per_batch_rows * case.inter_per_cell
        floors = {"floor": floor}
        log(
            f"  floor: draw block {block} (engine configs: {eng_blocks}), "
            f"XLA temporaries {(result['plan']['batch_temp_bytes'] or 0) / MiB:.0f} MiB/batch"
        )

        active = []
        for mode in modes:
            if mode in ("zarr", "memory") and not io_ok:
                result["skipped"][mode] = "aimz_io.backend.make_sink not importable"
            elif mode == "on_batch" and case.on_batch_bytes() > mem_limit:
                result["skipped"][mode] = (
                    f"estimated {case.on_batch_bytes() / 2**30:.1f} GiB "
                    f"> limit {mem_limit / 2**30:.0f} GiB"
                )
            elif mode == "predictive" and case.predictive_bytes() > mem_limit:
                result["skipped"][mode] = (
                    f"estimated {case.predictive_bytes() / 2**30:.1f} GiB "
                    f"> limit {mem_limit / 2**30:.0f} GiB"
                )
            elif mode == "floor_vmap" and block is None:
                result["skipped"][mode] = "the engine vmaps all draws too (same as floor)"
            elif mode == "floor_vmap" and vmap_est > VMAP_FLOOR_LIMIT:
                result["skipped"][mode] = (
                    f"estimated vmap temporaries {vmap_est / 2**30:.1f} GiB/batch "
                    f"> {VMAP_FLOOR_LIMIT / 2**30:.0f} GiB"
                )
            else:
                if mode == "floor_vmap":
                    floors[mode] = M.Floor(model.kernel, host_post, case.shard_axis, None)
                active.append(mode)
        for mode, why in result["skipped"].items():
            log(f"  skip {mode}: {why}")

        runners = {
            m: M.run_mode(
                m,
                model,
                X,
                shard_axis=case.shard_axis,
                floor=floors.get(m),
                batch_size=size,
                key=key,
            )
            for m in active
        }
        # 2. warm-ups. The engine function is compiled by the first call above; Zarr and
        # memory sinks need their code paths (imports, codecs) warmed once per process:
        # on the obs path one batch of rows hits the same compiled function. Compiling
        # modes (on_batch, predictive) are warmed when there are repeats to take.
        for mode in active:
            if mode in ("dict", "floor"):
                continue
            if mode == "floor_vmap":
                warm = runners[mode]  # compiles
            elif mode in ("zarr", "memory"):
                if case.shard_axis == "obs":
                    warm = M.run_mode(
                        mode,
                        model,
                        X[:size],
                        shard_axis=case.shard_axis,
                        floor=None,
                        batch_size=None,
                        key=key,
                    )
                elif quick or repeats > 1 or warm_io:
                    warm = runners[mode]
                else:
                    continue
            elif quick or repeats > 1:
                warm = runners[mode]
            else:
                continue
            t0 = time.perf_counter()
            warm()
            gc.collect()
            M._OUT.collect()
            log(f"  warm {mode}: {time.perf_counter() - t0:.2f}s")
        # 3. interleaved repeats.
        calls: dict[str, list[dict[str, Any]]] = {m: [] for m in active}
        for r in range(repeats):
            order = active[r % len(active) :] + active[: r % len(active)]
            for mode in order:
                gc.collect()
                res, out = measure(runners[mode], probe if mode in M.ENGINE_MODES else None)
                entry: dict[str, Any] = {
                    "wall": res.wall,
                    "cpu": res.cpu,
                    "rss": res.rss_increase,
                    "stream": res.stream,
                }
                del out
                if mode == "zarr":
                    path = M._OUT.current
                    if r == 0 and path is not None:
                        try:
                            entry["chunk_write_s"] = M.chunk_write_seconds(path)
                        except Exception as err:  # keep going; report the gap
                            log(f"  chunk write timing failed: {err!r}")
                    entry["bytes"] = M._OUT.collect()
                calls[mode].append(entry)
                log(
                    f"  rep {r} {mode:10s} wall {res.wall:7.3f}s cpu {res.cpu:7.3f}s "
                    f"dRSS {res.rss_increase / MiB:8.1f} MiB"
                )
        for mode, cs in calls.items():
            result["modes"][mode] = _summarise(cs)
        fl = result["modes"].get("floor")
        if fl:
            for summ in result["modes"].values():
                summ["ratio_wall"] = summ["wall"] / fl["wall"]
                summ["ratio_min_wall"] = min(summ["walls"]) / min(fl["walls"])
                summ["ratio_cpu"] = summ["cpu"] / fl["cpu"] if fl["cpu"] else float("nan")

        # 3b. the independent floor: sweep the fixed formulations, re-time the winner
        # on the whole case alternating with the engine call (see bench/floor.py).
        if floor_sweep:
            result["independent_floor"] = independent_floor(
                case,
                model,
                host_post,
                X,
                key,
                runners,
                active,
                mem_limit=mem_limit,
                budget=floor_budget,
                repeats=floor_repeats,
            )

        # 4. streaming memory at a quarter of the rows (is the peak independent of n?).
        small_rows = max(case.rows // 4, 2 * size)
        if "zarr" in active and case.workload == "linear" and small_rows < case.rows:
            Xq = X[:small_rows]
            run_q = M.run_mode(
                "zarr", model, Xq, shard_axis=case.shard_axis, floor=None, batch_size=None, key=key
            )
            run_q()
            M._OUT.collect()
            qs = []
            for _ in range(max(1, min(repeats, 3))):
                gc.collect()
                res, out = measure(run_q, probe)
                del out
                M._OUT.collect()
                qs.append(
                    {
                        "wall": res.wall,
                        "cpu": res.cpu,
                        "rss": res.rss_increase,
                        "stream": res.stream,
                    }
                )
            result["zarr_quarter_rows"] = _summarise(qs) | {"rows": len(Xq)}

        if profile and profile in runners:
            result["profile"] = profile_call(runners[profile], case, profile, profile_dir)
    # Whether the engine's calls ran a tuned formulation (and which), or the planner's.
    result["autotune"] = {
        "counts": dict(autotune.COUNTS),
        "choices": sorted(f.label for f in autotune._MEMORY.values()),
        "last_winner": autotune.LAST.get("winner"),
    }
    log(f"  autotune: {result['autotune']}")
    del model, floor, floors, runners
    gc.collect()
    return result


def independent_floor(
    case: Case,
    model: Any,
    host_post: dict[str, np.ndarray],
    X: np.ndarray,
    key: jax.Array,
    runners: dict[str, Any],
    active: list[str],
    *,
    mem_limit: int,
    budget: int,
    repeats: int,
) -> dict[str, Any]:
    """Sweep of ``bench.floor``'s formulations and the engine's ratio to the best."""
    engine_mode = next((m for m in ("zarr", "dict") if m in active), None)
    row_sites = tuple(k for k, v in host_post.items() if v.ndim >= 2 and v.shape[1] == case.rows)
    out: dict[str, Any] = {"budget": budget, "loadavg": _loadavg(), "row_sites": row_sites}
    t0 = time.perf_counter()
    out["sweep"] = FL.sweep(
        model.kernel,
        host_post,
        X,
        key,
        inter_per_cell=case.inter_per_cell,
        mem_limit=mem_limit,
        budget=budget,
        row_sites=row_sites,
        log=log,
    )
    winner = FL.best(out["sweep"])
    if engine_mode is not None:
        out["engine_mode"] = engine_mode
        out["retime"] = FL.retime(
            model.kernel,
            host_post,
            X,
            key,
            winner,
            runners[engine_mode],
            repeats=repeats,
            row_sites=row_sites,
            after_engine=M._OUT.collect,
            log=log,
        )
        log(
            f"  independent floor {out['retime']['formulation']}: "
            f"{engine_mode} / floor = {out['retime']['ratio']:.3f}x"
        )
    out["elapsed_s"] = time.perf_counter() - t0
    return out


def _loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:  # pragma: no cover - not Linux
        return ""


#: Largest estimated vmap-over-draws temporaries for which ``floor_vmap`` runs.
VMAP_FLOOR_LIMIT = 2**30


def engine_draw_blocks(model: Any) -> list[int | None]:
    """Draw blocks of the engine's cached ``predict`` batch functions (introspection)."""
    try:
        entries = model._functions._entries
        return sorted(
            {c.draw_block for c in entries if getattr(c, "kind", None) == "predict"},
            key=lambda b: -1 if b is None else b,
        )
    except Exception:
        return []


def _count_files(path: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(path)) if path.is_dir() else 0


def M_post(model: Any) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in model.posterior.items()}


def profile_call(fn: Any, case: Case, mode: str, out_dir: Path | None) -> str:
    prof = cProfile.Profile()
    prof.enable()
    out = fn()
    prof.disable()
    del out
    M._OUT.collect()
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).strip_dirs()
    stats.sort_stats("cumulative").print_stats(25)
    stats.sort_stats("tottime").print_stats(15)
    text = buf.getvalue()
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"profile-{case.name}-{mode}.txt").write_text(text)
    return text


def first_call(case: Case, base_post: dict[str, np.ndarray], io_ok: bool) -> dict[str, Any]:
    """Two fresh processes, one after the other, sharing one empty cache home."""
    case = dataclasses.replace(case, rows=min(case.rows, 2000))  # compile latency, not size
    post = posterior_for(case, base_post)
    X = make_X(case.workload, case.rows)
    with tempfile.TemporaryDirectory(prefix="aimz_bench_fc_") as tmp:
        np.savez(Path(tmp) / "post.npz", **post)
        np.save(Path(tmp) / "X.npy", X)
        spec = {
            "workload": case.workload,
            "posterior": str(Path(tmp) / "post.npz"),
            "X": str(Path(tmp) / "X.npy"),
            "shard_axis": case.shard_axis,
            "mode": "zarr" if io_ok else "dict",
        }
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        env = dict(os.environ)
        # One fresh, empty cache for process #1, the same directory for process #2.
        cache = Path(tmp) / "cache"
        env["XDG_CACHE_HOME"] = str(cache / "xdg")
        env["AIMZ_CACHE_DIR"] = str(cache / "aimz-jax")
        for var in ("AIMZ_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR"):
            env.pop(var, None)
        root = Path(__file__).resolve().parent.parent
        runs = []
        for _ in range(2):
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "bench.firstcall", str(Path(tmp) / "spec.json")],
                cwd=root,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            total = time.perf_counter() - t0
            if proc.returncode != 0:
                return {"error": proc.stderr[-2000:]}
            line = proc.stdout.strip().splitlines()[-1]
            runs.append(
                json.loads(line)
                | {"process_s": total, "cache_files_after": _count_files(cache / "aimz-jax")}
            )
    return {
        "cache_dir_fresh": True,
        "mode": spec["mode"],
        "case": case.name,
        "draws": case.draws,
        "rows": case.rows,
        "runs": runs,
        "speedup": runs[0]["first_s"] / runs[1]["first_s"],
    }
