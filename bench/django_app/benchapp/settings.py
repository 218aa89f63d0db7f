"""The benchmark's Django project, configured for one strategy (dbha-bench django
sets DBHA_BENCH to JSON: strategy, databases {name: {host, port}}, state file,
recipe status directory). Every strategy runs the same views (one that writes
and reads, one that only reads) with ATOMIC_REQUESTS on `default`; each is
configured as its own documentation advises."""

import json
import os

_bench = json.loads(os.environ["DBHA_BENCH"])
STRATEGY = _bench["strategy"]
_dbs = _bench["databases"]

SECRET_KEY = "dbha-bench"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
INSTALLED_APPS = ["benchapp"]
MIDDLEWARE = []
ROOT_URLCONF = "benchapp.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGGING_CONFIG = None

MARIADB = _bench.get("kind") == "mariadb"
if MARIADB:
    # The application's user (no SUPER: read_only binds it), on its database.
    _common = {"ENGINE": "django.db.backends.mysql", "NAME": _bench["database"],
               "USER": _bench["user"], "PASSWORD": _bench["password"],
               "OPTIONS": {"connect_timeout": 2}}
    _backend = "dbha.django.backends.mysql"
else:
    _common = {"ENGINE": "django.db.backends.postgresql", "NAME": "postgres", "USER": "postgres"}
    _backend = "dbha.django.backends.postgresql"

if STRATEGY == "recipe":
    # The original recipe: one alias per server, its router probing from requests,
    # Django's defaults (a new connection per request).
    DATABASES = {name: {**_common, "HOST": d["host"], "PORT": d["port"]} for name, d in _dbs.items()}
    DATABASE_ROUTERS = ["benchapp.routers.RecipeRouter"]
    RECIPE_STATUS_DIR = _bench["status_dir"]
elif STRATEGY == "router":
    # dbha's FailoverRouter with the settings its README advises.
    DATABASES = {name: {**_common, "HOST": d["host"], "PORT": d["port"], "CONN_MAX_AGE": 60,
                        "CONN_HEALTH_CHECKS": True} for name, d in _dbs.items()}
    DATABASE_ROUTERS = ["dbha.django.FailoverRouter"]
    DBHA_STATE_FILE = _bench["state"]
elif STRATEGY == "plain":
    # Django's own MySQL backend on the primary, as a Django user has it.
    _primary = _dbs["default"]
    DATABASES = {"default": {**_common, "HOST": _primary["host"], "PORT": _primary["port"],
                             "CONN_MAX_AGE": 60, "CONN_HEALTH_CHECKS": True}}
elif STRATEGY == "libpq":
    # What a Django expert configures instead: one alias, libpq's host list.
    DATABASES = {"default": {
        **_common,
        "HOST": ",".join(d["host"] for d in _dbs.values()),
        "PORT": ",".join(str(d["port"]) for d in _dbs.values()),
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": {"target_session_attrs": "read-write", "connect_timeout": 2},
    }}
elif STRATEGY in ("backend", "backend-error"):
    # "backend": read-only mode through a failover window (WHEN_NONE="read-only",
    # the default); "backend-error": WHEN_NONE="error", as before it.
    def _dbha(role):
        when_none = "error" if STRATEGY == "backend-error" else "read-only"
        return {**_common, "ENGINE": _backend, "CONN_MAX_AGE": 60,
                "DBHA": {"ROLE": role, "STATE_FILE": _bench["state"], "WHEN_NONE": when_none}}
    DATABASES = {"default": _dbha("write"), "replica": _dbha("read")}
    DATABASE_ROUTERS = ["dbha.django.ReplicaRouter"]
else:
    raise ValueError(f"unknown strategy {STRATEGY!r}")

DATABASES["default"]["ATOMIC_REQUESTS"] = True
