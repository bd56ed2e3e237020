"""Sphinx configuration of the aimz documentation.

The aimz distributions are installed in the environment (``uv sync``), so autodoc
imports them directly. Intersphinx is off: the build must not need the network.
"""

from __future__ import annotations

import importlib.metadata

project = "aimz"
author = "aimz developers"
copyright = "aimz developers"
try:
    release = importlib.metadata.version("aimz")
except importlib.metadata.PackageNotFoundError:
    release = "unknown"
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True

autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
}
autodoc_member_order = "bysource"
autodoc_typehints = "description"

exclude_patterns = ["_build"]
html_theme = "alabaster"
