"""``manage.py dbshell`` for the dbha backends: the database's own client, run
as Django runs it."""

import os
import signal
import subprocess


def client_env(env):
    """``env`` (what the client needs) over this process's environment."""
    return {**os.environ, **(env or {})}


def run_client(args, env):
    """Runs ``args`` in the environment ``env``; as Django's dbshell, SIGINT
    goes to the client (to cancel a query), not to Python."""
    sigint_handler = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        subprocess.run(args, env=env, check=True)
    finally:
        signal.signal(signal.SIGINT, sigint_handler)
