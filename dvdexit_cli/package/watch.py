"""Moved to ``dvdexit_cli.receive.drop_folder`` (issue 12); this path stays for one release.

The names are looked up when first used, not imported here: the package format library
(package/) never imports receive/ (docs/design.md, import floors).
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    return getattr(importlib.import_module("dvdexit_cli.receive.drop_folder"), name)
