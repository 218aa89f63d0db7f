"""Read the dbha agent's decision -- which database to use right now -- from its
state file, through libdbha (the C ABI), with no system call per read.

    import dbha
    with dbha.Reader() as r:           # DBHA_STATE, else /run/dbha/state
        alias = r.active_alias() or "default"
        where = r.write_endpoint()     # Endpoint(alias, host, port) or None
        dsn = r.conninfo("read")       # "host=... port=..." or NoDatabaseError

A Reader is safe to share between threads, and one opened before a fork keeps
working in every child (the mapping is read-only and shared). For Django, the
database backend ``dbha.django.backends.postgresql`` makes one ``DATABASES``
alias follow the agent; ``dbha.django.FailoverRouter`` routes between aliases.
"""

from __future__ import annotations

import ctypes
import functools
import os
from dataclasses import dataclass
from typing import Dict, Mapping, NamedTuple, Optional

from ._lib import LibraryNotFoundError, library, library_path
from ._lib import Snapshot as _CSnapshot

__all__ = [
    "Reader",
    "Snapshot",
    "Endpoint",
    "NoDatabaseError",
    "Error",
    "StateFileError",
    "StateFileNotFound",
    "StateFilePermissionError",
    "NotAStateFileError",
    "UnsupportedVersionError",
    "ContendedError",
    "LibraryNotFoundError",
    "library_path",
    "version",
    "DEFAULT_STATE_FILE",
]

DEFAULT_STATE_FILE = "/run/dbha/state"

# Result codes of dbha.h.
OK = 0
E_INVALID_ARGUMENT = 1
E_NOT_FOUND = 2
E_PERMISSION = 3
E_NOT_REGULAR_FILE = 4
E_TRUNCATED = 5
E_BAD_MAGIC = 6
E_UNSUPPORTED_VERSION = 7
E_CORRUPT = 8
E_IO = 9
E_CONTENDED = 10
E_PANIC = 11
E_NO_ADDRESS = 12

_STATUS = {0: "active", 1: "no_healthy_database", 2: "stale", 3: "agent_stopped", 4: "read_only"}
_PROBE = ["unknown", "ok", "refused", "timeout", "not_ready", "not_postgres", "auth_failed",
          "rejected", "resolve", "closed", "io", "tls", "no_new_connections",
          "not_patroni", "not_mysql", "host_blocked"]
_FLAG_STOPPED, _FLAG_CONFLICT = 1, 2


class Error(Exception):
    """A libdbha error: ``code`` is the C result code, ``message`` says what and where."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class NoDatabaseError(Exception):
    """The agent names no database for ``role`` ("write" or "read") now.
    ``status`` is the snapshot's status ("read_only" for writes during a
    failover window, "no_healthy_database", "stale", "agent_stopped") or
    "no_address" for a state file without addresses; the message says why, in
    words."""

    def __init__(self, message: str, role: str, status: str):
        super().__init__(message)
        self.role = role
        self.status = status


class Endpoint(NamedTuple):
    """Where to connect for one of the agent's databases: its alias, and the host
    (a name or an IP address) and port from the agent's configuration."""

    alias: str
    host: str
    port: int


class StateFileError(Error):
    """The state file could not be opened or read."""

    def __init__(self, code: int, message: str, path: str):
        super().__init__(code, message)
        self.path = path


class StateFileNotFound(StateFileError):
    """Nothing at the path: is dbha-agent running with this state_file?"""


class StateFilePermissionError(StateFileError):
    """This process may not read the state file."""


class NotAStateFileError(StateFileError):
    """Something other than a dbha state file is at the path (or it is truncated)."""


class UnsupportedVersionError(StateFileError):
    """The file's layout version is not the one this libdbha reads."""


class ContendedError(StateFileError):
    """The record stayed mid-update for 100 ms (the agent died or was stopped mid-publication)."""


_ERRORS = {
    E_NOT_FOUND: StateFileNotFound,
    E_PERMISSION: StateFilePermissionError,
    E_NOT_REGULAR_FILE: NotAStateFileError,
    E_TRUNCATED: NotAStateFileError,
    E_BAD_MAGIC: NotAStateFileError,
    E_CORRUPT: NotAStateFileError,
    E_UNSUPPORTED_VERSION: UnsupportedVersionError,
    E_CONTENDED: ContendedError,
}


def _error(code: int, message: str, path: str) -> StateFileError:
    return _ERRORS.get(code, StateFileError)(code, message, path)


def version() -> str:
    """The loaded libdbha's version."""
    return library().dbha_version().decode()


@dataclass(frozen=True)
class Snapshot:
    """A consistent copy of what the agent published."""

    status: str
    """"active", "read_only" (no endpoint takes writes, one takes reads: a
    failover window), "no_healthy_database", "stale" or "agent_stopped"."""
    epoch: int
    heartbeat_age: float
    """Seconds since the agent's last heartbeat."""
    stale_after: float
    write_alias: Optional[str]
    read_alias: Optional[str]
    health: Mapping[str, bool]
    """Alias -> healthy, in priority order."""
    roles: Mapping[str, str]
    """Alias -> "primary", "standby" or "unknown"."""
    last_probe: Mapping[str, str]
    """Alias -> the kind of its last probe result: "ok", "refused", "timeout",
    "not_ready", "auth_failed", ... ("unknown" when not reported)."""
    stopped: bool
    conflict: bool
    writer_pid: int
    config_generation: int

    @property
    def active(self) -> bool:
        return self.status == "active"

    @property
    def read_only(self) -> bool:
        """Reads have an endpoint, writes have none."""
        return self.status == "read_only"

    @property
    def stale(self) -> bool:
        return self.status == "stale"

    @property
    def reason(self) -> str:
        """Why a reader hands out what it does, in words ("the agent's heartbeat is
        7.2s old (stale after 3.0s)", ...)."""
        return {
            "active": f"the agent chose {self.write_alias!r} for writes and {self.read_alias!r} for reads",
            "stale": f"the agent's heartbeat is {self.heartbeat_age:.1f}s old (stale after {self.stale_after:.1f}s)",
            "agent_stopped": "the agent stopped",
            "read_only": f"no database takes writes (reads go to {self.read_alias!r})"
            + "".join(f"; {a}: {k}" for a, k in self.last_probe.items() if k != "ok"),
            "no_healthy_database": "the agent finds no healthy database"
            + "".join(f"; {a}: {k}" for a, k in self.last_probe.items() if k != "ok"),
        }.get(self.status, self.status)


class _Names(dict):
    """Slot (generation * 64 + index, or -1 for none) -> alias, filled on a miss.

    Slots of a replaced file keep their names, so an entry never goes wrong."""

    __slots__ = ("_resolve",)

    def __init__(self, resolve):
        super().__init__({-1: None})
        self._resolve = resolve

    def __missing__(self, slot: int) -> Optional[str]:
        alias = self[slot] = self._resolve(slot)
        return alias


def _closed() -> int:
    raise ValueError("the dbha Reader is closed")


def _conninfo_value(v: str) -> str:
    """A libpq conninfo value, quoted when it needs to be."""
    if v and not any(c.isspace() or c in "'\\" for c in v):
        return v
    return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Reader:
    """An open state file. ``path``: the argument, else ``DBHA_STATE``, else
    ``/run/dbha/state``. Raises a :class:`StateFileError` subclass when the file
    cannot be used, :class:`LibraryNotFoundError` when libdbha cannot be loaded."""

    __slots__ = ("path", "_lib", "_h", "write_slot", "read_slot", "_names", "_endpoints")

    def __init__(self, path: Optional[str] = None):
        self.path = os.fspath(path or os.environ.get("DBHA_STATE") or DEFAULT_STATE_FILE)
        self._h: Optional[ctypes.c_void_p] = None
        lib = library()
        handle = ctypes.c_void_p()
        msg = ctypes.create_string_buffer(1024)
        code = lib.dbha_open_err(os.fsencode(self.path), ctypes.byref(handle), msg, len(msg))
        if code != OK:
            raise _error(code, msg.value.decode(errors="replace"), self.path)
        self._lib = lib
        self._h = handle
        # The hot path: one foreign call returning a slot, one dict subscription.
        self.write_slot = functools.partial(lib.dbha_write_slot, handle)
        """``write_slot()``: the write endpoint as one integer, -1 for none. It
        changes whenever the endpoint does (and when the agent replaces its file);
        :meth:`slot_alias` and :meth:`endpoint` resolve it. One foreign call, about
        100 ns: the cheapest way to notice a switch."""
        self.read_slot = functools.partial(lib.dbha_read_slot, handle)
        """``read_slot()``: the read endpoint as one integer, as :attr:`write_slot`."""
        self._names = _Names(self._slot_name)
        self._endpoints = _Names(self._slot_endpoint)

    def _slot_name(self, slot: int) -> Optional[str]:
        name = self._lib.dbha_slot_name(self._h, slot)
        return name.decode() if name is not None else None

    def _slot_endpoint(self, slot: int) -> Optional[Endpoint]:
        host, port = ctypes.c_char_p(), ctypes.c_uint16()
        code = self._lib.dbha_slot_address(self._h, slot, ctypes.byref(host), ctypes.byref(port))
        if code != OK:
            return None
        return Endpoint(self._names[slot], host.value.decode(), port.value)

    def write_alias(self) -> Optional[str]:
        """The alias to use for writes, or None: reads only (a failover window), no
        healthy database, agent stopped, or heartbeat stale (use your fallback
        then)."""
        return self._names[self.write_slot()]

    def active_alias(self) -> Optional[str]:
        """The older name of :meth:`write_alias`, kept for existing callers."""
        return self._names[self.write_slot()]

    def read_alias(self) -> Optional[str]:
        """The alias to use for reads, or None: as :meth:`write_alias`, but it
        answers while the agent publishes reads only (a failover window)."""
        return self._names[self.read_slot()]

    def slot_alias(self, slot: int) -> Optional[str]:
        """The alias a slot from :attr:`write_slot` or :attr:`read_slot` names
        (None for -1). A slot keeps its name after the agent replaced the file."""
        return self._names[slot]

    def endpoint(self, slot: int) -> Optional[Endpoint]:
        """The endpoint a slot names, with the address of that slot's own file;
        None for -1, and for a file whose agent published no addresses."""
        return self._endpoints[slot]

    def write_endpoint(self) -> Optional[Endpoint]:
        """Where writes go now, ``Endpoint(alias, host, port)``, or None (as
        :meth:`active_alias`, and when the file has no addresses)."""
        return self._endpoints[self.write_slot()]

    def read_endpoint(self) -> Optional[Endpoint]:
        """Where reads go now, as :meth:`write_endpoint`."""
        return self._endpoints[self.read_slot()]

    def conninfo(self, role: str = "write") -> str:
        """A libpq connection string for the endpoint the agent chose for
        ``role`` ("write" or "read"): ``"host=db1 port=5432"``, to which a caller
        adds its own dbname, user and so on (psycopg, SQLAlchemy's ``creator=``,
        scripts). Raises :class:`NoDatabaseError` saying why when there is none."""
        if role not in ("write", "read"):
            raise ValueError(f"role must be 'write' or 'read', not {role!r}")
        slot = self.write_slot() if role == "write" else self.read_slot()
        e = self._endpoints[slot]
        if e is None:
            raise self.no_database(role, slot)
        return f"host={_conninfo_value(e.host)} port={e.port}"

    def no_database(self, role: str, slot: int = -1) -> NoDatabaseError:
        """The error that says why there is no endpoint for ``role`` now (its
        message names the state file and what the agent reports)."""
        if slot >= 0:
            return NoDatabaseError(
                f"dbha: the agent chose {self._names[slot]!r} for {role}s, but the state file "
                f"{self.path} has no addresses (an older dbha-agent wrote it): upgrade the agent",
                role, "no_address")
        try:
            s = self.snapshot()
            status, why = s.status, s.reason
        except StateFileError as e:
            status, why = "unreadable", str(e)
        if status == "active" or (status == "read_only" and role == "read"):
            # The choice came back between the two reads.
            status, why = "changed", "the agent's choice changed while it was read; try again"
        return NoDatabaseError(f"dbha: no database for {role}s: {why} (state file {self.path})",
                               role, status)

    def snapshot(self) -> Snapshot:
        """Everything the agent published, consistently."""
        if self._h is None:
            raise ValueError("the dbha Reader is closed")
        # A structure per call: its fields are read after the call, when another
        # thread (the Django backend's watcher, a request) may be taking its own.
        s = _CSnapshot()
        code = self._lib.dbha_read_sized(self._h, ctypes.byref(s), ctypes.sizeof(s))
        if code != OK:
            raise _error(code, self._lib.dbha_strerror(code).decode(), self.path)
        names = []
        for i in range(s.endpoint_count):
            name = self._lib.dbha_slot_name(self._h, (s.generation << 6) | i)
            names.append(name.decode() if name is not None else str(i))

        def role(i: int) -> str:
            if s.primary_mask >> i & 1:
                return "primary"
            if s.standby_mask >> i & 1:
                return "standby"
            return "unknown"

        return Snapshot(
            status=_STATUS.get(s.status, "unknown"),
            epoch=s.epoch,
            heartbeat_age=s.heartbeat_age_ns / 1e9,
            stale_after=s.stale_after_ns / 1e9,
            write_alias=s.write_alias.decode() if s.write_alias is not None else None,
            read_alias=s.read_alias.decode() if s.read_alias is not None else None,
            health={n: bool(s.health_mask >> i & 1) for i, n in enumerate(names)},
            roles={n: role(i) for i, n in enumerate(names)},
            last_probe={n: _PROBE[k] if k < len(_PROBE) else "unknown"
                        for n, k in zip(names, s.last_probe)},
            stopped=bool(s.flags & _FLAG_STOPPED),
            conflict=bool(s.flags & _FLAG_CONFLICT),
            writer_pid=s.writer_pid,
            config_generation=s.config_generation,
        )

    def close(self) -> None:
        """Unmaps the file. Further calls raise ValueError. Not to be called while
        another thread still uses the Reader."""
        h, self._h = self._h, None
        if h is not None:
            self.write_slot = self.read_slot = _closed
            self._lib.dbha_close(h)

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<dbha.Reader {self.path!r}{' closed' if self._h is None else ''}>"
