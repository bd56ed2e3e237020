"""Former home of the sink interface (kept as an alias); see
:mod:`aimz_core.streaming.sinks`. Imports no JAX."""

from aimz_core.streaming.sinks import MemorySink, Sink, SiteLayout, StreamInfo

__all__ = ["MemorySink", "SiteLayout", "Sink", "StreamInfo"]
