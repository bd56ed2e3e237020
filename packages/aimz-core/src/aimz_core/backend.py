"""Where results go: the IO backend protocol, its registration, output directories.

The core streams arrays; DataTrees, Zarr stores and Dask runs belong to an IO
backend, an object (usually a module) with the functions of :class:`IOBackend`.
``aimz-io`` is one: it registers :mod:`aimz_io.backend` with
:func:`register_backend` when imported, and its distribution declares it under the
``aimz_core.backends`` entry point group, so an installed backend is found without
being imported first. The core never imports a backend by itself:
it resolves the registered target through the import system on each use, so a
blocked or missing backend raises the usual :class:`ImportError` with the install
hint.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, Protocol, runtime_checkable

INSTALL_HINT = (
    "Install it with `pip install aimz-io` (or the full `pip install aimz`), or ask "
    "for plain arrays with `return_datatree=False`."
)

#: Entry point group under which distributions declare an IO backend module.
ENTRY_POINT_GROUP = "aimz_core.backends"

_registered: list[str] = []


@runtime_checkable
class IOBackend(Protocol):
    """The functions the core calls on an IO backend.

    Example:
        >>> import types
        >>> isinstance(types.SimpleNamespace(), IOBackend)
        False
    """

    def make_sink(
        self,
        *,
        store: Literal["persistent", "memory"],
        base_dir: Path | None,
        progress: bool = True,
        fingerprint: Any = None,
    ) -> Any:
        """The :class:`~aimz_core.streaming.Sink` of one streamed call."""

    def tree_from_arrays(self, groups: dict[str, Any], **kwargs: Any) -> Any:
        """A DataTree of in-memory results."""

    def resolve_client(self, client: Any) -> Any:
        """The Dask client of a distributed call."""

    def run_distributed(self, model: Any, plan: Any, **kwargs: Any) -> Any:
        """Run a planned call on Dask workers, resumably or to an object store."""

    def effect_tree(self, baseline: Any, intervention: Any, **kwargs: Any) -> Any:
        """The DataTree of the effect of an intervention."""


def register_backend(module: str) -> None:
    """Register the IO backend module ``module`` (imported by name on use).

    Example:
        >>> register_backend("aimz_io.backend")
    """
    if module not in _registered:
        _registered.append(module)


@cache
def _declared() -> tuple[str, ...]:
    """Backend modules declared under :data:`ENTRY_POINT_GROUP` (scanned once)."""
    return tuple(ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _targets() -> tuple[str, ...]:
    return (*_registered, *_declared())


def io_backend(purpose: str = "DataTree outputs") -> ModuleType:
    """The IO backend, or an ``ImportError`` with the install hint.

    Example:
        >>> try:
        ...     backend = io_backend()
        ... except ImportError:
        ...     backend = None
    """
    targets = _targets()
    for target in targets:
        try:
            return importlib.import_module(target)
        except ImportError as err:
            parts = target.split(".")
            names = {".".join(parts[: i + 1]) for i in range(len(parts))}
            if err.name not in (None, *names):
                raise
    raise ImportError(f"{purpose} need the `aimz-io` distribution. {INSTALL_HINT}")


def has_io_backend() -> bool:
    """Whether an IO backend is importable.

    Example:
        >>> isinstance(has_io_backend(), bool)
        True
    """
    for target in _targets():
        try:
            if importlib.util.find_spec(target.split(".")[0]) is not None:
                return True
        except ValueError:  # a module set to None in sys.modules
            continue
    return False


def is_url(output_dir: object) -> bool:
    """Whether ``output_dir`` is an object-store URL such as ``s3://bucket/prefix``.

    Example:
        >>> is_url("s3://bucket/runs"), is_url("runs/")
        (True, False)
    """
    return (
        isinstance(output_dir, str) and "://" in output_dir and not output_dir.startswith("file:")
    )


def local_path(output_dir: str | Path) -> Path:
    """The local path of a user-given output directory (not created).

    A ``file:`` URL (``file:///srv/out``, ``file://localhost/srv/out``) maps to its
    local path; ``~`` is expanded and the result made absolute.

    Raises:
        TypeError: If ``output_dir`` is not a ``str`` or :class:`~pathlib.Path`.
        ValueError: For an empty string or a ``file:`` URL naming another host.

    Example:
        >>> local_path("file:///srv/out").as_posix()
        '/srv/out'
    """
    if not isinstance(output_dir, (str, Path)):
        raise TypeError(
            f"`output_dir` must be a path (str or pathlib.Path), got {type(output_dir).__name__}."
        )
    if isinstance(output_dir, str):
        if not output_dir.strip():
            raise ValueError(
                "`output_dir` must not be an empty string; pass a directory, or None for "
                "a temporary directory."
            )
        if output_dir.lower().startswith("file:"):
            from urllib.parse import urlsplit
            from urllib.request import url2pathname

            parts = urlsplit(output_dir)
            if parts.netloc not in ("", "localhost"):
                raise ValueError(
                    f"`output_dir` {output_dir!r} is a `file:` URL of another host "
                    f"({parts.netloc!r}); give a local path or `file:///path`."
                )
            if not parts.path:
                raise ValueError(f"`output_dir` {output_dir!r} is a `file:` URL without a path.")
            output_dir = url2pathname(parts.path)
    return Path(output_dir).expanduser().resolve()


def check_output_dir(output_dir: str | Path | None) -> None:
    """Check a user-given output directory without creating anything.

    Raises:
        TypeError: If ``output_dir`` is not ``None``, a ``str`` or a Path.
        ValueError: For an empty string or a ``file:`` URL of another host.
        NotADirectoryError: If the path exists and is not a directory.

    Example:
        >>> check_output_dir(None); check_output_dir("s3://bucket/runs")
        >>> check_output_dir("")
        Traceback (most recent call last):
        ...
        ValueError: `output_dir` must not be an empty string; pass a directory, or None for a temporary directory.
    """  # noqa: E501
    if output_dir is None or is_url(output_dir):
        return
    path = local_path(output_dir)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"`output_dir` {str(path)!r} exists and is not a directory.")


def resolve_output_dir(output_dir: str | Path) -> Path | str:
    """Expand and resolve a user-given output directory and create it (URLs are kept).

    A ``file:`` URL is a local directory (see :func:`local_path`).

    Example:
        >>> resolve_output_dir("s3://bucket/runs")
        's3://bucket/runs'
    """
    if is_url(output_dir):
        return str(output_dir)
    check_output_dir(output_dir)
    path = local_path(output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


__all__ = [
    # the backend protocol and its registration
    "ENTRY_POINT_GROUP",
    "INSTALL_HINT",
    "IOBackend",
    "has_io_backend",
    "io_backend",
    "register_backend",
    # output locations
    "check_output_dir",
    "is_url",
    "local_path",
    "resolve_output_dir",
]
