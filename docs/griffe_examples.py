"""Griffe extension used by the API reference (mkdocs.yml loads it; it is not a page).

The docstrings follow Google style with an `Example:` heading over doctest lines. Griffe
knows only the plural, `Examples:`, as a section and reads the singular as an admonition
of free Markdown, where `>>> x[0][0]` would become a reference link. This extension
renames the heading when the docstring is loaded, so the examples render as code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE_HEADING = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Reads a docstring's `Example:` heading as griffe's `Examples:` section."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        del kwargs
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE_HEADING.sub(r"\g<indent>Examples:", obj.docstring.value)
