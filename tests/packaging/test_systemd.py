"""The unit under a real systemd: a Debian root of this machine's release
(debootstrap, cached in target/systemd-root, copied for each run) is booted with
systemd-nspawn, the built .deb is installed in it with dpkg, and the agent is run
as an operator runs it: systemctl enable --now, restart, reload, stop, a changed
service group, a wedged agent, a package upgrade.

The container (tests/packaging/container.py) shares this machine's network, so
the agent probes a listener of the test's on loopback. It is powered off and its
root removed at the end, also on failure. Needs root, systemd-nspawn and debootstrap (tests/setup.sh installs
them) and Debian's package mirror for the first debootstrap: missing, they fail
the run under CI and skip these tests otherwise."""

import json
import time
from pathlib import Path

import pytest
from container import Container, booted, wait_for
from helpers import Listener, agent_config, closed_port

UNIT = "dbha-agent.service"
DROPIN = Path("etc/systemd/system/dbha-agent.service.d")


class Box(Container):
    """The container, with what these tests ask of the unit."""

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



@pytest.fixture(scope="module")
def box():
    listener = Listener()
    try:
        with booted(Box) as container:
            container.listener = listener
            container.refused = closed_port()
            yield container
    finally:
        listener.close()


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
    assert code == 0 and status["status"] == "active" and status["write"] == "failover1", status
    assert box.prop("ActiveState") == "active"
    assert box.prop("StatusText").startswith("write: failover1"), box.prop("StatusText")
    pid = box.prop("MainPID")
    assert box.run("stat", "-c", "%U", f"/proc/{pid}").stdout.strip() == "dbha"
    assert box.inode()[1:] == ["644", "dbha"]


def test_a_restart_keeps_the_state_file_its_inode_and_its_epoch(box):
    inode, (_, before) = box.inode()[0], box.status()
    pid = box.prop("MainPID")
    box.run("systemctl", "restart", UNIT)
    code, after = box.status()
    assert code == 0 and after["write"] == "failover1"
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


def test_stop_keeps_the_state_file_and_readers_see_it_stale_after_stale_after(box):
    # A stop is a hand-over that no agent takes: readers keep the last decision
    # until stale_after, then see it stale (a restart within it is invisible).
    inode = box.inode()[0]
    box.run("systemctl", "stop", UNIT)
    wait_for("the decision to go stale", lambda: box.status()[1]["status"] == "stale")
    code, status = box.status()
    assert code == 2 and not status["flags"]["stopped"], status
    assert status["write"] is None
    assert box.inode()[0] == inode


def test_the_hardening_holds(box):
    out = box.run("systemd-analyze", "security", UNIT, "--no-pager").stdout
    overall = [line for line in out.splitlines() if "Overall exposure level" in line]
    assert overall, out
    # "→ Overall exposure level for dbha-agent.service: 1.5 OK"
    exposure = float(overall[0].split(":")[1].split()[0])
    print(overall[0])
    assert exposure <= 2.0, out
