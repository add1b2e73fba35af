"""Storage backends: ``MemoryStorage`` and ``SqlStorage`` (SQLite, PostgreSQL)."""

from .base import Storage, Transaction
from .memory import MemoryStorage
from .sql import DEFAULT_URL, SqlStorage

__all__ = ["DEFAULT_URL", "MemoryStorage", "SqlStorage", "Storage", "Transaction"]
