"""Griffe extension for the API reference: reads hf_sparse's ``Example:`` docstring sections as examples.

The package's docstrings (HF / Google style) head their doctest snippets ``Example:``; Griffe's Google parser
only turns the plural ``Examples:`` into an examples section (code) and renders the singular as an admonition
of Markdown text, where ``>>>`` lines become block quotes and ``x["a"]["b"]`` a broken cross-reference. The
docstrings stay as they are; this renames the header when the docs are built.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_HEADER = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Renames every ``Example:`` section header to ``Examples:`` before the docstring is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _HEADER.sub(r"\1Examples:", obj.docstring.value)
