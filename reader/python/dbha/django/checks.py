"""System checks (``manage.py check``): the dbha backend's ``DBHA`` settings,
and ``FailoverRouter``'s settings when it is in ``DATABASE_ROUTERS``."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

import dbha

from .conf import ENGINES, backend_options


def _library_error():
    try:
        dbha._lib.library()
    except dbha.LibraryNotFoundError as e:
        return Error(
            f"libdbha cannot be loaded: {e}",
            hint="Build it (cargo build --release -p dbha-reader) and set DBHA_LIBRARY to "
                 "target/release/libdbha.so, or install a dbha wheel that bundles it.",
            id="dbha.E001",
        )
    return None


@register(Tags.database, deploy=False)
def check_dbha_backend(app_configs=None, **kwargs):
    problems = []
    files = {}
    for alias, settings_dict in getattr(settings, "DATABASES", {}).items():
        if settings_dict.get("ENGINE") not in ENGINES:
            continue
        options, found = backend_options(alias, settings_dict)
        for p in found:
            problems.append((Error if p.is_error else Warning)(p.message, hint=p.hint, id=p.id))
        files.setdefault(options.state_file, []).append(alias)
    if not files:
        return problems
    library = _library_error()
    if library is not None:
        return problems + [library]
    for path, aliases in sorted(files.items()):
        try:
            dbha.Reader(path).close()
        except dbha.StateFileError as e:
            problems.append(Warning(
                f"The dbha state file for {', '.join(map(repr, aliases))} cannot be read: {e}",
                hint="Is dbha-agent running with this state_file? Can this process's user read "
                     "it (the agent's state_mode and group)? Until it can, connections to these "
                     "aliases fail with OperationalError.",
                id="dbha.W011",
            ))
    return problems


@register(Tags.database, deploy=False)
def check_dbha(app_configs=None, **kwargs):
    """FailoverRouter's settings, when it routes."""
    routers = [r if isinstance(r, str) else f"{type(r).__module__}.{type(r).__name__}"
               for r in getattr(settings, "DATABASE_ROUTERS", [])]
    if not any(r.endswith("FailoverRouter") for r in routers):
        return []
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
    library = _library_error()
    if library is not None:
        return problems + [library]
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
        # A mapped alias whose target is missing is dbha.E003 already.
        if agent_alias not in alias_map and agent_alias not in databases:
            problems.append(Error(
                f"The agent publishes the alias {agent_alias!r}, which is not in DATABASES.",
                hint="Name the agent's [[database]] aliases after DATABASES keys, or map "
                     "them with DBHA_ALIAS_MAP.",
                id="dbha.E005",
            ))
    return problems
