"""Former home of the per-draw functions (kept as an alias); see
:mod:`aimz_core._draws`."""

from aimz_core._draws import (
    check_subsample_plates,
    forward_draw,
    global_trace,
    loglik_draw,
    pin_subsample,
    site_dims,
)

__all__ = [
    "check_subsample_plates",
    "forward_draw",
    "global_trace",
    "loglik_draw",
    "pin_subsample",
    "site_dims",
]
