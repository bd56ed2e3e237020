"""Former home of :class:`~aimz_core.streaming.StreamPlan` (kept as an alias).

Plans pickled by aimz-core 0.3 (shipped to Dask workers) name
``aimz_core.plan.StreamPlan``; they load through this module.
"""

from aimz_core.streaming.plan import StreamPlan

__all__ = ["StreamPlan"]
