"""dbha.django.FailoverRouter and the system checks, in a configured Django (SQLite
databases; the state comes from the real writer). The live PostgreSQL test is
tests/django_app/."""

import logging
import time

import django
import pytest
from django.conf import settings

ALIASES = ["default", "failover1", "failover2"]

settings.configure(
    DATABASES={a: {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"} for a in ALIASES},
    INSTALLED_APPS=["dbha.django"],
    DATABASE_ROUTERS=["dbha.django.FailoverRouter"],
    DBHA_STATE_FILE="/nonexistent/dbha/state",
)
django.setup()

from django.core.checks import run_checks  # noqa: E402
from django.test.utils import override_settings  # noqa: E402

from dbha.django import FailoverRouter, router as router_module  # noqa: E402
from conftest import write_state  # noqa: E402


@pytest.fixture(autouse=True)
def no_retry_delay(monkeypatch):
    monkeypatch.setattr(router_module, "RETRY_SECONDS", 0.0)


def router(**overrides):
    with override_settings(**overrides):
        return FailoverRouter()


def test_writes_go_to_the_active_alias_and_reads_to_the_read_alias(holder):
    h = holder(ALIASES, "--write", 1, "--read", 2)
    r = router(DBHA_STATE_FILE=h.path)
    assert r.db_for_write(None) == "failover1"
    assert r.db_for_read(None) == "failover2"
    h.say("write 0")
    assert r.db_for_write(None) == "default"


def test_alias_map_translates_agent_aliases(holder):
    h = holder(["pg-a", "pg-b"], "--write", 1, "--read", 1)
    r = router(DBHA_STATE_FILE=h.path, DBHA_ALIAS_MAP={"pg-a": "default", "pg-b": "failover1"})
    assert r.db_for_write(None) == "failover1"


def test_stale_state_falls_back_and_is_logged_once_per_change(holder, caplog):
    h = holder(ALIASES, "--write", 2, "--stale-after-ms", 100)
    r = router(DBHA_STATE_FILE=h.path, DBHA_FALLBACK="failover1")
    caplog.set_level(logging.INFO, logger="dbha.django.router")
    assert r.db_for_write(None) == "failover2"
    h.say("pause")
    time.sleep(0.25)
    for _ in range(1000):
        assert r.db_for_write(None) == "failover1"
    warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1, [rec.getMessage() for rec in caplog.records]
    assert "heartbeat" in warnings[0].getMessage() and "'failover1'" in warnings[0].getMessage()
    h.say("resume")
    for _ in range(1000):
        assert r.db_for_write(None) == "failover2"
    infos = [rec for rec in caplog.records if rec.levelno == logging.INFO]
    assert len(infos) == 1 and "usable again" in infos[0].getMessage()
    # A second degradation is a change again, and is logged again.
    h.say("none")
    assert r.db_for_write(None) == "failover1"
    assert sum(rec.levelno == logging.WARNING for rec in caplog.records) == 2


def test_a_missing_state_file_falls_back_never_raises_and_recovers(tmp_path, caplog):
    path = tmp_path / "state"
    r = router(DBHA_STATE_FILE=str(path))
    caplog.set_level(logging.INFO, logger="dbha.django.router")
    for _ in range(100):
        assert r.db_for_write(None) == "default"
        assert r.db_for_read(None) == "default"
    messages = [rec.getMessage() for rec in caplog.records]
    assert len(messages) == 1 and "does not exist" in messages[0], messages
    write_state(path, ALIASES, "--write", 2, "--stale-after-ms", 600000)
    assert r.db_for_write(None) == "failover2"


def test_relations_inside_the_failover_group(holder):
    h = holder(ALIASES)
    r = router(DBHA_STATE_FILE=h.path)

    class Obj:
        def __init__(self, db):
            self._state = type("S", (), {"db": db})()

    assert r.allow_relation(Obj("default"), Obj("failover2")) is True
    assert r.allow_relation(Obj("default"), Obj("analytics")) is None


def test_allow_migrate_defers_unless_configured(holder):
    h = holder(ALIASES)
    assert router(DBHA_STATE_FILE=h.path).allow_migrate("failover1", "app") is None
    r = router(DBHA_STATE_FILE=h.path, DBHA_MIGRATE_DATABASE="default")
    assert r.allow_migrate("default", "app") is True
    assert r.allow_migrate("failover1", "app") is False
    assert r.allow_migrate("analytics", "app") is None


def dbha_problems():
    return sorted(p.id for p in run_checks() if p.id and p.id.startswith("dbha."))


def test_checks_pass_when_everything_fits(tmp_path):
    path = write_state(tmp_path / "state", ALIASES)
    with override_settings(DBHA_STATE_FILE=path):
        assert dbha_problems() == []


def test_checks_report_each_misconfiguration(tmp_path):
    path = write_state(tmp_path / "state", ALIASES + ["reporting"])
    with override_settings(DBHA_STATE_FILE=path, DBHA_FALLBACK="primary",
                           DBHA_ALIAS_MAP={"failover2": "replica"}):
        problems = {p.id: p for p in run_checks() if p.id and p.id.startswith("dbha.")}
        # One id per problem: a map to a missing key, a missing fallback, an
        # unmapped agent alias missing from DATABASES.
        assert set(problems) == {"dbha.E003", "dbha.E004", "dbha.E005"}
        assert "'failover2' to 'replica'" in problems["dbha.E003"].msg
        assert problems["dbha.E004"].hint and "default" in problems["dbha.E004"].hint
    with override_settings(DBHA_STATE_FILE=path):
        msgs = [p.msg for p in run_checks() if p.id == "dbha.E005"]
        assert msgs == ["The agent publishes the alias 'reporting', which is not in DATABASES."]
    with override_settings(DBHA_STATE_FILE=str(tmp_path / "missing")):
        problems = [p for p in run_checks() if p.id == "dbha.W002"]
        assert len(problems) == 1 and "does not exist" in problems[0].msg and problems[0].hint


def test_router_checks_run_only_when_the_router_routes(tmp_path):
    with override_settings(DATABASE_ROUTERS=[], DBHA_STATE_FILE=str(tmp_path / "missing"),
                           DBHA_FALLBACK="primary"):
        assert dbha_problems() == []


BACKEND = "dbha.django.backends.postgresql"


def backend_db(**extra):
    return {"ENGINE": BACKEND, "NAME": "app", **extra}


def test_backend_checks_report_each_misconfiguration(tmp_path):
    path = write_state(tmp_path / "state", ALIASES)
    fine = {"default": backend_db(DBHA={"STATE_FILE": path}),
            "replica": backend_db(DBHA={"ROLE": "read", "STATE_FILE": path, "WHEN_NONE": "last"})}
    with override_settings(DATABASES=fine, DATABASE_ROUTERS=["dbha.django.ReplicaRouter"]):
        assert dbha_problems() == []
    cases = {
        "dbha.E010": backend_db(DBHA="write"),
        "dbha.E011": backend_db(DBHA={"STATE_FILE": path, "RLOE": "read"}),
        "dbha.E012": backend_db(DBHA={"STATE_FILE": path, "ROLE": "primary"}),
        "dbha.E013": backend_db(DBHA={"STATE_FILE": 5}),
        "dbha.W010": backend_db(HOST="db1", DBHA={"STATE_FILE": path}),
        "dbha.W011": backend_db(DBHA={"STATE_FILE": str(tmp_path / "missing")}),
    }
    for want, entry in cases.items():
        with override_settings(DATABASES={"default": entry}, DATABASE_ROUTERS=[], DBHA_STATE_FILE=path):
            problems = [p for p in run_checks() if p.id and p.id.startswith("dbha.")]
            assert [p.id for p in problems] == [want], (want, [(p.id, p.msg) for p in problems])
            assert "'default'" in problems[0].msg and problems[0].hint, problems[0]
    with override_settings(DATABASES={"default": backend_db(DBHA={"WHEN_NONE": "never"})},
                           DATABASE_ROUTERS=[], DBHA_STATE_FILE=path):
        problems = [p for p in run_checks() if p.id == "dbha.E012"]
        assert len(problems) == 1 and "'error', 'last'" in problems[0].hint


def test_replica_router_reads_from_the_read_alias_and_migrates_only_the_write_alias():
    from dbha.django import ReplicaRouter

    dbs = {"default": backend_db(), "replica": backend_db(DBHA={"ROLE": "read"}),
           "other": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
    with override_settings(DATABASES=dbs):
        r = ReplicaRouter()
    assert (r.write, r.read) == ("default", "replica")
    assert r.db_for_write(None) == "default" and r.db_for_read(None) == "replica"
    assert r.allow_migrate("replica", "app") is False
    assert r.allow_migrate("default", "app") is None and r.allow_migrate("other", "app") is None

    class Obj:
        def __init__(self, db):
            self._state = type("S", (), {"db": db})()

    assert r.allow_relation(Obj("default"), Obj("replica")) is True
    assert r.allow_relation(Obj("default"), Obj("other")) is None
    with override_settings(DATABASES={"default": backend_db()}):
        alone = ReplicaRouter()
    assert alone.db_for_read(None) is None and alone.db_for_write(None) == "default"


def backend(alias="default", **dbha_options):
    from dbha.django.backends.postgresql.base import DatabaseWrapper

    settings_dict = {**backend_db(DBHA=dbha_options), "USER": "app", "PASSWORD": "", "HOST": "",
                     "PORT": "", "OPTIONS": {}, "TIME_ZONE": None, "CONN_MAX_AGE": 0,
                     "CONN_HEALTH_CHECKS": False, "AUTOCOMMIT": True, "ATOMIC_REQUESTS": False,
                     "TEST": {}}
    return DatabaseWrapper(settings_dict, alias)


def test_backend_connects_where_the_agent_says_and_asks_writes_for_a_read_write_session(holder):
    h = holder(["pg1@db1.example.com:5432", "pg2@db2.example.com:6432"], "--write", 1, "--read", 0)
    w = backend(STATE_FILE=h.path)
    params = w.get_connection_params()
    assert (params["host"], params["port"], params["dbname"]) == ("db2.example.com", 6432, "app")
    assert params["target_session_attrs"] == "read-write"
    assert w.dbha_endpoint == ("pg2", "db2.example.com", 6432)
    r = backend("replica", ROLE="read", STATE_FILE=h.path)
    params = r.get_connection_params()
    assert (params["host"], params["port"]) == ("db1.example.com", 5432)
    assert "target_session_attrs" not in params


def test_backend_with_no_database_raises_at_once_or_keeps_the_last_endpoint(holder, tmp_path):
    from django.db import OperationalError

    h = holder(["pg1@db1.example.com:5432", "pg2@db2.example.com:6432"], "--write", 1)
    error = backend(STATE_FILE=h.path)
    last = backend(STATE_FILE=h.path, WHEN_NONE="last")
    assert last.dbha_choose()[1].host == "db2.example.com"
    h.say("none")
    with pytest.raises(OperationalError) as e:
        error.get_connection_params()
    assert "no database for writes: the agent finds no healthy database" in str(e.value)
    assert h.path in str(e.value) and "DATABASES['default']" in str(e.value)
    assert last.dbha_choose()[1] == ("pg2", "db2.example.com", 6432)
    # Nothing chosen yet in this process for this file: nothing to keep.
    missing = backend(STATE_FILE=str(tmp_path / "missing"), WHEN_NONE="last")
    with pytest.raises(OperationalError) as e:
        missing.dbha_choose()
    assert "cannot read the agent's state" in str(e.value) and "does not exist" in str(e.value)


def test_backend_refuses_a_misconfigured_dbha_dict():
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured) as e:
        backend(ROLE="primary")
    assert "'ROLE'" in str(e.value) and "'write', 'read'" in str(e.value)


def test_an_agent_alias_missing_from_databases_routes_to_the_fallback_once_logged(holder, caplog):
    h = holder(ALIASES + ["reporting"], "--write", 3, "--read", 3)
    r = router(DBHA_STATE_FILE=h.path, DBHA_FALLBACK="failover1")
    caplog.set_level(logging.INFO, logger="dbha.django.router")
    for _ in range(100):
        assert r.db_for_write(None) == "failover1" and r.db_for_read(None) == "failover1"
    warnings = [m for m in caplog.messages if "'reporting' is not in DATABASES" in m]
    assert len(warnings) == 1, caplog.messages
    h.say("write 2")
    assert r.db_for_write(None) == "failover2"
