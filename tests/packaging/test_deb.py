"""The Debian package, as an operator gets it: packaging/deb/build.sh builds it
with cargo-deb, these tests install it with `dpkg -i` in a throwaway Debian system
(tests/packaging/container.py, never on the machine running the tests) and use
what it installed: the agent checks the installed configuration and runs as the
`dbha` user the package created, a C program is compiled against the installed
header and library with `pkg-config --cflags --libs dbha` (shared and static) and
reads that agent's state file, and the installed unit verifies. Removing keeps
the configuration; purging removes it.

Needs root, systemd-nspawn and debootstrap, and the built package (DBHA_DEB, or
target/debian/dbha_*.deb): missing, they fail the run under CI and skip these
tests otherwise."""

import shutil
import time
from pathlib import Path

import pytest
from container import booted
from helpers import ROOT, Listener, agent_config, closed_port, version

HERE = Path(__file__).resolve().parent
AGENT = "/usr/bin/dbha-agent"
CONFIG = "/etc/dbha/dbha.toml"


@pytest.fixture(scope="module")
def box():
    with booted() as container:
        container.run("dpkg", "-i", container.deb)
        yield container


def installed(box):
    out = box.run("dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "dbha", check=False)
    return out.returncode == 0 and out.stdout.startswith("ii")


def test_the_package_installs_the_agent_the_library_and_the_unit(box):
    multiarch = box.run("gcc", "-print-multiarch").stdout.strip()
    lib = f"/usr/lib/{multiarch}"
    v = version()
    assert box.run("test", "-x", AGENT, check=False).returncode == 0
    assert box.run("stat", "-c", "%F", f"{lib}/libdbha.so.{v}").stdout.strip() == "regular file"
    assert box.run("readlink", f"{lib}/libdbha.so.0").stdout.strip() == f"libdbha.so.{v}"
    assert box.run("readlink", f"{lib}/libdbha.so").stdout.strip() == "libdbha.so.0"
    soname = box.run("readelf", "-d", f"{lib}/libdbha.so.{v}").stdout
    assert "Library soname: [libdbha.so.0]" in soname
    assert box.run("test", "-f", f"{lib}/libdbha.a", check=False).returncode == 0
    assert (box.root / "usr/include/dbha.h").read_bytes() == (ROOT / "reader/include/dbha.h").read_bytes()
    assert box.run("pkg-config", "--modversion", "dbha").stdout.strip() == v
    assert box.run("pkg-config", "--variable=libdir", "dbha").stdout.strip() == lib
    unit = box.root / "usr/lib/systemd/system/dbha-agent.service"
    assert unit.read_bytes() == (ROOT / "packaging/dbha-agent.service").read_bytes()
    # The package's ldconfig trigger ran: the linker cache names the library (by
    # /lib or /usr/lib, the same directory on a merged-/usr system).
    cache = [line.split(" => ")[-1] for line in box.run("ldconfig", "-p").stdout.splitlines()
             if line.strip().startswith("libdbha.so.0 ")]
    real = [box.run("readlink", "-f", p).stdout.strip() for p in cache]
    assert real == [box.run("readlink", "-f", f"{lib}/libdbha.so.0").stdout.strip()], cache


def test_the_configuration_is_a_conffile_and_the_installed_agent_accepts_it(box):
    conffiles = box.run("dpkg-query", "-W", "-f", "${Conffiles}", "dbha").stdout
    assert CONFIG in conffiles
    assert (box.root / CONFIG.lstrip("/")).read_bytes() == (ROOT / "packaging/dbha.toml").read_bytes()
    # As root, and as the unit's ExecStartPre runs it: as the dbha user.
    out = box.run(AGENT, "check", "--config", CONFIG)
    assert 'state_file = "/run/dbha/state"' in out.stdout
    box.run("runuser", "-u", "dbha", "--", AGENT, "check", "--config", CONFIG)


def test_the_package_creates_the_system_user_the_unit_runs_as(box):
    fields = box.run("getent", "passwd", "dbha").stdout.strip().split(":")
    name, _, uid, gid, _, home, shell = fields
    assert int(uid) < 1000, f"dbha is not a system user: uid {uid}"
    assert box.run("getent", "group", gid).stdout.split(":")[0] == "dbha"
    assert shell in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false")
    assert home == "/nonexistent" or box.run("test", "-e", home, check=False).returncode != 0


def test_the_installed_unit_verifies(box):
    out = box.run("systemd-analyze", "verify", "/usr/lib/systemd/system/dbha-agent.service", check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def compile_reader(box, out, static):
    args = ["pkg-config", "--cflags", "--libs"] + (["--static"] if static else []) + ["dbha"]
    flags = box.run(*args).stdout.split()
    cmd = ["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", "/var/tmp/installed_reader.c", "-o", out]
    if static:
        # Only libdbha statically; libc and friends stay shared.
        cmd += [f for f in flags if f != "-ldbha"] + ["-Wl,-Bstatic", "-ldbha", "-Wl,-Bdynamic"]
    else:
        cmd += flags
    box.run(*cmd)
    return out


def test_a_c_program_built_with_pkg_config_reads_the_installed_agents_decision(box):
    shutil.copy(HERE / "installed_reader.c", box.root / "var/tmp/installed_reader.c")
    shared = compile_reader(box, "/var/tmp/reader-shared", static=False)
    static = compile_reader(box, "/var/tmp/reader-static", static=True)
    # The shared build loads the installed library by its soname; the static one none.
    assert "Shared library: [libdbha.so.0]" in box.run("readelf", "-d", shared).stdout
    assert "libdbha" not in box.run("readelf", "-d", static).stdout

    listener = Listener()
    unit = "dbha-deb-test"
    try:
        box.run("install", "-d", "-o", "dbha", "-g", "dbha", "/var/tmp/run")
        (box.root / "var/tmp/dbha.toml").write_text(
            agent_config("/var/tmp/run/state", closed_port(), listener.port))
        # The agent as the dbha user, as the unit runs it; a transient service, so
        # that stopping it is a SIGTERM the agent handles.
        box.run("systemd-run", f"--unit={unit}", "--uid=dbha", "--gid=dbha", "--collect",
                AGENT, "run", "--config", "/var/tmp/dbha.toml")

        def read(program):
            return box.run(program, "/var/tmp/run/state", check=False).stdout.split()

        deadline = time.monotonic() + 30
        while read(shared)[1:] != ["0", "failover1", "failover1"] and time.monotonic() < deadline:
            time.sleep(0.1)
        journal = box.run("journalctl", "-u", unit, "--no-pager", "-o", "cat", check=False).stdout
        assert read(shared) == [version(), "0", "failover1", "failover1"], journal
        assert read(static) == [version(), "0", "failover1", "failover1"]
        assert box.run("stat", "-c", "%U", "/var/tmp/run/state").stdout.strip() == "dbha"

        box.run("systemctl", "stop", unit)
        # Stopped: the decision stays for a successor until stale_after (5 s),
        # then DBHA_STATUS_STALE (2), no alias.
        deadline = time.monotonic() + 30
        while read(shared)[1:] != ["2", "-", "-"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert read(shared) == [version(), "2", "-", "-"]
    finally:
        box.run("systemctl", "stop", unit, check=False)
        listener.close()


def test_reinstalling_keeps_the_edited_configuration_removing_keeps_it_purging_removes_it(box):
    config = box.root / CONFIG.lstrip("/")
    edited = config.read_text() + "# edited by the operator\n"
    config.write_text(edited)
    box.run("dpkg", "-i", box.deb)
    assert config.read_text() == edited
    box.run("dpkg", "-r", "dbha")
    assert box.run("test", "-e", AGENT, check=False).returncode != 0
    assert config.read_text() == edited, "dpkg -r must keep the configuration"
    box.run("dpkg", "--purge", "dbha")
    assert not config.exists()
    assert not installed(box)
