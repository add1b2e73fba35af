"""The Celery runtime: the app, one task per step, and chain dispatch."""
