"""Where results go: the optional ``aimz-io`` backend and output directories."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

INSTALL_HINT = (
    "Install it with `pip install aimz-io` (or the full `pip install aimz`), or ask "
    "for plain arrays with `return_datatree=False`."
)


def io_backend(purpose: str = "DataTree outputs") -> ModuleType:
    """Import ``aimz_io.backend`` or raise an ``ImportError`` with the install hint.

    Example:
        >>> try:
        ...     backend = io_backend()
        ... except ImportError:
        ...     backend = None
    """
    try:
        return importlib.import_module("aimz_io.backend")
    except ImportError as err:
        if err.name not in (None, "aimz_io", "aimz_io.backend"):
            raise
        raise ImportError(f"{purpose} need the `aimz-io` distribution. {INSTALL_HINT}") from err


def has_io_backend() -> bool:
    """Whether ``aimz-io`` is importable."""
    return importlib.util.find_spec("aimz_io") is not None


def is_url(output_dir: object) -> bool:
    """Whether ``output_dir`` is an object-store URL such as ``s3://bucket/prefix``.

    Example:
        >>> is_url("s3://bucket/runs"), is_url("runs/")
        (True, False)
    """
    return (
        isinstance(output_dir, str) and "://" in output_dir and not output_dir.startswith("file:")
    )


def resolve_output_dir(output_dir: str | Path) -> Path | str:
    """Expand and resolve a user-given output directory and create it (URLs are kept)."""
    if is_url(output_dir):
        return str(output_dir)
    if not isinstance(output_dir, (str, Path)):
        raise TypeError(
            f"`output_dir` must be a path (str or pathlib.Path), got {type(output_dir).__name__}."
        )
    path = Path(output_dir).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"`output_dir` {str(path)!r} exists and is not a directory.")
    path.mkdir(parents=True, exist_ok=True)
    return path
