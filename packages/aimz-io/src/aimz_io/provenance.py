"""Attributes every aimz output carries: when it was made, by which version."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

#: Attribute names that record where a persistent result lives (seed name first).
PATH_ATTRS = ("output_dir", "artifact_path")


@functools.cache
def aimz_version() -> str:
    """Version of the ``aimz-io`` distribution that wrote an output (looked up once).

    Example:
        >>> isinstance(aimz_version(), str)
        True
    """
    try:
        return metadata.version("aimz-io")
    except metadata.PackageNotFoundError:  # pragma: no cover - source checkout
        return "0+unknown"


def utc_now() -> datetime:
    """The current time in UTC (timezone-aware).

    Example:
        >>> utc_now().tzinfo is not None
        True
    """
    return datetime.now(UTC)


def base_attrs(num_chains: int, created_at: str | None = None) -> dict[str, Any]:
    """The attributes set on the root and on every group of an output tree.

    Args:
        num_chains: Number of chains of the draws.
        created_at: UTC ISO timestamp; defaults to now.

    Returns:
        ``{"created_at": ..., "aimz_version": ..., "num_chains": ...}``.

    Example:
        >>> sorted(base_attrs(2))
        ['aimz_version', 'created_at', 'num_chains']
    """
    return {
        "created_at": created_at or utc_now().isoformat(),
        "aimz_version": aimz_version(),
        "num_chains": int(num_chains),
    }


def path_attrs(path: object) -> dict[str, str]:
    """``output_dir`` and ``artifact_path`` attributes, both set to ``str(path)``.

    Example:
        >>> path_attrs("/tmp/x")
        {'output_dir': '/tmp/x', 'artifact_path': '/tmp/x'}
    """
    return dict.fromkeys(PATH_ATTRS, str(path))
