"""Read-only mode: while the agent publishes a database for reads but none for
writes (a failover window: the primary is lost, its replacement not promoted
yet), an app keeps serving what only reads.

- The backend's write alias (``WHEN_NONE="read-only"``, the default) connects
  to the read endpoint in a read-only session; a write there raises
  :class:`DatabaseReadOnly` at once.
- :func:`read_only` answers "are we read-only now?" in about two foreign calls.
- :data:`read_only_entered` and :data:`read_only_left` are sent once per process
  and state file on each change, so an app can show a banner or pause its
  background work.
- :class:`ReadOnlyMiddleware` sets ``request.dbha_read_only`` and answers a
  :class:`DatabaseReadOnly` that reaches it with 503 and ``Retry-After``.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Dict, Optional

from django.db import DEFAULT_DB_ALIAS
from django.db.utils import OperationalError
from django.dispatch import Signal

import dbha

from ._states import states

logger = logging.getLogger(__name__)

read_only_entered = Signal()
"""Sent when this process first sees the agent publish reads only (no database
for writes, one for reads). ``sender`` is the state file's path; ``reason``
says why, in words."""

read_only_left = Signal()
"""Sent when this process sees reads only end: a database takes writes again,
or none takes reads either. ``sender`` is the state file's path; ``status`` is
the new status ("active", "no_healthy_database", "stale", ...)."""

# SQLSTATE 25006, read_only_sql_transaction: what the server answers a write in
# a read-only session.
READ_ONLY_SQLSTATE = "25006"


class DatabaseReadOnly(OperationalError):
    """A write refused because the agent publishes no database for writes now
    (reads only, a failover window): the write alias is on the read endpoint in
    a read-only session. A subclass of Django's ``OperationalError``, so code
    that handles an unavailable database handles it too. ``alias`` is the
    ``DATABASES`` key, ``reason`` what the agent reports."""

    def __init__(self, message: str, alias: str = DEFAULT_DB_ALIAS, reason: str = ""):
        super().__init__(message)
        self.alias = alias
        self.reason = reason


class _Modes:
    """Per state file, whether this process last saw reads only; the signals on
    each change. Reset in a forked child (its parent's view is not its own)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: Dict[str, bool] = {}
        self.pid = os.getpid()

    def note(self, path: str, reader: dbha.Reader) -> bool:
        """Whether the agent publishes reads only now; sends a signal when that
        changed since this process last looked."""
        now = reader.write_slot() < 0 and reader.read_slot() >= 0
        if self.seen.get(path, False) == now and self.pid == os.getpid():
            return now
        with self.lock:
            if self.pid != os.getpid():
                self.pid, self.seen = os.getpid(), {}
            if self.seen.get(path, False) == now:
                return now
            self.seen[path] = now
        try:
            snap: Optional[dbha.Snapshot] = reader.snapshot()
        except dbha.StateFileError:
            snap = None
        if now:
            reason = snap.reason if snap is not None else "reads only"
            logger.warning("dbha: read-only mode: %s (state file %s)", reason, path)
            signal, kwargs = read_only_entered, {"reason": reason}
        else:
            status = snap.status if snap is not None else "unreadable"
            logger.warning("dbha: read-only mode ends: %s (state file %s)", status, path)
            signal, kwargs = read_only_left, {"status": status}
        for receiver, result in signal.send_robust(sender=path, **kwargs):
            if isinstance(result, Exception):
                logger.error("dbha: a receiver of %s failed: %r", "read_only_entered" if now
                             else "read_only_left", result, exc_info=result)
        return now


modes = _Modes()


def read_only(using: str = DEFAULT_DB_ALIAS) -> bool:
    """Whether the agent publishes reads only now (a failover window) for the
    state file ``DATABASES[using]`` follows (the dbha backend), or
    ``settings.DBHA_STATE_FILE`` (else ``$DBHA_STATE``, else /run/dbha/state)
    for another backend. False when the state cannot be read, when a database
    takes writes, and when none takes reads either. Two foreign calls, no system
    call; sends :data:`read_only_entered` or :data:`read_only_left` when the
    answer changed."""
    from django.conf import settings
    from django.db import connections

    path = getattr(connections[using], "dbha", None)
    path = path.state_file if path is not None else (
        getattr(settings, "DBHA_STATE_FILE", None) or os.environ.get("DBHA_STATE")
        or dbha.DEFAULT_STATE_FILE)
    try:
        reader = states.reader(os.fspath(path))
    except (dbha.StateFileError, dbha.LibraryNotFoundError):
        return False
    return modes.note(os.fspath(path), reader)


class ReadOnlyMiddleware:
    """Sets ``request.dbha_read_only`` (see :func:`read_only`, for
    ``DATABASES["default"]`` or ``settings.DBHA_READ_ONLY_DATABASE``), and turns
    a :class:`DatabaseReadOnly` raised by a view into ``503 Service
    Unavailable`` with ``Retry-After`` (``settings.DBHA_RETRY_AFTER``, default 5
    seconds), so a write during a failover window is answered as what it is."""

    def __init__(self, get_response):
        from django.conf import settings

        self.get_response = get_response
        self.using = getattr(settings, "DBHA_READ_ONLY_DATABASE", DEFAULT_DB_ALIAS)
        self.retry_after = int(getattr(settings, "DBHA_RETRY_AFTER", 5))

    def __call__(self, request):
        request.dbha_read_only = read_only(self.using)
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, DatabaseReadOnly):
            return None
        from django.http import HttpResponse

        response = HttpResponse(
            "The service is read-only for a moment (its database is failing over); "
            "please try again shortly.\n",
            status=503, content_type="text/plain; charset=utf-8")
        response["Retry-After"] = str(self.retry_after)
        return response
