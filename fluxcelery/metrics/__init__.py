"""Prometheus metrics read from the store on each scrape (SPEC section 17).

``fluxcelery metrics --port 9808`` (cli/metrics.py) and ``/api/flux/metrics`` in the Flower
tab serve them; docs/operations.md lists every metric, alert rules and Grafana queries.

- ``model``: what a scrape reports, and which trace events count where (pure);
- ``sql``: the bounded reads of a SQL store (the rollup of trace events, the run gauges);
- ``collector``: the ``prometheus_client`` collector and the exposition.

Importing ``fluxcelery`` does not import this package (nor ``prometheus_client``).
"""

from __future__ import annotations

from .collector import METRICS, StoreCollector, exposition, families, read_snapshot, registry_for
from .model import BUCKETS_MS, Snapshot
from .sql import Limits

__all__ = [
    "BUCKETS_MS",
    "METRICS",
    "Limits",
    "Snapshot",
    "StoreCollector",
    "exposition",
    "families",
    "read_snapshot",
    "registry_for",
]
