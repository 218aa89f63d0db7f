"""What the dbha backends share, whatever the database: the connection of one
``DATABASES`` alias follows the agent's choice for its role (see
:mod:`dbha.django.backends.postgresql.base` for the behaviour in full). Each
backend is Django's own with :class:`Following` before it, and says in a few
hooks how its driver is aimed at an endpoint, how it reports a refused write
and a lost connection, and where its socket is."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import time
import weakref
import dataclasses
from typing import Callable, NamedTuple, Optional, Tuple

from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS
from django.db.backends.signals import connection_created
from django.db.backends.utils import CursorWrapper
from django.db.utils import DatabaseErrorWrapper, InterfaceError, OperationalError
from django.utils.functional import cached_property

import dbha

from .._states import states as _states
from ..conf import backend_options
from ..readonly import DatabaseReadOnly, modes

logger = logging.getLogger(__name__)

# How often the watcher compares open connections with the agent's choice.
WATCH_SECONDS = 0.01
# After judging a connection's endpoint healthy (a planned move away from it), how
# long before the watcher takes another snapshot for the same choice.
REJUDGE_SECONDS = 0.25
# A transaction's first statement lost with its connection: how long to wait for
# the agent to move away from the endpoint before the error stands, and how often
# to look meanwhile.
RETRY_WAIT_SECONDS = 2.0
RETRY_POLL_SECONDS = 0.002


def _same_peer(sock: socket.socket, endpoint: dbha.Endpoint) -> bool:
    """Whether `sock` is connected to `endpoint` (its port, and its address when
    the endpoint's host is an IP literal)."""
    try:
        peer = sock.getpeername()
    except OSError:
        return False
    if not isinstance(peer, tuple) or peer[1] != endpoint.port:
        return False
    try:
        return ipaddress.ip_address(peer[0]) == ipaddress.ip_address(endpoint.host)
    except ValueError:
        return True  # a host name: the port is all there is to compare


class _Watcher:
    """One thread per process (started in the process that uses it, so after a
    fork too) that aborts the connections of this process whose endpoint the
    agent left, so that a query blocked on a dead server fails now rather than
    after TCP gives up."""

    def __init__(self) -> None:
        self.pid = 0
        self.wrappers: "weakref.WeakSet[Following]" = weakref.WeakSet()
        self.lock = threading.Lock()

    def watch(self, wrapper: "Following") -> None:
        with self.lock:
            if self.pid != os.getpid():
                self.pid = os.getpid()
                self.wrappers = weakref.WeakSet()
                threading.Thread(target=self.run, name="dbha-watcher", daemon=True).start()
            self.wrappers.add(wrapper)

    def run(self) -> None:
        while True:
            time.sleep(WATCH_SECONDS)
            paths = set()
            for w in list(self.wrappers):
                paths.add(w.dbha.state_file)
                try:
                    w._dbha_abort_if_left()
                except Exception:  # never let the watcher die
                    logger.exception("dbha: watcher")
            # Read-only mode is noticed (and signalled) without a request.
            for path in paths:
                reader = _states.readers.get(path)
                try:
                    if reader is not None:
                        modes.note(path, reader)
                except Exception:
                    logger.exception("dbha: watcher")


_watcher = _Watcher()

class FollowingCreation:
    """A mixin before the backend's own DatabaseCreation."""

    def set_as_test_mirror(self, primary_settings_dict):
        # Under the test runner a mirror (a read alias's TEST MIRROR) uses the test
        # database of the alias it mirrors: it must then also connect where that
        # alias does, not to a standby the test database has not reached.
        super().set_as_test_mirror(primary_settings_dict)
        if primary_settings_dict.get("ENGINE") == self.connection.settings_dict.get("ENGINE"):
            mirrored, _ = backend_options("TEST MIRROR", primary_settings_dict)
            self.connection.dbha = dataclasses.replace(self.connection.dbha, role=mirrored.role)
            self.connection._dbha_slot_of = None


class Choice(NamedTuple):
    """Where a connection goes: the slot it was chosen by (see ``_dbha_slot_of``),
    the endpoint, and whether the session is read-only (a write alias in
    read-only mode)."""

    slot: int
    endpoint: dbha.Endpoint
    read_only: bool = False


def _read_only_slot(read_slot: int) -> int:
    """The slot a write alias in read-only mode follows: -2 - the read slot, so
    every value below -1 names a read endpoint and -1 still means none."""
    return -2 - read_slot


def _endpoint_slot(slot: int) -> int:
    """The reader's slot behind one of ``_dbha_slot_of``'s values."""
    return slot if slot >= -1 else -2 - slot


class _ErrorWrapper(DatabaseErrorWrapper):
    """Django's mapping of driver errors, plus one: a write refused by the
    read-only session of a write alias in read-only mode raises
    :class:`DatabaseReadOnly`, which names dbha and the reason."""

    def __exit__(self, exc_type, exc_value, traceback):
        w = self.wrapper
        if exc_type is not None and w._dbha_read_only and w._dbha_refuses_writes(exc_value):
            w.errors_occurred = True
            raise w._dbha_read_only_error(exc_value).with_traceback(traceback) from exc_value
        return super().__exit__(exc_type, exc_value, traceback)


class _Retrying:
    """A cursor whose statement runs once more, on the agent's new choice, when
    it was the first of a transaction and its connection was lost (see
    ``DatabaseWrapper._dbha_retry``)."""

    def _once_more(self, run, *args):
        first = self.db._dbha_first_statement()
        try:
            return run(*args)
        except (OperationalError, InterfaceError) as e:
            if not (first and self.db._dbha_retry(self, e)):
                raise
        return run(*args)

    def _execute(self, *args):
        return self._once_more(super()._execute, *args)

    def _executemany(self, *args):
        return self._once_more(super()._executemany, *args)

class _Cursor(_Retrying, CursorWrapper):
    pass


class Following:
    """A mixin before Django's own ``DatabaseWrapper``: the connection follows
    the agent (see the module)."""

    def __init__(self, settings_dict, alias=DEFAULT_DB_ALIAS):
        super().__init__(settings_dict, alias)
        self._dbha_refuse_sockets(settings_dict)
        options, problems = backend_options(alias, settings_dict)
        errors = [p for p in problems if p.is_error]
        if errors:
            raise ImproperlyConfigured(" ".join(f"{p.message} {p.hint}" for p in errors))
        self.dbha = options
        # The endpoint the open connection is on, the slot it was chosen by, and
        # whether its session is read-only.
        self.dbha_endpoint: Optional[dbha.Endpoint] = None
        self._dbha_slot: Optional[int] = None
        self._dbha_read_only = False
        self._dbha_slot_of: Optional[Callable[[], int]] = None  # once the state is open
        self._dbha_params: Optional[dict] = None
        self._dbha_aborted_at: Optional[int] = None
        # (slot, until when) of the last "the endpoint left is healthy" judgement.
        self._dbha_judged: Optional[Tuple[int, float]] = None
        # A transaction began and no statement has run in it yet.
        self._dbha_untouched = False

    @cached_property
    def wrap_database_errors(self):
        return _ErrorWrapper(self)

    # -- a transaction's first statement, lost with its connection -----------------

    def make_cursor(self, cursor):
        return _Cursor(cursor, self)

    def make_debug_cursor(self, cursor):
        return self._dbha_debug_cursor(cursor, self)

    def _set_autocommit(self, autocommit):
        try:
            super()._set_autocommit(autocommit)
        except (OperationalError, InterfaceError) as e:
            # A transaction begins: MySQL drivers say so to the server (SET
            # autocommit=0) before any statement, so a server that died
            # between the agent's probes, or a connection the watcher aborted,
            # fails here. Nothing of the transaction reached the server: it
            # begins on a new connection where the agent says, as a lost
            # first statement runs again.
            if autocommit or not self._dbha_replaceable(e) or \
                    self._dbha_replace("the start of a transaction", lambda: None) is None:
                raise
        self._dbha_untouched = not autocommit

    def _dbha_first_statement(self) -> bool:
        """Whether the statement about to run is the first of its transaction
        (nothing of the transaction has reached the server); from now on none is."""
        first, self._dbha_untouched = self._dbha_untouched, False
        return first and self.in_atomic_block

    def _dbha_replaceable(self, error) -> bool:
        """Whether ``error`` lost the connection, and this alias can replace it
        (not with Django's pool, and not before the agent's state was read)."""
        return self._dbha_lost(error) and self._dbha_pool_options() is None \
            and self._dbha_slot_of is not None

    def _dbha_retry(self, cursor, error) -> bool:
        """The first statement of a transaction failed and its connection is
        lost: a server that died between the agent's probes (a request begun
        after a crash and before the agent published it), a connection the
        watcher aborted, a backend the server terminated. Nothing of the
        transaction reached the server, so it can start again (see
        ``_dbha_replace``). True: the statement may run again. False, with
        nothing changed: a connection still usable (the server refused the
        statement), a named cursor, Django's pool, the agent naming no database,
        or no new connection."""
        if getattr(cursor.cursor, "name", None) or not self._dbha_replaceable(error):
            return False

        def new_cursor():
            self._dbha_untouched = False
            cursor.cursor = self.create_cursor()

        return self._dbha_replace("the first statement of a transaction", new_cursor) is not None

    def _dbha_replace(self, what: str, then: Callable[[], None]) -> Optional[dbha.Endpoint]:
        """(A transaction has begun, or begins, and nothing of it reached the
        server; the connection is lost.) A new connection in the same
        transaction mode where the agent says now (the same endpoint, if it
        takes the connection: a terminated backend), else, once the agent has
        moved away from it (waiting at most RETRY_WAIT_SECONDS), on the new
        choice; ``then`` runs on it. The endpoint, or None with the lost
        connection back in place: when the agent names no database
        (WHEN_NONE="error" while writes have none, a stale agent) at once."""
        lost, old = self.dbha_endpoint, self.connection
        try:
            old.close()
        except Exception:  # already closed, or broken: nothing to release
            pass
        endpoint = self._dbha_connect_again(old, then)
        deadline = time.monotonic() + RETRY_WAIT_SECONDS
        while endpoint is None:
            try:
                moved = self.dbha_choose().endpoint
            except OperationalError:
                return None
            if moved is not None and lost is not None and \
                    (moved.host, moved.port) != (lost.host, lost.port):
                endpoint = self._dbha_connect_again(old, then)
                if endpoint is None:
                    return None
                break
            if time.monotonic() >= deadline:
                return None
            time.sleep(RETRY_POLL_SECONDS)
        logger.info("dbha: %s: %s lost its connection to %s; running it again on %s at %s:%s",
                    self.alias, what, f"{lost.host}:{lost.port}" if lost else "its endpoint",
                    endpoint.alias, endpoint.host, endpoint.port)
        return endpoint

    def _dbha_connect_again(self, old, then: Callable[[], None]) -> Optional[dbha.Endpoint]:
        """A new driver connection where the agent says now, with autocommit
        off and the connection's state set up, then ``then``: the endpoint; or
        None with ``old`` (the lost connection) back in place."""
        try:
            self.connection = self.get_new_connection(self.get_connection_params())
            super()._set_autocommit(False)
            self.init_connection_state()
            then()
        except Exception:  # refused, no database named: as without a retry
            if self.connection is not old and self.connection is not None:
                try:
                    self.connection.close()
                except Exception:
                    pass
            self.connection = old
            return None
        connection_created.send(sender=self.__class__, connection=self)
        return self.dbha_endpoint

    def _dbha_reader(self) -> dbha.Reader:
        reader = _states.reader(self.dbha.state_file)
        if self.dbha.role == "read":
            self._dbha_slot_of = reader.read_slot
        elif self.dbha.when_none == "read-only":
            write_slot, read_slot = reader.write_slot, reader.read_slot

            def slot_of() -> int:
                # One foreign call while writes have a database, two without.
                slot = write_slot()
                return slot if slot >= 0 else _read_only_slot(read_slot())

            self._dbha_slot_of = slot_of
        else:
            self._dbha_slot_of = reader.write_slot
        return reader

    def _dbha_error(self, why: str) -> OperationalError:
        return OperationalError(f"{why} (DATABASES[{self.alias!r}], dbha role {self.dbha.role!r})")

    def _dbha_read_only_error(self, cause: Optional[BaseException] = None) -> DatabaseReadOnly:
        try:
            reason = _states.reader(self.dbha.state_file).snapshot().reason
        except (dbha.StateFileError, dbha.LibraryNotFoundError) as e:
            reason = f"the agent's state cannot be read: {e}"
        endpoint = self.dbha_endpoint
        on = f"{endpoint.alias} at {endpoint.host}:{endpoint.port}" if endpoint else "the read endpoint"
        refused = f"; the server said: {str(cause).strip()}" if cause is not None else ""
        return DatabaseReadOnly(
            f"dbha: DATABASES[{self.alias!r}] is read-only now: {reason}; its session is on "
            f"{on}, read-only, until a database takes writes again{refused}",
            alias=self.alias, reason=reason)

    def dbha_choose(self) -> Choice:
        """Where to connect now; raises ``OperationalError`` saying why when the
        agent names no database (and ``WHEN_NONE`` neither finds one)."""
        key = (self.dbha.state_file, self.dbha.role)
        try:
            reader = self._dbha_reader()
        except (dbha.StateFileError, dbha.LibraryNotFoundError) as e:
            last = _states.last.get(key)
            if self.dbha.when_none == "last" and last is not None:
                return Choice(-1, last)
            raise self._dbha_error(f"dbha: cannot read the agent's state: {e}") from e
        slot = self._dbha_slot_of()
        endpoint = reader.endpoint(_endpoint_slot(slot))
        if endpoint is not None:
            if slot < -1:
                return Choice(slot, endpoint, read_only=True)
            _states.last[key] = endpoint
            return Choice(slot, endpoint)
        last = _states.last.get(key)
        if self.dbha.when_none == "last" and last is not None and slot < 0:
            return Choice(slot, last)
        raise self._dbha_error(str(reader.no_database(self.dbha.role, slot)))

    def get_connection_params(self):
        params = super().get_connection_params()
        slot, endpoint, read_only = self.dbha_choose()
        self._dbha_point(params, endpoint, read_only)
        if read_only:
            modes.note(self.dbha.state_file, _states.reader(self.dbha.state_file))
        self._dbha_slot, self.dbha_endpoint, self._dbha_params = slot, endpoint, params
        self._dbha_read_only = read_only
        self._dbha_aborted_at = None
        self._dbha_pool_for(endpoint, params)
        _watcher.watch(self)
        return params

    def ensure_connection(self):
        # The common case costs one slot read and a comparison.
        slot_of = self._dbha_slot_of
        if slot_of is None or slot_of() != self._dbha_slot:
            # Outside a transaction only: a block commits on one database or fails whole.
            if self.connection is not None and self.autocommit and not self.in_atomic_block:
                self._dbha_follow()
        super().ensure_connection()

    def _dbha_follow(self) -> None:
        """The agent's choice differs from the one the open connection was made
        for: close the connection if the endpoint moved (the caller reconnects)."""
        # While the agent names no database this raises, and the open connection is
        # not used (WHEN_NONE="last" returns the last endpoint instead).
        slot, endpoint, read_only = self.dbha_choose()
        current = self.dbha_endpoint
        if (current is not None and (endpoint.host, endpoint.port) == (current.host, current.port)
                and read_only == self._dbha_read_only):
            # Same place (the agent replaced its file, or WHEN_NONE="last"): keep it.
            self._dbha_slot, self.dbha_endpoint = slot, endpoint
            return
        logger.info("dbha: %s: the agent moved %ss from %s to %s:%s (%s%s); reconnecting",
                    self.alias, self.dbha.role,
                    f"{current.host}:{current.port}" if current else "nowhere",
                    endpoint.host, endpoint.port, endpoint.alias,
                    ", read-only: no database takes writes" if read_only else "")
        self.close()

    def _dbha_abort_if_left(self) -> None:
        """(The watcher thread.) Shuts the socket of the open connection down when
        the agent, alive, moved away from its endpoint because that endpoint failed
        (no longer healthy, or a write endpoint no longer a primary). A planned
        move away from a healthy endpoint (a failback, or a read-only session's
        return to a primary) lets queries under way finish. Never closes
        anything: the owning thread's next use closes and replaces the
        connection."""
        connection, slot_of, endpoint = self.connection, self._dbha_slot_of, self.dbha_endpoint
        if connection is None or slot_of is None or endpoint is None:
            return
        slot = slot_of()
        if slot == self._dbha_slot or slot == self._dbha_aborted_at:
            return
        reader = _states.readers.get(self.dbha.state_file)
        if reader is None:
            return
        chosen = reader.endpoint(_endpoint_slot(slot))
        if chosen is not None and (chosen.host, chosen.port) == (endpoint.host, endpoint.port):
            return
        if chosen is None and self.dbha.when_none == "last":
            return
        judged = self._dbha_judged
        if judged is not None and judged[0] == slot and time.monotonic() < judged[1]:
            return
        try:
            snap = reader.snapshot()
        except dbha.StateFileError:
            return
        if snap.status in ("stale", "agent_stopped"):
            return  # the agent judged nothing
        # A read-only session on a standby is fine on a standby.
        failed = not snap.health.get(endpoint.alias, False) or (
            self.dbha.role == "write" and not self._dbha_read_only
            and snap.roles.get(endpoint.alias) == "standby")
        if not failed:
            self._dbha_judged = (slot, time.monotonic() + REJUDGE_SECONDS)
            return
        self._dbha_aborted_at = slot
        try:
            # A duplicate of the descriptor (its family detected from it):
            # shutdown acts on the socket, and the peer check makes sure the number
            # was not reused by another socket meanwhile.
            with socket.socket(fileno=os.dup(self._dbha_fileno(connection))) as sock:
                if not _same_peer(sock, endpoint):
                    return
                sock.shutdown(socket.SHUT_RDWR)
        except Exception:  # closed meanwhile (the driver raises its own errors)
            return
        logger.warning("dbha: %s: the agent left %s:%s; aborted this process's connection to it (%s)",
                       self.alias, endpoint.host, endpoint.port,
                       f"now {chosen.alias} at {chosen.host}:{chosen.port}" if chosen else "no healthy database")

    # -- Django's connection pool: one per endpoint --------------------------------
    #
    # Pools live in Django's class-wide ``_connection_pools``, keyed (alias, host,
    # port). Only choosing an endpoint (``get_connection_params``) creates one and
    # retires the alias's others; looking at ``pool`` never creates or closes one,
    # so a thread still on an endpoint the agent left (returning its connection)
    # touches nothing but that endpoint's retired pool.

    # -- what each driver does its own way -----------------------------------------

    # The debug cursor class (the backend's own, with _Retrying first).
    _dbha_debug_cursor: type = None  # type: ignore[assignment]

    def _dbha_point(self, params: dict, endpoint: dbha.Endpoint, read_only: bool) -> None:
        """Aims the driver's connection parameters at ``endpoint``, in a
        read-only session when ``read_only`` (a write alias in read-only mode),
        with what the driver has to keep a write connection off a standby."""
        raise NotImplementedError

    def _dbha_refuses_writes(self, error: BaseException) -> bool:
        """Whether ``error`` is the server refusing a write in a read-only
        session."""
        raise NotImplementedError

    def _dbha_lost(self, error: BaseException) -> bool:
        """Whether ``error`` left the driver connection lost (closed, broken)."""
        raise NotImplementedError

    def _dbha_fileno(self, connection) -> int:
        """The driver connection's socket descriptor."""
        return connection.fileno()

    def _dbha_refuse_sockets(self, settings_dict) -> None:
        """A settings entry that names a local socket is refused (the agent
        names TCP endpoints)."""

    def _dbha_pool_options(self):
        """The pool's options when the backend pools connections, else None."""
        return None

    def _dbha_pool_for(self, endpoint: dbha.Endpoint, params: dict) -> None:
        """(Choosing ``endpoint``.) The backend's pool for it, if it pools."""
