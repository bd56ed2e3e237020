"""Stored autotuning choices: one winner per program key, in memory and on disk.

A choice lives in this process's memory and, where the executable cache persists,
in ``<cache dir>/autotune/<key>.json`` (see :mod:`~aimz_core.streaming._autotune`
for what is tuned and how the key is made). A file that is unreadable, of another
format version, or names a formulation this version cannot run is ignored (the
program is tuned again and the file overwritten).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax

from aimz_core._jit_cache import default_cache_dir, enabled_by_env
from aimz_core.streaming._formulations import MAX_BATCHES_PER_LAUNCH, Formulation

#: Bumped when the key or the stored format changes.
VERSION = 2
_LOCK = threading.Lock()
_MEMORY: dict[str, Formulation] = {}
_BUSY: set[str] = set()
#: Event counts (read by tests): timed slices, tuned calls, stored choices reused,
#: choices read from disk.
COUNTS: dict[str, int] = {"timed": 0, "tuned": 0, "reused": 0, "loaded": 0}


def autotune_dir() -> Path | None:
    """Where choices are stored: next to the executable cache, ``None`` when it is off.

    Example:
        >>> path = autotune_dir()
        >>> path is None or path.name == "autotune"
        True
    """
    if not enabled_by_env():
        return None
    return default_cache_dir() / "autotune"


_DEFAULT: Any = object()


def _store_path(key: str, directory: Path | None) -> Path | None:
    base = autotune_dir() if directory is _DEFAULT else directory
    return None if base is None else base / f"{key}.json"


def _valid(found: Formulation) -> bool:
    """Whether a stored choice is one this version can run (files may be foreign)."""
    block, batches = found.block, found.batches

    def count(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    return (
        found.mode in ("map", "vmap")
        and (block is None or count(block))
        and count(batches)
        and batches <= MAX_BATCHES_PER_LAUNCH
    )


def lookup(key: str, directory: Path | None = _DEFAULT) -> Formulation | None:
    """The stored choice for ``key``: from memory, else from ``directory`` (default
    :func:`autotune_dir`; then remembered in memory).

    Example:
        >>> lookup("no-such-program", directory=None) is None
        True
    """
    with _LOCK:
        if key in _MEMORY:
            return _MEMORY[key]
    path = _store_path(key, directory)
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        found = Formulation(str(data["mode"]), data["block"], data.get("batches", 1))
        if not _valid(found) or data.get("version") != VERSION:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable or foreign: tune again (and overwrite)
    with _LOCK:
        _MEMORY[key] = found
        COUNTS["loaded"] += 1
    return found


def store(
    key: str,
    winner: Formulation,
    timings: Mapping[str, float],
    directory: Path | None = _DEFAULT,
) -> None:
    """Remember ``winner`` for ``key`` in memory and in ``directory`` (default
    :func:`autotune_dir`, ``None``: memory only) as ``<key>.json``.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> store("doc-example", Formulation("map"), {"map": 1e-3}, directory=d)
        >>> forget()  # memory only: the file is read back
        >>> lookup("doc-example", directory=d), COUNTS["loaded"]
        (Formulation(mode='map', block=None, batches=1), 1)
        >>> forget()
    """
    with _LOCK:
        _MEMORY[key] = winner
    path = _store_path(key, directory)
    if path is None:
        return
    payload = {
        "version": VERSION,
        "mode": winner.mode,
        "block": winner.block,
        "batches": winner.batches,
        "device_kind": jax.devices()[0].device_kind,
        "seconds_per_draw": dict(timings),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1)
        os.replace(tmp, path)
    except OSError:  # read-only cache: the choice stays in memory
        pass


def forget() -> None:
    """Drop the choices kept in memory (not those on disk) and reset :data:`COUNTS`.

    Example:
        >>> forget(); COUNTS["timed"]
        0
    """
    with _LOCK:
        _MEMORY.clear()
        for name in COUNTS:
            COUNTS[name] = 0


__all__ = ["COUNTS", "VERSION", "autotune_dir", "forget", "lookup", "store"]
