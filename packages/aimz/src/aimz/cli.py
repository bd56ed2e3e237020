"""The ``aimz`` command line: ``aimz demo`` and ``aimz predict``.

``aimz demo`` runs the whole workflow on generated data (see :mod:`aimz.demo`) and
writes every artifact under one folder. ``aimz predict`` scores a model logged to
MLflow on a file of inputs and streams the draws to a Zarr store.

Errors print one line on stderr (``aimz <command>: error: ...``) and exit with a
non-zero status: 2 for bad arguments, 1 for anything that fails after the arguments
were accepted. ``aimz predict`` validates everything it can before it creates its
output folder, and removes what it created when a later step fails.

Example:
    >>> main(["predict", "runs:/x/model", "--input", "missing.npy", "--output", "o"])
    1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

#: Input file types ``aimz predict`` reads.
INPUT_SUFFIXES = (".npy", ".npz", ".csv", ".parquet")


class CliError(Exception):
    """A failure reported as one line on stderr with exit status 1."""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


# ----------------------------------------------------------------- argument types
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


#: Largest seed: ``jax.random.key`` keeps only the low 32 bits of a seed (unless
#: ``jax_enable_x64`` is set), so larger seeds would silently repeat smaller ones.
MAX_SEED = 2**32 - 1


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer seed in [0, {MAX_SEED}], got {text!r}"
        ) from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"expected an integer seed in [0, {MAX_SEED}] (a 32-bit PRNG seed), got {text!r}"
        )
    return value


def parse_intervention(text: str) -> tuple[str, Any]:
    """Parse one ``SITE=VALUE`` intervention.

    ``VALUE`` is a number or a JSON list of numbers (nested lists allowed).

    Args:
        text: The command-line token.

    Returns:
        ``(site, value)`` with ``value`` a float or a NumPy float array.

    Raises:
        argparse.ArgumentTypeError: When the token is not ``SITE=VALUE`` with a
            numeric value.

    Example:
        >>> parse_intervention("treatment=1")
        ('treatment', 1.0)
    """
    site, sep, raw = text.partition("=")
    site, raw = site.strip(), raw.strip()
    if not sep or not site or not raw:
        raise argparse.ArgumentTypeError(f"expected SITE=VALUE (e.g. treatment=1), got {text!r}")
    if not site.isidentifier():
        raise argparse.ArgumentTypeError(f"site name {site!r} in {text!r} is not a valid name")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(
            f"value of {site!r} must be a number or a JSON list of numbers, got {raw!r}"
        ) from None
    if isinstance(value, bool) or not isinstance(value, (int, float, list)):
        raise argparse.ArgumentTypeError(
            f"value of {site!r} must be a number or a JSON list of numbers, got {raw!r}"
        )
    if isinstance(value, list):
        import numpy as np

        try:
            array = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(
                f"value of {site!r} must be a JSON list of numbers, got {raw!r}"
            ) from None
        return site, array
    return site, float(value)


def build_parser() -> argparse.ArgumentParser:
    """The ``aimz`` argument parser with its ``demo`` and ``predict`` commands.

    Example:
        >>> build_parser().parse_args(["demo", "--seed", "3"]).seed
        3
    """
    parser = _Parser(
        prog="aimz",
        description="aimz: probabilistic impact modeling with NumPyro.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="run the whole workflow on generated data",
        description=(
            "Fit an impact model on a generated marketing data set, stream both scenarios "
            "to Zarr, estimate and plot the effect of do(treatment=1), and log the run and "
            "the model to a local MLflow store. Everything goes under --out."
        ),
    )
    demo.add_argument(
        "--out",
        default="aimz-demo",
        metavar="DIR",
        help="folder for every artifact (default: ./aimz-demo)",
    )
    demo.add_argument("--seed", type=_seed, default=0, help="seed of data and model (default: 0)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")

    predict = commands.add_parser(
        "predict",
        help="score a logged model on a file and stream the draws to Zarr",
        description=(
            "Load an aimz model logged to MLflow, read inputs from .npy (X), .npz (X plus "
            "kernel arguments), .csv or .parquet (columns named like kernel arguments are "
            "passed as such, the output column is dropped, the rest form X), and stream "
            "posterior predictive draws to a Zarr store under --output."
        ),
    )
    predict.add_argument("model_uri", metavar="MODEL_URI", help="e.g. runs:/<run_id>/model")
    predict.add_argument("--input", required=True, metavar="FILE", help="input file")
    predict.add_argument("--output", required=True, metavar="DIR", help="output folder")
    predict.add_argument(
        "--batch-size", type=_positive_int, default=None, metavar="N", help="rows per batch"
    )
    predict.add_argument(
        "--intervention",
        type=parse_intervention,
        action="append",
        default=[],
        metavar="SITE=VALUE",
        help="fix a sample site with numpyro.handlers.do (repeatable)",
    )
    predict.add_argument("--seed", type=_seed, default=None, help="PRNG seed")
    predict.add_argument(
        "--tracking-uri",
        default=None,
        metavar="URI",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or MLflow's default)",
    )
    predict.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


# --------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    """Run ``aimz demo`` and print where every artifact is.

    Args:
        args: Parsed arguments (``out``, ``seed``, ``no_progress``).

    Returns:
        The exit status.
    """
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {str(out)!r} exists and is not a directory")
    from aimz.demo import run_demo

    result = run_demo(out, seed=args.seed, progress=not args.no_progress)
    print()
    print("Effect of do(treatment=1) on revenue, average over customers (94% HDI):")
    print(result.summary)
    print(
        f"posterior mean of tau (effect per treated customer): {result.stats['tau_mean']:.3f}"
        f" (true value 0.6); share untreated: {result.stats['share_untreated']:.3f}"
    )
    print(f"true average effect of do(treatment=1): {result.true_effect:.3f}")
    loo = result.loo
    print(f"PSIS-LOO of revenue: elpd_loo {loo.elpd:.2f} (se {loo.se:.2f}), p_loo {loo.p:.2f}")
    print()
    print("Artifacts:")
    rows = [
        ("folder", result.out_dir),
        ("training data (generated)", result.data_csv),
        ("scoring inputs", f"{result.scoring_npy}, {result.scoring_npz}"),
        ("Zarr baseline", result.baseline_zarr),
        ("Zarr do(treatment=1)", result.intervention_zarr),
        ("Zarr log-likelihood (LOO)", result.loglik_zarr),
        ("effect summary", result.summary_csv),
        ("effect plot", result.plot_png),
        ("MLflow tracking URI", result.tracking_uri),
        ("MLflow artifacts", result.artifact_root),
        ("MLflow run id", result.run_id),
        ("MLflow model URI", f"{result.model_uri} (= {result.logged_model_uri})"),
        ("MLflow model files", result.model_dir),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")
    print()
    print("Score the logged model on new customers:")
    print(
        f"  aimz predict {result.model_uri} --tracking-uri {result.tracking_uri} "
        f"--input {result.scoring_npz} --output {result.out_dir / 'predictions'} "
        "--intervention treatment=1"
    )
    print("Browse the run:")
    print(f"  mlflow ui --backend-store-uri {result.tracking_uri}")
    steps = ", ".join(f"{name} {sec:.1f} s" for name, sec in result.timings.items())
    print(f"Done in {result.seconds:.1f} s ({steps}).")
    return 0


# ------------------------------------------------------------------------ predict
def read_input(path: Path) -> dict[str, Any]:
    """Read ``aimz predict`` input as ``{name: array}``.

    ``.npy`` holds ``X``; ``.npz`` holds ``X`` and kernel arguments by name; tables
    (``.csv``, ``.parquet``) come back column by column as ``{"__table__": frame}``
    and are split by :func:`bind_input` once the kernel is known.

    Args:
        path: The input file.

    Returns:
        The arrays by name, or the table under ``"__table__"``.

    Raises:
        CliError: When the file is missing, of an unknown type or unreadable.

    Example:
        >>> read_input(Path("nope.npy"))
        Traceback (most recent call last):
        ...
        aimz.cli.CliError: input file 'nope.npy' does not exist
    """
    if not path.exists():
        raise CliError(f"input file {str(path)!r} does not exist")
    if not path.is_file():
        raise CliError(f"input {str(path)!r} is not a file")
    suffix = path.suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise CliError(
            f"input {str(path)!r} has an unsupported type {suffix or '(none)'!r}; "
            f"use one of {', '.join(INPUT_SUFFIXES)}"
        )
    import numpy as np

    try:
        if suffix == ".npy":
            return {"X": np.load(path, allow_pickle=False)}
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
            if not arrays:
                raise CliError(f"input {str(path)!r} holds no arrays")
            return arrays
        import pandas as pd

        frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    except CliError:
        raise
    except ImportError as err:
        raise CliError(f"cannot read {str(path)!r}: {err}") from None
    except Exception as err:  # any parser error -> one line
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CliError(f"cannot read input {str(path)!r}: {message}") from None
    if frame.empty:
        raise CliError(f"input {str(path)!r} has no rows")
    return {"__table__": frame}


def bind_input(
    data: Mapping[str, Any], param_names: Sequence[str], param_input: str, param_output: str
) -> tuple[Any, dict[str, Any], list[str]]:
    """Split input arrays into the kernel's input and keyword arguments.

    Applies the rule of :func:`aimz_core.table_input.bind_input`, the same one the
    MLflow pyfunc wrapper uses: arrays or columns named like kernel parameters are
    passed as such, the output is dropped, and the rest of a table forms ``X``.

    Args:
        data: Output of :func:`read_input`.
        param_names: The kernel's parameter names.
        param_input: Name of the kernel's input parameter.
        param_output: Name of the kernel's output parameter (dropped when present).

    Returns:
        ``(X, kwargs, notes)`` where ``notes`` explain entries that were dropped.

    Raises:
        CliError: When ``X`` is missing, a name is not a kernel parameter, or a
            table has no numeric feature columns.

    Example:
        >>> import numpy as np
        >>> X, kw, _ = bind_input({"X": np.ones((2, 1)), "t": np.zeros(2)},
        ...                       ["X", "t", "y"], "X", "y")
        >>> sorted(kw)
        ['t']
    """
    from aimz_core.table_input import bind_input as bind

    table = "__table__" in data
    try:
        bound = bind(
            data["__table__"] if table else data,
            param_names,
            param_input=param_input,
            param_output=param_output,
        )
    except KeyError as err:
        raise CliError(str(err.args[0])) from None
    except ValueError as err:
        raise CliError(str(err)) from None
    what = "column" if table else "array"
    notes = [f"{what} {name!r} (the model output) was ignored" for name in bound.dropped]
    return bound.X, bound.kwargs, notes


def check_tracking_store(model_uri: str, tracking_uri: str | None) -> None:
    """Refuse to resolve a ``runs:/`` or ``models:/`` URI against a store that is not there.

    MLflow would otherwise create an empty SQLite store (``./mlflow.db`` by default)
    just to report that the run does not exist.

    Args:
        model_uri: The model URI.
        tracking_uri: ``--tracking-uri``, if given.

    Raises:
        CliError: The URI needs a tracking store and none exists.

    Example:
        >>> check_tracking_store("/path/to/model", None)  # local folders need none
    """
    scheme = model_uri.split(":", 1)[0] if ":" in model_uri else ""
    if scheme not in ("runs", "models"):
        return
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None:
        if Path("mlflow.db").is_file() or Path("mlruns").is_dir():
            return
        raise CliError(
            f"{model_uri!r} needs an MLflow tracking store: pass --tracking-uri "
            "(e.g. sqlite:///aimz-demo/mlflow.db) or set MLFLOW_TRACKING_URI"
        )
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :].split("?", 1)[0])
        if not db.is_file():
            raise CliError(f"tracking database {str(db)!r} (from {uri!r}) does not exist")


def _load_model(model_uri: str, tracking_uri: str | None, *, progress: bool = True) -> Any:
    import mlflow

    from aimz.mlflow import load_model

    if tracking_uri is not None:
        mlflow.set_tracking_uri(tracking_uri)
    switch = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    previous = os.environ.get(switch)
    if not progress:
        os.environ[switch] = "false"
    try:
        return load_model(model_uri)
    except Exception as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CliError(f"cannot load model {model_uri!r}: {message}") from None
    finally:
        if previous is None:
            os.environ.pop(switch, None)
        else:
            os.environ[switch] = previous


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _remove_new(output: Path, created: bool, before: set[str]) -> None:
    """Remove what this run added to ``output`` (all of it if it created it)."""
    if created:
        shutil.rmtree(output, ignore_errors=True)
        return
    if not output.is_dir():
        return
    for entry in output.iterdir():
        if entry.name not in before:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def cmd_predict(args: argparse.Namespace) -> int:
    """Run ``aimz predict``: load, validate, stream to Zarr, print a summary.

    Args:
        args: Parsed arguments.

    Returns:
        The exit status.

    Raises:
        CliError: For any failure; nothing new is left under ``--output``.
    """
    input_path = Path(args.input).expanduser()
    output = Path(args.output).expanduser().resolve()
    if output.exists() and not output.is_dir():
        raise CliError(f"--output {str(output)!r} exists and is not a directory")
    interventions: dict[str, Any] = {}
    for site, value in args.intervention:
        if site in interventions:
            raise CliError(f"--intervention for site {site!r} is given more than once")
        interventions[site] = value
    data = read_input(input_path)
    check_tracking_store(args.model_uri, args.tracking_uri)
    model = _load_model(args.model_uri, args.tracking_uri, progress=not args.no_progress)
    from aimz_core.arguments import kernel_parameter_names

    params = kernel_parameter_names(model.kernel)
    X, kwargs, notes = bind_input(data, params, model.param_input, model.param_output)
    spec = model.kernel_spec
    if interventions and model.is_fitted():
        from aimz_core.kernel_spec import ensure_traced

        # a posterior given by `set_posterior_sample` leaves the kernel untraced
        try:
            spec = ensure_traced(model, X, kwargs)
        except Exception as err:
            message = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise CliError(f"cannot trace the model: {type(err).__name__}: {message}") from None
    if interventions and spec is not None:
        unknown = sorted(set(interventions) - set(spec.sample_sites))
        if unknown:
            raise CliError(
                f"--intervention sites {unknown} are not sample sites of the model "
                f"(sample sites: {', '.join(spec.sample_sites)})"
            )
    if not model.is_fitted():
        raise CliError(f"model {args.model_uri!r} is not fitted")

    import jax

    rng_key = None if args.seed is None else jax.random.key(args.seed)
    created = not output.exists()
    before = set() if created else {p.name for p in output.iterdir()}
    try:
        tree = model.predict(
            X,
            intervention=interventions or None,
            rng_key=rng_key,
            in_sample=False,
            batch_size=args.batch_size,
            output_dir=output,
            progress=not args.no_progress,
            **kwargs,
        )
    except BaseException as err:
        _remove_new(output, created, before)
        if isinstance(err, Exception):
            message = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise CliError(f"prediction failed: {type(err).__name__}: {message}") from None
        raise

    artifact = Path(tree.attrs.get("artifact_path", output))
    group = "predictions"
    ds = tree[group].to_dataset()
    print(f"model:   {args.model_uri}")
    print(f"input:   {input_path} ({len(X)} rows, X shape {tuple(X.shape)})")
    if kwargs:
        print(f"kwargs:  {', '.join(f'{k} {tuple(v.shape)}' for k, v in kwargs.items())}")
    for note in notes:
        print(f"note:    {note}")
    if interventions:
        shown = ", ".join(
            f"{k}={v if isinstance(v, float) else f'array{tuple(v.shape)}'}"
            for k, v in interventions.items()
        )
        print(f"do:      {shown}")
    print(f"written: {artifact} (Zarr v3, group {group!r}, {_human(_dir_size(artifact))})")
    for name, var in ds.data_vars.items():
        dims = ", ".join(f"{d}={n}" for d, n in zip(var.dims, var.shape, strict=True))
        print(f"  {name}: ({dims}) {var.dtype}, {_human(var.nbytes)} uncompressed")
    print("open with: xarray.open_zarr(path) or aimz.open_tree(path)")
    return 0


# --------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``aimz`` console script.

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status (``0`` on success).

    Example:
        >>> main(["--version"])  # doctest: +ELLIPSIS
        aimz ...
        0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from aimz import __version__

        print(f"aimz {__version__}")
        return 0
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    handler = {"demo": cmd_demo, "predict": cmd_predict}[args.command]
    try:
        return handler(args)
    except CliError as err:
        print(f"aimz {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"aimz {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
