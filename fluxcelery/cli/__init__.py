"""The ``fluxcelery`` command: main.py (the commands), context.py (engine, settings, errors,
exit codes), render.py (tables and text for a terminal), doctor.py, upkeep.py (recover,
prune), demo.py (``fluxcelery demo``)."""

from .main import cli, main

__all__ = ["cli", "main"]
