"""Deprecated location of :mod:`aimz_core.backend` (kept for existing imports)."""

from aimz_core.backend import INSTALL_HINT, has_io_backend, io_backend, is_url, resolve_output_dir

__all__ = ["INSTALL_HINT", "has_io_backend", "io_backend", "is_url", "resolve_output_dir"]
