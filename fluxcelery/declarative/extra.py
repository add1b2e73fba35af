"""The optional packages that YAML / JSON workflows need (the ``yaml`` extra).

The core install has none of them, so ``import fluxcelery`` never imports them; the first
workflow file read checks for all three and says in one line what to install.
"""

from __future__ import annotations

import importlib

from ..core.errors import MissingExtra

#: Module imported -> the package that provides it.
PACKAGES = {"ruamel.yaml": "ruamel.yaml", "jsonschema": "jsonschema", "celpy": "cel-python"}
INSTALL = "pip install 'fluxcelery[yaml]'"


def require_yaml_extra() -> None:
    """Raise ``MissingExtra`` naming the missing packages and the extra that installs them."""
    missing = []
    for module, package in PACKAGES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    if missing:
        names = ", ".join(missing)
        raise MissingExtra(
            f"YAML/JSON workflows need {names}, not installed: {INSTALL}",
        )


__all__ = ["INSTALL", "require_yaml_extra"]
