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
        assert set(problems) == {"dbha.E003", "dbha.E004"}
        assert problems["dbha.E004"].hint and "default" in problems["dbha.E004"].hint
    with override_settings(DBHA_STATE_FILE=path):
        msgs = [p.msg for p in run_checks() if p.id == "dbha.E003"]
        assert msgs == ["The agent publishes the alias 'reporting', and 'reporting' is not in DATABASES."]
    with override_settings(DBHA_STATE_FILE=str(tmp_path / "missing")):
        problems = [p for p in run_checks() if p.id == "dbha.W002"]
        assert len(problems) == 1 and "does not exist" in problems[0].msg and problems[0].hint
