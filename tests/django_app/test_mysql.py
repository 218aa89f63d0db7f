"""The dbha MySQL backend end to end, on MariaDB (through mysqlclient; with
DBHA_TEST_PYMYSQL=1, through PyMySQL): a primary (`db0`) and its GTID replica
(`db1`), semi-synchronous, the real agent (mysql check with a monitor user,
writes = "primary", reads = "prefer-standby"), a Django project whose
`default` and `replica` aliases use the backend with no HOST and persistent
connections, as an application user without SUPER. Every idiom is run before
the failover, while no primary is published (read-only mode), after the
promotion and after the old primary returns writable; a query blocked on the
frozen primary is aborted when the agent leaves it; every write acknowledged
through the failover is found afterwards."""

import os
import threading
import time

import pytest

from conftest import Live, close_django, drop_broken_connections, start_django

NAMES = ["db0", "db1"]


@pytest.fixture(scope="module")
def live():
    lv = Live(NAMES, "--mariadb")
    os.environ["DBHA_TEST_STATE"] = lv.info["state"]
    start_django(lv, ["default", "replica"], settings="dbhatest.settings_mysql")
    yield lv
    close_django(lv)


def port(name, live):
    return live.info["databases"][name]["port"]


def wait_for(what, cond, timeout=30):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def server(alias):
    """(port, read-only) of the server the alias's connection is on."""
    from django.db import connections

    with connections[alias].cursor() as c:
        c.execute("SELECT @@port, @@global.read_only")
        p, ro = c.fetchone()
        return p, bool(ro)


def rows_on(name, live):
    """The seqs of every Item on server `name`, read with a connection of its
    own (through the driver Django uses)."""
    import MySQLdb

    db = live.info["databases"][name]
    c = MySQLdb.connect(host=db["host"], port=db["port"], user=live.info["user"],
                        password=live.info["password"], database=live.info["database"],
                        connect_timeout=2)
    try:
        cur = c.cursor()
        cur.execute("SELECT seq FROM items_item")
        return {r[0] for r in cur.fetchall()}
    finally:
        c.close()


class Boom(Exception):
    pass


def every_idiom(first_seq, primary, live):
    """The idioms, on the write alias, all landing on `primary`."""
    from django.db import connection, router, transaction
    from django.test import Client

    from items.models import Item

    Item.objects.create(seq=first_seq)
    with transaction.atomic():
        Item.objects.create(seq=first_seq + 1)
        assert server("default") == (port(primary, live), False)
        assert router.db_for_read(Item) == "default"
        assert Item.objects.filter(seq=first_seq + 1).exists()
    with transaction.atomic():
        locked = Item.objects.select_for_update().get(seq=first_seq)
        locked.seq = first_seq + 2
        locked.save()
    with connection.cursor() as c:
        c.execute("INSERT INTO items_item (seq) VALUES (%s)", [first_seq + 3])
        c.execute("SELECT @@port")
        assert c.fetchone()[0] == port(primary, live)
    with pytest.raises(Boom), transaction.atomic():
        Item.objects.create(seq=first_seq + 4)
        raise Boom
    client = Client(raise_request_exception=False)
    answer = client.get("/create", {"seq": first_seq + 5})
    assert answer.status_code == 200 and int(answer.content) == port(primary, live)
    assert client.get("/create", {"seq": first_seq + 6, "fail": 1}).status_code == 500
    rows = rows_on(primary, live)
    assert rows >= {first_seq + 1, first_seq + 2, first_seq + 3, first_seq + 5}
    assert not rows & {first_seq + 4, first_seq + 6}


def test_before_a_failover_writes_go_to_the_primary_and_reads_to_the_replica(live, agent, capfd):
    from django.core.management import call_command
    from django.db import DatabaseError, router

    from items.models import Item

    wait_for("the agent's first choice", lambda: agent.write_endpoint() is not None
             and agent.write_endpoint().port == port("db0", live)
             and agent.read_endpoint() is not None
             and agent.read_endpoint().port == port("db1", live))

    def replica_has_schema():
        try:
            Item.objects.using("replica").exists()
            return True
        except DatabaseError:
            drop_broken_connections()
            return False

    wait_for("the schema on the replica", replica_has_schema)
    every_idiom(100, "db0", live)
    assert router.db_for_read(Item) == "replica" and router.db_for_write(Item) == "default"
    assert server("replica") == (port("db1", live), True)
    # dbshell connects where the agent says.
    capfd.readouterr()
    call_command("dbshell", "--", "-N", "-B", "-e", "SELECT @@port")
    assert capfd.readouterr().out.strip() == str(port("db0", live))


def test_a_write_connection_refuses_a_read_only_server_the_agent_still_names(live, agent):
    from django.db import OperationalError, connections

    # The agent paused (its view stale for up to stale_after = 2 s), the
    # primary set read-only behind its back: a new write connection refuses it.
    live.say("agent pause")
    try:
        live.say("read-only db0 on")
        connections["default"].close()
        with pytest.raises(OperationalError) as e:
            connections["default"].ensure_connection()
        assert "is read-only (@@global.read_only = 1)" in str(e.value), e.value
        assert "DATABASES['default'] writes to a primary only" in str(e.value)
    finally:
        live.say("read-only db0 off")
        live.say("agent resume")
    connections["default"].close()
    assert server("default") == (port("db0", live), False)


def test_a_unix_socket_in_settings_is_refused():
    from django.core.exceptions import ImproperlyConfigured
    from django.db import connections

    from dbha.django.backends.mysql.base import DatabaseWrapper

    settings_dict = {**connections["default"].settings_dict, "HOST": "/run/mysqld/mysqld.sock"}
    with pytest.raises(ImproperlyConfigured, match="names a Unix socket"):
        DatabaseWrapper(settings_dict, "sock")
    settings_dict = {**connections["default"].settings_dict,
                     "OPTIONS": {"unix_socket": "/run/mysqld/mysqld.sock"}}
    with pytest.raises(ImproperlyConfigured, match="OPTIONS unix_socket"):
        DatabaseWrapper(settings_dict, "sock")


def test_a_transaction_begun_on_a_crashed_primary_begins_again_once_the_agent_moves(live, agent):
    from django.db import transaction

    from items.models import Item

    assert server("default") == (port("db0", live), False)  # a persistent connection
    # The primary crashes before the agent sees it (the agent is paused): a
    # transaction begins on the persistent connection to it. MySQL drivers say
    # so to the server (SET autocommit=0), which fails on the dead connection;
    # nothing of the transaction reached a server, so it begins again once the
    # agent has moved: here, read-only on the replica.
    live.say("agent pause")
    resume = threading.Timer(0.3, live.say, ["agent resume"])
    try:
        live.say("stop db0")
        resume.start()
        with transaction.atomic():
            assert Item.objects.filter(seq=101).exists()
            assert server("default") == (port("db1", live), True)
    finally:
        resume.join()
    live.say("start db0")
    live.say("wait semi-sync")  # the replica back, before writes are acknowledged
    wait_for("writes on db0 again", lambda: agent.write_endpoint() is not None
             and agent.write_endpoint().port == port("db0", live))
    Item.objects.create(seq=500)
    assert server("default") == (port("db0", live), False)


class Writer(threading.Thread):
    """Writes Item(seq) in a loop through the write alias, and keeps the seqs
    acknowledged and the failures with when they happened."""

    def __init__(self, first):
        super().__init__(daemon=True)
        self.seq = first
        self.acknowledged = []
        self.failures = []
        self.stop = threading.Event()

    def run(self):
        from django.db import DatabaseError, connections

        from items.models import Item

        try:
            while not self.stop.is_set():
                try:
                    Item.objects.create(seq=self.seq)
                    self.acknowledged.append(self.seq)
                except DatabaseError as e:
                    self.failures.append((time.monotonic(), type(e).__name__, str(e)[-300:]))
                    time.sleep(0.02)
                self.seq += 1
                time.sleep(0.005)
        finally:
            connections["default"].close()


def test_a_failover_with_a_frozen_primary_loses_no_acknowledged_write(live, agent):
    from django.db import DatabaseError, connection, connections, transaction

    import dbha.django
    from items.models import Item

    writer = Writer(10_000)
    writer.start()
    wait_for("writes under way", lambda: len(writer.acknowledged) > 20)

    # A query under way on the primary when it freezes: aborted once the agent
    # leaves it, not left waiting on the frozen server.
    ready, outcome = threading.Event(), {}

    def blocked():
        try:
            connections["default"].ensure_connection()
            ready.set()
            start = time.monotonic()
            try:
                with connections["default"].cursor() as c:
                    c.execute("SELECT SLEEP(2)")
                outcome["result"] = "answered"
            except DatabaseError as e:
                outcome["result"] = f"{type(e).__name__}: {e}"
            outcome["seconds"] = time.monotonic() - start
        finally:
            ready.set()
            connections["default"].close()

    t = threading.Thread(target=blocked)
    t.start()
    ready.wait(30)
    time.sleep(0.2)  # the query is on its way
    frozen = time.monotonic()
    live.say("freeze db0")
    t.join(20)
    assert not t.is_alive(), "the query is still waiting on the frozen server"
    assert outcome["result"] != "answered" and "2013" in outcome["result"], outcome
    print(f"the query on the frozen primary failed after {outcome['seconds']:.3f} s: {outcome['result']}")

    # No primary published: reads only, from the replica; a write fails at once.
    wait_for("reads only", lambda: agent.write_endpoint() is None
             and agent.snapshot().status == "read_only")
    assert dbha.django.read_only() is True
    with transaction.atomic():
        assert Item.objects.filter(seq=101).exists()
    assert server("default") == (port("db1", live), True)
    start = time.monotonic()
    with pytest.raises(dbha.django.DatabaseReadOnly) as e:
        Item.objects.create(seq=150)
    assert time.monotonic() - start < 1.0
    assert "is read-only now: no database takes writes" in str(e.value), e.value
    with pytest.raises(dbha.django.DatabaseReadOnly):
        with connection.cursor() as c:
            c.execute("INSERT INTO items_item (seq) VALUES (151)")

    # The replica promoted: writes follow, with no failed query on the
    # persistent connection.
    # (STOP SLAVE waits for the replica's IO thread, itself waiting on the
    # frozen primary: the promotion takes a while; the window ends when it
    # is done and published.)
    asked = time.monotonic()
    live.say("promote db1")
    promoted = time.monotonic()
    print(f"the promotion took {promoted - asked:.3f} s")
    wait_for("writes on db1", lambda: agent.write_endpoint() is not None
             and agent.write_endpoint().port == port("db1", live))
    with transaction.atomic():
        Item.objects.create(seq=200)
    assert server("default") == (port("db1", live), False)
    every_idiom(300, "db1", live)
    # The writer goes on on db1 for a while, then stops.
    on_db1 = len(writer.acknowledged)
    wait_for("the writer on db1", lambda: len(writer.acknowledged) > on_db1 + 20)
    writer.stop.set()
    writer.join(30)
    lost = set(writer.acknowledged) - rows_on("db1", live)
    assert not lost, f"acknowledged writes missing on the promoted server: {sorted(lost)[:20]}"
    outside = [f for f in writer.failures if not frozen <= f[0] <= promoted + 2.0]
    timeline = [(round(f[0] - frozen, 3), f[1]) for f in writer.failures]
    assert not outside, f"failures outside the fault window (promoted at {promoted - frozen:.3f} s): {timeline} {outside[-1]}"
    print(f"{len(writer.acknowledged)} writes acknowledged, {len(writer.failures)} failed in the "
          f"window, the last {writer.failures[-1][1:] if writer.failures else None}")

    # The old primary thawed, writable: two primaries; the agent flags the
    # conflict (and fences it) and writes stay on the promoted server.
    live.say("thaw db0")
    wait_for("the old primary seen again", lambda: agent.snapshot().conflict)
    assert agent.write_endpoint().port == port("db1", live)
    every_idiom(400, "db1", live)
    assert not rows_on("db0", live) & {400, 401, 402, 403, 405}
