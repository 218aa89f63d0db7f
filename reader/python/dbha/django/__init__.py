"""Django integration: ``FailoverRouter`` for ``DATABASE_ROUTERS``, and system
checks (add ``"dbha.django"`` to ``INSTALLED_APPS`` to have them run).

Settings, all optional:

- ``DBHA_STATE_FILE``: the state file (else ``DBHA_STATE``, else /run/dbha/state).
- ``DBHA_ALIAS_MAP``: agent alias -> ``DATABASES`` key (identity by default).
- ``DBHA_FALLBACK``: the ``DATABASES`` key used when the state is stale, stopped,
  missing, unreadable or names no database (default ``"default"``).
- ``DBHA_MIGRATE_DATABASE``: if set, ``allow_migrate`` allows migrations on that
  database of the failover group and refuses them on the others; unset, the
  router has no opinion on migrations.
"""

from .router import FailoverRouter

__all__ = ["FailoverRouter"]
