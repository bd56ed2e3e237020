"""Default dimension names of output sites: ``<site>_dim_<i>``.

A site's axes after the draw axis are named ``<site>_dim_0``, ``<site>_dim_1``, ...
unless the kernel gives them names (plates, ``dims`` of the ``KernelSpec``). The
core and ``aimz-io`` both name axes with these functions, so arrays and DataTrees
agree.

Example:
    >>> default_dims("y", 2)
    ('y_dim_0', 'y_dim_1')
"""

from __future__ import annotations

__all__ = ["default_dim", "default_dims"]


def default_dim(site: str, axis: int) -> str:
    """The default name of axis ``axis`` (counted after the draw axis) of ``site``.

    Args:
        site: The site name.
        axis: The axis, ``0`` for the first axis after the draw axis.

    Returns:
        ``"<site>_dim_<axis>"``.

    Example:
        >>> default_dim("mu", 0)
        'mu_dim_0'
    """
    return f"{site}_dim_{axis}"


def default_dims(site: str, ndim: int) -> tuple[str, ...]:
    """The default names of the ``ndim`` axes after the draw axis of ``site``.

    Args:
        site: The site name.
        ndim: Number of axes after the draw axis.

    Returns:
        ``("<site>_dim_0", ..., "<site>_dim_<ndim-1>")``.

    Example:
        >>> default_dims("w", 1)
        ('w_dim_0',)
    """
    return tuple(default_dim(site, i) for i in range(ndim))
