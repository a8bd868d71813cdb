"""The one place that chooses the job store, by its database URL. It is not in `store.py`, the
interface that both stores import, so that the imports go one way."""

from serve_app.jobs.postgres import PostgresStore
from serve_app.jobs.sqlite import SqliteStore
from serve_app.jobs.store import JobStore


def open_store(database_url: str) -> JobStore:
    """The store a `database_url` names: postgresql://... or sqlite:///path (or a plain path)."""
    if database_url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(database_url)
    return SqliteStore(database_url.removeprefix("sqlite://"))
