"""The ``aimz`` console script: ``aimz demo`` end to end, then ``aimz predict``.

The demo runs once per module in a subprocess (the installed console script); the
artifacts it reports are then checked one by one, and the model it logged is scored
with ``aimz predict`` (also a subprocess, started as soon as the demo has finished so
that it runs while the in-process checks do). Error cases run ``aimz.cli.main``
in-process where possible.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("aimz_io")
pytest.importorskip("aimz_mlflow")

from aimz import cli

AIMZ = Path(sys.executable).parent / ("aimz.exe" if os.name == "nt" else "aimz")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_aimz(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [str(AIMZ), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _predict_demo_model(out: Path, model_uri: str, tracking_uri: str) -> tuple[Path, object]:
    """Score the demo's logged model with ``aimz predict``; ``(output dir, process)``."""
    pred = out / "pred"
    proc = run_aimz(
        "predict",
        model_uri,
        "--tracking-uri",
        tracking_uri,
        "--input",
        str(out / "x.npy"),
        "--output",
        str(pred),
        "--batch-size",
        "128",
        "--seed",
        "1",
        "--no-progress",
        cwd=out.parent,
    )
    return pred, proc


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Run ``aimz demo --out tmp --no-progress`` once and parse what it printed.

    ``aimz predict`` on the logged model then starts in the background:
    ``demo["predict"].result()`` is its ``(output dir, process)``.
    """
    if not AIMZ.exists():
        pytest.skip(f"console script not installed at {AIMZ}")
    root = tmp_path_factory.mktemp("cli")
    out = root / "demo"
    proc = run_aimz("demo", "--out", str(out), "--no-progress", cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stdout = proc.stdout
    model_uri = re.search(r"runs:/[0-9a-f]+/model", stdout)
    tracking_uri = re.search(r"--tracking-uri (sqlite:///\S+)", stdout)
    run_id = re.search(r"MLflow run id\s+([0-9a-f]+)", stdout)
    model_dir = re.search(r"MLflow model files\s+(\S+)", stdout)
    elpd = re.search(
        r"PSIS-LOO of y: elpd_loo (-?[0-9.]+) ± ([0-9.]+) \(p_loo (-?[0-9.]+);", stdout
    )
    assert model_uri and tracking_uri and run_id and model_dir and elpd, stdout
    pool = ThreadPoolExecutor(max_workers=1)
    predict = pool.submit(_predict_demo_model, out, model_uri.group(), tracking_uri.group(1))
    yield {
        "root": root,
        "out": out,
        "stdout": stdout,
        "model_uri": model_uri.group(),
        "tracking_uri": tracking_uri.group(1),
        "run_id": run_id.group(1),
        "model_dir": Path(model_dir.group(1)),
        "printed_loo": {
            "elpd_loo": float(elpd.group(1)),
            "elpd_loo_se": float(elpd.group(2)),
            "p_loo": float(elpd.group(3)),
        },
        "predict": predict,
    }
    pool.shutdown(wait=True)


def _run_values(demo: dict, table: str) -> dict:
    """``{key: value}`` of the demo run's ``params`` or ``latest_metrics``."""
    query = f"select key, value from {table} where run_uuid = ?"
    with sqlite3.connect(demo["out"] / "mlflow.db") as conn:
        return dict(conn.execute(query, (demo["run_id"],)).fetchall())


@pytest.mark.slow
def test_demo_prints_summary_and_command(demo: dict) -> None:
    stdout = demo["stdout"]
    for column in ("mean", "sd", "hdi_low", "hdi_high", "prob_positive"):
        assert column in stdout
    assert "aimz predict runs:/" in stdout
    # Every artifact it names lives under the demo folder.
    for path in re.findall(r"(/\S+)", stdout):
        if path.startswith(str(demo["root"])):
            assert Path(path.rstrip(",")).resolve().is_relative_to(demo["out"].resolve())


@pytest.mark.slow
def test_demo_zarr_stores_open_with_xarray(demo: dict) -> None:
    import xarray as xr

    stores = sorted((demo["out"] / "outputs").glob("*_predict"))
    assert len(stores) == 2
    means = []
    for store in stores:
        ds = xr.open_zarr(store, consolidated=False)
        assert "y" in ds.data_vars
        assert ds["y"].shape == (500, 2000)
        means.append(float(ds["y"].mean()))
    # do(treatment=1) raises revenue on average.
    assert means[1] > means[0]
    (loglik,) = (demo["out"] / "outputs").glob("*_log_likelihood")
    ll = xr.open_zarr(loglik, consolidated=False)["y"]
    assert ll.shape == (500, 2000)  # (draw, customer); one chain
    assert np.isfinite(ll.values).all() and (ll.values < 0.5).all()
    assert (loglik / "loo" / "y").is_dir()  # the pointwise LOO results, written there


@pytest.mark.slow
def test_demo_logs_loo(demo: dict) -> None:
    metrics = _run_values(demo, "latest_metrics")
    keys = ("elpd_loo", "elpd_loo_se", "p_loo", "pareto_k_bad_share")
    assert set(keys) <= set(metrics)
    assert all(np.isfinite(metrics[key]) for key in keys)
    assert metrics["elpd_loo_se"] > 0 and 0 <= metrics["pareto_k_bad_share"] <= 1
    # The printed line rounds the logged values to 2 decimals.
    for key, printed in demo["printed_loo"].items():
        assert printed == pytest.approx(metrics[key], abs=0.0051), key
    # Gaussian noise with sigma 0.5: E[log density] = -log(2 pi 0.25) / 2 - 1/2 per row.
    per_row = -0.5 * np.log(2 * np.pi * 0.25) - 0.5
    assert metrics["elpd_loo"] / 2000 == pytest.approx(per_row, abs=0.05)
    assert 0 < metrics["p_loo"] < 20  # 6 parameters of y, an approximate posterior


@pytest.mark.slow
def test_demo_loo_equals_arviz(demo: dict) -> None:
    arviz_stats = pytest.importorskip("arviz_stats")
    import xarray as xr

    (loglik,) = (demo["out"] / "outputs").glob("*_log_likelihood")
    values = xr.open_zarr(loglik, consolidated=False)["y"].values[None]  # add the chain
    ll = xr.Dataset({"y": (("chain", "draw", "customer"), values)})
    tree = xr.DataTree.from_dict({"log_likelihood": ll})
    ref = arviz_stats.loo(tree, var_name="y", reff=1.0)  # one chain
    metrics = _run_values(demo, "latest_metrics")
    assert metrics["elpd_loo"] == pytest.approx(float(ref.elpd), rel=1e-6)
    assert metrics["elpd_loo_se"] == pytest.approx(float(ref.se), rel=1e-5)
    assert metrics["p_loo"] == pytest.approx(float(ref.p), rel=1e-4, abs=1e-4)


@pytest.mark.slow
def test_demo_plots_the_true_effect(demo: dict) -> None:
    params = _run_values(demo, "params")
    metrics = _run_values(demo, "latest_metrics")
    table = np.loadtxt(demo["out"] / "data.csv", delimiter=",", skiprows=1)
    share_treated = float(table[:, 3].mean())  # columns: 3 features, t, y
    true_effect = float(params["true_average_effect"])
    assert true_effect == pytest.approx(0.6 * (1 - share_treated), abs=1e-5)
    assert metrics["effect_mean"] == pytest.approx(true_effect, abs=0.05)
    fallback = "drew the plot with matplotlib" in demo["stdout"]
    assert fallback == (importlib.util.find_spec("arviz_plots") is None)


@pytest.mark.slow
def test_demo_writes_png(demo: dict) -> None:
    png = demo["out"] / "effect.png"
    assert png.is_file()
    assert png.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_demo_logs_run_and_model(demo: dict) -> None:
    db = demo["out"] / "mlflow.db"
    assert db.is_file()
    with sqlite3.connect(db) as conn:
        runs = dict(conn.execute("select run_uuid, status from runs").fetchall())
        models = conn.execute(
            "select name, source_run_id from logged_models where source_run_id = ?",
            (demo["run_id"],),
        ).fetchall()
        params = dict(
            conn.execute("select key, value from params where run_uuid = ?", (demo["run_id"],))
        )
        metrics = {
            row[0]
            for row in conn.execute(
                "select key from latest_metrics where run_uuid = ?", (demo["run_id"],)
            )
        }
    assert runs[demo["run_id"]] == "FINISHED"
    assert models == [("model", demo["run_id"])]
    assert params["seed"] == "0"
    assert {"effect_mean", "effect_hdi_low", "effect_hdi_high"} <= metrics
    assert (demo["model_dir"] / "MLmodel").is_file()
    assert demo["model_dir"].resolve().is_relative_to(demo["out"].resolve())


@pytest.mark.slow
def test_predict_scores_the_demo_model(demo: dict) -> None:
    import xarray as xr

    # aimz predict <model_uri> --tracking-uri <uri> --input x.npy --output <out>
    # --batch-size 128 --seed 1 --no-progress, started by the fixture
    out, proc = demo["predict"].result()
    assert out == demo["out"] / "pred"
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "written:" in proc.stdout
    (store,) = out.iterdir()
    assert str(store) in proc.stdout
    ds = xr.open_zarr(store, consolidated=False)
    assert ds["y"].shape == (500, 500)
    assert np.isfinite(ds["y"].values).all()


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".npz"])
def test_predict_reads_tables_and_npz(demo: dict, tmp_path: Path, suffix: str, capsys) -> None:
    import pandas as pd

    data = np.load(demo["out"] / "inputs.npz")
    path = tmp_path / f"in{suffix}"
    if suffix == ".npz":
        np.savez(path, X=data["X"][:20], t=data["t"][:20])
    else:
        frame = pd.DataFrame(data["X"][:20], columns=["a", "b", "c"]).assign(t=data["t"][:20])
        if suffix == ".csv":
            frame.to_csv(path, index=False)
        else:
            pytest.importorskip("pyarrow")
            frame.to_parquet(path)
    rc = cli.main(
        [
            "predict",
            str(demo["model_dir"]),
            "--input",
            str(path),
            "--output",
            str(tmp_path / "pred"),
            "--intervention",
            "treatment=1",
            "--no-progress",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "kwargs:  t (20,)" in captured.out
    assert "do:      treatment=1.0" in captured.out


@pytest.mark.slow
def test_predict_failure_leaves_nothing(demo: dict, tmp_path: Path, capsys) -> None:
    # A treatment vector that does not broadcast fails inside the prediction.
    args = [
        "predict",
        str(demo["model_dir"]),
        "--input",
        str(demo["out"] / "x.npy"),
        "--intervention",
        "treatment=[1, 0, 1]",
        "--no-progress",
    ]
    fresh = tmp_path / "fresh"
    assert cli.main([*args, "--output", str(fresh)]) == 1
    assert not fresh.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    assert cli.main([*args, "--output", str(existing)]) == 1
    assert sorted(p.name for p in existing.iterdir()) == ["keep.txt"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("aimz predict: error:") for line in err)


@pytest.mark.slow
def test_predict_unknown_site_and_bad_uri(demo: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "pred"
    base = ["--input", str(demo["out"] / "x.npy"), "--output", str(out), "--no-progress"]
    assert cli.main(["predict", str(demo["model_dir"]), *base, "--intervention", "nope=1"]) == 1
    assert "not sample sites" in capsys.readouterr().err
    assert cli.main(["predict", str(tmp_path / "no-model"), *base]) == 1
    assert "cannot load model" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------ fast error cases
@pytest.mark.slow
def test_missing_input_file_subprocess(tmp_path: Path) -> None:
    if not AIMZ.exists():
        pytest.skip(f"console script not installed at {AIMZ}")
    out = tmp_path / "pred"
    proc = run_aimz(
        "predict",
        "runs:/0/model",
        "--input",
        str(tmp_path / "missing.npy"),
        "--output",
        str(out),
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"aimz predict: error: input file {str(tmp_path / 'missing.npy')!r} does not exist"
    ]
    assert not out.exists()


@pytest.mark.parametrize(
    "bad",
    ["treatment", "=1", "treatment=", "treatment=abc", "treatment=true", "1x=2", "t=[1,'a']"],
)
def test_bad_intervention_syntax(tmp_path: Path, bad: str, capsys) -> None:
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((3, 2)))
    out = tmp_path / "pred"
    argv = ["predict", "m", "--input", str(x), "--output", str(out), "--intervention", bad]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aimz predict: error: argument --intervention")
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "argument --batch-size"),
        (["--seed", "-1"], "argument --seed"),
    ],
)
def test_bad_numbers(tmp_path: Path, args: list[str], message: str, capsys) -> None:
    argv = ["predict", "m", "--input", "x.npy", "--output", str(tmp_path / "o"), *args]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("seed", [str(2**70), str(2**64), str(2**32)])
def test_out_of_range_seed_is_one_line(tmp_path: Path, seed: str, capsys) -> None:
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((3, 2)))
    out = tmp_path / "pred"
    argv = ["predict", "m", "--input", str(x), "--output", str(out), "--seed", seed]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("aimz predict: error: argument --seed: expected an integer seed")
    assert "4294967295" in err[0]
    assert not out.exists()
    assert cli.build_parser().parse_args(["demo", "--seed", str(2**32 - 1)]).seed == 2**32 - 1


def test_unreadable_inputs(tmp_path: Path, capsys) -> None:
    out = tmp_path / "pred"
    cases = {
        "x.txt": ("hello", "unsupported type '.txt'"),
        "x.npy": ("not numpy", "cannot read input"),
        "x.parquet": ("not parquet", "cannot read"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_text(content)
        rc = cli.main(["predict", "m", "--input", str(path), "--output", str(out)])
        assert rc == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    (tmp_path / "dir.npy").mkdir()
    assert cli.main(["predict", "m", "--input", str(tmp_path / "dir.npy"), "--output", "o"]) == 1
    assert "is not a file" in capsys.readouterr().err
    assert not out.exists()


def test_tracking_store_must_exist(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((3, 2)))
    base = ["--input", str(x), "--output", str(tmp_path / "o")]
    assert cli.main(["predict", "runs:/abc/model", *base]) == 1
    assert "needs an MLflow tracking store" in capsys.readouterr().err
    missing = tmp_path / "none.db"
    argv = ["predict", "runs:/abc/model", *base, "--tracking-uri", f"sqlite:///{missing}"]
    assert cli.main(argv) == 1
    assert "does not exist" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


def test_output_is_a_file(tmp_path: Path, capsys) -> None:
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((3, 2)))
    target = tmp_path / "file"
    target.write_text("x")
    assert cli.main(["predict", "m", "--input", str(x), "--output", str(target)]) == 1
    assert "is not a directory" in capsys.readouterr().err


def test_bind_input_rules() -> None:
    X, kwargs, notes = cli.bind_input(
        {"X": np.ones((2, 3)), "t": np.zeros(2), "y": np.zeros(2)}, ("X", "t", "y"), "X", "y"
    )
    assert X.shape == (2, 3) and list(kwargs) == ["t"] and notes
    with pytest.raises(cli.CliError, match="not parameters of the kernel"):
        cli.bind_input({"X": np.ones(2), "z": np.ones(2)}, ("X", "y"), "X", "y")
    with pytest.raises(cli.CliError, match="no array named"):
        cli.bind_input({"A": np.ones(2)}, ("X", "y"), "X", "y")


def test_bind_input_tables() -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": [1.0, 2.0], "t": [0.0, 1.0], "b": [3, 4], "y": [0.0, 0.0]})
    X, kwargs, notes = cli.bind_input({"__table__": frame}, ("X", "t", "y"), "X", "y")
    assert X.tolist() == [[1.0, 3.0], [2.0, 4.0]] and X.dtype == np.float32
    assert list(kwargs) == ["t"]
    assert notes == ["column 'y' (the model output) was ignored"]
    # A list column named like the input holds one row per cell (e.g. from Parquet).
    rows = pd.DataFrame({"X": [np.ones(3), np.zeros(3)], "t": [0.0, 1.0]})
    X, kwargs, _ = cli.bind_input({"__table__": rows}, ("X", "t", "y"), "X", "y")
    assert X.shape == (2, 3) and list(kwargs) == ["t"]
    with pytest.raises(cli.CliError, match="no feature columns left for X"):
        cli.bind_input({"__table__": frame[["t", "y"]]}, ("X", "t", "y"), "X", "y")
    with pytest.raises(cli.CliError, match="'name' must be numeric"):
        cli.bind_input({"__table__": frame.assign(name="u")}, ("X", "t", "y"), "X", "y")


def test_no_command_and_version(capsys) -> None:
    assert cli.main([]) == 2
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("aimz ")


def _treatment_kernel(X, t=None, y=None) -> None:
    """A treatment site observed when ``t`` is given; latents ``a``, ``tau``, ``sigma``."""
    import numpyro
    import numpyro.distributions as dist

    a = numpyro.sample("a", dist.Normal(0.0, 1.0))
    tau = numpyro.sample("tau", dist.Normal(0.0, 1.0))
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("obs", X.shape[0]):
        treatment = numpyro.sample("treatment", dist.Bernoulli(logits=a), obs=t)
        numpyro.sample("y", dist.Normal(X.sum(-1) + tau * treatment, sigma), obs=y)


def test_predict_intervention_on_a_model_given_its_posterior(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    # issue 15 item 3: `set_posterior_sample` leaves the kernel untraced; a valid
    # intervention site must not be refused, a bad one still is.
    import xarray as xr
    from aimz_core.testing import make_model

    n = 8
    post = {"a": np.zeros(n), "tau": np.ones(n), "sigma": np.full(n, 0.1)}
    model = make_model(_treatment_kernel).set_posterior_sample(post)
    assert not model.kernel_spec.traced
    monkeypatch.setattr(cli, "_load_model", lambda *args, **kwargs: model)
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((5, 2), dtype=np.float32))
    out = tmp_path / "pred"
    base = ["predict", "m", "--input", str(x), "--output", str(out), "--no-progress"]
    assert cli.main([*base, "--intervention", "nope=1"]) == 1
    assert "not sample sites" in capsys.readouterr().err and not out.exists()
    assert cli.main([*base, "--intervention", "treatment=1", "--seed", "0"]) == 0
    assert "do:      treatment=1.0" in capsys.readouterr().out
    (store,) = out.iterdir()
    y = xr.open_zarr(store, consolidated=False)["y"].values
    assert y.shape == (n, 5) and abs(float(y.mean()) - 1.0) < 0.2  # tau * 1
