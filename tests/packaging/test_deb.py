"""The Debian package, as an operator gets it: packaging/deb/build.sh builds it
with cargo-deb, these tests install it on this machine with `dpkg -i` and use what
it installed: the agent checks the installed configuration and runs as the `dbha`
user the package created, a C program is compiled against the installed header
and library with `pkg-config --cflags --libs dbha` (shared and static) and reads
that agent's state file, and the installed unit verifies. The package is purged
at the end (and the user removed, if the tests created it), also on failure.

Needs root, dpkg and the built package (DBHA_DEB, or target/debian/dbha_*.deb):
missing, they fail the run under CI and skip these tests otherwise."""

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from helpers import ROOT, Listener, agent_config, built_package, closed_port, missing, sh, version

HERE = Path(__file__).resolve().parent
AGENT = "/usr/bin/dbha-agent"
CONFIG = Path("/etc/dbha/dbha.toml")


def installed():
    out = sh("dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "dbha", check=False)
    return out.returncode == 0 and out.stdout.startswith("ii")


def known(database, name):
    return sh("getent", database, name, check=False).returncode == 0


@pytest.fixture(scope="module")
def package():
    if os.geteuid() != 0:
        missing("installing a package needs root")
    for tool in ("dpkg", "dpkg-query", "cc", "pkg-config"):
        if shutil.which(tool) is None:
            missing(f"{tool} is not installed")
    deb = built_package()
    if installed():
        missing("the dbha package is installed on this machine already; these tests "
                "install and purge their own (dpkg --purge dbha to let them)")
    user_existed, group_existed = known("passwd", "dbha"), known("group", "dbha")
    try:
        sh("dpkg", "-i", deb)
        yield deb
    finally:
        sh("dpkg", "--purge", "dbha", check=False)
        if not user_existed and known("passwd", "dbha"):
            sh("userdel", "dbha", check=False)
        if not group_existed and known("group", "dbha"):
            sh("groupdel", "dbha", check=False)


def test_the_package_installs_the_agent_the_library_and_the_unit(package):
    multiarch = sh("dpkg-architecture", "-qDEB_HOST_MULTIARCH").stdout.strip()
    lib = Path("/usr/lib") / multiarch
    v = version()
    assert os.access(AGENT, os.X_OK)
    assert (lib / f"libdbha.so.{v}").is_file() and not (lib / f"libdbha.so.{v}").is_symlink()
    assert os.readlink(lib / "libdbha.so.0") == f"libdbha.so.{v}"
    assert os.readlink(lib / "libdbha.so") == "libdbha.so.0"
    soname = sh("readelf", "-d", lib / f"libdbha.so.{v}").stdout
    assert "Library soname: [libdbha.so.0]" in soname
    assert (lib / "libdbha.a").is_file()
    assert Path("/usr/include/dbha.h").read_bytes() == (ROOT / "reader/include/dbha.h").read_bytes()
    assert sh("pkg-config", "--modversion", "dbha").stdout.strip() == v
    assert sh("pkg-config", "--variable=libdir", "dbha").stdout.strip() == str(lib)
    unit = Path("/usr/lib/systemd/system/dbha-agent.service")
    assert unit.read_bytes() == (ROOT / "packaging/dbha-agent.service").read_bytes()
    # The package's ldconfig trigger ran: the linker cache names the library (by
    # /lib or /usr/lib, the same directory on a merged-/usr system).
    cache = [line.split(" => ")[-1] for line in sh("ldconfig", "-p").stdout.splitlines()
             if line.strip().startswith("libdbha.so.0 ")]
    assert [os.path.realpath(p) for p in cache] == [os.path.realpath(lib / "libdbha.so.0")], cache


def test_the_configuration_is_a_conffile_and_the_installed_agent_accepts_it(package):
    conffiles = sh("dpkg-query", "-W", "-f", "${Conffiles}", "dbha").stdout
    assert str(CONFIG) in conffiles
    assert CONFIG.read_bytes() == (ROOT / "packaging/dbha.toml").read_bytes()
    # As root, and as the unit's ExecStartPre runs it: as the dbha user.
    out = sh(AGENT, "check", "--config", CONFIG)
    assert 'state_file = "/run/dbha/state"' in out.stdout
    sh(AGENT, "check", "--config", CONFIG, user="dbha", group="dbha")


def test_the_package_creates_the_system_user_the_unit_runs_as(package):
    fields = sh("getent", "passwd", "dbha").stdout.strip().split(":")
    name, _, uid, gid, _, home, shell = fields
    assert int(uid) < 1000, f"dbha is not a system user: uid {uid}"
    assert sh("getent", "group", gid).stdout.split(":")[0] == "dbha"
    assert shell in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false")
    assert not Path(home).exists() or home == "/nonexistent"


def test_the_installed_unit_verifies(package):
    if shutil.which("systemd-analyze") is None:
        missing("systemd-analyze is not installed")
    out = sh("systemd-analyze", "verify", "/usr/lib/systemd/system/dbha-agent.service", check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def compile_reader(out, static):
    args = ["pkg-config", "--cflags", "--libs"] + (["--static"] if static else []) + ["dbha"]
    flags = sh(*args).stdout.split()
    cmd = ["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", str(HERE / "installed_reader.c"), "-o", str(out)]
    if static:
        # Only libdbha statically; libc and friends stay shared.
        cmd += [f for f in flags if f != "-ldbha"] + ["-Wl,-Bstatic", "-ldbha", "-Wl,-Bdynamic"]
    else:
        cmd += flags
    sh(*cmd)
    return out


def test_a_c_program_built_with_pkg_config_reads_the_installed_agents_decision(package):
    work = Path(tempfile.mkdtemp(prefix="dbha-deb-", dir="/tmp"))
    os.chmod(work, 0o755)
    agent = None
    listener = Listener()
    try:
        shared = compile_reader(work / "reader-shared", static=False)
        static = compile_reader(work / "reader-static", static=True)
        # The shared build loads the installed library by its soname; the static one none.
        needed = sh("readelf", "-d", shared).stdout
        assert "Shared library: [libdbha.so.0]" in needed
        assert "libdbha" not in sh("readelf", "-d", static).stdout

        run = work / "run"
        run.mkdir()
        shutil.chown(run, "dbha", "dbha")
        config = work / "dbha.toml"
        config.write_text(agent_config(run / "state", closed_port(), listener.port))
        log = open(work / "agent.log", "w")
        agent = subprocess.Popen([AGENT, "run", "--config", str(config)], user="dbha", group="dbha",
                                 stdout=log, stderr=subprocess.STDOUT)

        def read(program):
            return sh(program, run / "state", check=False)

        deadline = time.monotonic() + 30
        out = read(shared)
        while out.stdout.split()[1:] != ["0", "failover1", "failover1"] and time.monotonic() < deadline:
            assert agent.poll() is None, f"the agent exited: {(work / 'agent.log').read_text()}"
            time.sleep(0.1)
            out = read(shared)
        assert out.stdout.split() == [version(), "0", "failover1", "failover1"], \
            out.stdout + out.stderr + (work / "agent.log").read_text()
        assert read(static).stdout.split() == [version(), "0", "failover1", "failover1"]
        assert (run / "state").owner() == "dbha"

        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0
        agent = None
        # Stopped cleanly: DBHA_STATUS_AGENT_STOPPED (3), no alias.
        assert read(shared).stdout.split() == [version(), "3", "-", "-"]
    finally:
        if agent is not None:
            agent.kill()
            agent.wait()
        listener.close()
        shutil.rmtree(work, ignore_errors=True)


def test_reinstalling_keeps_the_edited_configuration_removing_keeps_it_purging_removes_it(package):
    edited = CONFIG.read_text() + "# edited by the operator\n"
    CONFIG.write_text(edited)
    sh("dpkg", "-i", package)
    assert CONFIG.read_text() == edited
    sh("dpkg", "-r", "dbha")
    assert not Path(AGENT).exists()
    assert CONFIG.read_text() == edited, "dpkg -r must keep the configuration"
    sh("dpkg", "--purge", "dbha")
    assert not CONFIG.exists()
    assert not installed()
