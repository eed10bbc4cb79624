"""Moved to ``dvdexit_cli.relay.forward`` (issue 12); this path stays for one release.

Looked up when first used: receive/ never imports relay/ (relay sits above receive and
send, docs/design.md).
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    return getattr(importlib.import_module("dvdexit_cli.relay.forward"), name)
