"""The unit under a real systemd: a Debian root of this machine's release
(debootstrap, cached in target/systemd-root, copied for each run) is booted with
systemd-nspawn, the built .deb is installed in it with dpkg, and the agent is run
as an operator runs it: systemctl enable --now, restart, reload, stop, a changed
service group, a wedged agent, a package upgrade.

The container shares this machine's network, so the agent probes a listener of
the test's on loopback. It is powered off and its root removed at the end, also
on failure. Needs root, systemd-nspawn and debootstrap (tests/setup.sh installs
them) and Debian's package mirror for the first debootstrap: missing, they fail
the run under CI and skip these tests otherwise."""

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from helpers import ROOT, Listener, agent_config, built_package, closed_port, missing, sh

CACHE = ROOT / "target" / "systemd-root"
MIRROR = "http://deb.debian.org/debian"
UNIT = "dbha-agent.service"
DROPIN = Path("etc/systemd/system/dbha-agent.service.d")


def release():
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip('"')
    missing("/etc/os-release names no VERSION_CODENAME (not Debian?)")


# systemd, and what the package depends on beyond a minimal system (dpkg -i does
# not fetch dependencies).
PACKAGES = "systemd,systemd-sysv,dbus,adduser,procps"


def pristine_root():
    """A minimal Debian root with systemd, made once (the marker says it is whole,
    and with which packages)."""
    marker = CACHE / ".dbha-complete"
    wanted = f"{release()} {PACKAGES}"
    if marker.exists() and marker.read_text() == wanted:
        return CACHE
    shutil.rmtree(CACHE, ignore_errors=True)
    out = sh("debootstrap", "--variant=minbase", f"--include={PACKAGES}", release(), CACHE, MIRROR,
             check=False)
    if out.returncode != 0:
        shutil.rmtree(CACHE, ignore_errors=True)
        pytest.fail(f"debootstrap failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    marker.write_text(wanted)
    return CACHE


class Container:
    """A booted systemd-nspawn container; commands run in it through nsenter."""

    def __init__(self, root):
        self.root = root
        self.log = open(root.parent / "nspawn.log", "w")
        self.nspawn = subprocess.Popen(
            ["systemd-nspawn", "--quiet", "-D", str(root), "--boot", "--register=no", "--keep-unit",
             "--console=passive"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        self.init = None

    def boot(self):
        deadline = time.monotonic() + 60
        while self.init is None:
            if self.nspawn.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the container did not boot:\n{(self.root.parent / 'nspawn.log').read_text()}")
            self.init = self.container_init()
            time.sleep(0.1)
        # Under load, systemctl may find no bus yet and print nothing: ask again.
        deadline = time.monotonic() + 120
        while True:
            out = self.run("systemctl", "is-system-running", "--wait", check=False, timeout=120)
            state = out.stdout.strip()
            if state or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert state in ("running", "degraded"), f"{state!r}: {out.stderr}"

    def container_init(self):
        """The container's PID 1, as this machine sees it: nspawn's child running systemd."""
        try:
            children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children").read_text().split()
        except OSError:
            return None
        for pid in children:
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
            except OSError:
                pass
        return None

    def run(self, *args, check=True, **kw):
        return sh("nsenter", "-t", self.init, "-a", *args, check=check, **kw)

    def prop(self, name):
        return self.run("systemctl", "show", "-P", name, UNIT).stdout.strip()

    def status(self):
        out = self.run("dbha-agent", "status", "--json", check=False)
        return out.returncode, json.loads(out.stdout) if out.stdout.strip() else None

    def inode(self, path="/run/dbha/state"):
        return self.run("stat", "-c", "%i %a %G", path).stdout.split()

    def dropin(self, name, text):
        (self.root / DROPIN).mkdir(parents=True, exist_ok=True)
        (self.root / DROPIN / name).write_text(text)
        self.run("systemctl", "daemon-reload")

    def journal(self):
        return self.run("journalctl", "-u", UNIT, "--no-pager", "-o", "cat", check=False).stdout

    def close(self):
        if self.nspawn.poll() is None:
            # nspawn asks the container's systemd to power off on SIGTERM.
            self.nspawn.terminate()
            try:
                self.nspawn.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait()
        self.log.close()


def wait_for(what, predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def box():
    if os.geteuid() != 0:
        missing("booting a container needs root")
    for tool in ("systemd-nspawn", "debootstrap", "nsenter"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            missing(f"{tool} is not installed")
    deb = built_package()
    pristine = pristine_root()
    work = Path(tempfile.mkdtemp(prefix="dbha-systemd-", dir=ROOT / "target"))
    listener = Listener()
    container = None
    try:
        root = work / "root"
        sh("cp", "-a", pristine, root)
        (root / "var/tmp" / deb.name).write_bytes(deb.read_bytes())
        container = Container(root)
        container.boot()
        container.deb = f"/var/tmp/{deb.name}"
        container.listener = listener
        container.refused = closed_port()
        yield container
    finally:
        if container is not None:
            container.close()
        listener.close()
        shutil.rmtree(work, ignore_errors=True)


def write_config(box, extra=""):
    (box.root / "etc/dbha/dbha.toml").write_text(
        agent_config("/run/dbha/state", box.refused, box.listener.port, extra))


def test_the_package_leaves_the_agent_off_and_start_returns_once_a_decision_is_published(box):
    box.run("dpkg", "-i", box.deb)
    assert box.run("systemctl", "is-enabled", UNIT, check=False).stdout.strip() == "disabled"
    assert box.prop("ActiveState") == "inactive"
    write_config(box)
    # Type=notify: this returns once the agent sent READY=1.
    box.run("systemctl", "enable", "--now", UNIT)
    code, status = box.status()
    assert code == 0 and status["status"] == "active" and status["active"] == "failover1", status
    assert box.prop("ActiveState") == "active"
    assert box.prop("StatusText").startswith("active: failover1"), box.prop("StatusText")
    pid = box.prop("MainPID")
    assert box.run("stat", "-c", "%U", f"/proc/{pid}").stdout.strip() == "dbha"
    assert box.inode()[1:] == ["644", "dbha"]


def test_a_restart_keeps_the_state_file_its_inode_and_its_epoch(box):
    inode, (_, before) = box.inode()[0], box.status()
    pid = box.prop("MainPID")
    box.run("systemctl", "restart", UNIT)
    code, after = box.status()
    assert code == 0 and after["active"] == "failover1"
    assert box.inode()[0] == inode
    assert after["epoch"] == before["epoch"]
    assert box.prop("MainPID") != pid


def test_a_reload_applies_the_configuration_in_the_same_process(box):
    pid = box.prop("MainPID")
    _, before = box.status()
    write_config(box, extra='failback = "auto"')
    box.run("systemctl", "reload", UNIT)
    wait_for("the reload", lambda: box.status()[1]["config_generation"] > before["config_generation"])
    assert box.prop("MainPID") == pid
    assert box.prop("ActiveState") == "active"


def test_a_reload_with_an_invalid_file_fails_and_the_agent_carries_on(box):
    pid = box.prop("MainPID")
    config = box.root / "etc/dbha/dbha.toml"
    good = config.read_text()
    config.write_text(good.replace('interval = "100ms"', 'interval = "soon"'))
    out = box.run("systemctl", "reload", UNIT, check=False)
    assert out.returncode != 0
    assert "interval" in box.journal()
    assert box.prop("MainPID") == pid and box.prop("ActiveState") == "active"
    assert box.status()[0] == 0
    config.write_text(good)


def test_a_changed_service_group_and_state_mode_reach_the_kept_file(box):
    inode = box.inode()[0]
    write_config(box, extra='state_mode = "0640"')
    box.dropin("group.conf", "[Service]\nGroup=www-data\n")
    box.run("systemctl", "restart", UNIT)
    assert box.inode() == [inode, "640", "www-data"]
    # The application's group reads it; others do not.
    out = box.run("setpriv", "--reuid=www-data", "--regid=www-data", "--clear-groups",
                  "dbha-agent", "status", check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    out = box.run("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                  "dbha-agent", "status", check=False)
    assert out.returncode == 1 and "not readable" in out.stderr, out.stdout + out.stderr


def test_the_watchdog_restarts_an_agent_that_stops_reporting(box):
    box.dropin("watchdog.conf", "[Service]\nWatchdogSec=2s\nTimeoutAbortSec=2s\n")
    box.run("systemctl", "restart", UNIT)
    restarts, pid = int(box.prop("NRestarts")), box.prop("MainPID")
    # Pinging: alive past several watchdog periods.
    time.sleep(5)
    assert (int(box.prop("NRestarts")), box.prop("MainPID")) == (restarts, pid)
    # Wedged: restarted by systemd, and the new agent is ready again.
    box.run("kill", "-STOP", pid)
    wait_for("a restart", lambda: box.prop("MainPID") not in ("0", pid) and box.prop("ActiveState") == "active")
    assert int(box.prop("NRestarts")) == restarts + 1
    assert "Watchdog timeout" in box.journal()
    assert box.status()[0] == 0


def test_an_upgrade_restarts_a_running_agent_and_keeps_the_state_file(box):
    inode, pid = box.inode()[0], box.prop("MainPID")
    _, before = box.status()
    config = (box.root / "etc/dbha/dbha.toml").read_text()
    box.run("dpkg", "-i", box.deb)
    assert box.prop("MainPID") != pid
    code, after = box.status()
    assert code == 0 and after["epoch"] == before["epoch"]
    assert box.inode()[0] == inode
    assert (box.root / "etc/dbha/dbha.toml").read_text() == config


def test_stop_marks_the_state_file_stopped_and_keeps_it(box):
    inode = box.inode()[0]
    box.run("systemctl", "stop", UNIT)
    code, status = box.status()
    assert code == 2 and status["flags"]["stopped"], status
    assert box.inode()[0] == inode


def test_the_hardening_holds(box):
    out = box.run("systemd-analyze", "security", UNIT, "--no-pager").stdout
    overall = [line for line in out.splitlines() if "Overall exposure level" in line]
    assert overall, out
    # "→ Overall exposure level for dbha-agent.service: 1.5 OK"
    exposure = float(overall[0].split(":")[1].split()[0])
    print(overall[0])
    assert exposure <= 2.0, out
