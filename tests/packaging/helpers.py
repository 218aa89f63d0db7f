"""What the packaging tests share: running commands, finding the built package,
and a TCP listener to stand for a healthy database (check = "tcp")."""

import glob
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI") in ("true", "1")


def missing(reason):
    """A missing prerequisite: a failure under CI, a skip otherwise."""
    if IN_CI:
        pytest.fail(f"{reason} (required under CI)")
    pytest.skip(reason)


def sh(*args, check=True, **kw):
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    if check and out.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {out.returncode}:\n{out.stdout}{out.stderr}")
    return out


def built_package():
    """The .deb to test: DBHA_DEB, or the newest target/debian/dbha_*.deb."""
    if os.environ.get("DBHA_DEB"):
        deb = Path(os.environ["DBHA_DEB"])
    else:
        debs = sorted(glob.glob(str(ROOT / "target" / "debian" / "dbha_*.deb")), key=os.path.getmtime)
        deb = Path(debs[-1]) if debs else None
    if deb is None or not deb.is_file():
        missing("no package built: run packaging/deb/build.sh")
    return deb


def version():
    for line in (ROOT / "Cargo.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise AssertionError("no version in Cargo.toml")


class Listener:
    """A TCP listener on loopback that accepts and closes: a healthy endpoint."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.2)
        self.done = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.done:
            try:
                conn, _ = self.sock.accept()
                conn.close()
            except OSError:
                pass

    def close(self):
        self.done = True
        self.thread.join()
        self.sock.close()


def closed_port():
    """A loopback port nothing listens on: connections to it are refused."""
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def agent_config(state_file, refused_port, listener_port, extra=""):
    """`default` refused, `failover1` healthy: the agent chooses failover1."""
    return f"""{extra}
state_file = "{state_file}"
interval = "100ms"
timeout = "500ms"
rise = 1
fall = 2
stale_after = "5s"

[[database]]
alias = "default"
host = "127.0.0.1"
port = {refused_port}
check = "tcp"

[[database]]
alias = "failover1"
host = "127.0.0.1"
port = {listener_port}
check = "tcp"
"""
