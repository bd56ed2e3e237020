"""The demo's effect plot: arviz-plots when installed, the Matplotlib fallback otherwise.

Each path writes a PNG of the expected size whose pixels show the true-effect line
(red, dashed) only when a true effect is given. The fallback is forced by hiding
``arviz_plots`` from the import system.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from aimz import demo
from aimz._demo_plot import arviz_plots_missing, hdi, plot_effect

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RED = np.array([0xD6, 0x27, 0x28]) / 255  # matplotlib "C3", the true-effect line
DRAWS = np.random.default_rng(0).normal(0.36, 0.012, size=400)


def _read_png(path: Path) -> np.ndarray:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC
    return matplotlib.image.imread(path)[..., :3]


def _red_columns(image: np.ndarray) -> np.ndarray:
    """Pixel columns that hold a vertical run of at least 30 true-effect-red pixels."""
    red = np.abs(image - RED).max(axis=-1) < 0.08
    return np.flatnonzero(red.sum(axis=0) >= 30)


def _check_true_line(path: Path, true_effect: float) -> None:
    image = _read_png(path)
    assert image.shape[:2] == (400, 700)  # figsize (7, 4) at 100 dpi
    assert image.std() > 0.05  # not blank
    columns = _red_columns(image)
    assert columns.size > 0, "no true-effect line"
    # The line sits left of the mean (true 0.330 vs mean 0.360): in the left part.
    assert columns.max() - columns.min() < 10
    assert columns.mean() < 0.5 * image.shape[1]


@pytest.fixture
def no_arviz_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import arviz_plots`` raise ImportError, as on Python 3.11."""
    monkeypatch.setitem(sys.modules, "arviz_plots", None)


def test_arviz_path_writes_png(tmp_path: Path) -> None:
    pytest.importorskip("arviz_plots")
    assert arviz_plots_missing() is None
    out = tmp_path / "effect.png"
    assert plot_effect(DRAWS, out, true_effect=0.33) == "arviz"
    _check_true_line(out, 0.33)


def test_matplotlib_fallback_writes_png(tmp_path: Path, no_arviz_plots: None) -> None:
    message = arviz_plots_missing()
    assert message is not None and message.startswith("arviz-plots is not installed")
    out = tmp_path / "effect.png"
    assert plot_effect(DRAWS.reshape(2, -1), out, true_effect=0.33, num_chains=2) == "matplotlib"
    _check_true_line(out, 0.33)
    # Without a true effect there is no red line.
    plain = tmp_path / "plain.png"
    assert plot_effect(DRAWS, plain) == "matplotlib"
    assert _red_columns(_read_png(plain)).size == 0


def test_arviz_failure_warns_and_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aimz import _demo_plot

    def broken(*args: object) -> None:
        raise TypeError("unexpected keyword argument 'visuals'")

    monkeypatch.setattr(_demo_plot, "arviz_plots_missing", lambda: None)
    monkeypatch.setattr(_demo_plot, "_plot_arviz", broken)
    out = tmp_path / "effect.png"
    with pytest.warns(RuntimeWarning, match="arviz-plots failed to draw.*'visuals'"):
        assert plot_effect(DRAWS, out, true_effect=0.33) == "matplotlib"
    _check_true_line(out, 0.33)


def test_hdi_matches_summary_rule() -> None:
    summary = pytest.importorskip("aimz_io.summary")
    draws = np.random.default_rng(1).gamma(2.0, size=1001)
    for prob in (0.5, 0.94, 0.999):
        ref = summary.describe(draws[:, None], prob)
        assert hdi(draws, prob) == (float(ref["hdi_low"][0]), float(ref["hdi_high"][0]))
    # Brute force: the shortest window holding ceil(0.9 * 20) = 18 of 20 sorted values.
    values = np.sort(np.random.default_rng(2).normal(size=20))
    widths = [values[i + 17] - values[i] for i in range(3)]
    first = int(np.argmin(widths))
    assert hdi(values, 0.9) == (values[first], values[first + 17])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"average_effect": [0.1]}, "average_effect"),
        ({"average_effect": [0.1, np.nan]}, "average_effect"),
        ({"hdi_prob": 1.0}, "hdi_prob"),
        ({"num_chains": 3}, "num_chains"),
        ({"true_effect": float("inf")}, "true_effect"),
    ],
)
def test_bad_input_writes_nothing(tmp_path: Path, kwargs: dict, message: str) -> None:
    out = tmp_path / "effect.png"
    args = {"average_effect": DRAWS, **kwargs}
    with pytest.raises(ValueError, match=message):
        plot_effect(args.pop("average_effect"), out, **args)
    assert not out.exists()
    with pytest.raises(FileNotFoundError, match="path"):
        plot_effect(DRAWS, tmp_path / "missing" / "effect.png")


def test_true_average_effect_matches_the_simulation() -> None:
    # Redo the simulation with both potential outcomes sharing the noise draw.
    n, seed, p = 4000, 3, demo.TRUE_PARAMS
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    logits = p["propensity_intercept"] + X @ np.asarray(p["propensity_coef"])
    t = rng.binomial(1, 1.0 / (1.0 + np.exp(-logits)))
    base = p["intercept"] + X @ np.asarray(p["beta"]) + rng.normal(scale=p["sigma"], size=n)
    y_observed, y_do = base + p["tau"] * t, base + p["tau"] * 1.0
    data = demo.make_marketing_data(n, seed=seed)
    np.testing.assert_allclose(data["y"], y_observed, rtol=1e-5, atol=1e-5)
    assert demo.true_average_effect(data["t"]) == pytest.approx((y_do - y_observed).mean())
    with pytest.raises(ValueError, match="`t`"):
        demo.true_average_effect(np.array([0.0, 0.5]))
