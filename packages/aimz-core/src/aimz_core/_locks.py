"""The process-wide lock that serializes tracing NumPyro kernels.

NumPyro keeps one effect-handler stack per process (``numpyro.primitives._PYRO_STACK``),
not one per thread: two threads running handlers (``trace``, ``seed``,
``substitute``...) at the same time push onto and pop from the same stack, and a site
of one thread's kernel is recorded in the other's trace (``AssertionError: all sites
must have unique names but got `w` duplicated``). Every place where aimz runs a kernel
under handlers in Python (tracing for a jitted function, ``eval_shape``, an eager
trace, SVI/MCMC setup, guide sampling) holds :data:`TRACE_LOCK`. Running an already
compiled function does not run handlers and does not take the lock.

The lock is reentrant: a traced function may trace again inside (``eval_shape`` of a
jitted function, a kernel that calls ``jax.jit``).
"""

from __future__ import annotations

import threading

#: Held while NumPyro handlers run in Python (tracing, lowering, compiling).
TRACE_LOCK = threading.RLock()

__all__ = ["TRACE_LOCK"]
