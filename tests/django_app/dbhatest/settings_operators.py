"""The backend test project (settings_backend) and a pooled read alias, for
tests/django_app/test_operators.py: reads move between healthy standbys (a
planned move, which lets queries under way finish) while other threads take
connections from the new endpoint's pool."""

from .settings_backend import *  # noqa: F401,F403
from .settings_backend import DATABASES, _db

if "pooled" in DATABASES:
    DATABASES["pooled_reads"] = _db("read", OPTIONS={"connect_timeout": 2, "pool": {"min_size": 2, "max_size": 4}})
