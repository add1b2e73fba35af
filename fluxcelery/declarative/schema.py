"""The format's JSON Schema (``schema.json``, draft 2020-12, shipped in the package).

The schema is the one description of the format's structure: ``fluxcelery schema`` prints
it for editors and CI, and ``structure.py`` checks every file against it. Reading it needs
no optional package.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).with_name("schema.json")
#: The keys that say what a step is (exactly one per step), and those allowed in a branch.
KINDS = ("step", "commit", "approval", "parallel", "for_each")
BRANCH_KINDS = ("step", "commit")


def schema_text() -> str:
    """The schema as shipped in the package."""
    return SCHEMA_PATH.read_text(encoding="utf-8")


@cache
def json_schema() -> dict[str, Any]:
    """The schema, parsed (once)."""
    loaded: dict[str, Any] = json.loads(schema_text())
    return loaded


__all__ = ["BRANCH_KINDS", "KINDS", "SCHEMA_PATH", "json_schema", "schema_text"]
