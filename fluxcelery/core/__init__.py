"""The core: pure decisions about runs and steps, with no storage, Celery or hooks."""
