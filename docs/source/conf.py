"""Sphinx configuration for the trionet documentation.

Build with ``make docs`` (warnings are errors).  No network access is
needed: intersphinx is deliberately not used, so Trio and stdlib names are
written as ``literals`` rather than cross-references.
"""

from __future__ import annotations

import os
import sys

# Document the trionet in this checkout even if another copy is installed.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import importlib
import pkgutil

import trionet


def _restore_defining_modules() -> None:
    """Point ``__module__`` of re-exported objects back at their private module.

    ``trionet/__init__.py`` sets ``__module__ = "trionet"`` on everything it
    re-exports, so reprs and tracebacks say ``trionet.Name``.  autodoc reads
    ``#:`` attribute comments (e.g. the documented fields of ``ServerConfig``)
    from the source of ``obj.__module__``, which would be ``__init__.py``.  The
    pages still name everything ``trionet.Name``: that comes from the
    directives, not from ``__module__``.
    """
    private = [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(trionet.__path__, "trionet.")
        if info.name.startswith("trionet._") and info.name != "trionet.__main__"
    ]
    # A private package (trionet._client) re-exports its modules' names in
    # its own __all__: look in the deepest modules first.
    private.sort(key=lambda module: -module.__name__.count("."))
    for name in trionet.__all__:
        obj = getattr(trionet, name)
        if getattr(obj, "__module__", None) != "trionet":
            continue
        for module in private:
            # The defining module lists the name in its own __all__.
            if module.__dict__.get(name) is obj and name in getattr(module, "__all__", ()):
                try:
                    obj.__module__ = module.__name__
                except (AttributeError, TypeError):
                    pass
                break


_restore_defining_modules()

project = "trionet"
author = "The trionet developers"
copyright = "2025, The trionet developers"
version = trionet.__version__
release = trionet.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

# napoleon reads an attribute's ``#:`` comment as "type: description" when
# it has a colon, so ``#: ``SO_KEEPALIVE``: False, True ...`` would render
# as a type.  Our attribute comments are prose: leave them to autodoc.
# (napoleon's setup() connects this module-level function by name, and this
# file runs before extensions are set up.)
import sphinx.ext.napoleon as _napoleon  # noqa: E402

_napoleon_process_docstring = _napoleon._process_docstring


def _process_docstring(app, what, name, obj, options, lines):  # type: ignore[no-untyped-def]
    if what != "attribute":
        _napoleon_process_docstring(app, what, name, obj, options, lines)


_napoleon._process_docstring = _process_docstring

# Google-style docstrings only.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# ``Attributes:`` sections become plain field lists, not separate ``attribute``
# objects that would duplicate the ones autodoc finds (``#:`` comments, slots).
napoleon_use_ivar = True

# The library uses ``from __future__ import annotations``; rendering the
# annotations into descriptions would ask autodoc to evaluate forward
# references it cannot always resolve.  Signatures still show them.
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_member_order = "bysource"
autodoc_default_options = {
    "members": True,
    "undoc-members": False,
    "show-inheritance": False,
}
# attrs-generated __init__ methods have no source defaults to preserve.
autodoc_preserve_defaults = False

nitpicky = False
default_role = "literal"

templates_path: list[str] = []
exclude_patterns = ["_build"]

html_theme = "furo"
html_title = f"trionet {release}"
# Only if present: git does not keep an empty directory.
_static = os.path.join(os.path.dirname(__file__), "_static")
html_static_path = ["_static"] if os.path.isdir(_static) else []
