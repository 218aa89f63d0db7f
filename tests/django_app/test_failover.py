"""End to end: a real Django project, three live PostgreSQL clusters, the real
dbha-agent and libdbha. ORM writes run in a loop; `default` is stopped; the
writes continue on `failover1`; the writes that failed are those in flight
during detection, and every write Django acknowledged is found afterwards in
exactly one database."""

import time

import pytest

from conftest import Live, drop_broken_connections, start_django

NAMES = ["default", "failover1", "failover2"]


@pytest.fixture(scope="module")
def live():
    lv = Live(NAMES)
    start_django(lv, NAMES)
    yield lv
    from django.db import connections

    connections.close_all()
    lv.close()


def write_loop(stop_default_at, total, live):
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
            drop_broken_connections()
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

    # Bring default back to look inside it; count every acknowledged write. The
    # persistent connection to default died with it (no write may have failed on
    # it, when the agent switched before the stop returned): start afresh.
    live.say("start default")
    from django.db import connections

    from items.models import Item

    connections["default"].close()

    found = {alias: set(Item.objects.using(alias).values_list("seq", flat=True)) for alias in NAMES}
    print({alias: len(s) for alias, s in found.items()})
    for seq in acknowledged:
        places = [alias for alias in NAMES if seq in found[alias]]
        assert len(places) == 1, f"write {seq} found in {places}"
    assert found["failover1"], "writes continued on failover1"
    assert not found["failover2"]
    assert max(found["default"]) < min(found["failover1"])
