"""Former home of the streaming loop and its helpers (kept as an alias).

See :mod:`aimz_core.streaming.loop`, :mod:`aimz_core.streaming.plan`,
:mod:`aimz_core._posterior` and :mod:`aimz_core.arguments`.
"""

from aimz_core._posterior import take_draws
from aimz_core.arguments import pad_rows
from aimz_core.streaming.loop import stream, trim_block
from aimz_core.streaming.plan import split_range

__all__ = ["pad_rows", "split_range", "stream", "take_draws", "trim_block"]
