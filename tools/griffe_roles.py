"""A griffe extension for the API reference (mkdocs.yml): fesaug's docstrings name other objects
with Sphinx roles (``:class:`Judge```, ``:func:`fesaug.balance.balance```), which Markdown would
print as they are; this shows each as inline code instead."""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:mod|class|func|meth|attr|data|obj|exc|const):`~?([^`]+)`")


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(r"`\1`", obj.docstring.value)
