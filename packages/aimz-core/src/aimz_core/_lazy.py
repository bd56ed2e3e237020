"""Lazy attributes of a package: names whose modules import JAX load on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(
    package: str, namespace: dict[str, Any], lazy: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module ``__getattr__`` and ``__dir__`` that import ``lazy[name]`` on first access.

    Example:
        >>> ns = {}
        >>> getattr_, dir_ = lazy_attributes("pkg", ns, {"sqrt": "math"})
        >>> dir_(), "sqrt" in ns
        (['sqrt'], False)
        >>> getattr_("sqrt")(4.0), "sqrt" in ns
        (2.0, True)
    """

    def __getattr__(name: str) -> Any:
        module = lazy.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted([*namespace, *lazy])

    return __getattr__, __dir__


__all__ = ["lazy_attributes"]
