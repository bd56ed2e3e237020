"""Former home of :class:`~aimz_core.model.ImpactModel` (kept as an alias).

Models pickled by aimz-core 0.3 name ``aimz_core.impact_model.ImpactModel``; they
load through this module.
"""

from aimz_core.model import ImpactModel

__all__ = ["ImpactModel"]
