"""What a failing or interrupted stream leaves behind, and when temp dirs go away."""

from __future__ import annotations

import errno
import gc
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
numpyro = pytest.importorskip("numpyro")
aimz_core = pytest.importorskip("aimz_core")

import numpyro.distributions as dist  # noqa: E402
from aimz_io import zarr_sink  # noqa: E402
from numpyro.infer import SVI, Trace_ELBO  # noqa: E402
from numpyro.infer.autoguide import AutoNormal  # noqa: E402

N_OBS, N_DRAWS = 64, 20


def linreg(X, y=None):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    with numpyro.plate("obs", X.shape[0]):
        numpyro.sample("y", dist.Normal(X @ w, 1.0), obs=y)


def make_model(seed: int = 0) -> aimz_core.ImpactModel:
    svi = SVI(linreg, AutoNormal(linreg), numpyro.optim.Adam(0.05), Trace_ELBO())
    model = aimz_core.ImpactModel(linreg, rng_key=jax.random.key(seed), inference=svi)
    w = np.random.default_rng(seed).normal(size=(N_DRAWS, 2)).astype(np.float32)
    return model.set_posterior_sample({"w": w})


X = np.random.default_rng(1).normal(size=(N_OBS, 2)).astype(np.float32)


def _failing_write(exc: BaseException, after: int):
    """A ZarrSink.write that raises ``exc`` on call number ``after + 1``."""
    original = zarr_sink.ZarrSink.write
    calls = {"n": 0}

    def write(self, site, start, block):
        calls["n"] += 1
        if calls["n"] > after:
            raise exc
        return original(self, site, start, block)

    return write, calls


@pytest.mark.parametrize(
    "exc",
    [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")],
    ids=["ctrl-c", "disk-full"],
)
def test_interrupted_stream_leaves_no_artifact(tmp_path, monkeypatch, exc):
    model = make_model()
    write, calls = _failing_write(exc, after=1)
    monkeypatch.setattr(zarr_sink.ZarrSink, "write", write)
    with pytest.raises(type(exc)):
        model.predict(X, batch_size=16, output_dir=tmp_path, progress=False)
    assert calls["n"] == 2  # the stream was in its second batch
    assert list(tmp_path.iterdir()) == []  # no call directory, complete or partial
    monkeypatch.undo()
    # The model is still usable and the next call writes a complete store.
    tree = model.predict(X, batch_size=16, output_dir=tmp_path, progress=False)
    assert tree["posterior_predictive"]["y"].shape == (1, N_DRAWS, N_OBS)
    assert len(list(tmp_path.iterdir())) == 1


def test_failing_loader_creates_nothing(tmp_path):
    model = make_model()

    def batches():
        yield {"X": X[:16]}
        raise RuntimeError("loader broke")

    with pytest.raises(RuntimeError, match="loader broke"):
        model.predict(batches(), output_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert model.temp_dir is None


def test_bad_arguments_create_nothing(tmp_path):
    model = make_model()
    target = tmp_path / "out"
    with pytest.raises(ValueError, match="batch_size"):
        model.predict(X, batch_size=0, output_dir=target, progress=False)
    with pytest.raises(ValueError, match="shard_axis"):
        model.predict(X, shard_axis="rows", output_dir=target, progress=False)
    with pytest.raises(TypeError, match="reserved"):
        model.predict(X, output_dir=target, progress=False, y=X[:, 0])
    assert not target.exists() and model.temp_dir is None


def test_temp_dir_removed_when_model_is_collected():
    model = make_model()
    model.predict(X, progress=False)
    temp = Path(model.temp_dir)
    assert temp.exists()
    del model
    gc.collect()
    assert not temp.exists()


def test_cleanup_models_reaches_every_live_model(tmp_path):
    models = [make_model(seed) for seed in range(2)]
    for model in models:
        model.predict(X, progress=False)
    temps = [Path(m.temp_dir) for m in models]
    explicit = models[0].predict(X, output_dir=tmp_path, progress=False)
    aimz_core.ImpactModel.cleanup_models()
    assert all(m.temp_dir is None for m in models)
    assert not any(t.exists() for t in temps)
    # Explicit output directories are never deleted.
    assert Path(explicit.attrs["output_dir"]).exists()
    assert explicit["posterior_predictive"]["y"].values.shape == (1, N_DRAWS, N_OBS)
