"""Opt-in bfloat16 products against the float32 floor (issue 16, item 3, stretch).

``python -m bench.precision [--rows 10000] [--rounds 3]`` times, in one process and
alternating, the bench MLP (1000 draws, ``predict(X, return_datatree=False)``):

- ``engine f32``: the default (float32 products);
- ``engine bf16``: the same call under ``jax.default_matmul_precision("bfloat16")``
  (bfloat16 operands, float32 accumulation: :mod:`aimz_core._precision`);
- ``map@5000`` and ``block2@10000``: two formulations of the independent floor's fixed
  set (``bench.floor``), float32, the first being the ``lax.map`` floor the stretch
  target names.

It also draws 200 x 3,000 with one key under both settings and reports the share of
draws that differ (the products' rounding moves a few Bernoulli draws over their
threshold). Results go to ``bench/results/<UTC>-precision.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from bench import workloads as W
from bench.floor import Formulation, Runner


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def run(rows: int, rounds: int) -> dict[str, Any]:
    post = W.fit_posterior("mlp", 1000, quick=False)
    model = W.new_model("mlp")
    model.set_posterior_sample(post)
    X = W.make_X("mlp", rows)

    def engine() -> Any:
        return model.predict(X, return_datatree=False, progress=False)

    def engine_bf16() -> Any:
        with jax.default_matmul_precision("bfloat16"):
            return model.predict(X, return_datatree=False, progress=False)

    variants = {"engine f32": engine, "engine bf16": engine_bf16}
    for label, form in {
        "map@5000": Formulation("map", 5000),
        "block2@10000": Formulation("block", 10000, 2),
    }.items():
        runner = Runner(W.mlp_kernel, form, post)
        variants[label] = lambda r=runner: r(X, jax.random.key(0))
    for fn in variants.values():  # compile outside the timing
        fn()
    walls: dict[str, list[float]] = {k: [] for k in variants}
    cpus: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for label, fn in variants.items():
            cpu, wall = time.process_time(), time.perf_counter()
            fn()
            walls[label].append(time.perf_counter() - wall)
            cpus[label].append(time.process_time() - cpu)
    small = W.make_X("mlp", 3000)
    few = W.new_model("mlp")
    few.set_posterior_sample({k: v[:200] for k, v in post.items()})
    key = jax.random.key(7)
    a = few.predict(small, rng_key=key, return_datatree=False, progress=False)["y"]
    with jax.default_matmul_precision("bfloat16"):
        b = few.predict(small, rng_key=key, return_datatree=False, progress=False)["y"]
    return {
        "rows": rows,
        "rounds": rounds,
        "walls": walls,
        "cpus": cpus,
        "differing_draws": float(np.mean(np.asarray(a) != np.asarray(b))),
        "mean_f32": float(np.mean(a)),
        "mean_bf16": float(np.mean(b)),
        "cpu_flags": _bf16_flags(),
    }


def _bf16_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if "flags" in line), []
    )
    return sorted(f for f in flags if "bf16" in f or f.startswith("amx"))


def render(res: dict[str, Any], stamp: str) -> str:
    walls = {k: _median(v) for k, v in res["walls"].items()}
    cpus = {k: _median(v) for k, v in res["cpus"].items()}
    floor = walls["map@5000"]
    lines = [
        f"# bfloat16 products vs the float32 floor: mlp-1000x{res['rows']}",
        "",
        f"`python -m bench.precision`, {stamp}; {res['rounds']} alternating rounds in one "
        f"process; CPU bfloat16 features: {', '.join(res['cpu_flags']) or 'none'}.",
        "",
        "| variant | wall s (median) | CPU s | wall / `map`@5000 | rounds |",
        "|---|---:|---:|---:|---|",
    ]
    for label in res["walls"]:
        rounds = ", ".join(f"{w:.2f}" for w in res["walls"][label])
        lines.append(
            f"| {label} | {walls[label]:.2f} | {cpus[label]:.1f} | "
            f"{walls[label] / floor:.3f} | {rounds} |"
        )
    ratio = walls["engine bf16"] / floor
    lines += [
        "",
        f"Stretch target (at least 5% under the `lax.map` floor): **{ratio:.3f}x**, "
        f"{'PASS' if ratio <= 0.95 else 'FAIL'}.",
        f"Same key, 200 draws x 3,000 rows: {res['differing_draws']:.4%} of the draws "
        f"differ between float32 and bfloat16 products (mean {res['mean_f32']:.5f} vs "
        f"{res['mean_bf16']:.5f}).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    stamp = time.strftime("%Y%m%dT%H%MZ", time.gmtime())
    root = Path(__file__).resolve().parent
    out = args.out or root / "results" / f"{stamp}-precision.md"
    res = run(args.rows, args.rounds)
    text = render(res, stamp)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    print(text)


if __name__ == "__main__":
    main()
