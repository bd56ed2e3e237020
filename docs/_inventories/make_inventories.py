"""Write the small intersphinx inventories the docs build reads instead of the network.

Each ``<key>.inv`` lists only the external objects our pages reference, in the Sphinx
inventory format version 2: four plain header lines, then zlib-compressed lines of
``name domain:role priority uri dispname`` (``$`` at the end of ``uri`` stands for the
name, ``-`` as ``dispname`` means the name itself). ``conf.py`` maps each file to the
project's real documentation root in ``intersphinx_mapping``; the URIs here are
relative to that root and follow each site's page layout (checked against the live
sites when this file was written):

- Python:   ``library/<module>.html#<name>``; builtins on ``functions.html`` /
  ``stdtypes.html``, exceptions on ``exceptions.html``
- NumPy:    ``reference/generated/<name>.html#<name>``
- JAX:      ``_autosummary/<name>.html#<name>``
- NumPyro:  one page per topic (``svi.html``, ``mcmc.html``, ``handlers.html``, ...);
  objects are documented under their defining module (``numpyro.infer.svi.SVI``), so
  the re-exported names (``numpyro.infer.SVI``) are listed as aliases of the same URI
- xarray:   ``generated/<name>.html#<name>``
- ArviZ (arviz-base, arviz-stats, arviz-plots): ``api/generated/<name>.html#<name>``
- MLflow:   ``python_api/<module>.html#<name>`` under ``docs/latest/api_reference/``
- pandas:   ``reference/api/<name>.html#<name>``
- Zarr:     ``api/zarr/<page>/#<name>`` (mkdocs layout of zarr-python 3)
- Dask:     ``generated/<name>.html#<name>``

Add a line here when the docs start referencing a new external object, then run
``uv run python docs/_inventories/make_inventories.py`` and commit the ``.inv`` files.
Check one with ``uv run python -m sphinx.ext.intersphinx docs/_inventories/xarray.inv``.
"""

from __future__ import annotations

import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (name, "domain:role", uri); uri ending in "$" has the name substituted.
Entry = tuple[str, str, str]


def _generated(names: list[str], role: str, prefix: str = "generated/") -> list[Entry]:
    """Entries for sites with one page per object: ``<prefix><name>.html#<name>``."""
    return [(name, role, f"{prefix}{name}.html#$") for name in names]


def _python() -> list[Entry]:
    entries: list[Entry] = []
    builtin_functions_page = ["int", "float", "bool", "object", "type", "range"]
    builtin_types_page = ["dict", "list", "tuple", "str", "bytes", "set", "frozenset"]
    entries += [(n, "py:class", f"library/functions.html#{n}") for n in builtin_functions_page]
    entries += [(n, "py:class", f"library/stdtypes.html#{n}") for n in builtin_types_page]
    entries += [
        ("callable", "py:function", "library/functions.html#callable"),
        ("None", "py:data", "library/constants.html#None"),
        ("True", "py:data", "library/constants.html#True"),
        ("False", "py:data", "library/constants.html#False"),
        ("Ellipsis", "py:data", "library/constants.html#Ellipsis"),
    ]
    exceptions = [
        "Exception",
        "ValueError",
        "TypeError",
        "KeyError",
        "IndexError",
        "RuntimeError",
        "NotImplementedError",
        "OSError",
        "FileNotFoundError",
        "FileExistsError",
        "PermissionError",
        "ImportError",
        "ModuleNotFoundError",
        "TimeoutError",
        "Warning",
        "UserWarning",
        "RuntimeWarning",
        "DeprecationWarning",
    ]
    entries += [(n, "py:exception", f"library/exceptions.html#{n}") for n in exceptions]
    abcs = [
        "Callable",
        "Collection",
        "Hashable",
        "Iterable",
        "Iterator",
        "Mapping",
        "MutableMapping",
        "Sequence",
        "MutableSequence",
        "Set",
    ]
    entries += [
        (f"collections.abc.{n}", "py:class", "library/collections.abc.html#$") for n in abcs
    ]
    entries += [
        ("collections.abc", "py:module", "library/collections.abc.html#module-$"),
        ("pathlib.Path", "py:class", "library/pathlib.html#$"),
        ("pathlib.PurePath", "py:class", "library/pathlib.html#$"),
        ("os.PathLike", "py:class", "library/os.html#$"),
        ("os.environ", "py:data", "library/os.html#$"),
        ("datetime.datetime", "py:class", "library/datetime.html#$"),
        ("datetime.timedelta", "py:class", "library/datetime.html#$"),
        ("importlib.metadata", "py:module", "library/importlib.metadata.html#module-$"),
        ("logging.Logger", "py:class", "library/logging.html#$"),
        ("tempfile.TemporaryDirectory", "py:class", "library/tempfile.html#$"),
        ("pickle", "py:module", "library/pickle.html#module-$"),
        ("concurrent.futures.Executor", "py:class", "library/concurrent.futures.html#$"),
        ("warnings.warn", "py:function", "library/warnings.html#$"),
    ]
    typing_names = ["Any", "Literal", "Optional", "Union", "TypeAlias", "Self"]
    entries += [(f"typing.{n}", "py:data", "library/typing.html#$") for n in typing_names]
    entries += [("typing.Protocol", "py:class", "library/typing.html#$")]
    return entries


def _numpy() -> list[Entry]:
    entries = _generated(
        [
            "numpy.ndarray",
            "numpy.dtype",
            "numpy.float32",
            "numpy.float64",
            "numpy.int64",
            "numpy.generic",
        ],
        "py:class",
        "reference/generated/",
    )
    entries += _generated(
        ["numpy.asarray", "numpy.array", "numpy.save", "numpy.load"],
        "py:function",
        "reference/generated/",
    )
    entries += [
        ("numpy.random.Generator", "py:class", "reference/random/generator.html#$"),
        ("numpy.random.default_rng", "py:function", "reference/random/generator.html#$"),
        ("numpy.typing.ArrayLike", "py:data", "reference/typing.html#$"),
    ]
    return entries


def _jax() -> list[Entry]:
    entries = _generated(["jax.Array"], "py:class", "_autosummary/")
    entries += _generated(
        [
            "jax.jit",
            "jax.vmap",
            "jax.device_put",
            "jax.devices",
            "jax.random.key",
            "jax.random.PRNGKey",
            "jax.random.split",
            "jax.random.fold_in",
            "jax.lax.map",
            "jax.lax.scan",
            "jax.numpy.asarray",
        ],
        "py:function",
        "_autosummary/",
    )
    entries += [
        ("jax.sharding.Mesh", "py:class", "jax.sharding.html#$"),
        ("jax.sharding.NamedSharding", "py:class", "jax.sharding.html#$"),
        ("jax.random", "py:module", "jax.random.html#module-$"),
    ]
    return entries


def _numpyro() -> list[Entry]:
    def alias(names: list[str], role: str, page: str, target: str) -> list[Entry]:
        return [(name, role, f"{page}#{target}") for name in names]

    entries: list[Entry] = []
    entries += alias(
        ["numpyro.infer.svi.SVI", "numpyro.infer.SVI"],
        "py:class",
        "svi.html",
        "numpyro.infer.svi.SVI",
    )
    # SVIRunResult has no entry of its own on the NumPyro site; SVI.run returns it.
    entries += alias(
        ["numpyro.infer.svi.SVIRunResult", "numpyro.infer.SVIRunResult"],
        "py:class",
        "svi.html",
        "numpyro.infer.svi.SVI.run",
    )
    entries += alias(
        ["numpyro.infer.svi.SVI.run"], "py:method", "svi.html", "numpyro.infer.svi.SVI.run"
    )
    entries += alias(
        ["numpyro.infer.elbo.Trace_ELBO", "numpyro.infer.Trace_ELBO"],
        "py:class",
        "svi.html",
        "numpyro.infer.elbo.Trace_ELBO",
    )
    entries += alias(
        ["numpyro.infer.mcmc.MCMC", "numpyro.infer.MCMC"],
        "py:class",
        "mcmc.html",
        "numpyro.infer.mcmc.MCMC",
    )
    entries += alias(
        ["numpyro.infer.hmc.NUTS", "numpyro.infer.NUTS"],
        "py:class",
        "mcmc.html",
        "numpyro.infer.hmc.NUTS",
    )
    entries += alias(
        ["numpyro.infer.autoguide.AutoNormal"],
        "py:class",
        "autoguide.html",
        "numpyro.infer.autoguide.AutoNormal",
    )
    entries += alias(
        ["numpyro.infer.util.Predictive", "numpyro.infer.Predictive"],
        "py:class",
        "utilities.html",
        "numpyro.infer.util.Predictive",
    )
    for handler in ["block", "condition", "do", "seed", "substitute", "trace", "replay"]:
        name = f"numpyro.handlers.{handler}"
        entries.append((name, "py:class", f"handlers.html#{name}"))
    for primitive in ["sample", "deterministic", "param", "factor", "plate"]:
        name = f"numpyro.primitives.{primitive}"
        role = "py:class" if primitive == "plate" else "py:function"
        entries.append((name, role, f"primitives.html#{name}"))
        entries.append((f"numpyro.{primitive}", role, f"primitives.html#{name}"))
    return entries


def _xarray() -> list[Entry]:
    entries = _generated(["xarray.DataTree", "xarray.Dataset", "xarray.DataArray"], "py:class")
    # Annotations resolve to the defining module; point them at the public pages.
    entries += [
        (
            "xarray.core.datatree.DataTree",
            "py:class",
            "generated/xarray.DataTree.html#xarray.DataTree",
        ),
        ("xarray.core.dataset.Dataset", "py:class", "generated/xarray.Dataset.html#xarray.Dataset"),
        (
            "xarray.core.dataarray.DataArray",
            "py:class",
            "generated/xarray.DataArray.html#xarray.DataArray",
        ),
    ]
    entries += _generated(
        ["xarray.open_zarr", "xarray.open_datatree", "xarray.open_dataset", "xarray.apply_ufunc"],
        "py:function",
    )
    entries += _generated(
        [
            "xarray.DataTree.to_zarr",
            "xarray.DataTree.map_over_datasets",
            "xarray.Dataset.to_zarr",
            "xarray.DataArray.mean",
        ],
        "py:method",
    )
    return entries


def _arviz_base() -> list[Entry]:
    return _generated(
        ["arviz_base.from_numpyro", "arviz_base.convert_to_datatree", "arviz_base.from_dict"],
        "py:function",
        "api/generated/",
    )


def _arviz_stats() -> list[Entry]:
    return _generated(
        [
            "arviz_stats.loo",
            "arviz_stats.compare",
            "arviz_stats.summary",
            "arviz_stats.hdi",
            "arviz_stats.eti",
            "arviz_stats.ess",
            "arviz_stats.rhat",
            "arviz_stats.loo_pit",
        ],
        "py:function",
        "api/generated/",
    )


def _arviz_plots() -> list[Entry]:
    return _generated(
        [
            "arviz_plots.plot_ppc_dist",
            "arviz_plots.plot_dist",
            "arviz_plots.plot_forest",
            "arviz_plots.plot_trace",
            "arviz_plots.plot_compare",
        ],
        "py:function",
        "api/generated/",
    )


def _mlflow() -> list[Entry]:
    page = "python_api/{}.html#$"
    return [
        ("mlflow.start_run", "py:function", page.format("mlflow")),
        ("mlflow.set_tracking_uri", "py:function", page.format("mlflow")),
        ("mlflow.log_param", "py:function", page.format("mlflow")),
        ("mlflow.log_metric", "py:function", page.format("mlflow")),
        ("mlflow.MlflowException", "py:exception", page.format("mlflow")),
        (
            "mlflow.exceptions.MlflowException",
            "py:exception",
            "python_api/mlflow.html#mlflow.MlflowException",
        ),
        ("mlflow.pyfunc.load_model", "py:function", page.format("mlflow.pyfunc")),
        ("mlflow.pyfunc.PythonModel", "py:class", page.format("mlflow.pyfunc")),
        ("mlflow.pyfunc.PyFuncModel", "py:class", page.format("mlflow.pyfunc")),
        ("mlflow.models.Model", "py:class", page.format("mlflow.models")),
        ("mlflow.models.Model.log", "py:method", page.format("mlflow.models")),
        ("mlflow.models.ModelSignature", "py:class", page.format("mlflow.models")),
        ("mlflow.models.infer_signature", "py:function", page.format("mlflow.models")),
        ("mlflow.models.model.ModelInfo", "py:class", page.format("mlflow.models")),
        (
            "mlflow.models.ModelInfo",
            "py:class",
            "python_api/mlflow.models.html#mlflow.models.model.ModelInfo",
        ),
        (
            "mlflow.models.signature.ModelSignature",
            "py:class",
            "python_api/mlflow.models.html#mlflow.models.ModelSignature",
        ),
        (
            "mlflow.models.model.Model",
            "py:class",
            "python_api/mlflow.models.html#mlflow.models.Model",
        ),
    ]


def _pandas() -> list[Entry]:
    return _generated(["pandas.DataFrame", "pandas.Series"], "py:class", "reference/api/")


def _zarr() -> list[Entry]:
    return [
        ("zarr.Group", "py:class", "api/zarr/group/#$"),
        ("zarr.open", "py:function", "api/zarr/open/#$"),
    ]


def _dask() -> list[Entry]:
    return _generated(["dask.array.Array"], "py:class")


# key -> (project name, version label, entries)
PROJECTS: dict[str, tuple[str, str, list[Entry]]] = {
    "python": ("Python", "3", _python()),
    "numpy": ("NumPy", "stable", _numpy()),
    "jax": ("JAX", "latest", _jax()),
    "numpyro": ("NumPyro", "stable", _numpyro()),
    "xarray": ("xarray", "stable", _xarray()),
    "arviz_base": ("arviz-base", "latest", _arviz_base()),
    "arviz_stats": ("arviz-stats", "latest", _arviz_stats()),
    "arviz_plots": ("arviz-plots", "latest", _arviz_plots()),
    "mlflow": ("MLflow", "latest", _mlflow()),
    "pandas": ("pandas", "stable", _pandas()),
    "zarr": ("zarr", "stable", _zarr()),
    "dask": ("Dask", "stable", _dask()),
}


def inventory_bytes(project: str, version: str, entries: list[Entry]) -> bytes:
    """Return a version 2 ``objects.inv`` for ``entries`` (sorted, one line each)."""
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    ).encode()
    seen: set[tuple[str, str]] = set()
    lines = []
    for name, role, uri in sorted(entries):
        if " " in name or (name, role) in seen:
            raise ValueError(f"bad or duplicate inventory entry {name!r} ({role})")
        seen.add((name, role))
        lines.append(f"{name} {role} 1 {uri} -\n")
    return header + zlib.compress("".join(lines).encode(), 9)


def main() -> None:
    for key, (project, version, entries) in PROJECTS.items():
        path = HERE / f"{key}.inv"
        path.write_bytes(inventory_bytes(project, version, entries))
        print(f"{path.name}: {len(entries)} objects")


if __name__ == "__main__":
    main()
