"""Declarative workflows: YAML and JSON files that name their handlers by import path
(SPEC section 15). ``docs/declarative.md`` describes the format.

Importing this package needs none of the optional packages (ruamel.yaml, jsonschema,
cel-python: the ``yaml`` extra); reading a file does.
"""

from __future__ import annotations

from .loader import Checked, check_workflow_file, load_workflow
from .problems import Problem, WorkflowFileError
from .schema import SCHEMA_PATH, json_schema, schema_text
from .sources import import_workflow_source, import_workflow_sources, is_workflow_file

__all__ = [
    "SCHEMA_PATH",
    "Checked",
    "Problem",
    "WorkflowFileError",
    "check_workflow_file",
    "import_workflow_source",
    "import_workflow_sources",
    "is_workflow_file",
    "load_workflow",
    "json_schema",
    "schema_text",
]
