"""Turn the collected figures into a Markdown report: machine, tables, targets."""

from __future__ import annotations

import datetime as dt
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from bench.modes import MODES

MiB = 2**20


def _autotune_line(state: dict[str, Any] | None) -> str:
    """How the engine's calls of a case were formulated (autotuning).

    Example:
        >>> _autotune_line({"counts": {"tuned": 0, "reused": 2}, "choices": ["vmap-2"]})
        'Autotuning: 0 tuned, 2 calls ran a stored choice (vmap-2).'
        >>> _autotune_line({"counts": {"tuned": 0, "reused": 0}, "choices": []})
        "Autotuning: none (the planner's program: too few batches to tune, no stored choice)."
    """
    if not state:
        return "Autotuning: not recorded."
    counts = state.get("counts", {})
    if not counts.get("tuned") and not counts.get("reused"):
        return (
            "Autotuning: none (the planner's program: too few batches to tune, no stored choice)."
        )
    return (
        f"Autotuning: {counts.get('tuned', 0)} tuned, {counts.get('reused', 0)} calls ran a "
        f"stored choice ({', '.join(state.get('choices', [])) or '-'})."
    )


def _ver(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


def machine() -> dict[str, Any]:
    import psutil

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import jax

    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": psutil.virtual_memory().total / 2**30,
        "load": os.getloadavg(),
        "python": platform.python_version(),
        "backend": f"{jax.default_backend()} x{jax.local_device_count()}",
        "versions": {
            n: _ver(n)
            for n in ("jax", "jaxlib", "numpyro", "numpy", "zarr", "xarray", "aimz-core", "aimz-io")
        },
    }


def _f(x: float | None, fmt: str = "{:.3f}") -> str:
    if x is None or x != x:  # None or NaN
        return "-"
    return fmt.format(x)


def status(ok: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "N/A"}[ok]


def targets(results: list[dict[str, Any]], first_calls: list[dict[str, Any]]) -> list[tuple]:
    """``(target, case, measured, status)`` rows computed from the figures."""
    rows: list[tuple] = []

    def predict_mode(res: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        for mode in ("zarr", "dict"):
            if mode in res["modes"] and "ratio_wall" in res["modes"][mode]:
                return mode, res["modes"][mode]
        return None

    for res in results:
        case = res["case"]
        name, target = case["name"], case["target"]
        pm = predict_mode(res)
        if target is not None:
            if case["workload"] == "mlp" and case["draws"] >= 100:
                label = "compute-bound >= 100 draws: predict wall <= 1.03x floor"
            elif case["workload"] == "mlp":
                label = "compute-bound 10 draws x 200K (overhead-bound): <= 1.07x floor"
            else:
                label = "I/O-bound linear: predict wall <= 1.15x floor"
            if pm is None:
                rows.append((label, name, "not run", status(None)))
            else:
                mode, m = pm
                rows.append(
                    (
                        label,
                        name,
                        f"{m['ratio_wall']:.3f}x ({mode}; fastest-run ratio "
                        f"{m.get('ratio_min_wall', float('nan')):.3f}x, CPU "
                        f"{m.get('ratio_cpu', float('nan')):.3f}x)",
                        status(m["ratio_wall"] <= target),
                    )
                )
        ind = res.get("independent_floor", {}).get("retime")
        if target is not None and ind:
            rows.append(
                (
                    f"issue 16: predict wall <= {target:.2f}x the independent floor",
                    name,
                    f"{ind['ratio']:.3f}x ({res['independent_floor']['engine_mode']} "
                    f"{ind['engine_s']:.3f}s vs {ind['formulation']} {ind['floor_s']:.3f}s)",
                    status(ind["ratio"] <= target),
                )
            )
        ob = res["modes"].get("on_batch")
        label = "predict_on_batch <= 1.1x floor, peak RSS <= output + 100 MiB"
        if ob and "ratio_wall" in ob:
            limit = case["out_bytes"] + 100 * MiB
            rows.append(
                (
                    label,
                    name,
                    f"{ob['ratio_wall']:.2f}x, {ob['rss'] / MiB:.0f} MiB "
                    f"(limit {limit / MiB:.0f} MiB)",
                    status(ob["ratio_wall"] <= 1.1 and ob["rss"] <= limit),
                )
            )
        elif "on_batch" in res["skipped"]:
            rows.append((label, name, f"not run: {res['skipped']['on_batch']}", "FAIL (est.)"))
        z = res["modes"].get("zarr")
        plan = res["plan"]
        if z:
            bound = (plan["depth"] + 1) * plan["batch_out_bytes"] + 32 * MiB
            rows.append(
                (
                    "streaming peak RSS <= (in flight + 1) x batch output + 32 MiB",
                    name,
                    f"{z['rss_max'] / MiB:.0f} MiB (bound {bound / MiB:.0f} MiB"
                    + (
                        f"; XLA temporaries {plan['batch_temp_bytes'] / MiB:.0f} MiB/batch)"
                        if plan.get("batch_temp_bytes") is not None
                        else ")"
                    ),
                    status(z["rss_max"] <= bound),
                )
            )
            q = res.get("zarr_quarter_rows")
            if q:
                rows.append(
                    (
                        "streaming peak RSS independent of n",
                        name,
                        f"{q['rss_max'] / MiB:.0f} MiB at {q['rows']} rows vs "
                        f"{z['rss_max'] / MiB:.0f} MiB at {case['rows']} rows",
                        status(abs(z["rss_max"] - q["rss_max"]) <= 16 * MiB),
                    )
                )

            s = z["stream"]
            if s:
                rows.append(
                    (
                        "<= 20 ms from the call to the first batch dispatched",
                        name,
                        f"{s['first_dispatch_ms']:.1f} ms",
                        status(s["first_dispatch_ms"] <= 20),
                    )
                )
                if "python_ms_per_batch" in s:
                    rows.append(
                        (
                            "<= 2 ms of Python per batch (main-thread CPU in the loop, "
                            "sink.write included, host copies excluded)",
                            name,
                            f"{s['python_ms_per_batch']:.2f} ms/batch (of which sink.write "
                            f"{s['write_cpu_ms_per_batch']:.2f}; host copy "
                            f"{s['copy_cpu_ms_per_batch']:.2f} ms/batch not counted; wall in "
                            f"the loop outside device waits {s['host_ms_per_batch']:.2f} "
                            f"ms/batch; {plan['n_batches']} batches)",
                            status(s["python_ms_per_batch"] <= 2),
                        )
                    )
                if "writes_after_last_batch" in s:
                    left = s["writes_after_last_batch"]
                    rows.append(
                        (
                            "at most one chunk write left after the last batch computes",
                            name,
                            f"{left:.0f} chunk write(s) running or queued when the last "
                            f"batch is ready; tail {s['tail_ms']:.1f} ms (commit "
                            f"{s['commit_ms']:.1f} ms, median chunk write "
                            f"{s['chunk_write_ms']:.1f} ms)",
                            status(left <= 1),
                        )
                    )
        pr = res["modes"].get("predictive")
        if pr and pm:
            mode, m = pm
            ok = m["wall"] < pr["wall"] and m["rss_max"] < pr["rss_max"]
            rows.append(
                (
                    "beat NumPyro Predictive on wall and memory",
                    name,
                    f"{mode}: {m['wall']:.2f}s / {m['rss_max'] / MiB:.0f} MiB vs "
                    f"Predictive {pr['wall']:.2f}s / {pr['rss_max'] / MiB:.0f} MiB",
                    status(ok),
                )
            )
    for fc in first_calls:
        if "error" in fc:
            rows.append(
                (
                    "first call in 2nd fresh process >= 3x faster",
                    fc.get("case", "?"),
                    "error",
                    "FAIL",
                )
            )
            continue
        r1, r2 = fc["runs"]
        detail = ""
        if "compile_s" in r1:
            detail = (
                f"; #1: trace {r1['trace_s']:.2f}s + lower {r1['lower_s']:.2f}s + compile "
                f"{r1['compile_s']:.2f}s; #2: trace {r2['trace_s']:.2f}s + lower "
                f"{r2['lower_s']:.2f}s + compile {r2['compile_s']:.2f}s, cache hits "
                f"{r2['cache_hits']}/{r2['cache_hits'] + r2['cache_misses']}; "
                f"import aimz {r1.get('import_aimz_s', float('nan')):.2f}s, all imports "
                f"{r1['import_s']:.2f}s + I/O imports {r1.get('io_import_s', 0):.2f}s "
                f"(not in the first call); imports + first call "
                f"{r1['import_s'] + r1.get('io_import_s', 0) + r1['first_s']:.1f}s -> "
                f"{r2['import_s'] + r2.get('io_import_s', 0) + r2['first_s']:.1f}s"
            )
        over1, over2 = r1["first_s"] - r1["second_s"], r2["first_s"] - r2["second_s"]
        speedup = over1 / over2 if over2 > 0 else float("inf")
        rows.append(
            (
                "first call in 2nd fresh process >= 3x faster (persistent caches): "
                "first-call overhead = first call - steady call in the same process",
                fc["case"],
                f"overhead {over1:.2f}s -> {over2:.2f}s ({speedup:.2f}x); first call "
                f"{r1['first_s']:.2f}s -> {r2['first_s']:.2f}s ({fc['speedup']:.2f}x), "
                f"steady call {r1['second_s']:.2f}s / {r2['second_s']:.2f}s; "
                f"executables from disk in #2: {r2.get('executables_from_disk', '?')}{detail}",
                status(speedup >= 3),
            )
        )
    return rows


def independent_floor_lines(res: dict[str, Any], case_name: str, engine: str) -> list[str]:
    """The independent floor's table for one case (see ``bench.floor``)."""
    from bench.floor import render as render_floor

    return render_floor(res, case_name, f"`{engine}`")


def render(
    meta: dict[str, Any],
    results: list[dict[str, Any]],
    first_calls: list[dict[str, Any]],
    args: dict[str, Any],
) -> str:
    m = meta["machine"]
    v = m["versions"]
    out = [
        "# aimz benchmark results",
        "",
        f"Generated by `python -m bench {args['argv']}` on {m['date']} "
        f"({'quick' if args['quick'] else 'full'} mode, {args['repeats']} repeat(s) per mode, "
        f"interleaved; medians). Total run time {meta['elapsed_s'] / 60:.1f} min.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; RAM {m['ram_gib']:.1f} GiB; "
        f"load average at start {m['load'][0]:.2f} (shared machine: timings are noisy, "
        "compare ratios taken in one process)",
        f"- JAX backend: {m['backend']}; Python {m['python']}",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "",
        "## Modes",
        "",
    ]
    out += [f"- `{k}`: {val}" for k, val in MODES.items()]
    out += [
        "",
        "Columns: wall and CPU seconds (median), Mcells/s = draws x rows per second (millions), "
        "dRSS = peak RSS increase during the call (sampled every 5 ms; median / max), written = "
        "bytes under the output directory, ratio = median wall (fastest wall, median CPU) "
        "over the floor's in the same "
        "process; dispatch = ms from the call to the first batch dispatched, Python/batch = "
        "main-thread CPU ms per batch in the streaming loop (host copies excluded, "
        "`sink.write` included), host/batch = wall ms per batch in the loop outside device "
        "waits, tail = ms from the last batch ready to the call's return.",
        "",
    ]
    workloads: dict[str, list[dict[str, Any]]] = {}
    for res in results:
        workloads.setdefault(res["case"]["workload"], []).append(res)
    for wl, items in workloads.items():
        out += [f"## Workload `{wl}`", ""]
        for res in items:
            c, p = res["case"], res["plan"]
            axis = "rows" if c["shard_axis"] == "obs" else "draws"
            temp = (
                f"{p['batch_temp_bytes'] / MiB:.0f} MiB XLA temporaries per batch (floor's "
                "`memory_analysis`), "
                if p.get("batch_temp_bytes") is not None
                else ""
            )
            out += [
                f"### {c['name']}: {c['draws']} draws x {c['rows']:,} rows "
                f"(shard_axis={c['shard_axis']!r}, output {c['out_bytes'] / MiB:.0f} MiB)",
                "",
                f"Engine plan: {p['batch_size']} {axis} per batch, {p['n_batches']} batch(es), "
                f"{p['batch_out_bytes'] / MiB:.1f} MiB output per batch, "
                f"{temp}"
                f"draw block {p.get('draw_block') or 'none (one vmap)'} (engine's cached "
                f"predict configs: {p.get('engine_draw_blocks', '?')}), "
                f"{100 * p['padded_frac']:.1f}% padded work, {p['depth']} batches in flight; "
                f"first call in this process {p['first_call_in_process_s']:.2f}s "
                f"(floor compile+1 batch {p['floor_compile_s']:.2f}s).",
                "",
                _autotune_line(res.get("autotune")),
                "",
                "| mode | wall s | CPU s | Mcells/s | dRSS MiB (med/max) | written MiB | "
                "ratio wall | ratio min wall | ratio CPU | dispatch ms | Python ms/batch | "
                "host ms/batch | tail ms |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for mode in MODES:
                if mode in res["modes"]:
                    s = res["modes"][mode]
                    st = s.get("stream", {})
                    out.append(
                        f"| {mode} | {s['wall']:.3f} | {s['cpu']:.3f} | "
                        f"{c['draws'] * c['rows'] / s['wall'] / 1e6:.1f} | "
                        f"{s['rss'] / MiB:.0f} / {s['rss_max'] / MiB:.0f} | "
                        f"{_f(s.get('bytes', 0) / MiB if 'bytes' in s else None, '{:.1f}')} | "
                        f"{_f(s.get('ratio_wall'))} | {_f(s.get('ratio_min_wall'))} | "
                        f"{_f(s.get('ratio_cpu'))} | "
                        f"{_f(st.get('first_dispatch_ms'), '{:.1f}')} | "
                        f"{_f(st.get('python_ms_per_batch'), '{:.2f}')} | "
                        f"{_f(st.get('host_ms_per_batch'), '{:.2f}')} | "
                        f"{_f(st.get('tail_ms'), '{:.1f}')} |"
                    )
                elif mode in res["skipped"]:
                    out.append(f"| {mode} | skipped: {res['skipped'][mode]} |" + " |" * 11)
            q = res.get("zarr_quarter_rows")
            if q:
                out += [
                    "",
                    f"Zarr at {q['rows']:,} rows (fewer rows, same batch size): "
                    f"wall {q['wall']:.3f}s, "
                    f"dRSS {q['rss'] / MiB:.0f} / {q['rss_max'] / MiB:.0f} MiB.",
                ]
            z = res["modes"].get("zarr", {})
            if z.get("stream"):
                s = z["stream"]
                out += [
                    "",
                    "Zarr fixed costs (median ms): "
                    + ", ".join(f"{k} {val:.2f}" for k, val in s.items())
                    + (
                        f"; one chunk write {1e3 * z['chunk_write_s']:.1f}"
                        if z.get("chunk_write_s") is not None
                        else ""
                    )
                    + (
                        f"; compression {c['out_bytes'] / z['bytes']:.2f}x"
                        if z.get("bytes")
                        else ""
                    ),
                ]
            if res.get("independent_floor"):
                engine = res["independent_floor"].get("engine_mode", "engine")
                out += ["", *independent_floor_lines(res["independent_floor"], c["name"], engine)]
            out.append("")
    if meta.get("latency"):
        from bench.latency import render as render_latency

        out += ["## Embedded latency (`python -m bench.latency`)", ""]
        out += [render_latency(meta["latency"]), ""]
    if first_calls:
        out += [
            "## First call in a fresh process",
            "",
            "Two processes one after the other, with one fresh cache directory "
            "(`AIMZ_CACHE_DIR`, empty before process #1, the same for #2): import time "
            "(`import aimz` alone, then everything: JAX, NumPyro, the workloads), first "
            "`predict` (compile included) split by JAX's monitoring events into tracing, "
            "lowering to MLIR and backend compilation (persistent-cache hits/misses and "
            "files in the cache after the process), second `predict` in the same process.",
            "",
            "I/O imports (`aimz_io`, xarray, pandas, zarr, dask's chunk manager; the first "
            "Zarr `predict` would import them lazily) are timed apart, before the first "
            "call.",
            "",
            "| case | mode | process | import aimz s | import all s | I/O imports s | "
            "first call s | "
            "trace s | lower s | compile s | cache hit/miss | cache files | second call s |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
        ]
        for fc in first_calls:
            if "error" in fc:
                out.append(f"| {fc.get('case', '?')} | error | | | | |")
                continue
            for i, r in enumerate(fc["runs"], 1):
                out.append(
                    f"| {fc['case']} ({fc['draws']}x{fc['rows']}) | {fc['mode']} | #{i} | "
                    f"{_f(r.get('import_aimz_s'), '{:.2f}')} | {r['import_s']:.2f} | "
                    f"{_f(r.get('io_import_s'), '{:.2f}')} | "
                    f"{r['first_s']:.2f} | {_f(r.get('trace_s'), '{:.2f}')} | "
                    f"{_f(r.get('lower_s'), '{:.2f}')} | {_f(r.get('compile_s'), '{:.2f}')} | "
                    f"{r.get('cache_hits', '-')}/{r.get('cache_misses', '-')} | "
                    f"{r.get('cache_files_after', '-')} | {r['second_s']:.3f} |"
                )
        out.append("")
    out += [
        "## Targets (issues 7 and 16)",
        "",
        "| target | case | measured | status |",
        "|---|---|---|---|",
    ]
    for row in targets(results, first_calls):
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    if args["quick"]:
        out += [
            "Quick mode runs scaled-down cases (named after the full-size case they "
            "stand for); the engine picks its batch size itself, so batch counts differ "
            "from the full run. Use the full run for the record.",
            "",
        ]
    return "\n".join(out)


def _shift_headings(text: str) -> str:
    return "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines())


def combine(runs: list[tuple[str, dict[str, Any]]], notes: str | None = None) -> str:
    """One report from several runs' JSON (e.g. quick and full), each section labelled."""
    out = ["# aimz benchmark results", ""]
    out.append(
        "This file holds "
        + ", ".join(
            f"**{label}** (`python -m bench {d.get('args', {}).get('argv', '?')}`, "
            f"{d['meta']['machine']['date']})"
            for label, d in runs
        )
        + ". Each part below is that run's own report; its target table is computed "
        "from its own figures (`report.targets`)."
    )
    out.append("")
    if notes:
        out += [notes.strip(), ""]
    for label, d in runs:
        args = d.get("args") or {"quick": False, "repeats": 1, "argv": "?"}
        text = render(d["meta"], d["results"], d["first_calls"], args)
        text = text.replace("# aimz benchmark results", f"# {label}", 1)
        out += [_shift_headings(text), ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.report LABEL=RUN.json ... [--notes NOTES.md] --out REPORT.md``.

    Writes the combined Markdown and, next to it, ``{label: run}`` as JSON.
    """
    import argparse
    import json
    from pathlib import Path

    p = argparse.ArgumentParser(prog="python -m bench.report")
    p.add_argument("runs", nargs="+", help="LABEL=PATH.json (a run's raw figures)")
    p.add_argument("--notes", help="Markdown inserted after the header (analysis)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    runs = []
    for item in a.runs:
        label, path = item.split("=", 1)
        runs.append((label, json.loads(Path(path).read_text())))
    notes = Path(a.notes).read_text() if a.notes else None
    out = Path(a.out)
    out.write_text(combine(runs, notes))
    out.with_suffix(".json").write_text(json.dumps(dict(runs), indent=1, default=str))


if __name__ == "__main__":
    main()
