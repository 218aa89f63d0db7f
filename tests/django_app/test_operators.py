"""What operators do, under a Django app with concurrent requests (threads): the
agent restarted (`systemctl restart`) fails no query and aborts nothing; a
failover with Django's connection pool raises no PoolClosed and leaves the new
endpoint's pool its idle connections. A primary (`default`) and two streaming
standbys, the real agent (writes = "primary", reads = "prefer-standby"), the
dbha backend on psycopg 3."""

import logging
import os
import threading
import time

import pytest

from conftest import Live, close_django, start_django

NAMES = ["default", "failover1", "failover2"]
THREADS = 4


@pytest.fixture(scope="module")
def live():
    if os.environ.get("DBHA_TEST_NO_POOL"):
        pytest.skip("Django's pool needs psycopg 3")
    lv = Live(NAMES, "--replicated")
    start_django(lv, ["default", "replica"], settings="dbhatest.settings_operators")
    yield lv
    close_django(lv)


def port(name, live):
    return live.info["databases"][name]["port"]


def wait_for(what, cond, timeout=30):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Aborts(logging.Handler):
    """The watcher's "aborted this process's connection" warnings."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        if "aborted" in record.getMessage():
            self.lines.append(record.getMessage())


def requests(work, stop):
    """THREADS threads running `work(thread, i)` until `stop` is set, as request
    handlers do (each its own Django connections, closed at the end of each
    request); returns every exception raised, as (thread, i, exception)."""
    failures = []

    def run(t):
        from django.db import close_old_connections, connections

        i = 0
        while not stop.is_set():
            try:
                try:
                    work(t, i)
                finally:
                    close_old_connections()
                    for alias in ("pooled", "pooled_reads"):
                        connections[alias].close()  # back to its pool
            except Exception as e:  # noqa: BLE001 - every failure counts
                failures.append((t, i, e))
            i += 1
        connections.close_all()

    threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    return threads, failures


def test_an_agent_restart_under_concurrent_requests_fails_nothing_and_aborts_nothing(live, agent):
    # Issue 20 row 3: the restart published "agent stopped" (WHEN_NONE="error"
    # failed every query), then reads on the primary with every endpoint
    # unhealthy, which made each process's watcher abort reads on the standby.
    from django.db import connections

    from items.models import Item

    wait_for("reads on a standby", lambda: agent.read_endpoint() is not None
             and agent.read_endpoint().port != port("default", live))
    epoch = agent.snapshot().epoch
    aborts = Aborts()
    logging.getLogger("dbha").addHandler(aborts)

    def work(t, i):
        Item.objects.create(seq=100_000 + t * 10_000 + i)
        with connections["replica"].cursor() as c:
            # A read that is under way while the agent restarts.
            c.execute("SELECT count(*), pg_sleep(0.02) FROM items_item")
        with connections["pooled"].cursor() as c:
            c.execute("SELECT 1")

    stop = threading.Event()
    threads, failures = requests(work, stop)
    try:
        time.sleep(0.5)
        for _ in range(3):
            live.say("agent restart")
            time.sleep(1.0)
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=60)
        logging.getLogger("dbha").removeHandler(aborts)
    done = Item.objects.filter(seq__gte=100_000).count()
    print(f"{done} requests' writes during 3 agent restarts")
    assert failures == [], failures[:5]
    assert aborts.lines == []
    assert agent.snapshot().epoch == epoch, "readers saw the decision change"
    assert done > 0


def test_a_failover_with_the_pool_raises_no_pool_closed_and_keeps_the_new_pool(live, agent):
    # Issue 20 row 6: a thread still on the old endpoint closing its connection
    # re-created the old endpoint's pool and closed the new endpoint's live one,
    # under the threads waiting on it.
    from django.db import connections
    from psycopg_pool import PoolClosed

    from dbha.django.backends.postgresql.base import DatabaseWrapper

    def work(t, i):
        # Reads of different lengths: some are under way on failover1 when the
        # reads move to failover2, and end after other threads took connections
        # from failover2's pool.
        with connections["pooled_reads"].cursor() as c:
            c.execute("SELECT pg_sleep(%s)", [0.02 * (1 + t % 3) * (1 + i % 5)])

    stop = threading.Event()
    threads, failures = requests(work, stop)
    read_port = lambda: agent.read_endpoint() and agent.read_endpoint().port  # noqa: E731
    try:
        wait_for("reads on failover1", lambda: read_port() == port("failover1", live))
        time.sleep(0.5)
        live.say("stop default")
        wait_for("writes NONE", lambda: agent.write_endpoint() is None)
        live.say("promote failover1")
        wait_for("writes on failover1", lambda: agent.write_endpoint() is not None
                 and agent.write_endpoint().port == port("failover1", live))
        wait_for("reads on failover2", lambda: read_port() == port("failover2", live))
        time.sleep(1.0)
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=60)
    # Django wraps psycopg_pool's PoolClosed ("the pool 'pool-5' is closed") in
    # its own OperationalError.
    closed = [f for f in failures if isinstance(f[2], PoolClosed)
              or isinstance(f[2].__cause__, PoolClosed) or "the pool '" in str(f[2])]
    print(f"{len(failures)} failed requests during the failover (no primary for a while)")
    assert closed == [], closed[:5]
    host = live.info["databases"]["failover2"]["host"]
    pools = {k: p for k, p in DatabaseWrapper._connection_pools.items() if k[0] == "pooled_reads"}
    assert list(pools) == [("pooled_reads", host, port("failover2", live))]
    stats = next(iter(pools.values())).get_stats()
    assert stats["pool_available"] >= 1, stats
    # And the pool still serves.
    with connections["pooled_reads"].cursor() as c:
        c.execute("SELECT inet_server_port()")
        assert c.fetchone()[0] == port("failover2", live)
    connections["pooled_reads"].close()
