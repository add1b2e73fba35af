"""Example workflows to copy from.

Point workers and the ingress at them from the repository root (or with the repository on
``PYTHONPATH``)::

    FLUX_WORKFLOWS=workflows.order,workflows.approval,workflows.saga,workflows.onboarding

Each module defines its workflow at import time; importing it registers the workflow by name.
"""

MODULES = ("workflows.order", "workflows.approval", "workflows.saga", "workflows.onboarding")
