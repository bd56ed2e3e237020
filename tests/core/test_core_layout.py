"""The module layout of aimz-core: old import paths, pickled names, one call path."""

from __future__ import annotations

import ast
import importlib
import inspect
import pickle
import re
import subprocess
import sys
from pathlib import Path

import cloudpickle
import jax
import numpy as np
import pytest
from aimz_core import ImpactModel
from aimz_core.streaming import StreamOptions, StreamPlan, plan_call, resolve_inputs
from aimz_core.testing import fitted_linreg, linreg_data

from ..aimz_testing import child_env

SRC = Path(importlib.import_module("aimz_core").__file__).parent

# Old module paths users, docs, pickles or Dask workers may hold, and names they hold.
ALIASES = {
    "aimz_core.impact_model": ["ImpactModel"],
    "aimz_core.plan": ["StreamPlan"],
    "aimz_core.engine": ["pad_rows", "split_range", "stream", "take_draws", "trim_block"],
    "aimz_core.sinks": ["MemorySink", "SiteLayout", "Sink", "StreamInfo"],
    "aimz_core.output": ["io_backend", "is_url", "resolve_output_dir"],
    "aimz_core.data": ["ArrayDataset", "ArrayLoader"],
    "aimz_core.planning": ["auto_batch_size"],
    "aimz_core.executable_cache": ["PersistentJit", "program_key"],
    "aimz_core.sampling": ["forward_draw", "global_trace"],
    "aimz_core.compilation_cache": ["ensure_compilation_cache"],
}


@pytest.mark.parametrize("module", sorted(ALIASES))
def test_old_import_paths_still_work(module: str) -> None:
    mod = importlib.import_module(module)
    for name in ALIASES[module]:
        assert hasattr(mod, name), f"{module}.{name}"


def test_model_class_keeps_its_pickled_name() -> None:
    """Pickles, MLmodel files and older aimz-core versions name the original path."""
    assert (ImpactModel.__module__, ImpactModel.__qualname__) == (
        "aimz_core.impact_model",
        "ImpactModel",
    )
    assert importlib.import_module("aimz_core.impact_model").ImpactModel is ImpactModel
    assert importlib.import_module("aimz_core.model").ImpactModel is ImpactModel


def test_model_class_pickles_by_reference_in_a_fresh_process() -> None:
    """cloudpickle (MLflow, Dask) pickles the class by value when its module is not
    imported; importing the model imports the alias module it is named by."""
    code = (
        "import sys, cloudpickle\n"
        "from aimz_core.model import ImpactModel\n"
        "from cloudpickle.cloudpickle import _should_pickle_by_reference as by_ref\n"
        "assert 'aimz_core.impact_model' in sys.modules\n"
        "assert by_ref(ImpactModel)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=child_env(), timeout=300)


def test_pickle_naming_the_old_paths_loads() -> None:
    """A model pickled as ``aimz_core.impact_model.ImpactModel`` and a plan pickled as
    ``aimz_core.plan.StreamPlan`` (the names aimz-core 0.3 wrote) load and compute."""
    model = fitted_linreg(num_draws=8)
    X, _ = linreg_data(12)
    data = cloudpickle.dumps(model)  # the optimizer holds closures
    assert b"aimz_core.impact_model" in data
    clone = pickle.loads(data)
    ref = model.predict_on_batch(X, rng_key=jax.random.key(3), return_datatree=False)
    out = clone.predict_on_batch(X, rng_key=jax.random.key(3), return_datatree=False)
    np.testing.assert_array_equal(out["y"], ref["y"])

    options = StreamOptions(
        kind="predict", caller="predict", batch_size=4, store="memory", return_datatree=False
    )
    plan = plan_call(
        options, resolve_inputs(model, X, None, options), model._runner(), param_input="X"
    )
    text = pickle.dumps(plan.for_workers(), protocol=0)  # text protocol: names are plain lines
    assert b"caimz_core.streaming.plan\nStreamPlan\n" in text
    old = text.replace(b"caimz_core.streaming.plan\nStreamPlan\n", b"caimz_core.plan\nStreamPlan\n")
    shipped = pickle.loads(old)
    assert isinstance(shipped, StreamPlan)
    assert shipped.fingerprint() == plan.for_workers().fingerprint()
    rows = {"X": X[:4]}
    np.testing.assert_array_equal(
        clone.compute_block(shipped, 0, 0, 4, rows)["y"],
        model.compute_block(plan, 0, 0, 4, rows)["y"],
    )


STREAMED = {
    "predict": ("X", "in_sample", "intervention", "condition", "return_sites"),
    "sample_posterior_predictive": ("X", "intervention", "condition", "return_sites"),
    "sample_prior_predictive": ("X", "num_samples", "intervention", "return_sites"),
    "log_likelihood": ("X", "y"),
}
SHARED = {
    "rng_key": None,
    "shard_axis": "obs",
    "batch_size": None,
    "store": "persistent",
    "output_dir": None,
    "progress": True,
    "return_datatree": True,
    "client": None,
    "resume": False,
    "storage_options": None,
}


@pytest.mark.parametrize("method", sorted(STREAMED))
def test_streamed_signatures_stay_explicit(method: str) -> None:
    """Every streamed method documents its keyword-only options with today's defaults,
    and each default is the one of the shared options record."""
    params = inspect.signature(getattr(ImpactModel, method)).parameters
    for name, default in SHARED.items():
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[name].default == default
        assert StreamOptions.__dataclass_fields__[name].default == default
    for name in STREAMED[method]:
        assert name in params
    assert params["kwargs"].kind is inspect.Parameter.VAR_KEYWORD
    assert getattr(ImpactModel, method).__doc__


def test_plan_is_frozen_and_complete() -> None:
    model = fitted_linreg(num_draws=8)
    X, _ = linreg_data(10)
    options = StreamOptions(
        kind="predict", caller="predict", batch_size=4, store="memory", return_datatree=False
    )
    plan = plan_call(
        options, resolve_inputs(model, X, None, options), model._runner(), param_input="X"
    )
    assert plan.size == 4 and plan.ranges == [(0, 4), (4, 8), (8, 10)]
    assert set(plan.info.sites) == {"y", "mu"}  # traced at the call (issue 15, item 3)
    with pytest.raises(AttributeError):
        plan.size = 8  # type: ignore[misc]


def test_estimate_effect_scenarios_use_the_options_record() -> None:
    X, opts = StreamOptions.from_mapping(
        "predict", "estimate_effect", {"X": 1, "batch_size": 8, "scale": 2.0}, progress=False
    )
    assert (X, opts.batch_size, opts.progress, dict(opts.kwargs)) == (1, 8, False, {"scale": 2.0})


def test_core_never_imports_io_packages() -> None:
    """The layering rule, checked on the source: no import of an upper layer."""
    banned = ("aimz_io", "aimz_mlflow", "aimz", "xarray", "zarr", "dask", "pandas", "mlflow")
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in banned, f"{path.name} imports {name}"


def test_core_names_no_upper_layer_even_as_a_string() -> None:
    """No dynamic import by name either: the IO backend is found by its entry point."""
    module_name = re.compile(r"(aimz_io|aimz_mlflow)(\.\w+)*")
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not module_name.fullmatch(node.value), f"{path.name}: {node.value!r}"


def test_io_backend_found_by_entry_point_without_importing_it() -> None:
    """A core-only import path still returns DataTrees when aimz-io is installed."""
    pytest.importorskip("aimz_io")
    code = (
        "import sys\n"
        "from aimz_core.testing import fitted_linreg, linreg_data\n"
        "model = fitted_linreg(num_draws=4)\n"
        "assert 'aimz_io' not in sys.modules\n"
        "tree = model.predict_on_batch(linreg_data(8)[0])\n"
        "assert type(tree).__name__ == 'DataTree', type(tree)\n"
        "assert 'aimz_io' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=child_env(1), timeout=300)


def test_no_module_over_600_lines() -> None:
    for path in SRC.rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 600, path.name


def test_streamed_methods_bind_like_their_signature() -> None:
    model = fitted_linreg(num_draws=4)
    X, y = linreg_data(8)
    kw = {"progress": False, "return_datatree": False}
    with pytest.raises(TypeError, match="missing a required argument: 'X'"):
        model.predict(**kw)
    with pytest.raises(TypeError, match="too many positional arguments"):
        model.log_likelihood(X, y, 1, **kw)
    by_name = model.log_likelihood(X=X, y=y, **kw)["y"]
    np.testing.assert_array_equal(model.log_likelihood(X, y, **kw)["y"], by_name)
    key = jax.random.key(1)
    np.testing.assert_array_equal(
        model.predict(X=X, rng_key=key, **kw)["y"], model.predict(X, rng_key=key, **kw)["y"]
    )
    with pytest.raises(TypeError, match="unexpected keyword argument 'scale'"):
        model.predict(X, scale=2.0, **kw)  # not a kernel parameter: the kernel's own error


def test_light_imports_stay_light() -> None:
    """``import aimz_core`` (exceptions, KernelSpec, version) loads neither NumPy nor
    JAX, and the sink types of ``aimz_core.streaming`` load no JAX (``aimz-io``
    implements sinks; ``import aimz`` must stay fast)."""
    code = (
        "import sys\n"
        "import aimz_core\n"
        "assert 'numpy' not in sys.modules and 'jax' not in sys.modules, 'aimz_core'\n"
        "from aimz_core.streaming import Sink, SiteLayout, StreamInfo\n"
        "import aimz_core.backend, aimz_core.sinks\n"
        "assert 'jax' not in sys.modules, 'aimz_core.streaming'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=child_env(), timeout=300)
