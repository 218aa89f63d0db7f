"""The process's readers, one per state file, shared by the backend's
connections (every thread) and :func:`dbha.django.read_only`."""

from __future__ import annotations

import threading
import time
from typing import Dict, Tuple

import dbha

# After the state file could not be opened, how long to wait before trying again
# (opening is a few system calls; a query must not pay them every time).
REOPEN_SECONDS = 0.5


class States:
    """The readers by path, and the last endpoint the agent chose per (file,
    role)."""

    def __init__(self) -> None:
        self.readers: Dict[str, dbha.Reader] = {}
        self.failed: Dict[str, Tuple[float, Exception]] = {}
        self.last: Dict[Tuple[str, str], dbha.Endpoint] = {}
        self.lock = threading.Lock()

    def reader(self, path: str) -> dbha.Reader:
        """The reader for ``path``; raises the last opening error for
        REOPEN_SECONDS after a failure."""
        r = self.readers.get(path)
        if r is not None:
            return r
        with self.lock:
            r = self.readers.get(path)
            if r is not None:
                return r
            failed = self.failed.get(path)
            if failed is not None and time.monotonic() < failed[0]:
                raise failed[1]
            try:
                r = self.readers[path] = dbha.Reader(path)
            except (dbha.StateFileError, dbha.LibraryNotFoundError) as e:
                self.failed[path] = (time.monotonic() + REOPEN_SECONDS, e)
                raise
            self.failed.pop(path, None)
            return r


states = States()
