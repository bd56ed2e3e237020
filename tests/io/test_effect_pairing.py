"""estimate_effect keeps draws paired and says when they are not (issue 14 items 13, 21)."""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest
from aimz_core.exceptions import OutputWarning
from aimz_core.testing import fitted_linreg, linreg_data
from aimz_io.backend import effect_tree, tree_from_arrays

X, Y = linreg_data(24)
KEY, OTHER = jax.random.key(3), jax.random.key(4)
STREAM = {"progress": False, "return_sites": "y"}


def key_data(key):
    return np.asarray(jax.random.key_data(key)).tolist()


@pytest.fixture(scope="module")
def model():
    """Fitted once; tests that change the posterior use their own."""
    return fitted_linreg(num_draws=20)


def test_groups_record_what_pairs_their_draws(model, tmp_path):
    memory = model.predict(X, rng_key=KEY, batch_size=8, store="memory", **STREAM)
    persistent = model.predict(X, rng_key=KEY, batch_size=8, output_dir=tmp_path, **STREAM)
    for tree in (memory, persistent):
        for node in (tree, tree["posterior_predictive"]):
            assert node.attrs["rng_key"] == key_data(KEY)
            assert node.attrs["shard_axis"] == "obs"
            assert node.attrs["batch_size"] == 8
            assert node.attrs["num_devices"] == jax.local_device_count()
            assert node.attrs["posterior_digest"] == memory.attrs["posterior_digest"]
    on_batch = model.predict_on_batch(X, rng_key=KEY)
    assert on_batch.attrs["posterior_digest"] == memory.attrs["posterior_digest"]


def test_memory_store_is_lazy_and_chunked_by_batch(model):
    pytest.importorskip("dask")
    tree = model.predict(X, rng_key=KEY, batch_size=8, store="memory", **STREAM)
    y = tree["posterior_predictive"]["y"]
    assert y.chunks == ((1,), (20,), (8, 8, 8))
    draws = model.predict(
        X, rng_key=KEY, batch_size=8, store="memory", shard_axis="draw", **STREAM
    )["posterior_predictive"]["y"]
    assert draws.chunks == ((1,), (8, 8, 4), (24,))
    np.testing.assert_array_equal(
        y.values,
        model.predict(X, rng_key=KEY, batch_size=8, return_datatree=False, **STREAM)["y"][None],
    )


def test_scenarios_run_here_are_paired(model):
    args = {"X": X, "batch_size": 8, "store": "memory", **STREAM}
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutputWarning)
        effect = model.estimate_effect(args_baseline=args, args_intervention=args)
    assert float(abs(effect["posterior_predictive"]["y"]).max()) == 0.0


def test_different_keys_or_layouts_warn(model):
    base = {"X": X, "batch_size": 8, "store": "memory", **STREAM}
    with pytest.warns(
        OutputWarning,
        match=r"^Baseline and intervention differ in 'rng_key'; their draws of 'y' in group "
        r"'posterior_predictive' are not paired\.",
    ) as record:
        model.estimate_effect(
            args_baseline={**base, "rng_key": KEY}, args_intervention={**base, "rng_key": OTHER}
        )
    assert record[0].filename == __file__  # points at the caller of estimate_effect
    with pytest.warns(OutputWarning, match=r"^Baseline and intervention differ in 'batch_size'"):
        model.estimate_effect(args_baseline=base, args_intervention={**base, "batch_size": 12})
    with pytest.warns(OutputWarning, match=r"^Baseline and intervention differ in 'shard_axis'"):
        model.estimate_effect(args_baseline=base, args_intervention={**base, "shard_axis": "draw"})
    # on the draw path the batch size does not pair draws: no warning
    draw = {**base, "shard_axis": "draw"}
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutputWarning)
        model.estimate_effect(args_baseline=draw, args_intervention={**draw, "batch_size": 12})


def test_on_batch_scenarios_record_their_key(model):
    args = {"X": X, "return_sites": "y"}
    effect = model.estimate_effect(args_baseline=args, args_intervention=args, on_batch=True)
    assert float(abs(effect["posterior_predictive"]["y"]).max()) == 0.0
    before = key_data(model.rng_key)
    with pytest.warns(OutputWarning, match=r"^Baseline and intervention differ in 'rng_key'"):
        model.estimate_effect(
            args_baseline={**args, "rng_key": KEY}, args_intervention=args, on_batch=True
        )
    assert key_data(model.rng_key) != before  # the keyless scenario drew its own key


def test_baseline_from_a_refit_posterior_warns():
    model = fitted_linreg(num_draws=20)
    baseline = model.predict_on_batch(X, rng_key=KEY, return_sites="y")
    refit = {k: np.asarray(v) + 0.5 for k, v in model.posterior.items()}
    model.set_posterior_sample(refit)
    with pytest.warns(
        OutputWarning, match=r"^Baseline and intervention have different posterior samples\."
    ):
        model.estimate_effect(
            baseline, args_intervention={"X": X, "rng_key": KEY, "return_sites": "y"}, on_batch=True
        )


def test_rejected_calls_keep_the_key(model, tmp_path):
    before = key_data(model.rng_key)
    loglik = tree_from_arrays(
        {"posterior": {"w": np.zeros((20, 2))}, "log_likelihood": {"y": np.zeros((20, 24))}}
    )
    with pytest.raises(
        ValueError,
        match=r"^Group 'posterior_predictive' not found in `dt_baseline`\. Available groups: "
        r"'posterior', 'log_likelihood'",
    ):
        model.estimate_effect(loglik, args_intervention={"X": X, "output_dir": tmp_path})
    predictions = model.predict_on_batch(X, rng_key=KEY, in_sample=False)
    with pytest.raises(
        ValueError,
        match=r"^Group 'posterior_predictive' not found in `dt_intervention`\. Available "
        r"groups: 'posterior', 'predictions'",
    ):
        model.estimate_effect(
            args_baseline={"X": X, "output_dir": tmp_path}, output_intervention=predictions
        )
    assert key_data(model.rng_key) == before
    assert list(tmp_path.iterdir()) == []


def test_reference_messages_for_sizes_and_labels():
    base = tree_from_arrays({"predictions": {"y": np.zeros((4, 5))}})
    longer = tree_from_arrays({"predictions": {"y": np.zeros((4, 6))}})
    with pytest.warns(
        OutputWarning,
        match=r"^Baseline and intervention have different dimension sizes in group "
        r"'predictions': \{'chain': 1, 'draw': 4, 'y_dim_0': 5\} vs \{'chain': 1, 'draw': 4, "
        r"'y_dim_0': 6\}\.",
    ):
        effect_tree(base, longer, posterior=None, num_chains=1)
    shifted = longer.copy()
    shifted["predictions"] = shifted["predictions"].to_dataset().isel(y_dim_0=slice(1, None))
    with pytest.warns(
        OutputWarning,
        match=r"^Baseline and intervention have different coordinate labels along 'y_dim_0' in "
        r"group 'predictions'; the effect covers only the labels present in both\.",
    ):
        effect = effect_tree(base, shifted, posterior=None, num_chains=1)
    assert effect["predictions"].sizes["y_dim_0"] == 4


def test_a_call_that_fails_while_running_keeps_the_key(monkeypatch):
    model = fitted_linreg(num_draws=20)
    before = key_data(model.rng_key)
    runs = []

    def failing_second_run(*args, **kwargs):
        runs.append(1)
        if len(runs) == 2:
            raise RuntimeError("the intervention failed")
        return {"y": np.zeros((20, len(X)))}

    monkeypatch.setattr(model, "_stream", failing_second_run)
    args = {"X": X, "return_datatree": False, "progress": False}
    with pytest.raises(RuntimeError, match="the intervention failed"):
        model.estimate_effect(args_baseline=args, args_intervention=args)
    assert key_data(model.rng_key) == before


def test_trees_from_predict_on_batch_record_what_pairs_their_draws(model):
    # They recorded neither key nor path: two on-batch trees drawn with different
    # keys gave an unpaired effect with no warning, while streamed trees warned.
    base = model.predict_on_batch(X, rng_key=KEY, return_sites="y")
    for node in (base, base["posterior_predictive"]):
        assert node.attrs["rng_key"] == key_data(KEY)
        assert node.attrs["shard_axis"] == "draw"
    prior = model.sample_prior_predictive_on_batch(X, num_samples=5, rng_key=OTHER)
    assert prior["prior_predictive"].attrs["rng_key"] == key_data(OTHER)
    other = model.predict_on_batch(X, rng_key=OTHER, return_sites="y")
    with pytest.warns(OutputWarning, match=r"^Baseline and intervention differ in 'rng_key'"):
        model.estimate_effect(base, other)
    # The same key pairs the draws, with a warm repeat and with the streamed draw path
    # (draw d uses fold_in(key, d) in both).
    again = model.predict_on_batch(X, rng_key=KEY, return_sites="y")
    drawn = model.predict(X, rng_key=KEY, shard_axis="draw", store="memory", **STREAM)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutputWarning)
        assert (
            float(abs(model.estimate_effect(base, again)["posterior_predictive"]["y"]).max()) == 0
        )
        model.estimate_effect(base, drawn)
    np.testing.assert_allclose(
        drawn["posterior_predictive"]["y"].values,
        base["posterior_predictive"]["y"].values,
        rtol=1e-5,
        atol=1e-5,
    )
