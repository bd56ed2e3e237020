"""Stores left by a killed plain call: fingerprinted, listed, removed, adopted by resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import jax
import numpy as np
import pytest
from aimz_core.testing import fitted_linreg, linreg_data
from aimz_io.artifact import COMPLETE_ATTR, PLAN_ATTR, open_tree
from aimz_io.backend import list_incomplete, remove_incomplete

ROWS, BATCH, SEED = 20_000, 2_000, 7

# A plain (non-resume, no client) predict that stops after its third block, once
# the first chunks are on disk, and waits there to be killed.
_KILLED_CALL = textwrap.dedent(
    f"""
    import sys, time
    import jax
    import aimz_io.zarr_sink as zs
    from aimz_core.testing import fitted_linreg, linreg_data

    write, count = zs.ZarrSink.write, [0]

    def stalled_write(self, site, start, block):
        write(self, site, start, block)
        count[0] += 1
        if count[0] == 3:
            self._pool.join()
            print("READY", flush=True)
            time.sleep(120)

    zs.ZarrSink.write = stalled_write
    X, _ = linreg_data({ROWS})
    fitted_linreg().predict(X, rng_key=jax.random.key({SEED}), output_dir=sys.argv[1],
                            batch_size={BATCH}, progress=False)
    """
)


def _kill_plain_call(output_dir: Path) -> Path:
    """Run a plain predict into ``output_dir`` in a subprocess and SIGKILL it mid-stream."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CALL, str(output_dir)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "READY"
        (store,) = output_dir.iterdir()
        chunks = [p for p in store.rglob("*") if p.is_file() and "c" in p.parts]
        assert chunks, "no chunk written yet"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return store


def _predict(output_dir: Path, **kwargs):
    X, _ = linreg_data(ROWS)
    return fitted_linreg().predict(
        X,
        rng_key=jax.random.key(SEED),
        output_dir=output_dir,
        batch_size=BATCH,
        progress=False,
        **kwargs,
    )


def _attrs(store: Path) -> dict:
    return json.loads((store / "zarr.json").read_text())["attributes"]


def test_killed_plain_call_is_listed_removed_and_adopted(tmp_path: Path) -> None:
    killed = _kill_plain_call(tmp_path)
    attrs = _attrs(killed)
    assert COMPLETE_ATTR not in attrs
    assert isinstance(attrs[PLAN_ATTR], str) and len(attrs[PLAN_ATTR]) == 64
    with pytest.raises(ValueError, match="incomplete"):
        open_tree(killed)

    # A second, older incomplete copy (for removal) and a complete store of the
    # same call (never listed, never removed).
    copy = tmp_path / "20000101T000000000000Z_predict"
    shutil.copytree(killed, copy)
    complete = Path(_predict(tmp_path).attrs["artifact_path"])
    assert _attrs(complete)[PLAN_ATTR] == attrs[PLAN_ATTR]

    found = list_incomplete(tmp_path)
    assert [s.path for s in found] == [copy, killed]
    store = found[1]
    assert store.caller == "predict"
    assert store.fingerprint == attrs[PLAN_ATTR]
    assert store.size >= BATCH * 100 * 4  # at least one chunk of 100 draws
    assert store.created_at.year > 2000 and store.modified_at >= store.created_at

    # `resume=True` (no client) adopts the killed store and finishes it.
    resumed = _predict(tmp_path, resume=True)
    assert Path(resumed.attrs["artifact_path"]) == killed
    reread, expected = open_tree(killed), open_tree(complete)
    group = "posterior_predictive"
    for name in expected[group].data_vars:
        np.testing.assert_array_equal(reread[group][name].values, expected[group][name].values)

    # Only the copy is left; the default age limit protects it (recently written).
    assert [s.path for s in list_incomplete(tmp_path)] == [copy]
    assert remove_incomplete(tmp_path) == []
    assert remove_incomplete(tmp_path, older_than=timedelta(days=1)) == []
    removed = remove_incomplete(tmp_path, older_than=0)
    assert [s.path for s in removed] == [copy]
    assert not copy.exists() and killed.is_dir() and complete.is_dir()
    assert list_incomplete(tmp_path) == []


def test_list_and_remove_skip_links_and_foreign_dirs(tmp_path: Path) -> None:
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    # An incomplete store outside `output_dir`, reached through a link inside it.
    target = outside / "20240101T000000000000Z_predict"
    target.mkdir(parents=True)
    (target / "zarr.json").write_text(
        json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"num_chains": 1}})
    )
    (out / "20240101T000000000001Z_predict").symlink_to(target)
    (out / "notes").mkdir()  # not a call directory
    foreign = out / "20240101T000000000002Z_predict"  # a Zarr group not written by aimz
    foreign.mkdir()
    (foreign / "zarr.json").write_text(
        json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}})
    )
    empty = out / "20240101T000000000003Z_prior"  # killed before the metadata
    empty.mkdir()

    (store,) = list_incomplete(out)
    assert store.path == empty and store.caller == "prior" and store.fingerprint is None
    assert [s.path for s in remove_incomplete(out, older_than=0)] == [empty]
    assert target.is_dir() and foreign.is_dir() and (out / "notes").is_dir()
    with pytest.raises(ValueError, match="negative"):
        remove_incomplete(out, older_than=-1)
    assert list_incomplete(tmp_path / "missing") == []


def test_top_level_reexports() -> None:
    aimz = pytest.importorskip("aimz")  # the meta-package: absent from an io-only install
    assert aimz.list_incomplete is list_incomplete
    assert aimz.remove_incomplete is remove_incomplete
