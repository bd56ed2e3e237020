"""Helpers shared by every test directory: dtype-aware comparisons, child-process flags.

Import them with a relative import from any test module or ``conftest.py`` under
``tests/`` (``tests/core``, ``tests/io``, ``tests/mlflow``)::

    from ..aimz_testing import assert_close_float

pytest runs with ``--import-mode=importlib``: a test module is imported as
``tests.<dir>.<module>`` with ``tests`` a namespace package rooted at this
directory, so the relative import needs no ``sys.path`` change. (Processes that
pytest does not start as test modules, such as Dask workers or child scripts, cannot
import this file; nothing here is meant for them.)

Which comparison to use
-----------------------
* **Exact** (``np.testing.assert_array_equal``) only where the code guarantees it
  by construction: the same compiled program on the same inputs (the same call
  repeated with the same key; a memory and a Zarr sink fed by the same batch
  function; a pickle round trip; the same batch function compiled again in another
  process with the same ``XLA_FLAGS`` and device count), values copied through
  unchanged (posterior draws, conditioned sites), and integer or boolean data.
* **Float tolerance** (:func:`assert_close_float`) for values computed by
  *different* compiled programs: other batch shapes or ``batch_size``, streaming
  versus on-batch, the draw versus the observation path, sharded versus unsharded
  or another device count. The random *keys* of such paths agree exactly
  (``fold_in(key, draw)``), but XLA compiles each shape (and each instruction set,
  e.g. ``--xla_cpu_max_isa=AVX2``) with its own vectorisation, fusion and FMA
  contraction, so floats agree to a few ulps, not bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

#: Relative tolerance per floating dtype: a few hundred ulps for float32 (whose
#: epsilon is 1.2e-7), about 5000 for float64; far below any real difference
#: between draws (another key, another row) and far above reordering noise.
FLOAT_RTOL: dict[str, float] = {
    "float16": 1e-2,
    "bfloat16": 5e-2,
    "float32": 1e-5,
    "float64": 1e-12,
}


def float_tolerance(*arrays: Any) -> tuple[float, float]:
    """``(rtol, atol)`` for comparing ``arrays`` computed by different programs.

    ``rtol`` follows the least precise floating dtype among ``arrays`` (a float32
    result checked against a float64 NumPy reference gets the float32 tolerance).
    ``atol = rtol * max(1, max |finite value|)`` of the last array (the expected one):
    an element near zero that comes from a cancellation (``X @ w + b``) carries an
    absolute error on the scale of its terms, not of itself.
    """
    dtypes = [np.asarray(a).dtype for a in arrays]
    floats = [d for d in dtypes if d.kind in "fc" or d.name == "bfloat16"]
    if not floats:
        return 0.0, 0.0
    rtol = max(FLOAT_RTOL.get(d.name, FLOAT_RTOL["float32"]) for d in floats)
    expected = np.asarray(arrays[-1])
    finite = np.abs(expected[np.isfinite(expected)]) if expected.size else expected
    scale = max(1.0, float(finite.max())) if finite.size else 1.0
    return rtol, rtol * scale


def assert_close_float(
    actual: Any,
    expected: Any,
    *,
    err_msg: str = "",
    max_mismatch_fraction: float = 0.0,
) -> None:
    """Assert ``actual`` equals ``expected`` to the tolerance their dtypes allow.

    * Floating values (either side): ``rtol``/``atol`` from :func:`float_tolerance`;
      NaNs must be NaN on both sides, infinities equal.
    * Integer and boolean values (both sides): exact. Discrete draws sampled from
      probabilities or rates that different programs computed (a Bernoulli or
      Poisson site) may flip where a uniform lands on a rounding boundary; for
      those pass ``max_mismatch_fraction`` (e.g. ``1e-3``), the largest allowed
      fraction of differing elements. Keep it 0 when one program did the sampling.

    Shapes must match exactly (no broadcasting). Accepts anything ``np.asarray``
    takes, including xarray objects.
    """
    a, e = np.asarray(actual), np.asarray(expected)
    assert a.shape == e.shape, f"shape {a.shape} != {e.shape}. {err_msg}"
    rtol, atol = float_tolerance(a, e)
    if rtol == 0.0:  # integers / booleans
        if max_mismatch_fraction:
            mismatched = float(np.mean(a != e)) if a.size else 0.0
            assert mismatched <= max_mismatch_fraction, (
                f"{mismatched:.2%} of {a.size} discrete values differ (at most "
                f"{max_mismatch_fraction:.2%} allowed). {err_msg}"
            )
        else:
            np.testing.assert_array_equal(a, e, err_msg=err_msg)
        return
    np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, equal_nan=True, err_msg=err_msg)


def assert_sites_close(
    actual: Mapping[str, Any], expected: Mapping[str, Any], *, err_msg: str = ""
) -> None:
    """:func:`assert_close_float` for every site of two ``{site: array}`` results,
    which must have the same sites."""
    assert set(actual) == set(expected), (sorted(actual), sorted(expected))
    for site in expected:
        assert_close_float(actual[site], expected[site], err_msg=f"site {site!r}. {err_msg}")


DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def child_xla_flags(
    device_count: int | None = None, environ: Mapping[str, str] = os.environ
) -> str:
    """``XLA_FLAGS`` for a child process: this process's flags, device count replaced.

    Every inherited flag is kept (an instruction-set limit such as
    ``--xla_cpu_max_isa=AVX2`` must reach the child too); only an inherited
    ``--xla_force_host_platform_device_count`` is dropped, and ``device_count``
    (when above 1) is appended in its place.
    """
    flags = [
        flag
        for flag in environ.get("XLA_FLAGS", "").split()
        if not flag.startswith(DEVICE_COUNT_FLAG)
    ]
    if device_count is not None and device_count > 1:
        flags.append(f"{DEVICE_COUNT_FLAG}={device_count}")
    return " ".join(flags)


def child_env(device_count: int | None = None, **extra: str) -> dict[str, str]:
    """``os.environ`` plus ``extra``, with ``XLA_FLAGS`` from :func:`child_xla_flags`
    (unset when no flag is left)."""
    env = {**os.environ, **extra}
    flags = child_xla_flags(device_count, env)
    if flags:
        env["XLA_FLAGS"] = flags
    else:
        env.pop("XLA_FLAGS", None)
    return env
