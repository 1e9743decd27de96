"""A griffe extension for the API reference: ``#:`` comments document attributes.

The code documents module constants, dataclass and model fields with a ``#:``
comment on the lines above them (as Sphinx's autodoc reads them). griffe reads
only string literals after an attribute, so without this the reference would
show no field of ``RunnerOptions`` or ``ExperimentDefaults``. Loaded by
``mkdocs.yml`` (``extensions``); an attribute with a docstring of its own keeps it.
"""

from __future__ import annotations

import ast
from typing import Any

import griffe


class DocComments(griffe.Extension):
    """Gives an attribute without a docstring the ``#:`` comment block right above it."""

    def on_attribute_instance(self, *, node: Any, attr: griffe.Attribute, **kwargs: Any) -> None:
        if attr.docstring is not None or not isinstance(node, ast.AST):
            return
        lineno = getattr(node, "lineno", None)
        lines = attr.module.lines
        if lineno is None or not lines:
            return
        found: list[str] = []
        index = lineno - 2  # the line above the attribute, 0-based
        while index >= 0:
            text = lines[index].strip()
            if not text.startswith("#:"):
                break
            found.append(text[2:].removeprefix(" "))
            index -= 1
        if found:
            attr.docstring = griffe.Docstring(
                "\n".join(reversed(found)), lineno=index + 2, parent=attr
            )
