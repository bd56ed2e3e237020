"""Former home of JAX's compilation cache setup (kept as an alias); see
:mod:`aimz_core._jit_cache`."""

from aimz_core._jit_cache import default_cache_dir, enabled_by_env, ensure_compilation_cache

__all__ = ["default_cache_dir", "enabled_by_env", "ensure_compilation_cache"]
