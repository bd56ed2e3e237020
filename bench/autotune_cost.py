"""What autotuning costs a streamed call (issue 16, item 3): ``python -m bench.autotune_cost``.

Runs ``predict(X, output_dir=tmp)`` of the bench MLP (1000 draws x 50K rows by
default, automatic batch size) once per fresh process:

1. ``tunes``: a fresh ``AIMZ_CACHE_DIR``; the call times its candidates;
2. ``stored``: the cache dir of process 1; the call reads the stored choice;
3. ``off``: a fresh cache dir and ``AIMZ_AUTOTUNE=0`` (the planner's program).

Each child reports wall and CPU seconds and, for the tuning call,
``aimz_core.streaming._autotune.LAST``: every tuning slice (label, timed, seconds,
draws x batches) and ``overhead_s``, the time those slices took beyond what the
winner would have taken for the same draws (candidate compiles included). The
report also gives the compile estimate of each candidate (its first, untimed slice
minus its best timed rate), the share ``overhead_s / wall``, and what the tuning
spent in all (the tuning call compiles the whole-batch program of its winner for
the rest of the call, as an untuned call compiles the planner's). Results go to
``bench/results/<UTC>-autotune-cost.{md,json}``.

Options: ``--rows`` (default 50000), ``--draws`` (default 1000), ``--out PATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHILD = r"""
import json, os, sys, tempfile, time
sys.path.insert(0, {root!r})
from bench.workloads import fit_posterior, make_X, new_model
from aimz_core.streaming import _autotune as at

post = {{k: v[:{draws}] for k, v in fit_posterior("mlp", 1000, False).items()}}
model = new_model("mlp")
model.set_posterior_sample(post)
X = make_X("mlp", {rows})
out_dir = tempfile.mkdtemp()
wall, cpu = time.perf_counter(), time.process_time()
model.predict(X, output_dir=out_dir, progress=False)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(json.dumps({{"wall_s": wall, "cpu_s": cpu, "counts": at.COUNTS, "last": at.LAST}}))
"""


def _child(root: Path, rows: int, draws: int, cache: Path, autotune: bool) -> dict[str, Any]:
    env = dict(os.environ, AIMZ_CACHE_DIR=str(cache), AIMZ_AUTOTUNE="1" if autotune else "0")
    code = CHILD.format(root=str(root), rows=rows, draws=draws)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compile_estimates(last: dict[str, Any]) -> dict[str, float]:
    """Per candidate: its first (untimed) slice minus its best timed slice, scaled to
    the same draws: the compile time the tuning paid for it.

    Example:
        >>> units = [("a", False, 3.0, 10), ("a", True, 1.0, 10), ("a", True, 1.2, 10)]
        >>> compile_estimates({"units": units})
        {'a': 2.0}
    """
    best: dict[str, float] = {}
    first: dict[str, tuple[float, int]] = {}
    for label, timed, seconds, count in last.get("units", []):
        if timed:
            best[label] = min(best.get(label, float("inf")), seconds / count)
        elif label not in first:
            first[label] = (seconds, count)
    return {
        label: round(s - best[label] * n, 3) for label, (s, n) in first.items() if label in best
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parent.parent
    stamp = time.strftime("%Y%m%dT%H%MZ", time.gmtime())
    out = args.out or root / "bench" / "results" / f"{stamp}-autotune-cost.md"
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tuned_cache, off_cache = Path(tmp) / "tuned", Path(tmp) / "off"
        runs = {
            "tunes": _child(root, args.rows, args.draws, tuned_cache, True),
            "stored": _child(root, args.rows, args.draws, tuned_cache, True),
            "off": _child(root, args.rows, args.draws, off_cache, False),
        }
    last = runs["tunes"]["last"]
    overhead = float(last.get("overhead_s", 0.0))
    share = overhead / runs["tunes"]["wall_s"]
    compiles = compile_estimates(last)
    # The tuning call also compiles the whole-batch program its winner runs the rest
    # of the call with, as an untuned call compiles the planner's: overhead_s (the
    # slices' time beyond the winner's rate, their compiles included) is all extra.
    default = (last.get("candidates") or [None])[0]
    beyond = overhead
    lines = [
        f"# Autotuning cost on mlp-{args.draws}x{args.rows} (issue 16, item 3)",
        "",
        f"`python -m bench.autotune_cost`, {stamp}, loadavg {load:.2f} at start. One",
        "`predict(X, output_dir=tmp)` per fresh process (see the module docstring).",
        "",
        "| process | wall s | CPU s | counts |",
        "|---|---:|---:|---|",
    ]
    for name, run in runs.items():
        lines.append(
            f"| {name} | {run['wall_s']:.2f} | {run['cpu_s']:.1f} | "
            f"{json.dumps(run['counts'], sort_keys=True)} |"
        )
    lines += [
        "",
        f"- draw candidates: {', '.join(last.get('candidates', []))}; "
        f"winner: `{last.get('winner')}`",
        f"- tuning slices (label, timed, s, draws x batches): {last.get('units')}",
        f"- compile estimates (first slice minus its timed rate): {compiles}",
        f"- overhead_s: {overhead:.2f} s = {share:.1%} of the tuning call",
        f"- the tuning's cost (the planner's `{default}` and the winner compile their "
        f"whole-batch programs apart from it): **{beyond:.2f} s = "
        f"{beyond / runs['tunes']['wall_s']:.1%}** of the tuning call (target < 3%)",
        f"- walls across processes (noisy on this host): tunes - off = "
        f"{runs['tunes']['wall_s'] - runs['off']['wall_s']:+.2f} s, stored - off = "
        f"{runs['stored']['wall_s'] - runs['off']['wall_s']:+.2f} s",
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    payload = {
        "runs": runs,
        "compiles": compiles,
        "share": share,
        "tuning_cost_s": beyond,
        "loadavg": load,
    }
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
