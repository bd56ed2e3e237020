"""Persistent outputs on an S3-compatible object store (a local moto server)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")
jax = pytest.importorskip("jax")

from aimz_io import distributed as aimz_distributed  # noqa: E402
from aimz_io.backend import open_tree  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import aimz_dist_kernels as kernels  # noqa: E402

N_OBS, BATCH, KEY = 200, 32, 11


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """``storage_options`` of a fresh bucket ``aimz`` on a local S3-compatible server."""
    import s3fs

    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"},
    }
    boto3 = pytest.importorskip("boto3")
    boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket="aimz")
    s3fs.S3FileSystem.clear_instance_cache()
    yield options
    server.stop()


@pytest.fixture(scope="module")
def model():
    return kernels.fitted_model()


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return np.random.default_rng(2).normal(size=(N_OBS, 2)).astype(np.float32)


def _predict(model, X, **kw):
    return model.predict(X, rng_key=jax.random.key(KEY), batch_size=BATCH, progress=False, **kw)


def test_s3_output_interrupted_then_resumed(model, X, s3, tmp_path, monkeypatch):
    ref = _predict(model, X, output_dir=tmp_path)
    expected = ref["posterior_predictive"]["y"].values
    url = "s3://aimz/runs"

    def hook(i: int) -> None:
        if i == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(aimz_distributed, "_FAULT_HOOK", hook)
    with pytest.raises(KeyboardInterrupt):
        _predict(model, X, output_dir=url, storage_options=s3)
    monkeypatch.setattr(aimz_distributed, "_FAULT_HOOK", None)
    import s3fs

    (store,) = s3fs.S3FileSystem(**s3).ls("aimz/runs", refresh=True)
    with pytest.raises(ValueError, match=r"incomplete.*3 of 7 regions.*resume=True"):
        open_tree(f"s3://{store}", storage_options=s3)
    out = _predict(model, X, output_dir=url, storage_options=s3, resume=True)
    assert out.attrs["artifact_path"] == f"s3://{store}"
    np.testing.assert_array_equal(out["posterior_predictive"]["y"].values, expected)
    reopened = open_tree(out.attrs["artifact_path"], storage_options=s3)
    np.testing.assert_array_equal(reopened["posterior_predictive"]["y"].values, expected)


def test_s3_output_from_dask_workers(model, X, s3, tmp_path):
    distributed = pytest.importorskip("distributed")
    ref = _predict(model, X, output_dir=tmp_path)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        out = _predict(model, X, output_dir="s3://aimz/dask", storage_options=s3, client=client)
    np.testing.assert_array_equal(
        out["posterior_predictive"]["y"].values, ref["posterior_predictive"]["y"].values
    )


def test_storage_options_need_a_url(model, X, tmp_path):
    with pytest.raises(ValueError, match="storage_options"):
        _predict(model, X, output_dir=tmp_path, storage_options={"anon": True})
