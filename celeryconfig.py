"""Celery and fluxcelery settings, read from the environment with loopback defaults.

`celery -A fluxcelery worker` and the `fluxcelery` CLI import this module when it is on the
path (the current directory). Every value can be overridden by an environment variable.

- FLUX_BROKER_URL    the broker. Default `memory://`: embedded mode, an in-process worker,
                     no services needed. For RabbitMQ on this machine:
                     amqp://guest:guest@127.0.0.1:5672//   (Redis: redis://127.0.0.1:6379/0)
- FLUX_DATABASE_URL  where runs, steps and traces are stored. Default SQLite in .flux/;
                     PostgreSQL: postgresql+psycopg://postgres@127.0.0.1:5432/test
- FLUX_WORKFLOWS     comma-separated modules that define workflows (imported by workers)
- FLUX_TRACE_FILE    optional NDJSON trace file (appended, safe for several processes)
- FLUX_TRACE_OTEL    1: trace events also go to OpenTelemetry as spans (extra `otel`)
- FLUX_MAX_COUNTDOWN the longest a worker holds a delayed message, in seconds (default 600)
- FLUX_QUEUE         the Celery queue step tasks go to (default `flux`)
"""

import os

broker_url = os.environ.get("FLUX_BROKER_URL", "memory://")
flux_database_url = os.environ.get("FLUX_DATABASE_URL", "sqlite:///.flux/flux.db")
flux_workflows = os.environ.get("FLUX_WORKFLOWS", "")
flux_trace_file = os.environ.get("FLUX_TRACE_FILE") or None
flux_trace_otel = os.environ.get("FLUX_TRACE_OTEL", "0") not in ("", "0", "false", "no", "off")

# Celery settings (fluxcelery forces JSON and sets acks_late/reject_on_worker_lost itself).
worker_prefetch_multiplier = int(os.environ.get("FLUX_PREFETCH", "1"))
broker_connection_retry_on_startup = True
