# The fluxcelery image used by every service of docker-compose.flux.yml (worker, migrate,
# flower, consumer, producer): the package with PostgreSQL, Flower and HTTP extras, the
# example workflows and celeryconfig.py on PYTHONPATH.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app

WORKDIR /app

RUN groupadd --system --gid 10001 flux \
    && useradd --system --uid 10001 --gid flux --home-dir /app --no-create-home flux

COPY pyproject.toml README.md ./
COPY fluxcelery ./fluxcelery
RUN pip install ".[postgres,flower,http]"

COPY celeryconfig.py ./
COPY workflows ./workflows
RUN mkdir -p /app/.flux && chown flux:flux /app/.flux

USER flux
CMD ["celery", "-A", "fluxcelery", "worker", "-l", "INFO"]
