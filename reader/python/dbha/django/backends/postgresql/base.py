"""Django's PostgreSQL backend (psycopg 3 or psycopg2), connecting wherever the
dbha agent says. One ``DATABASES`` alias follows the agent, so every idiom that
acts on that alias -- ``transaction.atomic()`` without ``using=``,
``ATOMIC_REQUESTS``, raw cursors, ``select_for_update``, third-party apps --
goes to the database the agent chose::

    DATABASES = {
        "default": {"ENGINE": "dbha.django.backends.postgresql", "NAME": "app",
                    "USER": "app", "PASSWORD": "...", "DBHA": {"ROLE": "write"}},
    }

- A new connection goes to the endpoint the agent chose for the alias's role
  (``DBHA["ROLE"]``). A write connection also asks libpq for
  ``target_session_attrs=read-write``, so even a stale view never writes to a
  standby.
- Outside a transaction, before each use of an open connection, the backend
  compares the endpoint it is on with the agent's choice (one read of the state
  file's record, no system call). When the choice moved, it closes the connection
  and the query goes to the new endpoint. Inside ``atomic()`` it never switches:
  the block commits on one database or fails as a whole.
- While the agent publishes reads only (no database takes writes, one takes
  reads: a failover window), a write alias with ``WHEN_NONE="read-only"`` (the
  default) connects to the read endpoint in a read-only session
  (``default_transaction_read_only``): views that only read, ``ATOMIC_REQUESTS``
  included, answer; a write raises ``dbha.django.DatabaseReadOnly`` (an
  ``OperationalError``) at once. When a database takes writes again, the
  connection moves there outside a transaction, as on any move. While the agent
  names no database at all, or with ``"error"``, a new connection raises
  ``OperationalError`` at once, saying why; ``"last"`` keeps the last endpoint
  the agent chose in this process.
- A query already waiting on an endpoint the agent left because it failed (no
  longer healthy, or a write endpoint no longer a primary) is not left hanging on
  a blackholed or frozen server: a watcher thread in each process shuts that
  connection's socket down within WATCH_SECONDS of the publication, so the query
  fails at once and the worker is free (HAProxy's ``on-marked-down
  shutdown-sessions``). A planned move from a healthy endpoint (failback) lets
  queries under way finish; a stale or stopped agent aborts nothing.
- With Django's connection pool (``OPTIONS["pool"]``, psycopg 3), there is one
  pool per endpoint. Choosing a new endpoint creates its pool and closes the pool
  of the endpoint the agent left, so its connections are never handed out again;
  a thread still on the old endpoint returns its connection to that closed pool
  (which closes it) and never touches the new one.
"""

from __future__ import annotations

import logging
import threading
from typing import Dict, Tuple

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.postgresql import base as postgresql
from django.db.backends.postgresql.creation import DatabaseCreation as PostgresCreation
from django.db.utils import OperationalError

import dbha

from .._follow import Following, FollowingCreation, _Retrying
from ...readonly import READ_ONLY_SQLSTATE
from .client import DatabaseClient

logger = logging.getLogger(__name__)

# Pools of endpoints the agent left, closed, by (alias, host, port): a connection
# still checked out of one is closed when it is returned. Guarded, with the live
# pools, by _pools_lock.
_retired_pools: Dict[Tuple[str, str, int], object] = {}
_pools_lock = threading.Lock()

try:
    from psycopg_pool import PoolClosed
except ImportError:  # no pool without psycopg_pool

    class PoolClosed(Exception):  # type: ignore[no-redef]
        pass


class DatabaseCreation(FollowingCreation, PostgresCreation):
    pass


class _DebugCursor(_Retrying, postgresql.CursorDebugWrapper):
    # The PostgreSQL backend's own, which also logs copy() (psycopg 3) or
    # copy_expert() (psycopg2).
    pass


class DatabaseWrapper(Following, postgresql.DatabaseWrapper):
    client_class = DatabaseClient
    creation_class = DatabaseCreation
    _dbha_debug_cursor = _DebugCursor

    def _dbha_point(self, params, endpoint, read_only):
        params["host"], params["port"] = endpoint.host, endpoint.port
        if read_only:
            # A write alias in read-only mode: on the read endpoint, where the
            # session refuses every write (SQLSTATE 25006, raised as
            # DatabaseReadOnly).
            extra = "-c default_transaction_read_only=on"
            params["options"] = f"{params['options']} {extra}" if params.get("options") else extra
        elif self.dbha.role == "write":
            params.setdefault("target_session_attrs", "read-write")

    def _dbha_refuses_writes(self, error):
        return (getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)) \
            == READ_ONLY_SQLSTATE

    def _dbha_lost(self, error):
        # psycopg 3: ``closed`` or ``broken``; psycopg2: ``closed`` non-zero.
        c = self.connection
        return c is None or bool(getattr(c, "closed", False)) or bool(getattr(c, "broken", False))

    # -- Django's connection pool: one per endpoint --------------------------------
    #
    # Pools live in Django's class-wide ``_connection_pools``, keyed (alias, host,
    # port). Only choosing an endpoint (``get_connection_params``) creates one and
    # retires the alias's others; looking at ``pool`` never creates or closes one,
    # so a thread still on an endpoint the agent left (returning its connection)
    # touches nothing but that endpoint's retired pool.

    def _dbha_pool_options(self):
        pool_options = self.settings_dict["OPTIONS"].get("pool")
        if self.alias == postgresql.NO_DB_ALIAS or not pool_options:
            return None
        if self.settings_dict.get("CONN_MAX_AGE", 0) != 0:
            raise ImproperlyConfigured("Pooling doesn't support persistent connections.")
        return {} if pool_options is True else pool_options

    def _dbha_pool_key(self, endpoint: dbha.Endpoint) -> tuple:
        """A pool's key: (alias, host, port), and "read-only" for the read-only
        sessions of a write alias in read-only mode, which are never handed out
        once that endpoint takes writes."""
        key = (self.alias, endpoint.host, endpoint.port)
        return key + ("read-only",) if self._dbha_read_only else key

    def _dbha_pool_for(self, endpoint: dbha.Endpoint, params: dict) -> None:
        """(Choosing ``endpoint``.) The pool for it, created when missing, and the
        alias's pools of other endpoints retired: closed, so that none of their
        idle connections is handed out again (one checked out now is closed when
        it is returned)."""
        pool_options = self._dbha_pool_options()
        if pool_options is None:
            return
        try:
            from psycopg_pool import ConnectionPool
        except ImportError as err:
            raise ImproperlyConfigured(
                "Error loading psycopg_pool module.\nDid you install psycopg[pool]?") from err
        key = self._dbha_pool_key(endpoint)
        pools = self._connection_pools
        with _pools_lock:
            if key not in pools:
                enable_checks = self.settings_dict["CONN_HEALTH_CHECKS"]
                pools[key] = ConnectionPool(
                    kwargs={**params, "autocommit": True},
                    open=False,
                    configure=self._configure_connection,
                    check=ConnectionPool.check_connection if enable_checks else None,
                    **pool_options,
                )
            left = [k for k in list(pools) if isinstance(k, tuple) and k[0] == self.alias and k != key]
            retired = [(k, pools.pop(k)) for k in left]
            for k, pool in retired:
                _retired_pools[k] = pool
        for k, pool in retired:
            logger.info("dbha: %s: the agent left %s:%s; closing its pool", self.alias, k[1], k[2])
            pool.close(timeout=0)

    @property
    def pool(self):
        if self._dbha_pool_options() is None:
            return None
        if self.dbha_endpoint is None:
            # Asked before any connection: choose the endpoint now (which makes
            # its pool).
            try:
                self.get_connection_params()
            except OperationalError:
                return None  # no database: connecting raises, saying why
        endpoint = self.dbha_endpoint
        key = self._dbha_pool_key(endpoint)
        # The endpoint's pool, or its retired one (closed: a connection returned to
        # it is closed).
        pool = self._connection_pools.get(key)
        if pool is None:
            pool = _retired_pools.get(key)
        if pool is None:
            # None since close_pool() (Django does that when settings change):
            # made again, as Django's own backend would.
            self._dbha_pool_for(endpoint, self._dbha_params)
            pool = self._connection_pools.get(key)
        return pool

    def get_new_connection(self, conn_params):
        try:
            return super().get_new_connection(conn_params)
        except PoolClosed:
            # The agent moved between choosing this endpoint and taking a
            # connection from its pool: choose again, once.
            return super().get_new_connection(self.get_connection_params())

    def close_pool(self):
        for pools in (self._connection_pools, _retired_pools):
            for key in [k for k in list(pools) if isinstance(k, tuple) and k[0] == self.alias]:
                pool = pools.pop(key, None)
                if pool is not None:
                    pool.close()
