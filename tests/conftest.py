"""Session-wide setup of the whole test suite: a bytecode cache outside the source tree.

Many tests start Python processes (the examples, ``aimz demo`` and ``aimz predict``,
``mlflow models serve`` and its workers, MLflow's requirement inference, fresh
interpreters that load a pickled model). Each imports JAX, NumPyro, xarray and often
MLflow. Where ``PYTHONDONTWRITEBYTECODE`` is set (as in some sandboxes and CI images)
no ``.pyc`` file is ever written, so every one of those processes compiles all of
those modules from source again: about 9 s of CPU per process for JAX, NumPyro, xarray
and aimz alone, twice that with MLflow.

In that case, and only then, the suite keeps the bytecode under
``PYTHONPYCACHEPREFIX`` in a folder of the temporary directory instead: nothing is
written next to the sources (which is what ``PYTHONDONTWRITEBYTECODE`` is there
for), and this process and every child process share the compiled modules. Python
checks each cached file against its source's modification time and size, so an
edited module is compiled again. ``AIMZ_TEST_PYCACHE=0`` switches this off; a
``PYTHONPYCACHEPREFIX`` set by the user is left alone.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def _share_bytecode() -> None:
    if os.environ.get("AIMZ_TEST_PYCACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return
    if not sys.dont_write_bytecode or sys.pycache_prefix or os.environ.get("PYTHONPYCACHEPREFIX"):
        return  # bytecode is written as usual, or the user chose where
    user = getattr(os, "getuid", lambda: "user")()
    prefix = Path(tempfile.gettempdir()) / f"aimz-tests-pycache-{user}"
    try:
        prefix.mkdir(mode=0o700, exist_ok=True)
        info = prefix.stat()
    except OSError:
        return
    if hasattr(os, "getuid") and (info.st_uid != os.getuid() or info.st_mode & 0o022):
        return  # not ours alone: never load bytecode others could have written
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(prefix)
    # This process too, for the modules it has not imported yet.
    sys.pycache_prefix = str(prefix)
    sys.dont_write_bytecode = False


_share_bytecode()
