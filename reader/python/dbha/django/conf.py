"""The one reader of dbha's Django settings: the ``DBHA`` key of a ``DATABASES``
entry that uses the dbha backend, with its defaults. The backend and the system
checks both read them here, so they never disagree."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Mapping, Tuple

import dbha

ENGINES = ("dbha.django.backends.postgresql", "dbha.django.backends.mysql")
ROLES = ("write", "read")
WHEN_NONE = ("read-only", "error", "last")
KEYS = ("ROLE", "STATE_FILE", "WHEN_NONE")


@dataclass(frozen=True)
class BackendOptions:
    """What a ``DATABASES`` entry's ``DBHA`` dictionary resolves to."""

    role: str
    """``"write"``: the endpoint the agent chose for writes (the default);
    ``"read"``: the one for reads."""
    state_file: str
    """``DBHA["STATE_FILE"]``, else ``settings.DBHA_STATE_FILE``, else
    ``$DBHA_STATE``, else /run/dbha/state."""
    when_none: str
    """What a write alias does while the agent names no database for writes.
    ``"read-only"`` (default): while the agent publishes reads only (a failover
    window), connect to the read endpoint in a read-only session, where a write
    raises ``DatabaseReadOnly`` (an ``OperationalError``) at once; with no
    database for reads either, as "error". ``"error"``: raise
    ``OperationalError`` at once, saying why. ``"last"``: keep the last
    endpoint the agent chose in this process. A read alias has a database
    whenever one takes reads: for it "read-only" is "error"."""


@dataclass(frozen=True)
class Problem:
    """A misconfiguration: ``id`` is its system check id (one per problem)."""

    id: str
    message: str
    hint: str

    @property
    def is_error(self) -> bool:
        return ".E" in self.id


def backend_options(alias: str, settings_dict: Mapping[str, Any]) -> Tuple[BackendOptions, List[Problem]]:
    """The options of ``DATABASES[alias]``, defaults filled in, and every problem
    found in them (an unusable value is replaced by its default)."""
    from django.conf import settings

    raw = settings_dict.get("DBHA") or {}
    where = f"DATABASES[{alias!r}]['DBHA']"
    problems: List[Problem] = []
    if not isinstance(raw, Mapping):
        problems.append(Problem("dbha.E010", f"{where} is a {type(raw).__name__}, expected a dict.",
                                'Write it as {"ROLE": "write"} (every key is optional).'))
        raw = {}
    for key in raw:
        if key not in KEYS:
            problems.append(Problem("dbha.E011", f"{where} has the unknown key {key!r}.",
                                    f"The keys are {', '.join(KEYS)}."))

    def choice(key: str, allowed: Tuple[str, ...]) -> str:
        value = raw.get(key, allowed[0])
        if value not in allowed:
            problems.append(Problem("dbha.E012", f"{where}[{key!r}] is {value!r}.",
                                    f"Use one of: {', '.join(map(repr, allowed))}."))
            return allowed[0]
        return value

    role = choice("ROLE", ROLES)
    when_none = choice("WHEN_NONE", WHEN_NONE)
    sources = ((f"{where}['STATE_FILE']", raw.get("STATE_FILE")),
               ("DBHA_STATE_FILE", getattr(settings, "DBHA_STATE_FILE", None)),
               ("$DBHA_STATE", os.environ.get("DBHA_STATE")),
               ("the default", dbha.DEFAULT_STATE_FILE))
    state_file = dbha.DEFAULT_STATE_FILE
    for name, value in sources:
        if not value:
            continue
        if isinstance(value, (str, os.PathLike)):
            state_file = value
            break
        problems.append(Problem("dbha.E013", f"{name} is {value!r}, expected a path.",
                                "Set it to the agent's state_file, e.g. '/run/dbha/state'."))
    if settings_dict.get("HOST") or settings_dict.get("PORT"):
        problems.append(Problem(
            "dbha.W010",
            f"DATABASES[{alias!r}] sets HOST or PORT, which the dbha backend ignores: "
            "the agent's choice decides where it connects.",
            "Remove HOST and PORT; name the servers in the agent's configuration."))
    return BackendOptions(role, os.fspath(state_file), when_none), problems
