"""dbha.Reader over libdbha, against state files made by the Rust writer."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dbha
from conftest import INSTALLED, write_state

ALIASES = ["default", "failover1", "failover2"]


def test_active_state(tmp_path):
    path = write_state(tmp_path / "state", ALIASES, "--write", 1, "--read", 2, "--health", "0b110",
                       "--stale-after-ms", 600000)
    with dbha.Reader(path) as r:
        assert r.write_alias() == "failover1"
        assert r.read_alias() == "failover2"
        assert r.write_alias() == "failover1"  # the cached path
        assert r.active_alias() == "failover1"  # the older name
        s = r.snapshot()
        assert s.status == "active" and s.active and not s.stale
        assert (s.write_alias, s.read_alias) == ("failover1", "failover2")
        assert s.health == {"default": False, "failover1": True, "failover2": True}
        assert list(s.health) == ALIASES
        assert s.roles == {a: "unknown" for a in ALIASES}
        assert s.last_probe == {a: "unknown" for a in ALIASES}
        assert s.stale_after == 600.0 and 0 <= s.heartbeat_age < 60
        assert not s.stopped and not s.conflict and s.writer_pid > 0


def test_no_healthy_database(holder):
    h = holder(ALIASES)
    h.say("none")
    with dbha.Reader(h.path) as r:
        assert r.active_alias() is None and r.read_alias() is None
        assert r.snapshot().status == "no_healthy_database"


def test_reads_only(holder):
    # No database takes writes, one takes reads: a failover window.
    h = holder(ADDRESSED)
    h.say("none")
    h.say("read 1")
    with dbha.Reader(h.path) as r:
        s = r.snapshot()
        assert (s.status, s.read_only, s.active) == ("read_only", True, False)
        assert (s.write_alias, s.read_alias) == (None, "failover1")
        assert "no database takes writes" in s.reason and "failover1" in s.reason
        assert r.write_alias() is None and r.read_alias() == "failover1"
        assert r.write_endpoint() is None
        assert r.read_endpoint() == dbha.Endpoint("failover1", "10.1.2.3", 6432)
        assert r.conninfo("read") == "host=10.1.2.3 port=6432"
        with pytest.raises(dbha.NoDatabaseError) as e:
            r.conninfo()
        assert e.value.role == "write" and e.value.status == "read_only"
        assert "no database takes writes" in str(e.value)
        h.say("write 1")
        assert r.snapshot().status == "active" and r.write_alias() == "failover1"


def test_stale_heartbeat(holder):
    h = holder(ALIASES, "--stale-after-ms", 100)
    with dbha.Reader(h.path) as r:
        assert r.active_alias() == "default"
        h.say("pause")
        time.sleep(0.3)
        assert r.active_alias() is None
        s = r.snapshot()
        assert s.status == "stale" and s.stale and s.heartbeat_age > 0.1
        h.say("resume")
        assert r.active_alias() == "default"


def test_agent_stopped(tmp_path):
    path = write_state(tmp_path / "state", ALIASES, "--stopped")
    with dbha.Reader(path) as r:
        assert r.active_alias() is None
        s = r.snapshot()
        assert s.status == "agent_stopped" and s.stopped


def test_switch_and_file_replacement_are_followed(holder):
    h = holder(ALIASES)
    with dbha.Reader(h.path) as r:
        assert r.active_alias() == "default"
        h.say("write 2")
        assert r.active_alias() == "failover2"
        e = r.snapshot().epoch
        # The agent's aliases change: a new file; index 2 now means something else.
        h.say("aliases replica,failover2,default")
        assert r.active_alias() == "default"
        s = r.snapshot()
        assert list(s.health) == ["replica", "failover2", "default"] and s.epoch > e


def test_env_dbha_state_names_the_file(tmp_path, monkeypatch):
    path = write_state(tmp_path / "state", ALIASES, "--write", 2)
    monkeypatch.setenv("DBHA_STATE", path)
    with dbha.Reader() as r:
        assert r.path == path and r.active_alias() == "failover2"


def file_with(name, data):
    def make(d):
        (d / name).write_bytes(data)
        return d / name
    return make


@pytest.mark.parametrize("make, exc, code, says", [
    (lambda d: d / "missing", dbha.StateFileNotFound, dbha.E_NOT_FOUND, "does not exist"),
    (lambda d: d, dbha.NotAStateFileError, dbha.E_NOT_REGULAR_FILE, "is a directory"),
    (file_with("empty", b""), dbha.NotAStateFileError, dbha.E_TRUNCATED, "is empty"),
    (file_with("junk", b"x" * 9000), dbha.NotAStateFileError, dbha.E_BAD_MAGIC, "bad magic"),
])
def test_errors_carry_code_path_and_message(tmp_path, make, exc, code, says):
    path = make(tmp_path)
    with pytest.raises(exc) as e:
        dbha.Reader(str(path))
    assert e.value.code == code
    assert e.value.path == str(path)
    assert str(path) in str(e.value) and says in str(e.value)
    assert isinstance(e.value, dbha.StateFileError) and isinstance(e.value, dbha.Error)


def test_newer_layout_version_is_its_own_error(tmp_path):
    path = Path(write_state(tmp_path / "state", ALIASES))
    data = bytearray(path.read_bytes())
    data[8:12] = (3).to_bytes(4, sys.byteorder)
    bad = tmp_path / "v3"
    bad.write_bytes(bytes(data))
    with pytest.raises(dbha.UnsupportedVersionError) as e:
        dbha.Reader(str(bad))
    assert e.value.code == dbha.E_UNSUPPORTED_VERSION
    assert "has layout version 3, this reader supports 1" in str(e.value)


def test_closed_reader_raises(tmp_path):
    r = dbha.Reader(write_state(tmp_path / "state", ALIASES))
    r.close()
    r.close()
    for call in (r.active_alias, r.read_alias, r.snapshot):
        with pytest.raises(ValueError):
            call()


def test_a_reader_opened_before_fork_works_in_the_child(holder):
    h = holder(ALIASES)
    r = dbha.Reader(h.path)
    assert r.active_alias() == "default"
    h.say("write 1")
    pid = os.fork()
    if pid == 0:
        # The child: the same mapping, still live.
        ok = r.active_alias() == "failover1" and r.snapshot().status == "active"
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    r.close()


def run_python(code, env, cwd="/"):
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=cwd)
    return out.returncode, out.stdout.strip(), out.stderr


def test_library_search_order(tmp_path):
    lib = Path(dbha.library_path())
    pkg = Path(dbha.__file__).parent
    # 1. DBHA_LIBRARY wins.
    copy = tmp_path / "elsewhere" / "libdbha.so"
    copy.parent.mkdir()
    shutil.copy(lib, copy)
    env = {**os.environ, "DBHA_LIBRARY": str(copy), "PYTHONPATH": str(pkg.parent)}
    code = "import dbha; dbha.version(); print(dbha.library_path())"
    rc, out, err = run_python(code, env)
    assert (rc, out) == (0, str(copy)), err
    # An explicit DBHA_LIBRARY that does not load is an error naming it.
    env["DBHA_LIBRARY"] = str(tmp_path / "nope.so")
    rc, out, err = run_python(code, env)
    assert rc != 0 and "LibraryNotFoundError" in err and "nope.so" in err
    # 2. A copy bundled in the package comes next.
    bundled_pkg = tmp_path / "site" / "dbha"
    shutil.copytree(pkg, bundled_pkg)
    shutil.copy(lib, bundled_pkg / "libdbha.so")
    env = {k: v for k, v in os.environ.items() if k != "DBHA_LIBRARY"}
    env["PYTHONPATH"] = str(bundled_pkg.parent)
    shutil.rmtree(bundled_pkg / "__pycache__", ignore_errors=True)
    rc, out, err = run_python(code, env)
    assert (rc, out) == (0, str(bundled_pkg / "libdbha.so")), err
    # 3. Then the system loader path, by soname.
    plain_pkg = tmp_path / "plain" / "dbha"
    shutil.copytree(pkg, plain_pkg, ignore=shutil.ignore_patterns("libdbha.so*"))
    sysdir = tmp_path / "syslib"
    sysdir.mkdir()
    shutil.copy(lib, sysdir / "libdbha.so.0")
    env["PYTHONPATH"] = str(plain_pkg.parent)
    env["LD_LIBRARY_PATH"] = str(sysdir)
    rc, out, err = run_python(code, env)
    assert (rc, out) == (0, "libdbha.so.0"), err
    # Nowhere: an ImportError saying what was tried.
    env.pop("LD_LIBRARY_PATH")
    rc, out, err = run_python(code, env)
    assert rc != 0 and "libdbha could not be loaded" in err and "DBHA_LIBRARY" in err


@pytest.mark.skipif(not INSTALLED, reason="checks an installed wheel (DBHA_TEST_INSTALLED=1, tests/run.sh)")
def test_an_installed_wheel_loads_the_library_it_bundles():
    assert "DBHA_LIBRARY" not in os.environ
    assert dbha.library_path() == str(Path(dbha.__file__).parent / "libdbha.so")
    assert "site-packages" in dbha.library_path()
    assert dbha.version() == "0.1.0"


ADDRESSED = ["default@db1.example.com:5432", "failover1@10.1.2.3:6432", "failover2@[::1]:5433"]


def test_endpoints_and_conninfo_follow_the_choice(holder):
    h = holder(ADDRESSED)
    with dbha.Reader(h.path) as r:
        assert r.write_endpoint() == dbha.Endpoint("default", "db1.example.com", 5432)
        assert r.conninfo() == "host=db1.example.com port=5432"
        h.say("write 1")
        h.say("read 2")
        e = r.write_endpoint()
        assert (e.alias, e.host, e.port) == ("failover1", "10.1.2.3", 6432)
        assert r.read_endpoint() == dbha.Endpoint("failover2", "::1", 5433)
        assert r.conninfo("read") == "host=::1 port=5433"
        assert r.endpoint(r.write_slot()) == e
        assert r.slot_alias(r.read_slot()) == "failover2"
        assert r.endpoint(-1) is None
        with pytest.raises(ValueError):
            r.conninfo("primary")


def test_conninfo_says_why_there_is_no_database(holder):
    h = holder(ADDRESSED, "--stale-after-ms", 200)
    with dbha.Reader(h.path) as r:
        h.say("none")
        assert r.write_endpoint() is None and r.read_endpoint() is None
        with pytest.raises(dbha.NoDatabaseError) as e:
            r.conninfo()
        assert e.value.role == "write" and e.value.status == "no_healthy_database"
        assert "no healthy database" in str(e.value) and h.path in str(e.value)
        h.say("write 0")
        h.say("pause")
        time.sleep(0.4)
        with pytest.raises(dbha.NoDatabaseError) as e:
            r.conninfo("read")
        assert e.value.status == "stale" and "heartbeat" in str(e.value)


def test_a_changed_address_is_followed_and_old_slots_keep_their_address(holder):
    h = holder(ADDRESSED)
    with dbha.Reader(h.path) as r:
        old = r.write_slot()
        h.say("aliases default@db2.example.com:5432,failover1@10.1.2.3:6432")
        assert r.conninfo() == "host=db2.example.com port=5432"
        assert r.write_slot() != old
        assert r.endpoint(old) == dbha.Endpoint("default", "db1.example.com", 5432)


def test_conninfo_quotes_what_libpq_would_misread():
    assert dbha._conninfo_value("db1") == "db1"
    assert dbha._conninfo_value("a b") == "'a b'"
    assert dbha._conninfo_value("it's\\") == "'it\\'s\\\\'"
    assert dbha._conninfo_value("") == "''"
