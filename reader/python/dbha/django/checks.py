"""System checks (``manage.py check``) for the dbha router's settings."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

import dbha


@register(Tags.database, deploy=False)
def check_dbha(app_configs=None, **kwargs):
    problems = []
    databases = set(getattr(settings, "DATABASES", {}))
    fallback = getattr(settings, "DBHA_FALLBACK", "default")
    alias_map = dict(getattr(settings, "DBHA_ALIAS_MAP", None) or {})
    state_file = getattr(settings, "DBHA_STATE_FILE", None)

    if fallback not in databases:
        problems.append(Error(
            f"DBHA_FALLBACK is {fallback!r}, which is not in DATABASES.",
            hint=f"Set DBHA_FALLBACK to one of: {', '.join(sorted(databases))}.",
            id="dbha.E004",
        ))
    for agent_alias, key in sorted(alias_map.items()):
        if key not in databases:
            problems.append(Error(
                f"DBHA_ALIAS_MAP sends the agent's {agent_alias!r} to {key!r}, which is not in DATABASES.",
                hint="Map each agent alias to a DATABASES key.",
                id="dbha.E003",
            ))
    try:
        dbha._lib.library()
    except dbha.LibraryNotFoundError as e:
        problems.append(Error(
            f"libdbha cannot be loaded: {e}",
            hint="Build it (cargo build --release -p dbha-reader) and set DBHA_LIBRARY to "
                 "target/release/libdbha.so, or install a dbha wheel that bundles it.",
            id="dbha.E001",
        ))
        return problems
    try:
        with dbha.Reader(state_file) as r:
            agent_aliases = list(r.snapshot().health)
    except dbha.StateFileError as e:
        problems.append(Warning(
            f"The dbha state file cannot be read: {e}",
            hint="Is dbha-agent running with this state_file (DBHA_STATE_FILE)? Can this "
                 "process's user read it (the agent's state_mode and group)? Until it can, "
                 f"every query goes to {fallback!r}.",
            id="dbha.W002",
        ))
        return problems
    for agent_alias in agent_aliases:
        key = alias_map.get(agent_alias, agent_alias)
        if key not in databases:
            problems.append(Error(
                f"The agent publishes the alias {agent_alias!r}, and {key!r} is not in DATABASES.",
                hint="Name the agent's [[database]] aliases after DATABASES keys, or map "
                     "them with DBHA_ALIAS_MAP.",
                id="dbha.E003",
            ))
    return problems
