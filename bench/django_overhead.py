"""The dbha backend's cost per query outside a transaction, against Django's
PostgreSQL backend, both connected (persistent connections) to the same live
server, in one process, interleaved. Run by `dbha-bench django`, which starts the
server and the agent and passes them in DBHA_BENCH (JSON: databases, state).

Two cases per backend: creating a cursor (`connection.cursor()`, where the backend
compares the agent's choice with the connection's endpoint; no round trip) and a
whole query (`SELECT 1` through a new cursor, one round trip). The overhead is the
difference of the medians."""

import json
import os
import statistics
import sys
import timeit

QUICK = "--quick" in sys.argv
bench = json.loads(os.environ["DBHA_BENCH"])
primary = bench["databases"]["default"]

import django  # noqa: E402
from django.conf import settings  # noqa: E402

common = {"NAME": "postgres", "USER": "postgres", "CONN_MAX_AGE": None}
settings.configure(
    DATABASES={
        "default": {**common, "ENGINE": "django.db.backends.postgresql",
                    "HOST": primary["host"], "PORT": primary["port"]},
        "dbha": {**common, "ENGINE": "dbha.django.backends.postgresql",
                 "DBHA": {"STATE_FILE": bench["state"]}},
    },
    USE_TZ=True,
)
django.setup()

from django.db import connections  # noqa: E402


def cursor(alias):
    conn = connections[alias]

    def f():
        with conn.cursor():
            pass
    return f


def query(alias):
    conn = connections[alias]

    def f():
        with conn.cursor() as c:
            c.execute("SELECT 1")
            c.fetchone()
    return f


names = {"default": "Django's PostgreSQL backend", "dbha": "dbha backend"}
cases = {(kind, alias): make(alias) for kind, make in (("cursor()", cursor), ("SELECT 1", query))
         for alias in names}
for f in cases.values():
    f()  # connect
assert connections["dbha"].dbha_endpoint.port == primary["port"]
rounds, n = (5, 2000) if QUICK else (31, 20000)
samples = {k: [] for k in cases}
for _ in range(rounds):
    for k, f in cases.items():
        calls = n if k[0] == "cursor()" else n // 10
        samples[k].append(timeit.timeit(f, number=calls) / calls * 1e9)
med = {k: statistics.median(v) for k, v in samples.items()}

print(f"| per query, outside a transaction (Python {sys.version.split()[0]}, Django {django.__version__}, "
      f"median of {rounds} samples) | Django's backend ns | dbha backend ns | dbha overhead ns |")
print("|---|---:|---:|---:|")
for kind in ("cursor()", "SELECT 1"):
    plain, ours = med[(kind, "default")], med[(kind, "dbha")]
    print(f"| {kind} | {plain:.0f} | {ours:.0f} | {ours - plain:.0f} |")
overhead = med[("cursor()", "dbha")] - med[("cursor()", "default")]
print(f"\nbackend overhead per query (cursor creation, no round trip) = {overhead:.0f} ns (target <= 1000 ns)")
