"""``FailoverRouter``: sends reads and writes to the database the dbha agent
chose, read from the state file through libdbha on every query (about a
hundred nanoseconds, never blocking). It never raises into a request: when the
state cannot be used it routes to ``DBHA_FALLBACK`` and logs the condition once
per change, not once per query."""

from __future__ import annotations

import logging
import time
from typing import Dict, Optional, Set

from django.conf import settings

import dbha

logger = logging.getLogger(__name__)

# While the state cannot be used: how often to try opening the file again, and to
# look at why no alias is active.
RETRY_SECONDS = 1.0


class FailoverRouter:
    def __init__(self) -> None:
        self.state_file: Optional[str] = getattr(settings, "DBHA_STATE_FILE", None)
        self.alias_map: Dict[str, str] = dict(getattr(settings, "DBHA_ALIAS_MAP", None) or {})
        self.fallback: str = getattr(settings, "DBHA_FALLBACK", "default")
        self.migrate_database: Optional[str] = getattr(settings, "DBHA_MIGRATE_DATABASE", None)
        self._reader: Optional[dbha.Reader] = None
        self._retry_at = 0.0
        self._condition: Optional[str] = None
        # Slot -> DATABASES key (the fallback for -1), filled on first use.
        self._routes: Dict[int, str] = {}

    # -- the state ------------------------------------------------------------------

    def _note(self, condition: str, detail: str = "") -> None:
        """Logs a change of condition ("ok", "stale", "unreadable", ...), once."""
        if condition == self._condition:
            return
        if condition != "ok":
            logger.warning("dbha: %s; routing to the fallback %r", detail or condition, self.fallback)
        elif self._condition is not None:
            logger.info("dbha: the state is usable again, routing as the agent decides")
        self._condition = condition

    def _open(self) -> Optional[dbha.Reader]:
        now = time.monotonic()
        if now < self._retry_at:
            return None
        self._retry_at = now + RETRY_SECONDS
        try:
            self._reader = dbha.Reader(self.state_file)
        except Exception as e:  # StateFileError, LibraryNotFoundError: never into a request
            self._note("unreadable", f"cannot read the state file: {e}")
            return None
        self._routes = {}
        return self._reader

    def _route(self, slot: int) -> str:
        """The DATABASES key for a slot (first time for each slot)."""
        reader = self._reader
        if slot < 0 or reader is None:
            return self._degraded()
        alias = reader.slot_alias(slot)
        route = self.alias_map.get(alias, alias) if alias else self.fallback
        if route not in settings.DATABASES:
            # Django would raise inside the request: the fallback, said once
            # (manage.py check reports it as dbha.E003 or dbha.E005).
            self._note("unknown", f"the agent chose {alias!r}, and {route!r} is not in DATABASES")
            route = self.fallback
        else:
            self._note("ok")
        self._routes[slot] = route
        return route

    def _degraded(self) -> str:
        """No alias to use: say why (at most every RETRY_SECONDS), use the fallback."""
        # The way back goes through _route, which notes the recovery.
        self._routes.clear()
        now = time.monotonic()
        if self._reader is not None and now >= self._retry_at:
            self._retry_at = now + RETRY_SECONDS
            try:
                s = self._reader.snapshot()
                self._note(s.status, s.reason)
            except Exception as e:
                self._note("unreadable", f"cannot read the state: {e}")
        return self.fallback

    def _for(self, read: bool) -> str:
        reader = self._reader or self._open()
        if reader is None:
            return self.fallback
        try:
            slot = reader.read_slot() if read else reader.write_slot()
        except Exception as e:  # a closed reader; never into a request
            self._note("unreadable", f"cannot read the state: {e}")
            return self.fallback
        route = self._routes.get(slot)
        if route is not None and slot >= 0:
            return route
        return self._route(slot)

    # -- Django's router protocol ----------------------------------------------------

    def db_for_write(self, model, **hints) -> str:
        return self._for(read=False)

    def db_for_read(self, model, **hints) -> str:
        return self._for(read=True)

    def group(self) -> Set[str]:
        """The DATABASES keys the agent chooses among, and the fallback."""
        names: Set[str] = {self.fallback, *self.alias_map.values()}
        reader = self._reader or self._open()
        if reader is not None:
            try:
                names.update(self.alias_map.get(a, a) for a in reader.snapshot().health)
            except Exception:
                pass
        return names

    def allow_relation(self, obj1, obj2, **hints) -> Optional[bool]:
        group = self.group()
        if obj1._state.db in group and obj2._state.db in group:
            return True
        return None

    def allow_migrate(self, db, app_label, model_name=None, **hints) -> Optional[bool]:
        if self.migrate_database is None or db not in self.group():
            return None
        return db == self.migrate_database


class ReplicaRouter:
    """For the dbha backend: reads to the ``DATABASES`` alias whose ``DBHA`` role
    is "read", writes to the one whose role is "write" (each alias follows the
    agent by itself). Inside a transaction on the write alias, reads go there too,
    so a block sees its own writes. Relations between the two are allowed;
    migrations run on the write alias only (the read alias is a replica of it)."""

    def __init__(self) -> None:
        from .conf import ENGINES, backend_options

        self.write: Optional[str] = None
        self.read: Optional[str] = None
        for alias, settings_dict in settings.DATABASES.items():
            if settings_dict.get("ENGINE") not in ENGINES:
                continue
            role = backend_options(alias, settings_dict)[0].role
            if role == "write" and self.write is None:
                self.write = alias
            elif role == "read" and self.read is None:
                self.read = alias

    def db_for_read(self, model, **hints) -> Optional[str]:
        if self.read is None:
            return None
        if self.write is not None:
            from django.db import connections

            if connections[self.write].in_atomic_block:
                return self.write
        return self.read

    def db_for_write(self, model, **hints) -> Optional[str]:
        return self.write

    def allow_relation(self, obj1, obj2, **hints) -> Optional[bool]:
        pair = {self.write, self.read} - {None}
        if obj1._state.db in pair and obj2._state.db in pair:
            return True
        return None

    def allow_migrate(self, db, app_label, model_name=None, **hints) -> Optional[bool]:
        if db == self.read and self.read is not None:
            return False
        return None
