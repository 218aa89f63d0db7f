"""Django's MySQL backend (MySQL 8, MariaDB 10.5 and later; through mysqlclient,
or PyMySQL installed as MySQLdb), connecting wherever the dbha agent says. The
same ``DBHA`` settings and behaviour as :mod:`dbha.django.backends.postgresql`
(one alias follows the agent outside transactions, read-only mode, the watcher
that aborts a query left on a failed server, a lost first statement run again)::

    DATABASES = {
        "default": {"ENGINE": "dbha.django.backends.mysql", "NAME": "app",
                    "USER": "app", "PASSWORD": "...", "DBHA": {"ROLE": "write"}},
    }

What differs, because the drivers differ:

- MySQL drivers have nothing like libpq's ``target_session_attrs``: a write
  connection reads ``@@global.read_only`` right after connecting (on MySQL,
  ``super_read_only`` turns it on too) and refuses a read-only server with
  ``OperationalError``, so even a stale view never writes to a replica.
- Read-only mode: the session is ``SET SESSION TRANSACTION READ ONLY`` on the
  read endpoint; a write there (1792, or 1290 from a read-only server) raises
  ``DatabaseReadOnly``.
- The watcher shuts a connection's socket down through its descriptor, taken
  when the connection is made (``fileno()`` with mysqlclient, which refuses
  that call while another thread runs a query on the connection; the socket
  PyMySQL keeps, ``_sock``): a query blocked on a frozen server fails at once
  with 2013 (lost connection).
- Django's MySQL backend has no connection pool, and neither has this one.
- ``HOST`` naming a Unix socket, or ``OPTIONS["unix_socket"]``, is refused: the
  agent names TCP endpoints.
"""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.mysql import base as mysql
from django.db.backends.mysql.creation import DatabaseCreation as MysqlCreation
from django.db.backends.utils import CursorDebugWrapper
from django.db.utils import OperationalError

from .._follow import Following, FollowingCreation, _Retrying
from .client import DatabaseClient

# The client's codes for a connection gone: CR_SERVER_GONE_ERROR,
# CR_SERVER_LOST, CR_SERVER_LOST_EXTENDED.
LOST = {2006, 2013, 2055}
# ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION; ER_OPTION_PREVENTS_STATEMENT, which
# is read_only's when its text says so.
READ_ONLY_TRANSACTION = 1792
OPTION_PREVENTS_STATEMENT = 1290


def _code(error: BaseException):
    args = getattr(error, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


class DatabaseCreation(FollowingCreation, MysqlCreation):
    pass


class _DebugCursor(_Retrying, CursorDebugWrapper):
    pass


class DatabaseWrapper(Following, mysql.DatabaseWrapper):
    client_class = DatabaseClient
    creation_class = DatabaseCreation
    _dbha_debug_cursor = _DebugCursor

    def _dbha_refuse_sockets(self, settings_dict):
        host = settings_dict.get("HOST") or ""
        if str(host).startswith("/") or "unix_socket" in (settings_dict.get("OPTIONS") or {}):
            raise ImproperlyConfigured(
                f"DATABASES[{self.alias!r}] names a Unix socket ({'HOST' if host else 'OPTIONS unix_socket'}), "
                "which the dbha backend cannot follow: the agent names TCP endpoints. Remove it; "
                "name the servers in the agent's configuration.")

    def _dbha_point(self, params, endpoint, read_only):
        params["host"], params["port"] = endpoint.host, endpoint.port

    def get_new_connection(self, conn_params):
        connection = super().get_new_connection(conn_params)
        sock = getattr(connection, "_sock", None)  # PyMySQL
        self._dbha_socket = (connection, sock.fileno() if sock is not None else connection.fileno())
        if self.dbha.role == "write" and not self._dbha_read_only:
            try:
                read_only = _server_read_only(connection)
            except Exception:
                connection.close()
                raise
            if read_only:
                connection.close()
                endpoint = self.dbha_endpoint
                raise OperationalError(
                    f"dbha: {endpoint.alias} at {endpoint.host}:{endpoint.port} is read-only "
                    f"(@@global.read_only = 1): DATABASES[{self.alias!r}] writes to a primary only; "
                    "the agent has not seen the change yet, or the server was set read-only")
        return connection

    def init_connection_state(self):
        super().init_connection_state()
        if self._dbha_read_only:
            # On the driver's connection: this wrapper's cursor() would follow
            # the agent, in the middle of connecting.
            cursor = self.connection.cursor()
            try:
                cursor.execute("SET SESSION TRANSACTION READ ONLY")
            finally:
                cursor.close()

    def _dbha_refuses_writes(self, error):
        code = _code(error)
        if code == READ_ONLY_TRANSACTION:
            return True
        text = str(error).lower()
        return code == OPTION_PREVENTS_STATEMENT and ("read-only" in text or "read_only" in text)

    def _dbha_lost(self, error):
        return self.connection is None or _code(error) in LOST

    def _dbha_fileno(self, connection):
        known = getattr(self, "_dbha_socket", None)
        if known is None or known[0] is not connection:
            raise OperationalError("dbha: no descriptor recorded for this connection")
        return known[1]


def _server_read_only(connection) -> bool:
    cursor = connection.cursor()
    try:
        cursor.execute("SELECT @@global.read_only")
        (value,) = cursor.fetchone()
    finally:
        cursor.close()
    return int(value) != 0
