"""A griffe extension for the API reference: Sphinx roles in docstrings as Markdown.

rnnscan's docstrings name other objects the Sphinx way (:func:`rnnscan.solve`,
:class:`Solution`). mkdocstrings renders Markdown, so each role becomes inline code, and a
cross-reference link where it names a public object that the reference documents
(``rnnscan.X``, ``rnnscan.nn.X``, ``rnnscan.train.X``, ``rnnscan.data.X``); a reST
``Example::`` line loses one colon (the indented block after it is code in Markdown too).
"""

from __future__ import annotations

import importlib
import re

import griffe

LITERAL = re.compile(r"(\S)::$", re.MULTILINE)  # reST "Example::" before a code block
ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|obj|exc):`~?([^`]+)`")
DOCUMENTED = ("rnnscan", "rnnscan.nn", "rnnscan.train", "rnnscan.data")


def _public_names() -> set[str]:
    names = set()
    for module_name in DOCUMENTED:
        module = importlib.import_module(module_name)
        exported = getattr(module, "__all__", None) or [n for n in vars(module) if n[0] != "_"]
        names.update(f"{module_name}.{name}" for name in exported)
    return names


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` in every docstring as Markdown."""

    def __init__(self) -> None:
        super().__init__()
        self.linkable = _public_names()

    def _markdown(self, match: re.Match) -> str:
        target = match.group(1)
        if target in self.linkable:
            return f"[`{target}`][{target}]"
        return f"`{target}`"

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            text = ROLE.sub(self._markdown, obj.docstring.value)
            obj.docstring.value = LITERAL.sub(r"\1:", text)
