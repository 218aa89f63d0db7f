"""End to end: a real Django project, three live PostgreSQL clusters, the real
dbha-agent and libdbha. ORM writes run in a loop; `default` is stopped; the
writes continue on `failover1`; the writes that failed are those in flight
during detection, and every write Django acknowledged is found afterwards in
exactly one database."""

import json
import os
import subprocess
import time

import pytest

from conftest import TARGET

LIVE = TARGET / "dbha-live"
NAMES = ["default", "failover1", "failover2"]


class Live:
    def __init__(self):
        assert LIVE.exists(), f"{LIVE} is missing: run `cargo build --workspace` first (tests/run.sh does)"
        self.proc = subprocess.Popen([str(LIVE), *NAMES], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            if os.environ.get("CI") in ("true", "1"):
                pytest.fail("dbha-live could not start PostgreSQL (required under CI)")
            pytest.skip("PostgreSQL is not installed")
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


@pytest.fixture(scope="module")
def live():
    lv = Live()
    os.environ["DBHA_TEST_LIVE"] = json.dumps(lv.info)
    os.environ["DJANGO_SETTINGS_MODULE"] = "dbhatest.settings"
    import django

    django.setup()
    from django.core.management import call_command

    for alias in NAMES:
        call_command("migrate", database=alias, verbosity=0)
    yield lv
    from django.db import connections

    connections.close_all()
    lv.close()


def write_loop(stop_default_at, total, live):
    from django.db import close_old_connections, connections
    from django.db.utils import DatabaseError, InterfaceError

    from items.models import Item

    acknowledged, failed, routed = [], [], []
    stopped_at = None
    for seq in range(total):
        if seq == stop_default_at:
            live.say("stop default")
            stopped_at = time.monotonic()
        try:
            Item.objects.create(seq=seq)
            acknowledged.append(seq)
            routed.append(Item.objects.db_manager().db)  # where the router sent it
        except (DatabaseError, InterfaceError):
            failed.append(seq)
            # What Django does at the end of a request: drop broken connections.
            for conn in connections.all():
                conn.close_if_unusable_or_obsolete()
            close_old_connections()
        time.sleep(0.005)
    return acknowledged, failed, routed, stopped_at


def test_writes_survive_the_primary_stopping(live):
    from dbha.django import FailoverRouter
    from django.db import router as django_router

    assert isinstance(django_router.routers[0], FailoverRouter)
    assert django_router.db_for_write(None) == "default"
    acknowledged, failed, routed, stopped_at = write_loop(200, 600, live)
    print(f"acknowledged {len(acknowledged)}, failed {len(failed)} (seq {failed[:1]}..{failed[-1:]})")
    assert django_router.db_for_write(None) == "failover1"
    # Writes failed only while the agent was detecting the stop: with
    # interval=100ms, timeout=300ms, fall=2 that is well under a second of 5 ms
    # iterations; 400 would mean writes never found failover1.
    assert len(failed) < 200, failed
    assert all(seq >= 200 for seq in failed), "no write fails before the fault"
    assert len(acknowledged) + len(failed) == 600
    assert routed[-1] == "failover1"

    # Bring default back to look inside it; count every acknowledged write.
    live.say("start default")
    from items.models import Item

    found = {alias: set(Item.objects.using(alias).values_list("seq", flat=True)) for alias in NAMES}
    print({alias: len(s) for alias, s in found.items()})
    for seq in acknowledged:
        places = [alias for alias in NAMES if seq in found[alias]]
        assert len(places) == 1, f"write {seq} found in {places}"
    assert found["failover1"], "writes continued on failover1"
    assert not found["failover2"]
    assert max(found["default"]) < min(found["failover1"])
