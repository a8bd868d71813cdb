"""A throwaway PostgreSQL server for the tests, from Debian's `postgresql` package (the Makefile
installs it where it is missing): its own data folder, a free port on 127.0.0.1, no password,
fsync off; stopped and removed afterwards. PostgreSQL refuses to run as root: as root, it runs as
the package's `postgres` user."""

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from serve_app.benchmark.local_cluster import free_port

# The job stores a test runs on: SQLite, and PostgreSQL in the full suite (`slow`: its server and a
# database per test cost seconds that `make test-fast` leaves out).
STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.slow)]



def server_bin() -> Path:
    """The newest server Debian installed (the Makefile installs `postgresql` where none is); looked
    up when a server starts, so that a machine without PostgreSQL still collects every test."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda path: int(path.parent.name))
    if not installed:
        pytest.fail("PostgreSQL's server is not installed: `make test` installs Debian's `postgresql`")
    return installed[-1]


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def postgres_server() -> Iterator[str]:
    """A running server; yields the URL of an empty database `wan` on it."""
    folder = Path(tempfile.mkdtemp(prefix="wan-postgres-", dir="/tmp"))
    data = folder / "data"
    port = free_port()
    bin_dir = server_bin()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    run = lambda *command: subprocess.run(_as_server_user(list(command)), check=True, capture_output=True)  # noqa: E731
    run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync")
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start")
    try:
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "wan")
        yield f"postgresql://postgres@127.0.0.1:{port}/wan"
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def fresh_database(url: str, name: str) -> str:
    """A new empty database on the server of `url`; its URL."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
        connection.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + f"/{name}"
