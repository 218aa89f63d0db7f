"""The test project on the dbha MySQL backend (tests/django_app/test_mysql.py):
one write alias and one read alias follow the agent over MariaDB; no HOST
anywhere. mysqlclient, or PyMySQL with DBHA_TEST_PYMYSQL=1."""

import json
import os

_live = json.loads(os.environ["DBHA_TEST_LIVE"])

SECRET_KEY = "dbha-test"
USE_TZ = True
INSTALLED_APPS = ["dbha.django", "items"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def _db(role, **extra):
    return {
        "ENGINE": "dbha.django.backends.mysql",
        "NAME": _live["database"],
        "USER": _live["user"],
        "PASSWORD": _live["password"],
        "OPTIONS": {"connect_timeout": 2},
        "DBHA": {"ROLE": role, "STATE_FILE": _live["state"]},
        **extra,
    }


DATABASES = {
    # Persistent connections: they must move when the agent's choice does.
    "default": _db("write", CONN_MAX_AGE=None, ATOMIC_REQUESTS=True),
    "replica": _db("read", CONN_MAX_AGE=None, TEST={"MIRROR": "default"}),
}
MIDDLEWARE = ["dbha.django.ReadOnlyMiddleware"]
DATABASE_ROUTERS = ["dbha.django.ReplicaRouter"]
ROOT_URLCONF = "items.urls"
ALLOWED_HOSTS = ["testserver"]
