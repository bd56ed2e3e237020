"""Plan choice by measurement (``aimz_core.streaming._autotune``): a tunable call times
its candidates once, stores the winner in memory and on disk, and every formulation
gives the planner's draws to float tolerance; fixed batch sizes and the draw path are
never tuned."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading

import jax
import numpy as np
import pytest
from aimz_core._jit_cache import PersistentJit
from aimz_core.streaming import _autotune as at
from aimz_core.streaming.options import StreamOptions
from aimz_core.streaming.plan import plan_call, resolve_inputs
from aimz_core.testing import fitted_linreg

from ..aimz_testing import child_env

ROWS = 30


@pytest.fixture(scope="module")
def model():
    return fitted_linreg()


@pytest.fixture(scope="module")
def X():
    return np.random.default_rng(0).normal(size=(ROWS, 2)).astype(np.float32)


@pytest.fixture(autouse=True)
def tuning(monkeypatch, tmp_path):
    """Tune even a 30-row call; choices stored under the test's own cache dir."""
    monkeypatch.setenv("AIMZ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AIMZ_AUTOTUNE", "1")
    monkeypatch.setenv("AIMZ_AUTOTUNE_MIN_SLICES", "1")
    at.forget()
    yield
    at.forget()


def _predict(model, X, **kwargs):
    out = model.predict(
        X, rng_key=jax.random.key(3), return_datatree=False, progress=False, **kwargs
    )
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def reference(model, X):
    """The planner's program (tuning off)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIMZ_AUTOTUNE", "0")
        return _predict(model, X)


def _close(a, b):
    assert a.keys() == b.keys()
    for site in a:
        np.testing.assert_allclose(a[site], b[site], rtol=1e-5, atol=1e-5)


def test_winner_is_stored_and_reused(model, X, reference, tmp_path):
    first = _predict(model, X)
    assert at.COUNTS["tuned"] == 1 and at.COUNTS["timed"] > 0
    saved = list((tmp_path / "cache" / "autotune").glob("*.json"))
    assert len(saved) == 1
    stored = json.loads(saved[0].read_text())
    assert stored["mode"] in ("map", "vmap")
    assert set(stored["seconds_per_draw"]) >= {"map"}
    timed = at.COUNTS["timed"]
    second = _predict(model, X)
    assert at.COUNTS["timed"] == timed and at.COUNTS["tuned"] == 1
    assert at.COUNTS["reused"] == 1
    _close(first, reference)
    _close(second, reference)


@pytest.mark.parametrize("winner", [at.Formulation("map"), at.Formulation("vmap", 2)])
def test_every_formulation_matches_the_planner(model, X, reference, monkeypatch, winner):
    # Force the winner: the tuning call mixes candidates, the next runs the winner alone.
    monkeypatch.setattr(at, "choose", lambda times, default: winner)
    tuned = _predict(model, X)
    assert at.COUNTS["tuned"] == 1
    stored = _predict(model, X)
    assert at.COUNTS["reused"] == 1
    _close(tuned, reference)
    _close(stored, reference)


def test_switched_off(model, X, reference, monkeypatch, tmp_path):
    monkeypatch.setenv("AIMZ_AUTOTUNE", "0")
    out = _predict(model, X)
    assert at.COUNTS == {"timed": 0, "tuned": 0, "reused": 0, "loaded": 0}
    assert not (tmp_path / "cache" / "autotune").exists()
    for site in out:  # exactly the planner's program
        np.testing.assert_array_equal(out[site], reference[site])


def test_fixed_batch_size_is_never_tuned(model, X):
    out = _predict(model, X, batch_size=8)
    assert at.COUNTS == {"timed": 0, "tuned": 0, "reused": 0, "loaded": 0}
    assert out["y"].shape == (100, ROWS)
    opts = StreamOptions(
        kind="predict", caller="predict", batch_size=8, store="memory", return_datatree=False
    )
    plan = plan_call(opts, resolve_inputs(model, X, None, opts), model._runner(), param_input="X")
    assert not plan.auto_batch and plan.size == 8


def test_draw_path_is_bit_identical(model, X, monkeypatch):
    on = _predict(model, X, shard_axis="draw")
    assert at.COUNTS["tuned"] == 0 and at.COUNTS["timed"] == 0
    monkeypatch.setenv("AIMZ_AUTOTUNE", "0")
    off = _predict(model, X, shard_axis="draw")
    for site in on:
        np.testing.assert_array_equal(on[site], off[site])


def _predict_in_threads(model, X, count):
    """``count`` concurrent `_predict` calls; their results (every call must succeed)."""
    results, errors = [], []

    def work():
        try:
            results.append(_predict(model, X))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == count
    return results


def test_threads_tune_once(model, X, reference):
    results = _predict_in_threads(model, X, 4)
    assert at.COUNTS["tuned"] == 1  # the others ran the planner's program meanwhile
    for out in results:
        _close(out, reference)
    assert len(at._MEMORY) == 1 and not at._BUSY


CHILD = textwrap.dedent(
    """
    import json
    import jax, numpy as np
    from aimz_core.streaming import _autotune as at
    from aimz_core.testing import fitted_linreg

    X = np.random.default_rng(0).normal(size=(30, 2)).astype(np.float32)
    out = fitted_linreg().predict(
        X, rng_key=jax.random.key(3), return_datatree=False, progress=False
    )
    print(json.dumps({"counts": at.COUNTS, "mu": np.asarray(out["mu"]).tolist()}))
    """
)


def test_second_process_reads_the_choice(model, X, tmp_path, reference):
    _predict(model, X)  # tunes here, stores under tmp_path / "cache"
    assert at.COUNTS["tuned"] == 1
    assert list((tmp_path / "cache" / "autotune").glob("*.json"))
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = child_env(1, AIMZ_CACHE_DIR=str(tmp_path / "cache"), AIMZ_AUTOTUNE="1")
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    assert child["counts"] == {"timed": 0, "tuned": 0, "reused": 1, "loaded": 1}
    np.testing.assert_allclose(child["mu"], reference["mu"], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------- rows per launch
#: Rows that the planner cuts into 5 automatic batches on ``fitted_linreg``.
MANY_ROWS = 250_000


@pytest.fixture(scope="module")
def X_many():
    return np.random.default_rng(1).normal(size=(MANY_ROWS, 2)).astype(np.float32)


@pytest.fixture(scope="module")
def reference_many(model, X_many):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIMZ_AUTOTUNE", "0")
        return _predict(model, X_many)


@pytest.fixture
def rows_trial(monkeypatch):
    """Try rows candidates however short the call (their compile outweighs a test's
    whole call, which the real share refuses: see the next test)."""
    monkeypatch.setattr(at, "ROWS_TRIAL_SHARE", float("inf"))


def test_a_short_call_does_not_bet_a_compile_on_rows(model, X_many, reference_many):
    out = _predict(model, X_many)
    assert not any(u[0].endswith("x2") for u in at.LAST["units"])
    assert at.LAST["winner"] in at.LAST["candidates"]
    _close(out, reference_many)


def test_the_tuning_call_runs_its_remaining_batches_whole(
    model, X_many, reference_many, monkeypatch
):
    sliced = []
    real = at.TunedLaunch._sliced

    def recording(self, post, key, index, *rest):
        sliced.append(int(index))
        return real(self, post, key, index, *rest)

    monkeypatch.setattr(at.TunedLaunch, "_sliced", recording)
    # No rows trial (a share of 0 still allows one whose compile estimate is 0 s,
    # as when the programs come from a warm executable cache): draws only.
    monkeypatch.setattr(at.TunedLaunch, "_worth_compiling", lambda self, batches: False)
    out = _predict(model, X_many)
    # Batch 0 times every draw candidate in slices; batches 1-4 are one launch each
    # of the winner's whole-batch program (no slices, no concatenation).
    assert sliced == [0]
    assert at.LAST["winner"] in at.LAST["candidates"]
    _close(out, reference_many)


def _prefer_two_batches(times, default):
    """A `choose` that takes the candidate of 2 batches per launch whenever it is timed."""
    two = [f for f in times if f.batches == 2]
    return two[0] if two else default


def test_the_plan_has_enough_batches_for_rows_tuning(model, X_many):
    opts = StreamOptions(kind="predict", caller="predict", store="memory", return_datatree=False)
    inputs = resolve_inputs(model, X_many, None, opts)
    plan = plan_call(opts, inputs, model._runner(), param_input="X")
    assert plan.auto_batch and len(plan.ranges) == 5
    assert 2 * at.batch_output_bytes(plan) <= at.LAUNCH_OUTPUT_BYTES


def test_two_batches_per_launch_keep_the_planners_draws(
    model, X_many, reference_many, monkeypatch, tmp_path, rows_trial
):
    spans = []
    real_span = at.TunedLaunch.span

    def recording_span(self, i):
        count = real_span(self, i)
        spans.append((i, count))
        return count

    monkeypatch.setattr(at.TunedLaunch, "span", recording_span)
    monkeypatch.setattr(at, "choose", _prefer_two_batches)
    tuned = _predict(model, X_many)
    # Batch 0 times the draw candidates (10 slices of 10 draws: the blocks divide the
    # 100 draws), batches 1-2 run as one launch (the rows candidate), and 3-4 as the
    # winner's launch of two; the stored run below leaves batch 4 over.
    assert spans == [(0, 1), (1, 2), (3, 2)]
    labels = {u[0] for u in at.LAST["units"]}
    assert any(label.endswith("x2") for label in labels)
    stored = json.loads(next((tmp_path / "cache" / "autotune").glob("*.json")).read_text())
    assert stored["batches"] == 2
    _close(tuned, reference_many)
    spans.clear()
    again = _predict(model, X_many)  # the stored winner: whole launches of 2 batches
    assert at.COUNTS["reused"] == 1 and spans == [(0, 2), (2, 2), (4, 1)]
    _close(again, reference_many)


def test_two_batches_per_launch_write_whole_chunks(
    model, X_many, reference_many, monkeypatch, rows_trial
):
    pytest.importorskip("aimz_io")  # a Zarr store: absent from a core-only install
    monkeypatch.setattr(at, "choose", _prefer_two_batches)
    _predict(model, X_many)  # tunes and stores two batches per launch
    tree = model.predict(X_many, rng_key=jax.random.key(3), progress=False)
    assert at.COUNTS["reused"] == 1
    np.testing.assert_allclose(
        tree.posterior_predictive["y"].values[0], reference_many["y"], rtol=1e-5, atol=1e-5
    )


def test_a_slower_rows_candidate_is_not_kept(model, X_many, reference_many, tmp_path, rows_trial):
    real_choose = at.choose

    def never_two(times, default):
        return default if any(f.batches > 1 for f in times) else real_choose(times, default)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(at, "choose", never_two)
        out = _predict(model, X_many)
    stored = json.loads(next((tmp_path / "cache" / "autotune").glob("*.json")).read_text())
    assert stored["batches"] == 1
    assert any(u[0].endswith("x2") for u in at.LAST["units"])  # it was timed
    _close(out, reference_many)


@pytest.mark.parametrize(
    "payload",
    [
        {"mode": "map", "block": None, "batches": 0},
        {"mode": "map", "block": None, "batches": 64},
        {"mode": "vmap", "block": "4", "batches": 1},
        {"mode": "vmap", "block": True, "batches": 1},
        {"mode": "scan", "block": None, "batches": 1},
    ],
)
def test_a_foreign_stored_choice_is_ignored(tmp_path, payload):
    (tmp_path / "foreign.json").write_text(json.dumps({"version": at.VERSION, **payload}))
    assert at.lookup("foreign", directory=tmp_path) is None


def test_threads_share_one_rows_tuning(model, X_many, reference_many, monkeypatch, rows_trial):
    monkeypatch.setattr(at, "choose", _prefer_two_batches)
    results = _predict_in_threads(model, X_many, 3)
    assert at.COUNTS["tuned"] == 1 and not at._BUSY
    assert [f.batches for f in at._MEMORY.values()] == [2]
    for out in results:  # whoever ran which launches, the draws are the planner's
        _close(out, reference_many)
    _close(_predict(model, X_many), reference_many)  # the stored two-batch launches


def test_a_rows_candidate_that_does_not_trace_is_skipped(X_many, monkeypatch, rows_trial):
    """Operations that cannot be batched over several batches of rows fail at trace
    time: such a candidate is left out, not the call."""
    model = fitted_linreg()  # its own cache of programs: none built yet
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIMZ_AUTOTUNE", "0")
        reference = _predict(model, X_many)
    real_build = at.build

    def build(one, num_draws, length, formulation):
        if formulation.batches == 1:
            return real_build(one, num_draws, length, formulation)

        def untraceable(*args):
            raise NotImplementedError("no batching rule for this operation")

        return PersistentJit(jax.jit(untraceable), directory=None)

    monkeypatch.setattr(at, "build", build)
    monkeypatch.setattr(at, "choose", _prefer_two_batches)
    out = _predict(model, X_many)
    assert at.COUNTS["tuned"] == 1
    assert not any(u[0].endswith("x2") for u in at.LAST["units"])
    assert [f.batches for f in at._MEMORY.values()] == [1]
    _close(out, reference)
