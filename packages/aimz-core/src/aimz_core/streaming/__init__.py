"""Streamed calls: options, the plan, per-batch computation, the loop and sinks.

A streamed call (``predict``, ``sample_posterior_predictive``,
``sample_prior_predictive``, ``log_likelihood``) goes through one path:
:class:`StreamOptions` -> :func:`resolve_inputs` -> :func:`plan_call` (a frozen
:class:`StreamPlan`) -> :func:`run_plan`, which streams the blocks a
:class:`BlockRunner` computes into a :class:`Sink` (or hands the plan to the IO
backend's distributed runner).

The sink types import no JAX; the other names load on first access, so that
``aimz-io`` can implement sinks without paying for JAX at import.

Example:
    >>> from aimz_core.streaming import StreamOptions
    >>> StreamOptions(kind="loglik", caller="log_likelihood").group
    'log_likelihood'
"""

from aimz_core._lazy import lazy_attributes
from aimz_core.streaming.sinks import MemorySink, Sink, SiteLayout, StreamInfo

_LAZY = {
    "StreamOptions": "aimz_core.streaming.options",
    "streamed": "aimz_core.streaming.options",
    "CallInputs": "aimz_core.streaming.plan",
    "StreamPlan": "aimz_core.streaming.plan",
    "plan_call": "aimz_core.streaming.plan",
    "resolve_inputs": "aimz_core.streaming.plan",
    "split_range": "aimz_core.streaming.plan",
    "BlockRunner": "aimz_core.streaming.blocks",
    "dim_names": "aimz_core.streaming.blocks",
    "run_plan": "aimz_core.streaming.loop",
    "stream": "aimz_core.streaming.loop",
    "trim_block": "aimz_core.streaming.loop",
}


__getattr__, __dir__ = lazy_attributes("aimz_core.streaming", globals(), _LAZY)


__all__ = [
    # options and planning
    "CallInputs",
    "StreamOptions",
    "StreamPlan",
    "plan_call",
    "resolve_inputs",
    "split_range",
    "streamed",
    # computing and streaming batches
    "BlockRunner",
    "dim_names",
    "run_plan",
    "stream",
    "trim_block",
    # sinks (no JAX)
    "MemorySink",
    "SiteLayout",
    "Sink",
    "StreamInfo",
]
