"""Utilities of aimz; see :mod:`aimz.utils.data`."""
