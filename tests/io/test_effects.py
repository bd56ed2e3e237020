"""Effect trees and their summaries, checked against plain NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from aimz_core.exceptions import OutputWarning
from aimz_io import artifact, summary
from aimz_io.backend import effect_tree, format_summary, summarize_effect, tree_from_arrays
from aimz_io.zarr_sink import ZarrSink


def hdi_reference(x: np.ndarray, prob: float) -> tuple[float, float]:
    x = np.sort(x)
    n = len(x)
    k = int(np.ceil(prob * n))
    best = min(range(n - k + 1), key=lambda i: x[i + k - 1] - x[i])
    return x[best], x[best + k - 1]


@pytest.fixture
def scenarios(rng):
    base = {"y": rng.normal(size=(8, 5)), "mu": rng.normal(size=(8, 5, 2))}
    intv = {"y": base["y"] + rng.normal(1, 1, size=(8, 5)), "mu": base["mu"] - 0.5}
    return base, intv


def test_effect_from_dicts(scenarios, rng):
    base, intv = scenarios
    posterior = {"w": rng.normal(size=(8, 3))}
    effect = effect_tree(base, intv, posterior=posterior, num_chains=2)
    assert effect.name == "root"
    assert list(effect.children) == ["posterior", "posterior_predictive"]
    y = effect["posterior_predictive"]["y"]
    assert y.dims == ("chain", "draw", "y_dim_0")
    np.testing.assert_allclose(y.values, (intv["y"] - base["y"]).reshape(2, 4, 5))
    np.testing.assert_array_equal(effect["posterior"]["w"].values, posterior["w"].reshape(2, 4, 3))
    for node in (effect, effect["posterior_predictive"]):
        assert node.attrs["num_chains"] == 2 and "created_at" in node.attrs
    assert "artifact_path_baseline" not in effect.attrs


def test_effect_group_from_dict_keyword(scenarios):
    base, intv = scenarios
    effect = effect_tree(base, intv, posterior=None, num_chains=1, group="predictions")
    assert list(effect.children) == ["predictions"]


def test_group_selection_prefers_predictions(scenarios):
    base, intv = scenarios
    both = {"predictions": base, "posterior_predictive": intv}
    tree_b = tree_from_arrays(both)
    tree_i = tree_from_arrays({"predictions": intv, "posterior_predictive": base})
    effect = effect_tree(tree_b, tree_i, posterior=None, num_chains=1)
    assert list(effect.children) == ["predictions"]
    np.testing.assert_allclose(effect["predictions"]["y"].values[0], intv["y"] - base["y"])

    prior = effect_tree(
        tree_from_arrays({"prior_predictive": base}),
        tree_from_arrays({"prior_predictive": intv}),
        posterior=None,
        num_chains=1,
    )
    assert list(prior.children) == ["prior_predictive"]


def test_missing_group_lists_available_groups(scenarios):
    base, intv = scenarios
    with pytest.raises(
        ValueError,
        match=r"^Group 'predictions' not found in `dt_intervention`\. Available groups: "
        r"'posterior_predictive'",
    ):
        effect_tree(
            tree_from_arrays({"predictions": base}),
            tree_from_arrays({"posterior_predictive": intv}),
            posterior=None,
            num_chains=1,
        )
    with pytest.raises(
        ValueError,
        match=r"^Group 'posterior_predictive' not found in `dt_baseline`\. Available groups: "
        r"'posterior'\.",
    ):
        effect_tree(tree_from_arrays({"posterior": base}), intv, posterior=None, num_chains=1)
    with pytest.raises(TypeError, match="DataTree or a dict"):
        effect_tree([1], intv, posterior=None, num_chains=1)


def test_size_mismatch_warns_and_joins(scenarios):
    base, intv = scenarios
    short = {"y": intv["y"][:, :3], "extra": intv["y"]}
    with (
        pytest.warns(
            OutputWarning,
            match=r"^Baseline and intervention have different dimension sizes in group "
            r"'posterior_predictive': \{'chain': 1, 'draw': 8, 'y_dim_0': 5\} vs "
            r"\{'chain': 1, 'draw': 8, 'y_dim_0': 3\}\.",
        ),
        pytest.warns(OutputWarning, match=r"\['extra', 'mu'\] are in only one"),
    ):
        effect = effect_tree(base, short, posterior=None, num_chains=1)
    assert list(effect["posterior_predictive"].data_vars) == ["y"]
    np.testing.assert_allclose(
        effect["posterior_predictive"]["y"].values[0], intv["y"][:, :3] - base["y"][:, :3]
    )
    with pytest.warns(OutputWarning, match="Unpaired draws: .draw. differs in size"):
        effect_tree(base, {k: v[:6] for k, v in intv.items()}, posterior=None, num_chains=1)


def test_different_posteriors_warn(scenarios, rng):
    base, intv = scenarios
    tree_b = tree_from_arrays({"posterior": {"w": np.zeros((8, 2))}, "predictions": base})
    tree_i = tree_from_arrays({"posterior": {"w": np.ones((8, 2))}, "predictions": intv})
    with pytest.warns(
        OutputWarning, match=r"^Baseline and intervention have different posterior samples\."
    ):
        effect = effect_tree(tree_b, tree_i, posterior=None, num_chains=1)
    assert float(effect["posterior"]["w"].sum()) == 0.0


def persist(tmp_path, make_info, feed_sink, data_override=None, **kwargs):
    info, data = make_info(**kwargs)
    if data_override is not None:
        data = data_override
    sink = ZarrSink(tmp_path)
    feed_sink(sink, info, data)
    return sink.commit(), data


def test_effect_of_persistent_scenarios_is_lazy(tmp_path, make_info, feed_sink):
    tree_b, data_b = persist(tmp_path, make_info, feed_sink, num_chains=2)
    tree_i, data_i = persist(tmp_path, make_info, feed_sink, num_chains=2)
    effect = effect_tree(tree_b, tree_i, posterior={"w": np.zeros((6, 1))}, num_chains=2)
    y = effect["posterior_predictive"]["y"]
    assert y.chunks is not None
    np.testing.assert_allclose(y.values, (data_i["y"] - data_b["y"]).reshape(2, 3, 10))
    assert effect.attrs["artifact_path_baseline"] == tree_b.attrs["artifact_path"]
    assert effect.attrs["output_dir_intervention"] == tree_i.attrs["output_dir"]


def test_effect_without_dask_stays_lazy(tmp_path, make_info, feed_sink, monkeypatch):
    monkeypatch.setattr(artifact, "has_dask", lambda: False)
    monkeypatch.setattr(summary, "SLAB_BYTES", 6 * 3 * 8)  # three rows per slab
    tree_b, data_b = persist(tmp_path, make_info, feed_sink)
    tree_i, data_i = persist(tmp_path, make_info, feed_sink)
    effect = effect_tree(tree_b, tree_i, posterior={"w": np.zeros((6, 1))}, num_chains=1)
    y = effect["posterior_predictive"]["y"]
    assert y.chunks is None and not y.variable._in_memory
    diff = data_i["y"].astype(np.float64) - data_b["y"]
    np.testing.assert_allclose(y[0, :, 2:7].values, diff[:, 2:7], rtol=1e-6)
    table = summarize_effect(effect)
    np.testing.assert_allclose(table["mean"][0], diff.mean(axis=1).mean(), rtol=1e-5)
    by_obs = summarize_effect(effect, by="obs")
    y_rows = by_obs[by_obs["site"] == "y"]
    np.testing.assert_allclose(y_rows["mean"], diff.mean(axis=0), rtol=1e-5)


@pytest.mark.parametrize("lazy", [False, True])
def test_summary_matches_numpy(tmp_path, make_info, feed_sink, lazy):
    rng = np.random.default_rng(3)
    y = rng.normal(0.2, 1, size=(40, 10)).astype("float32")
    z = rng.poisson(3, size=(40, 10, 2)).astype("int32") - 3
    if lazy:
        tree, _ = persist(tmp_path, make_info, feed_sink, {"y": y, "z": z}, draws=40)
    else:
        tree = tree_from_arrays(
            {"posterior_predictive": {"y": y, "z": z}},
            dims={"y": ("obs",), "z": ("obs", "z_dim_1")},
        )
    table = summarize_effect(tree, hdi_prob=0.9)
    assert list(table.columns) == [
        "site", "mean", "sd", "hdi_low", "hdi_high", "prob_positive",
    ]  # fmt: skip
    per_draw = y.astype(np.float64).mean(axis=1)
    row = table.iloc[0]
    assert row["site"] == "y"
    np.testing.assert_allclose(row["mean"], per_draw.mean(), rtol=1e-6)
    np.testing.assert_allclose(row["sd"], per_draw.std(ddof=1), rtol=1e-6)
    np.testing.assert_allclose((row["hdi_low"], row["hdi_high"]), hdi_reference(per_draw, 0.9))
    assert row["prob_positive"] == (per_draw > 0).mean()

    by_obs = summarize_effect(tree, by="obs")
    assert len(by_obs) == 20 and list(by_obs["obs"][:3]) == [0, 1, 2]
    np.testing.assert_allclose(by_obs["mean"][10:], z.mean(axis=(0, 2)), rtol=1e-6)
    by_k = summarize_effect(tree, by="z_dim_1")
    assert list(by_k["site"]) == ["z", "z"]
    np.testing.assert_allclose(by_k["prob_positive"], (z.mean(axis=1) > 0).mean(axis=0))


def test_summary_errors_and_plain_output(monkeypatch):
    tree = tree_from_arrays({"predictions": {"y": np.arange(20.0).reshape(10, 2) - 5}})
    with pytest.raises(ValueError, match="No variable has dim 'obs'"):
        summarize_effect(tree, by="obs")
    with pytest.raises(ValueError, match="`hdi_prob`"):
        summarize_effect(tree, hdi_prob=0)
    with pytest.raises(ValueError, match="Group 'posterior' not found"):
        summarize_effect(tree, group="posterior")
    monkeypatch.setattr(summary.importlib.util, "find_spec", lambda name: None)
    table = summarize_effect(tree)
    assert isinstance(table, dict) and table["site"] == ["y"]
    text = format_summary(table)
    assert text.splitlines()[0].split() == [
        "site", "mean", "sd", "hdi_low", "hdi_high", "prob_positive",
    ]  # fmt: skip
    assert "4.500" in text  # mean of the per-draw averages


def test_format_summary_of_dataframe():
    pytest.importorskip("pandas")
    tree = tree_from_arrays({"predictions": {"y": np.ones((4, 2))}})
    text = format_summary(summarize_effect(tree), digits=2)
    assert text.splitlines()[1].split() == ["y", "1.00", "0.00", "1.00", "1.00", "1.00"]


def test_effect_trees_are_datatrees(scenarios):
    base, intv = scenarios
    assert isinstance(effect_tree(base, intv, posterior=None, num_chains=1), xr.DataTree)
