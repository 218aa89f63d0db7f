"""A minimal Django project whose three databases are live PostgreSQL clusters
started by the test (tests/django_app/test_failover.py), routed by dbha."""

import json
import os

_live = json.loads(os.environ["DBHA_TEST_LIVE"])

SECRET_KEY = "dbha-test"
USE_TZ = True
INSTALLED_APPS = ["dbha.django", "items"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DATABASES = {
    alias: {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "postgres",
        "USER": "postgres",
        "HOST": db["host"],
        "PORT": db["port"],
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": {"connect_timeout": 2},
    }
    for alias, db in _live["databases"].items()
}

DATABASE_ROUTERS = ["dbha.django.FailoverRouter"]
DBHA_STATE_FILE = _live["state"]
DBHA_FALLBACK = "default"
