"""Python reader and Django router against the floors and the original recipe.

    cargo build --release --workspace
    .venv/bin/python bench/python_bench.py [--quick]

(`cargo run --release -p dbha-bench -- all` runs it with the others.)

1. Cost per call, medians of 31 interleaved samples: a no-argument ctypes call
   (floors: ctypes.CDLL, and ctypes.PyDLL as dbha loads libdbha),
   dbha.Reader.active_alias(), dbha.django.FailoverRouter.db_for_write(), and the
   original recipe's available_db() on its cached path (open, read, strptime,
   compare), re-implemented below.
2. Request-path stall: the worst call over 100,000 while the `default` host is
   blackholed (a listener whose accept queue is full drops SYNs, as a blackholed
   host does), a real dbha-agent watching the same three endpoints.

The recipe is bench/recipe.py: its logic unchanged, with the status-file write
it evidently meant.
"""

import ctypes
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = Path(os.environ.get("DBHA_TARGET_DIR", ROOT / "target" / "release"))
QUICK = "--quick" in sys.argv
os.environ.setdefault("DBHA_LIBRARY", str(TARGET / "libdbha.so"))
sys.path.insert(0, str(ROOT / "reader" / "python"))


from recipe import make_recipe, write_status  # noqa: E402  (bench/ is on sys.path)


# -- endpoints ---------------------------------------------------------------------------

def accepting_listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(128)

    def serve():
        while True:
            try:
                c, _ = s.accept()
                c.close()
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    return s


def blackholed_listener():
    """A listener that never accepts, its queue filled: further SYNs are dropped."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(0)
    held = []
    while True:
        c = socket.socket()
        c.settimeout(0.2)
        try:
            c.connect(s.getsockname())
            held.append(c)
        except OSError:
            c.close()
            return s, held


def main():
    work = tempfile.mkdtemp(prefix="dbha-pybench-")
    black, _held = blackholed_listener()
    ok1, ok2 = accepting_listener(), accepting_listener()
    ports = {"default": black.getsockname()[1], "failover1": ok1.getsockname()[1], "failover2": ok2.getsockname()[1]}
    state = f"{work}/state"
    config = f"{work}/dbha.toml"
    with open(config, "w") as f:
        f.write(f'state_file = "{state}"\ninterval = "200ms"\ntimeout = "300ms"\nfall = 2\nrise = 2\n')
        for alias, port in ports.items():
            f.write(f'[[database]]\nalias = "{alias}"\nhost = "127.0.0.1"\nport = {port}\ncheck = "tcp"\n')
    agent = subprocess.Popen([str(TARGET / "dbha-agent"), "run", "--config", config], stderr=subprocess.DEVNULL)
    try:
        run(state, ports, work)
    finally:
        agent.terminate()
        agent.wait(timeout=10)
        subprocess.run(["rm", "-rf", work])


def run(state, ports, work):
    import django
    from django.conf import settings

    settings.configure(
        DATABASES={a: {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:", "HOST": "127.0.0.1", "PORT": p}
                   for a, p in ports.items()},
        DBHA_STATE_FILE=state,
    )
    django.setup()
    import dbha
    from dbha.django import FailoverRouter

    deadline = time.monotonic() + 30
    while True:
        try:
            reader = dbha.Reader(state)
            if reader.active_alias() == "failover1":
                break
            reader.close()
        except dbha.StateFileError:
            pass
        assert time.monotonic() < deadline, "the agent never chose failover1"
        time.sleep(0.05)
    router = FailoverRouter()
    assert router.db_for_write(None) == "failover1"
    available_db, recipe_router = make_recipe(settings, work)
    write_status(work, "failover1")
    assert available_db() == "failover1"

    lib = os.environ["DBHA_LIBRARY"]
    cdll_noarg = ctypes.CDLL(lib).dbha_version
    pydll_noarg = ctypes.PyDLL(lib).dbha_version
    cases = {
        "ctypes.CDLL no-argument call (floor)": cdll_noarg,
        "ctypes.PyDLL no-argument call (floor)": pydll_noarg,
        "dbha Reader.active_alias()": reader.active_alias,
        "dbha FailoverRouter.db_for_write()": lambda: router.db_for_write(None),
        "recipe available_db(), cached path": available_db,
    }
    samples = {k: [] for k in cases}
    rounds, n = (5, 2000) if QUICK else (31, 20000)
    for _ in range(rounds):
        for name, f in cases.items():
            calls = n // 50 if name.startswith("recipe") else n
            samples[name].append(timeit.timeit(f, number=calls) / calls * 1e9)
        # Keep the recipe on its cached path: refresh the file's timestamp.
        write_status(work, "failover1")
    med = {k: statistics.median(v) for k, v in samples.items()}
    print(f"| case (Python {sys.version.split()[0]}, median of {rounds} samples) | ns/call | recipe / this |")
    print("|---|---:|---:|")
    recipe = med["recipe available_db(), cached path"]
    for name, ns in med.items():
        print(f"| {name} | {ns:.0f} | {recipe / ns:.1f} |")
    alias_ns = med["dbha Reader.active_alias()"]
    print()
    print(f"Reader.active_alias() / CDLL no-argument call = {alias_ns / med['ctypes.CDLL no-argument call (floor)']:.2f}; "
          f"/ PyDLL no-argument call = {alias_ns / med['ctypes.PyDLL no-argument call (floor)']:.2f} (target <= 2)")
    print(f"recipe / FailoverRouter.db_for_write() = {recipe / med['dbha FailoverRouter.db_for_write()']:.0f}x (target >= 20)")

    # -- stalls: worst call while `default` is blackholed ----------------------------
    calls = 2000 if QUICK else 100_000
    clock = time.perf_counter_ns

    def worst(f):
        w = 0
        for _ in range(calls):
            t = clock()
            f()
            w = max(w, clock() - t)
        return w

    dbha_worst = worst(lambda: router.db_for_write(None))
    # The recipe's next probe is due: its status file is more than 10 s old.
    with open(f"{work}/dbha_last_check.txt", "w") as f:
        f.write("2000-01-01 00:00:00\nfailover1")
    recipe_worst = worst(lambda: recipe_router.db_for_write(None))
    print()
    print(f"| worst db_for_write() over {calls:,} calls, `default` blackholed | ms |")
    print("|---|---:|")
    print(f"| dbha FailoverRouter | {dbha_worst / 1e6:.3f} |")
    print(f"| recipe ModelDatabaseRouter | {recipe_worst / 1e6:.1f} |")


if __name__ == "__main__":
    main()
