"""Puts the project, the dbha package and the workspace's libdbha in reach."""

import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TARGET = Path(os.environ.get("DBHA_TARGET_DIR", ROOT / "target" / "debug"))

sys.path[:0] = [str(HERE), str(ROOT / "reader" / "python")]
os.environ.setdefault("DBHA_LIBRARY", str(TARGET / "libdbha.so"))
if os.environ.get("DBHA_TEST_PSYCOPG2") == "1":
    # Django picks psycopg 3 when it can import it: hide it, so that the same
    # tests run on psycopg2 (Django's pool needs psycopg 3: none then).
    sys.modules["psycopg"] = None
    os.environ["DBHA_TEST_NO_POOL"] = "1"
if os.environ.get("DBHA_TEST_PYMYSQL") == "1":
    # Django's MySQL backend imports MySQLdb: PyMySQL stands in for mysqlclient.
    import pymysql

    pymysql.install_as_MySQLdb()

import json  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402

LIVE = TARGET / "dbha-live"


class Live:
    """Live PostgreSQL clusters and a real agent (the dbha-live helper): their
    addresses in `info`, commands with `say`."""

    def __init__(self, names, *options):
        assert LIVE.exists(), f"{LIVE} is missing: run `cargo build --workspace` first (tests/run.sh does)"
        self.proc = subprocess.Popen([str(LIVE), *names, *options], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            what = "MariaDB" if "--mariadb" in options else "PostgreSQL"
            if os.environ.get("CI") in ("true", "1"):
                pytest.fail(f"dbha-live could not start {what} (required under CI)")
            pytest.skip(f"{what} is not installed")
        self.info = json.loads(line)

    def say(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline().strip()
        assert reply == "ok", f"{command}: {reply}"

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=120)


def start_django(live, migrate_on, settings="dbhatest.settings"):
    """Configures the test project (`settings`) for `live` and migrates `migrate_on`."""
    os.environ["DBHA_TEST_LIVE"] = json.dumps(live.info)
    os.environ["DJANGO_SETTINGS_MODULE"] = settings
    import django

    django.setup()
    from django.core.management import call_command

    for alias in migrate_on:
        if alias != migrate_on[0]:
            _wait_replayed(migrate_on[0], alias)
        call_command("migrate", database=alias, verbosity=0)


def _wait_replayed(first, alias, timeout=60):
    """Waits until `alias`, when it is a standby, has replayed the migrations
    recorded on `first`: migrate records every migration it finds unrecorded,
    even where the router allows none, and on a standby that write fails."""
    from django.db import connections
    from django.db.migrations.recorder import MigrationRecorder

    standby = {"postgresql": "SELECT pg_is_in_recovery()", "mysql": "SELECT @@global.read_only"}
    with connections[alias].cursor() as c:
        c.execute(standby[connections[alias].vendor])
        if not c.fetchone()[0]:
            return
    want = set(MigrationRecorder(connections[first]).applied_migrations())
    deadline = time.monotonic() + timeout
    while not want <= set(MigrationRecorder(connections[alias]).applied_migrations()):
        assert time.monotonic() < deadline, f"{alias} did not replay the migrations of {first}"
        time.sleep(0.02)


def close_django(live):
    """Closes this process's Django connections and pools (the dbha backend's
    live and retired ones too), then `live`."""
    from django.db import connections

    connections.close_all()
    from dbha.django.backends.postgresql.base import DatabaseWrapper

    for pool in list(DatabaseWrapper._connection_pools.values()):
        pool.close()
    live.close()


@pytest.fixture(scope="module")
def agent(live):
    """A reader on the agent of the module's `live` fixture."""
    import dbha

    with dbha.Reader(live.info["state"]) as r:
        yield r


def drop_broken_connections():
    """What Django does at the end of a request."""
    from django.db import close_old_connections, connections

    for conn in connections.all():
        conn.close_if_unusable_or_obsolete()
    close_old_connections()
