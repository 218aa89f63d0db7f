"""Django integration. Add ``"dbha.django"`` to ``INSTALLED_APPS`` for its
system checks.

- ``dbha.django.backends.postgresql`` and ``dbha.django.backends.mysql``
  (MySQL and MariaDB): database backends; one ``DATABASES`` alias follows the
  agent, whatever code uses it (see their modules). Their settings are the
  entry's ``DBHA`` dict: ``ROLE`` ("write" or "read"), ``STATE_FILE``,
  ``WHEN_NONE`` ("read-only", "error" or "last").
- Read-only mode (``dbha.django.readonly``): while the agent publishes reads
  only (a failover window), the write alias serves reads from the read endpoint
  and raises ``DatabaseReadOnly`` on a write; ``read_only()`` says whether that
  is now, ``read_only_entered``/``read_only_left`` are sent on each change, and
  ``ReadOnlyMiddleware`` sets ``request.dbha_read_only``.
- ``ReplicaRouter``: with the backend, reads to the read alias and writes to the
  write alias.
- ``FailoverRouter``: routes each query to the ``DATABASES`` key named after the
  agent's choice (the original recipe's shape; it cannot move
  ``transaction.atomic()`` or raw cursors, which act on ``default``).

``FailoverRouter``'s settings, all optional:

- ``DBHA_STATE_FILE``: the state file (else ``DBHA_STATE``, else /run/dbha/state).
- ``DBHA_ALIAS_MAP``: agent alias -> ``DATABASES`` key (identity by default).
- ``DBHA_FALLBACK``: the ``DATABASES`` key used when the state is stale, stopped,
  missing, unreadable or names no database (default ``"default"``).
- ``DBHA_MIGRATE_DATABASE``: if set, ``allow_migrate`` allows migrations on that
  database of the failover group and refuses them on the others; unset, the
  router has no opinion on migrations.
"""

from .readonly import (DatabaseReadOnly, ReadOnlyMiddleware, read_only, read_only_entered,
                       read_only_left)
from .router import FailoverRouter, ReplicaRouter

__all__ = ["FailoverRouter", "ReplicaRouter", "DatabaseReadOnly", "ReadOnlyMiddleware",
           "read_only", "read_only_entered", "read_only_left"]
