"""Command line: ``python -m bench [--quick] [--workload NAME] [--out PATH]``.

The report goes to ``bench/results/<UTC timestamp>-<quick|full>.md`` by default.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from bench import floor as FL
from bench import modes as M
from bench.report import machine, render
from bench.runner import first_call, has_io, log, run_case
from bench.workloads import CASES, cases, fit_posterior

HERE = Path(__file__).resolve().parent
#: Cases of a plain ``python -m bench`` (full sizes): the issue-16 targets that fit in
#: 15 minutes on the 2-core bench machine; ``--workload all`` runs every case.
DEFAULT_FULL_CASES = "mlp-1000x10K,mlp-10x200K,linear-1000x500K"
#: Where reports go unless ``--out`` says otherwise (index: ``results/README.md``).
RESULTS_DIR = HERE / "results"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="scaled-down cases (< 3 min)")
    p.add_argument(
        "--workload",
        help="comma-separated workloads (mlp, linear, latent), case names ("
        + ", ".join(CASES)
        + ") or 'all'; default (full sizes): "
        + DEFAULT_FULL_CASES
        + " (under 15 minutes), every quick case with --quick",
    )
    p.add_argument(
        "--modes",
        default=",".join(M.MODES),
        help="comma-separated subset of: " + ", ".join(M.MODES),
    )
    p.add_argument("--repeats", type=int, help="timed repeats per mode (default 3 quick, 1 full)")
    p.add_argument(
        "--no-floor-sweep",
        action="store_true",
        help="skip the independent floor (bench/floor.py: sweep of simple formulations)",
    )
    p.add_argument(
        "--floor-budget",
        type=float,
        default=FL.DEFAULT_BUDGET,
        help="cells (draws x rows) each floor formulation is swept on (default 5e6)",
    )
    p.add_argument(
        "--floor-repeats",
        type=int,
        default=3,
        help="whole-case runs of the floor's winner, alternating with the engine (default 3)",
    )
    p.add_argument(
        "--no-latency",
        action="store_true",
        help="skip the embedded-latency run (python -m bench.latency)",
    )
    p.add_argument(
        "--mem-limit-gib",
        type=float,
        default=6.0,
        help="skip predict_on_batch / Predictive when their estimated peak exceeds it",
    )
    p.add_argument(
        "--first-call",
        choices=("none", "one", "all"),
        help="fresh-process first-call latency for no, the first or every workload "
        "(default: one with --quick, all otherwise)",
    )
    p.add_argument(
        "--no-first-call",
        action="store_const",
        const="none",
        dest="first_call",
        help="same as --first-call none",
    )
    p.add_argument(
        "--profile",
        metavar="MODE",
        help="also run MODE once per case under cProfile (bench/profiles/)",
    )
    p.add_argument(
        "--out",
        help="Markdown report path (default: bench/results/<UTC timestamp>-<quick|full>.md)",
    )
    return p.parse_args(argv)


def default_out(quick: bool) -> Path:
    """``bench/results/<UTC timestamp>-<quick|full>.md``, e.g. ``20261126T0136Z-full.md``."""
    stamp = time.strftime("%Y%m%dT%H%MZ", time.gmtime())
    return RESULTS_DIR / f"{stamp}-{'quick' if quick else 'full'}.md"


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    raw_argv = " ".join(sys.argv[1:] if argv is None else argv)
    warnings.filterwarnings("ignore", message=".*observation-level sites.*")
    t_start = time.perf_counter()
    meta = {"machine": machine()}
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if "floor" not in modes:
        modes.append("floor")
    unknown = set(modes) - set(M.MODES)
    if unknown:
        raise SystemExit(f"unknown modes: {sorted(unknown)}")
    repeats = args.repeats or (3 if args.quick else 1)
    workload = args.workload or (None if args.quick else DEFAULT_FULL_CASES)
    if workload == "all":
        workload = None
    selected = cases(args.quick, workload)
    if not selected:
        raise SystemExit(f"no case matches {args.workload!r}")
    io_ok = has_io()
    if not io_ok:
        log("aimz_io.backend.make_sink is not importable: Zarr and memory modes are skipped")
    mem_limit = int(args.mem_limit_gib * 2**30)
    posteriors: dict[str, dict] = {}
    results, first_calls = [], []
    seen_workloads: set[str] = set()
    try:
        for case in selected:
            if case.workload not in posteriors:
                t0 = time.perf_counter()
                max_draws = max(c.draws for c in selected if c.workload == case.workload)
                posteriors[case.workload] = fit_posterior(case.workload, max_draws, args.quick)
                log(f"posterior for {case.workload}: {time.perf_counter() - t0:.1f}s")
            results.append(
                run_case(
                    case,
                    posteriors[case.workload],
                    repeats=repeats,
                    quick=args.quick,
                    modes=modes,
                    mem_limit=mem_limit,
                    io_ok=io_ok,
                    profile=args.profile,
                    profile_dir=HERE / "profiles",
                    warm_io=len(results) == 0,
                    floor_sweep=not args.no_floor_sweep,
                    floor_budget=int(args.floor_budget),
                    floor_repeats=args.floor_repeats,
                )
            )
            first_mode = args.first_call or ("one" if args.quick else "all")
            wanted = first_mode == "all" or (first_mode == "one" and not seen_workloads)
            if wanted and case.workload not in seen_workloads:
                seen_workloads.add(case.workload)
                small = cases(True, case.name) or [case]
                log(
                    f"first call in fresh processes: {small[0].name} "
                    f"({small[0].draws}x{small[0].rows})"
                )
                fc = first_call(small[0], posteriors[case.workload], io_ok)
                log(f"  -> {json.dumps(fc)[:300]}")
                first_calls.append(fc)
        if not args.no_latency:
            from bench import latency

            log("embedded latency (bench.latency)")
            meta["latency"] = latency.run(calls=200)
            log("  " + latency.render(meta["latency"]).splitlines()[0])
    finally:
        M._OUT.cleanup()
    meta["elapsed_s"] = time.perf_counter() - t_start
    run_args = {"quick": args.quick, "repeats": repeats, "argv": raw_argv}
    text = render(meta, results, first_calls, run_args)
    out = Path(args.out) if args.out else default_out(args.quick)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(
        json.dumps(
            {"meta": meta, "args": run_args, "results": results, "first_calls": first_calls},
            indent=1,
            default=str,
        )
    )
    log(f"wrote {out} and {out.with_suffix('.json')} in {meta['elapsed_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
