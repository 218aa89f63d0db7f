"""Finding and loading libdbha, and declaring its C ABI for ctypes.

Search order: the path in ``DBHA_LIBRARY``, a copy bundled inside this package,
then the system loader path (``libdbha.so.0``). The library is loaded with
``ctypes.PyDLL``: every dbha read function is non-blocking and takes nanoseconds,
so keeping the GIL is cheaper than releasing and re-taking it around each call.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import List, Optional, Tuple


class LibraryNotFoundError(ImportError):
    """libdbha could not be loaded from any place searched."""

    def __init__(self, tried: List[Tuple[str, str]]):
        self.tried = tried
        lines = "; ".join(f"{where}: {why}" for where, why in tried)
        super().__init__(
            "libdbha could not be loaded (" + lines + "). Set DBHA_LIBRARY to the path "
            "of libdbha.so, install a dbha wheel that bundles it, or install libdbha "
            "system-wide."
        )


class Snapshot(ctypes.Structure):
    """``dbha_snapshot`` from dbha.h."""

    _fields_ = [
        ("epoch", ctypes.c_uint64),
        ("heartbeat_mono_ns", ctypes.c_uint64),
        ("heartbeat_wall_ns", ctypes.c_uint64),
        ("heartbeat_age_ns", ctypes.c_uint64),
        ("stale_after_ns", ctypes.c_uint64),
        ("health_mask", ctypes.c_uint64),
        ("primary_mask", ctypes.c_uint64),
        ("standby_mask", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("config_generation", ctypes.c_uint64),
        ("generation", ctypes.c_uint64),
        ("write_alias", ctypes.c_char_p),
        ("read_alias", ctypes.c_char_p),
        ("write_index", ctypes.c_uint32),
        ("read_index", ctypes.c_uint32),
        ("endpoint_count", ctypes.c_uint32),
        ("writer_pid", ctypes.c_uint32),
        ("status", ctypes.c_int),
        ("last_probe", ctypes.c_uint8 * 64),
    ]


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    p = ctypes.c_void_p
    sigs = {
        "dbha_open_err": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(p), ctypes.c_char_p, ctypes.c_size_t]),
        "dbha_close": (None, [p]),
        "dbha_read_sized": (ctypes.c_int, [p, ctypes.POINTER(Snapshot), ctypes.c_size_t]),
        "dbha_slot_name": (ctypes.c_char_p, [p, ctypes.c_int64]),
        "dbha_slot_address": (ctypes.c_int, [p, ctypes.c_int64, ctypes.POINTER(ctypes.c_char_p),
                                             ctypes.POINTER(ctypes.c_uint16)]),
        "dbha_strerror": (ctypes.c_char_p, [ctypes.c_int]),
        "dbha_version": (ctypes.c_char_p, []),
        # The hot path: no argtypes (a c_void_p instance is passed as it is, with no
        # conversion), one integer back.
        "dbha_write_slot": (ctypes.c_int64, None),
        "dbha_read_slot": (ctypes.c_int64, None),
    }
    for name, (restype, argtypes) in sigs.items():
        f = getattr(lib, name)
        f.restype = restype
        if argtypes is not None:
            f.argtypes = argtypes
    return lib


def find_library(env: Optional[str], bundled_dir: Path) -> Tuple[ctypes.CDLL, str]:
    """Loads libdbha in the documented order; returns it and where it came from."""
    tried: List[Tuple[str, str]] = []
    if env:
        try:
            return _declare(ctypes.PyDLL(env)), env
        except OSError as e:
            # An explicit choice that fails is an error, not a reason to look elsewhere.
            raise LibraryNotFoundError([("DBHA_LIBRARY=" + env, str(e))]) from e
    for name in ("libdbha.so", "libdbha.so.0"):
        bundled = bundled_dir / name
        if bundled.exists():
            try:
                return _declare(ctypes.PyDLL(str(bundled))), str(bundled)
            except OSError as e:
                tried.append((str(bundled), str(e)))
    for name in ("libdbha.so.0", "libdbha.so"):
        try:
            return _declare(ctypes.PyDLL(name)), name
        except OSError as e:
            tried.append((name + " (system loader path)", str(e)))
    raise LibraryNotFoundError(tried)


_loaded: Optional[Tuple[ctypes.CDLL, str]] = None


def library() -> ctypes.CDLL:
    """The process-wide libdbha, loaded on first use."""
    global _loaded
    if _loaded is None:
        _loaded = find_library(os.environ.get("DBHA_LIBRARY"), Path(__file__).parent)
    return _loaded[0]


def library_path() -> str:
    """Where the loaded libdbha came from."""
    library()
    assert _loaded is not None
    return _loaded[1]
