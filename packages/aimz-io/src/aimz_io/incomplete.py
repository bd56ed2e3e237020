"""Find and remove the incomplete per-call stores a killed call leaves behind.

A streamed call writes ``<output_dir>/<UTC timestamp>_<caller>/`` and marks it
complete (``aimz_complete``) only at the very end. A call that fails or is
interrupted in Python deletes its store, but a process killed outright
(``SIGKILL``, out-of-memory killer, power loss) cannot: its store stays, without the
marker, and :func:`~aimz_io.artifact.open_tree` refuses it. Every store records the
fingerprint of its call (``aimz_plan``), so the same call with ``resume=True``
adopts it; :func:`list_incomplete` and :func:`remove_incomplete` find and delete the
rest.

Only local directories are scanned; symbolic links are never followed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aimz_core.backend import is_url

from aimz_io.artifact import COMPLETE_ATTR, PLAN_ATTR

#: ``remove_incomplete`` keeps stores modified more recently than this by default:
#: they may belong to a call that is still running.
DEFAULT_OLDER_THAN = timedelta(hours=1)

# `<UTC %Y%m%dT%H%M%S%fZ>_<caller>`, as `artifact.create_call_dir` names them.
_CALL_DIR = re.compile(r"^(\d{8}T\d{12})Z_([A-Za-z0-9_.-]+)$")


@dataclass(frozen=True)
class IncompleteStore:
    """A per-call store without the completion marker.

    Attributes:
        path: The per-call directory.
        caller: Method that started the call (``"predict"``, ...).
        created_at: When the call started (UTC, from the directory name).
        modified_at: Last modification of any file in the store (UTC).
        size: Bytes on disk (files only, links not followed).
        fingerprint: The call's plan fingerprint (``resume=True`` adopts the store
            when it matches); ``None`` when the call was killed before it wrote the
            group metadata, or for stores written by an older aimz.

    Example:
        >>> from datetime import UTC, datetime
        >>> from pathlib import Path
        >>> now = datetime.now(UTC)
        >>> store = IncompleteStore(Path("out/predict-x"), "predict", now, now, 0, None)
        >>> store.caller, store.fingerprint is None
        ('predict', True)
    """

    path: Path
    caller: str
    created_at: datetime
    modified_at: datetime
    size: int
    fingerprint: str | None


def list_incomplete(output_dir: str | Path) -> list[IncompleteStore]:
    """The incomplete per-call stores directly under ``output_dir``, oldest first.

    A store is incomplete when its directory is named like an aimz call directory
    and it has no ``aimz_complete`` marker: its call was killed or is still
    running. Complete stores and anything not written by aimz are never listed.

    Args:
        output_dir: The ``output_dir`` of the calls (a local directory).

    Returns:
        One :class:`IncompleteStore` per incomplete store (empty when the directory
        does not exist).

    Example:
        >>> import tempfile
        >>> list_incomplete(tempfile.mkdtemp())
        []
    """
    base = _local_dir(output_dir)
    if not base.is_dir():
        return []
    found = []
    with os.scandir(base) as entries:
        for entry in entries:
            match = _CALL_DIR.match(entry.name)
            if match is None or not entry.is_dir(follow_symlinks=False):
                continue
            store = _inspect(Path(entry.path), match)
            if store is not None:
                found.append(store)
    return sorted(found, key=lambda s: s.path.name)


def remove_incomplete(
    output_dir: str | Path, *, older_than: timedelta | float = DEFAULT_OLDER_THAN
) -> list[IncompleteStore]:
    """Delete the incomplete stores under ``output_dir`` not modified for ``older_than``.

    A running call keeps writing into its store, so by default only stores left
    untouched for an hour are removed. Pass ``older_than=0`` to remove every
    incomplete store (only when no call into ``output_dir`` is running). Complete
    stores are never removed, and symbolic links are never followed.

    Args:
        output_dir: The ``output_dir`` of the calls (a local directory).
        older_than: Minimum time since the last write: a ``datetime.timedelta`` or
            seconds.

    Returns:
        The stores removed.

    Raises:
        ValueError: ``older_than`` is negative, or ``output_dir`` is a URL.

    Example:
        >>> import tempfile
        >>> remove_incomplete(tempfile.mkdtemp(), older_than=0)
        []
    """
    age = older_than if isinstance(older_than, timedelta) else timedelta(seconds=older_than)
    if age < timedelta(0):
        raise ValueError(f"`older_than` must not be negative, got {older_than!r}.")
    base = _local_dir(output_dir).resolve()
    cutoff = datetime.now(UTC) - age
    removed = []
    for store in list_incomplete(base):
        if store.modified_at > cutoff:
            continue
        path = store.path
        # Re-check right before deleting: never a link, never outside `base`, and
        # never a store that was completed in the meantime.
        if path.is_symlink() or path.resolve().parent != base:
            continue
        if _inspect(path, _CALL_DIR.match(path.name)) is None:
            continue
        shutil.rmtree(path)
        removed.append(store)
    return removed


def _local_dir(output_dir: str | Path) -> Path:
    if is_url(output_dir):
        raise ValueError(
            f"Only local output directories can be scanned for incomplete stores, got "
            f"{str(output_dir)!r}."
        )
    return Path(output_dir).expanduser()


def _inspect(path: Path, match: re.Match[str] | None) -> IncompleteStore | None:
    """The store at ``path`` when it is an incomplete aimz store, else ``None``."""
    if match is None:
        return None
    attrs: dict = {}
    meta = path / "zarr.json"
    if meta.is_symlink():
        return None
    if meta.is_file():
        try:
            node = json.loads(meta.read_text())
        except (OSError, ValueError):
            node = None  # killed while writing the metadata: still an aimz call dir
        if isinstance(node, dict):
            attrs = node.get("attributes") or {}
            if node.get("node_type") != "group" or attrs.get(COMPLETE_ATTR) is True:
                return None
            if "num_chains" not in attrs:
                return None  # some other Zarr group: not ours
    size, latest = _usage(path)
    created = datetime.strptime(match.group(1), "%Y%m%dT%H%M%S%f").replace(tzinfo=UTC)
    return IncompleteStore(
        path=path,
        caller=str(attrs.get("caller", match.group(2))),
        created_at=created,
        modified_at=datetime.fromtimestamp(latest, UTC),
        size=size,
        fingerprint=attrs.get(PLAN_ATTR),
    )


def _usage(path: Path) -> tuple[int, float]:
    """Total file bytes under ``path`` and the latest modification time (links skipped)."""
    size, latest = 0, path.lstat().st_mtime
    for root, dirs, files in os.walk(path, followlinks=False):
        for name in [*dirs, *files]:
            try:
                stat = os.lstat(os.path.join(root, name))
            except FileNotFoundError:  # removed while we look
                continue
            latest = max(latest, stat.st_mtime)
            if name in files and not os.path.islink(os.path.join(root, name)):
                size += stat.st_size
    return size, latest or time.time()


__all__ = ["DEFAULT_OLDER_THAN", "IncompleteStore", "list_incomplete", "remove_incomplete"]
