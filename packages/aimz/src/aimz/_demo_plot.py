"""The effect plot of ``aimz demo``: ArviZ (arviz-plots) when installed, else Matplotlib.

Both draw the same content: the posterior density of the per-draw average effect,
its HDI, the posterior mean and, when known, a vertical line at the true effect,
with a title, an axis label and a legend that states the numbers.

Example:
    >>> draws = np.random.default_rng(0).normal(0.35, 0.01, size=300)
    >>> low, high = hdi(draws, 0.94)
    >>> bool(low < 0.35 < high)
    True
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

#: Title and axis label of the effect plot.
TITLE = "Average effect of do(treatment=1) on revenue"
XLABEL = "average effect on revenue per customer"
VAR_NAME = "average_effect"


def arviz_plots_missing() -> str | None:
    """Why arviz-plots cannot draw the plot, or ``None`` when it can.

    A broken install (arviz-plots importable but failing on import, e.g. next to an
    incompatible Matplotlib) counts as missing, with the error in the message.

    Example:
        >>> arviz_plots_missing() is None or "not installed" in arviz_plots_missing()
        True
    """
    try:
        import arviz_plots  # noqa: F401
        import xarray  # noqa: F401
    except ImportError:
        if sys.version_info < (3, 12):
            return "arviz-plots is not installed (needs Python >= 3.12)"
        return "arviz-plots is not installed (pip install arviz-plots)"
    except Exception as err:  # a broken install must not stop the demo
        return f"arviz-plots failed to import ({type(err).__name__}: {err})"
    return None


def hdi(values: np.ndarray, prob: float) -> tuple[float, float]:
    """Shortest interval holding ``ceil(prob * n)`` of the ``n`` values.

    The same rule as :func:`aimz.summarize_effect`, so the plot and the summary
    table show the same interval.

    Example:
        >>> hdi(np.arange(100.0), 0.9)
        (0.0, 89.0)
    """
    ordered = np.sort(np.asarray(values, dtype=float).ravel())
    n = ordered.size
    kept = min(n, max(1, int(np.ceil(prob * n))))
    widths = ordered[kept - 1 :] - ordered[: n - kept + 1]
    first = int(np.argmin(widths))
    return float(ordered[first]), float(ordered[first + kept - 1])


def _kde(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Gaussian kernel density on ``grid`` with Silverman's bandwidth."""
    n = values.size
    spread = min(values.std(ddof=1), np.subtract(*np.percentile(values, [75, 25])) / 1.349)
    if not spread > 0:
        spread = max(values.std(ddof=1), 1e-12)
    bandwidth = 0.9 * spread * n ** (-0.2)
    z = (grid[:, None] - values[None, :]) / bandwidth
    return np.exp(-0.5 * z**2).sum(axis=1) / (n * bandwidth * np.sqrt(2 * np.pi))


def _labels(
    mean: float, interval: tuple[float, float], hdi_prob: float, true_effect: float | None
) -> dict[str, str]:
    low, high = interval
    labels = {
        "dist": "posterior density",
        "hdi": f"{hdi_prob:.0%} HDI [{low:.3f}, {high:.3f}]",
        "mean": f"posterior mean {mean:.3f}",
    }
    if true_effect is not None:
        labels["true"] = f"true effect {true_effect:.3f}"
    return labels


def _plot_arviz(values: np.ndarray, path: Path, hdi_prob: float, true_effect: float | None) -> None:
    import arviz_plots
    import matplotlib.pyplot as plt
    import xarray as xr

    tree = xr.DataTree.from_dict({"posterior": xr.Dataset({VAR_NAME: (("chain", "draw"), values)})})
    pc = arviz_plots.plot_dist(
        tree,
        var_names=[VAR_NAME],
        kind="kde",
        point_estimate="mean",
        ci_kind="hdi",
        ci_prob=hdi_prob,
        backend="matplotlib",
        visuals={"point_estimate_text": False},
        figure_kwargs={"figsize": (7, 4)},
    )
    if true_effect is not None:
        arviz_plots.add_lines(
            pc,
            values={VAR_NAME: true_effect},
            visuals={"ref_line": {"color": "C3", "linestyle": "--", "width": 2}},
        )
    labels = _labels(float(values.mean()), hdi(values, hdi_prob), hdi_prob, true_effect)
    handles = []
    for group, key in [
        ("dist", "dist"),
        ("credible_interval", "hdi"),
        ("point_estimate", "mean"),
        ("ref_line", "true"),
    ]:
        if key not in labels or group not in pc.viz.children:
            continue
        artist = np.ravel(pc.viz[group][VAR_NAME].values)[0]
        artist.set_label(labels[key])
        handles.append(artist)
    ax = pc.viz["plot"][VAR_NAME].item()
    ax.set_title(TITLE)
    ax.set_xlabel(XLABEL)
    ax.legend(handles=handles, loc="best", frameon=False, fontsize="small")
    figure = pc.viz["figure"].item()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _plot_matplotlib(
    values: np.ndarray, path: Path, hdi_prob: float, true_effect: float | None
) -> None:
    import matplotlib.pyplot as plt

    flat = values.ravel()
    mean = float(flat.mean())
    low, high = hdi(flat, hdi_prob)
    labels = _labels(mean, (low, high), hdi_prob, true_effect)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(flat, bins=40, density=True, histtype="step", color="0.6", label="draws (histogram)")
    pad = 0.1 * (flat.max() - flat.min()) or 1e-3
    grid = np.linspace(flat.min() - pad, flat.max() + pad, 256)
    density = _kde(flat, grid)
    ax.plot(grid, density, color="C0", lw=2, label=labels["dist"])
    inside = (grid >= low) & (grid <= high)
    ax.fill_between(grid, density, where=inside, color="C0", alpha=0.3, lw=0, label=labels["hdi"])
    ax.axvline(mean, color="k", lw=1.5, label=labels["mean"])
    if true_effect is not None:
        ax.axvline(true_effect, color="C3", ls="--", lw=2, label=labels["true"])
    ax.set_ylim(bottom=0)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_title(TITLE)
    ax.set_xlabel(XLABEL)
    ax.legend(loc="best", frameon=False, fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_effect(
    average_effect: Any,
    path: str | Path,
    *,
    true_effect: float | None = None,
    hdi_prob: float = 0.94,
    num_chains: int = 1,
) -> str:
    """Write the posterior of the per-draw average effect to a PNG.

    Draws the density, the ``hdi_prob`` HDI, the mean and, when ``true_effect`` is
    given, a dashed vertical line at it, with a legend. Uses ArviZ 1.x
    (``arviz_plots.plot_dist`` plus ``arviz_plots.add_lines``) when installed, and
    Matplotlib alone otherwise (Python 3.11, see :func:`arviz_plots_missing`).

    Args:
        average_effect: One value per draw, chains first (flattened or
            ``(num_chains, draws)``).
        path: Where to write the PNG; its folder must exist.
        true_effect: The effect the data were simulated with, if known.
        hdi_prob: Probability mass of the HDI, in ``(0, 1)``.
        num_chains: Chains the draws are made of.

    Returns:
        ``"arviz"`` or ``"matplotlib"``: which one drew the plot.

    Raises:
        ValueError: When the draws are empty or not finite, ``hdi_prob`` is not in
            ``(0, 1)``, ``num_chains`` does not divide the draws or ``true_effect``
            is not finite.
        FileNotFoundError: When the folder of ``path`` does not exist.

    Warns:
        RuntimeWarning: When arviz-plots is installed but fails to draw; the plot
            is then drawn with Matplotlib.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "e.png"
        >>> plot_effect(np.random.default_rng(0).normal(size=200), out) in ("arviz", "matplotlib")
        True
    """
    values = np.asarray(average_effect, dtype=float)
    if values.size < 2 or not np.isfinite(values).all():
        raise ValueError("`average_effect` must hold at least 2 finite draws.")
    if not 0 < hdi_prob < 1:
        raise ValueError(f"`hdi_prob` must be in (0, 1), got {hdi_prob!r}.")
    if num_chains < 1 or values.size % num_chains:
        raise ValueError(
            f"`num_chains` ({num_chains!r}) must be a positive divisor of the number "
            f"of draws ({values.size})."
        )
    if true_effect is not None and not np.isfinite(true_effect):
        raise ValueError(f"`true_effect` must be finite or None, got {true_effect!r}.")
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"`path`: folder {str(path.parent)!r} does not exist.")
    values = values.reshape(num_chains, -1)
    true = None if true_effect is None else float(true_effect)
    import matplotlib

    matplotlib.use("Agg")
    if arviz_plots_missing() is None:
        try:
            _plot_arviz(values, path, hdi_prob, true)
            return "arviz"
        except Exception as err:  # an incompatible arviz-plots must not stop the demo
            import matplotlib.pyplot as plt

            plt.close("all")
            warnings.warn(
                f"arviz-plots failed to draw the effect plot ({type(err).__name__}: {err}); "
                "drawing it with matplotlib",
                RuntimeWarning,
                stacklevel=2,
            )
    _plot_matplotlib(values, path, hdi_prob, true)
    return "matplotlib"


__all__ = ["arviz_plots_missing", "hdi", "plot_effect"]
