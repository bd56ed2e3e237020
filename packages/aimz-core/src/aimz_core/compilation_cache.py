"""JAX's persistent compilation cache, switched on for aimz unless the user opts out.

Compiled batch functions are written to disk so a second process that runs the
same model skips compilation. The cache lives in ``$AIMZ_CACHE_DIR`` (default
``$XDG_CACHE_HOME/aimz/jax`` or ``~/.cache/aimz/jax``). Set
``AIMZ_COMPILATION_CACHE=0`` to leave JAX's configuration untouched; a cache
directory the user configured themselves is always respected.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import jax

logger = logging.getLogger("aimz")

_configured = False


def default_cache_dir() -> Path:
    """Directory used for the persistent cache when none is configured.

    Example:
        >>> default_cache_dir().name
        'jax'
    """
    if os.environ.get("AIMZ_CACHE_DIR"):
        return Path(os.environ["AIMZ_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "aimz" / "jax"


def enabled_by_env() -> bool:
    """Whether ``AIMZ_COMPILATION_CACHE`` allows aimz to configure the cache."""
    return os.environ.get("AIMZ_COMPILATION_CACHE", "1").strip().lower() not in (
        "0",
        "false",
        "no",
        "off",
    )


def ensure_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache once per process.

    Returns:
        The cache directory in use, or ``None`` when disabled.

    Example:
        >>> ensure_compilation_cache() is None or isinstance(ensure_compilation_cache(), str)
        True
    """
    global _configured
    current = jax.config.jax_compilation_cache_dir
    if _configured or current:
        return current or None
    _configured = True
    if not enabled_by_env():
        return None
    path = default_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        logger.info("Persistent compilation cache disabled: %s", err)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Small functions too (key splitting, slicing): each costs 20-100 ms to
    # compile, and together they were a third of a cached first call.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return str(path)
