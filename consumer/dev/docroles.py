"""A griffe extension for the docs site: the docstrings' reST roles read as code in Markdown.

The project's docstrings cross-reference with Sphinx roles (``:class:`~schemas.errors.X```);
mkdocstrings renders Markdown, where those would show as raw text. ``mkdocs.yml`` loads
:class:`RstRoles`, which rewrites each role to inline code: the last dotted part with ``~``,
the whole path without, as Sphinx shows them.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

__all__ = ["RstRoles", "plain_roles"]

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|exc|mod|obj|const):`(~?)([^`]+)`")


def plain_roles(text: str) -> str:
    """``text`` with every reST cross-reference role written as inline code."""

    def code(match: re.Match[str]) -> str:
        target = match.group(2)
        return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"

    return _ROLE.sub(code, text)


class RstRoles(griffe.Extension):
    """Rewrites the roles of every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Called by griffe once per loaded object."""
        if obj.docstring is not None:
            obj.docstring.value = plain_roles(obj.docstring.value)
