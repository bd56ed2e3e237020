"""Distributed and resumable runs: Dask LocalCluster workers writing one Zarr store."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")
jax = pytest.importorskip("jax")

import zarr  # noqa: E402
from aimz_io import distributed as aimz_distributed  # noqa: E402
from aimz_io.artifact import REGIONS_ARRAY  # noqa: E402
from aimz_io.backend import open_tree  # noqa: E402

# Worker processes are spawned with this process's sys.path, so they import the
# kernels module by name (a test module is not importable under importlib mode).
sys.path.insert(0, str(Path(__file__).parent))
import aimz_dist_kernels as kernels  # noqa: E402

N_OBS = 200
BATCH = 32  # 7 regions on the obs path
KEY = 7


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            # A lost worker fails its task at once instead of retrying elsewhere, so
            # the kill test sees an interrupted run.
            scheduler_kwargs={"allowed_failures": 0},
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        # Workers import JAX and aimz while this process computes the references.
        warm = [
            client.submit(kernels.warm_up, pure=False, workers=[address])
            for address in client.scheduler_info()["workers"]
        ]
        yield client
        del warm


@pytest.fixture(scope="module")
def model():
    return kernels.fitted_model()


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(N_OBS, 2)).astype(np.float32)


def _predict(model, X, **kw):
    kw.setdefault("rng_key", jax.random.key(KEY))
    kw.setdefault("batch_size", BATCH)
    return model.predict(X, progress=False, **kw)


def _values(tree, group="posterior_predictive", site="y"):
    return np.asarray(tree[group][site].values)


def _only_store(base: Path) -> Path:
    (path,) = [p for p in base.iterdir() if p.is_dir()]
    return path


def test_draw_path_equals_single_process(client, model, X, tmp_path):
    ref = _predict(model, X, shard_axis="draw", batch_size=8, output_dir=tmp_path / "one")
    out = _predict(
        model, X, shard_axis="draw", batch_size=8, output_dir=tmp_path / "dist", client=client
    )
    np.testing.assert_array_equal(_values(out), _values(ref))
    assert out["posterior_predictive"]["y"].dims == ref["posterior_predictive"]["y"].dims
    assert "posterior" in out.children
    # The store reopens as a complete artifact, without the bookkeeping array.
    reopened = open_tree(out.attrs["artifact_path"])
    np.testing.assert_array_equal(_values(reopened), _values(ref))
    assert REGIONS_ARRAY not in reopened["posterior_predictive"].data_vars


def test_obs_path_dask_and_zarr_inputs(client, model, X, tmp_path):
    ref = _predict(model, X, output_dir=tmp_path / "one")
    lazy = da.from_array(X, chunks=50)
    out = _predict(model, lazy, output_dir=tmp_path / "dask", client=client)
    # obs path: batch i uses fold_in(key, i) -> same key and batch size, same draws.
    np.testing.assert_array_equal(_values(out), _values(ref))
    z = zarr.create_array(
        zarr.storage.LocalStore(tmp_path / "X.zarr"), shape=X.shape, dtype=X.dtype, chunks=(64, 2)
    )
    z[...] = X
    out_z = _predict(model, z, output_dir=tmp_path / "zarr", client=True)  # current client
    np.testing.assert_array_equal(_values(out_z), _values(ref))


def test_prior_and_loglik_match_single_process(client, model, X, tmp_path):
    kw = {"rng_key": jax.random.key(3), "batch_size": BATCH, "progress": False}
    ref = model.sample_prior_predictive(X, num_samples=10, output_dir=tmp_path / "a", **kw)
    out = model.sample_prior_predictive(
        X, num_samples=10, output_dir=tmp_path / "b", client=client, **kw
    )
    np.testing.assert_array_equal(
        _values(out, "prior_predictive"), _values(ref, "prior_predictive")
    )
    y = np.asarray(_values(ref, "prior_predictive")[0, 0])
    ll_ref = model.log_likelihood(X, y, batch_size=BATCH, progress=False, output_dir=tmp_path)
    ll = model.log_likelihood(
        X, y, batch_size=BATCH, progress=False, output_dir=tmp_path / "c", client=client
    )
    np.testing.assert_allclose(_values(ll, "log_likelihood"), _values(ll_ref, "log_likelihood"))


def test_failed_region_leaves_incomplete_store_then_resume(client, model, X, tmp_path):
    ref = _predict(model, X, output_dir=tmp_path / "ref")
    base = tmp_path / "run"
    client.run(kernels.set_fault_hook, kernels.fail_on_region(2))
    try:
        with pytest.raises(RuntimeError, match="resume=True") as info:
            _predict(model, X, output_dir=base, client=client)
        assert "injected failure" in str(info.value.__cause__)
    finally:
        client.run(kernels.set_fault_hook, None)
    store = _only_store(base)
    with pytest.raises(ValueError, match=r"incomplete.*6 of 7 regions.*resume=True"):
        open_tree(store)
    out = _predict(model, X, output_dir=base, client=client, resume=True)
    assert Path(out.attrs["artifact_path"]) == store.resolve()
    np.testing.assert_array_equal(_values(out), _values(ref))
    np.testing.assert_array_equal(_values(open_tree(store)), _values(ref))


@pytest.mark.slow
def test_killed_worker_then_resume_equals_uninterrupted(client, model, X, tmp_path):
    ref = _predict(model, X, shard_axis="draw", batch_size=8, output_dir=tmp_path / "ref")
    base = tmp_path / "run"
    # SIGKILL the worker that writes region 3's data, before it flags the region.
    client.run(kernels.set_fault_hook, kernels.kill_on_region(3))
    try:
        with pytest.raises(RuntimeError, match="incomplete"):
            _predict(model, X, shard_axis="draw", batch_size=8, output_dir=base, client=client)
    finally:
        client.run(kernels.set_fault_hook, None)
    store = _only_store(base)
    with pytest.raises(ValueError, match="incomplete"):
        open_tree(store)
    flags = np.asarray(zarr.open_array(zarr.storage.LocalStore(store), path=REGIONS_ARRAY)[...])
    assert flags[3] == 0
    out = _predict(
        model, X, shard_axis="draw", batch_size=8, output_dir=base, client=client, resume=True
    )
    np.testing.assert_array_equal(_values(out), _values(ref))


def test_resume_in_process_without_client(model, X, tmp_path, monkeypatch):
    ref = _predict(model, X, output_dir=tmp_path / "ref")
    base = tmp_path / "run"
    computed: list[int] = []

    def hook(i: int) -> None:
        computed.append(i)
        if i == 4:
            raise KeyboardInterrupt  # like a process stopped mid-run

    monkeypatch.setattr(aimz_distributed, "_FAULT_HOOK", hook)
    with pytest.raises(KeyboardInterrupt):
        _predict(model, X, output_dir=base, resume=True)
    assert computed == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="incomplete"):
        open_tree(_only_store(base))
    computed.clear()
    monkeypatch.setattr(aimz_distributed, "_FAULT_HOOK", computed.append)
    out = _predict(model, X, output_dir=base, resume=True)
    assert computed == [4, 5, 6]  # only the regions without a flag
    np.testing.assert_array_equal(_values(out), _values(ref))
    # A different key is a different plan: a new store, not a resumed one.
    _predict(model, X, output_dir=base, resume=True, rng_key=jax.random.key(KEY + 1))
    assert len([p for p in base.iterdir() if p.is_dir()]) == 2


def test_argument_validation(client, model, X, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="store='persistent'"):
        _predict(model, X, store="memory", client=client)
    with pytest.raises(ValueError, match="return_datatree=True"):
        _predict(model, X, return_datatree=False, client=client)
    with pytest.raises(ValueError, match="output_dir"):
        _predict(model, X, resume=True)
    with pytest.raises(ValueError, match="rng_key"):
        model.predict(X, output_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(TypeError, match="Client or True"):
        _predict(model, X, client="scheduler:8786")
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r'pip install "aimz-io\[dask\]"'):
        _predict(model, X, client=True)
    assert not list(tmp_path.iterdir())  # nothing was created
