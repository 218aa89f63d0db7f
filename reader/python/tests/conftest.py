"""Fixtures: state files written by the real Rust writer (`dbha-statefile`), and
libdbha from the workspace build (`cargo build` first; tests/run.sh does it).
DBHA_TARGET_DIR points elsewhere than target/debug; DBHA_LIBRARY, if set, wins."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
TARGET = Path(os.environ.get("DBHA_TARGET_DIR", ROOT / "target" / "debug"))
STATEFILE = TARGET / "dbha-statefile"

# DBHA_TEST_INSTALLED=1: test the installed package (a wheel) with the library it
# bundles, not the source tree with the workspace's build.
INSTALLED = os.environ.get("DBHA_TEST_INSTALLED") == "1"
if not INSTALLED:
    os.environ.setdefault("DBHA_LIBRARY", str(TARGET / "libdbha.so"))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_state(path, aliases, *args):
    """A state file made by the real writer; `args` are dbha-statefile options."""
    subprocess.run([str(STATEFILE), str(path), ",".join(aliases), *map(str, args)], check=True)
    return str(path)


class Holder:
    """A live writer (dbha-statefile --hold) taking commands."""

    def __init__(self, path, aliases, *args):
        self.proc = subprocess.Popen(
            [str(STATEFILE), str(path), ",".join(aliases), *map(str, args), "--hold"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout.readline().strip() == "ready"
        self.path = str(path)

    def say(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline().strip()
        assert reply == "ok", f"{command}: {reply}"

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)


@pytest.fixture
def holder(tmp_path):
    made = []

    def make(aliases, *args):
        h = Holder(tmp_path / "state", aliases, *args)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


@pytest.fixture(scope="session", autouse=True)
def built():
    needed = [STATEFILE] + ([] if INSTALLED else [Path(os.environ["DBHA_LIBRARY"])])
    for f in needed:
        assert f.exists(), f"{f} is missing: run `cargo build --workspace` first (tests/run.sh does)"
