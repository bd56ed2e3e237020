"""Former home of the executable cache (kept as an alias); see
:mod:`aimz_core._jit_cache`."""

from aimz_core._jit_cache import (
    FORMAT_VERSION,
    FRESH_COMPILE_OPTIONS,
    PersistentJit,
    call_signature,
    executable_cache_dir,
    program_key,
)

__all__ = [
    "FORMAT_VERSION",
    "FRESH_COMPILE_OPTIONS",
    "PersistentJit",
    "call_signature",
    "executable_cache_dir",
    "program_key",
]
