"""End to end with streaming replication: a primary (`default`) and two standbys,
commits synchronous to `failover1`, the agent with writes = "primary" and
reads = "prefer-standby". ORM writes go to the primary and reads to a standby;
the primary is stopped (writes have nowhere to go), `failover1` is promoted,
writes continue there, and every acknowledged write is present on it."""

import time

import pytest

from conftest import Live, drop_broken_connections, start_django

NAMES = ["default", "failover1", "failover2"]


@pytest.fixture(scope="module")
def live():
    lv = Live(NAMES, "--replicated")
    # Standbys replicate the schema: migrate the primary only.
    start_django(lv, ["default"])
    yield lv
    from django.db import connections

    connections.close_all()
    lv.close()


def test_writes_to_the_primary_reads_to_a_standby_and_promotion_keeps_every_write(live):
    from django.db import router
    from django.db.utils import DatabaseError, InterfaceError

    from items.models import Item

    deadline = time.monotonic() + 30
    # The schema reaches the standbys by replay, which synchronous commit (a flush
    # on failover1) does not wait for: wait until both can see the table.
    for standby in ("failover1", "failover2"):
        while True:
            try:
                Item.objects.using(standby).exists()
                break
            except DatabaseError:
                drop_broken_connections()
                assert time.monotonic() < deadline, f"the schema never reached {standby}"
                time.sleep(0.05)
    while router.db_for_write(Item) != "default" or router.db_for_read(Item) not in ("failover1", "failover2"):
        assert time.monotonic() < deadline, (router.db_for_write(Item), router.db_for_read(Item))
        time.sleep(0.05)

    acknowledged, failed, reads_on = [], [], set()
    for seq in range(600):
        if seq == 200:
            live.say("stop default")
        if seq == 260:
            live.say("promote failover1")
        try:
            Item.objects.create(seq=seq)
            acknowledged.append(seq)
        except (DatabaseError, InterfaceError):
            failed.append(seq)
            drop_broken_connections()
        if seq < 200 and seq % 10 == 0:
            reads_on.add(router.db_for_read(Item))
            Item.objects.count()  # served by the standby
        time.sleep(0.005)
    print(f"acknowledged {len(acknowledged)}, failed {len(failed)}, reads before the stop on {sorted(reads_on)}")
    assert reads_on <= {"failover1", "failover2"}, "reads went to a standby"
    assert router.db_for_write(Item) == "failover1"
    assert all(seq >= 200 for seq in failed), "no write fails before the fault"
    # Writes fail from the stop until the promotion is seen (60 iterations and the
    # promotion's own time); 300 would mean they never resumed.
    assert 0 < len(failed) < 300, failed
    assert acknowledged[-1] == 599
    on_new_primary = set(Item.objects.using("failover1").values_list("seq", flat=True))
    missing = [seq for seq in acknowledged if seq not in on_new_primary]
    assert not missing, f"acknowledged writes missing after the promotion: {missing}"
