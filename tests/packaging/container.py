"""A throwaway Debian system for the packaging tests: a root of this machine's
release (debootstrap, cached in target/systemd-root, copied for each use) booted
with systemd-nspawn. Packages are installed, users created and services run in
it, never on the machine running the tests. It shares this machine's network, so
what runs in it can reach a listener of the test's on loopback."""

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from helpers import ROOT, built_package, missing, sh

CACHE = ROOT / "target" / "systemd-root"
MIRROR = "http://deb.debian.org/debian"


def release():
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip('"')
    missing("/etc/os-release names no VERSION_CODENAME (not Debian?)")


# systemd, what the package depends on beyond a minimal system (dpkg -i does not
# fetch dependencies), and what an application's build needs: a C compiler,
# pkg-config, readelf.
PACKAGES = "systemd,systemd-sysv,dbus,adduser,procps,gcc,libc6-dev,pkg-config,binutils"


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



@contextlib.contextmanager
def booted(cls=None):
    """A booted container (of `cls`, a Container subclass) on a fresh copy of the
    root, with the built package in /var/tmp (`box.deb`); powered off and removed
    at the end, also on failure."""
    if os.geteuid() != 0:
        missing("booting a container needs root")
    for tool in ("systemd-nspawn", "debootstrap", "nsenter"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            missing(f"{tool} is not installed")
    deb = built_package()
    pristine = pristine_root()
    work = Path(tempfile.mkdtemp(prefix="dbha-container-", dir=ROOT / "target"))
    container = None
    try:
        root = work / "root"
        sh("cp", "-a", pristine, root)
        (root / "var/tmp" / deb.name).write_bytes(deb.read_bytes())
        container = (cls or Container)(root)
        container.boot()
        container.deb = f"/var/tmp/{deb.name}"
        yield container
    finally:
        if container is not None:
            container.close()
        shutil.rmtree(work, ignore_errors=True)
