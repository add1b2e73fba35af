"""Trace events (event.py) and sinks (sinks.py, otel.py, fanout.py).

Nothing is re-exported here: storage imports ``trace.event``, and ``trace.sinks`` imports
storage (``SqlTraceSink``), so a package that imported its sinks would make a cycle. The
public names come from ``fluxcelery``."""
