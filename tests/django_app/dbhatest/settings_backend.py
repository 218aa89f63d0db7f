"""The test project on the dbha backend (tests/django_app/test_backend.py): one
write alias and one read alias follow the agent; no HOST anywhere."""

import json
import os

_live = json.loads(os.environ["DBHA_TEST_LIVE"])

SECRET_KEY = "dbha-test"
USE_TZ = True
INSTALLED_APPS = ["dbha.django", "items"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def _db(role, **extra):
    return {
        "ENGINE": "dbha.django.backends.postgresql",
        "NAME": "postgres",
        "USER": "postgres",
        "OPTIONS": {"connect_timeout": 2},
        "DBHA": {"ROLE": role, "STATE_FILE": _live["state"]},
        **extra,
    }


DATABASES = {
    # Persistent connections: they must move when the agent's choice does.
    "default": _db("write", CONN_MAX_AGE=None),
    "replica": _db("read", CONN_MAX_AGE=None, TEST={"MIRROR": "default"}),
}
if not os.environ.get("DBHA_TEST_NO_POOL"):
    # Django's own pool (psycopg 3): one pool per endpoint. (Not under Django's test
    # runner, whose test database cannot be dropped while a pool holds connections.)
    DATABASES["pooled"] = _db("write", OPTIONS={"connect_timeout": 2, "pool": {"min_size": 2, "max_size": 4}})

# The write alias as it was before read-only mode: while no database takes
# writes, a new connection fails at once.
DATABASES["strict"] = _db("write", TEST={"MIRROR": "default"})
DATABASES["strict"]["DBHA"]["WHEN_NONE"] = "error"

DATABASES["default"]["ATOMIC_REQUESTS"] = True
MIDDLEWARE = ["dbha.django.ReadOnlyMiddleware"]
DATABASE_ROUTERS = ["dbha.django.ReplicaRouter"]
ROOT_URLCONF = "items.urls"
ALLOWED_HOSTS = ["testserver"]
