"""The Python package's copies of what dbha.h defines: result codes, statuses,
flags, probe kinds, and the layout of dbha_snapshot (names and types from the
header, offsets and size from a C compiler), so that a change to the C ABI that
Python does not follow fails here, not in an application."""

import ctypes
import re
import shutil
import subprocess

import pytest
from conftest import ROOT

import dbha
from dbha import _lib

HEADER = ROOT / "reader" / "include" / "dbha.h"


def defines():
    return {m[1]: int(m[2]) for m in re.finditer(r"^#define (DBHA_\w+) (\d+)$", HEADER.read_text(), re.M)}


def snapshot_fields():
    body = re.search(r"typedef struct dbha_snapshot \{(.*?)\} dbha_snapshot;", HEADER.read_text(), re.S)[1]
    fields = []
    for line in body.splitlines():
        line = line.strip()
        if not line or line.startswith("//"):
            continue
        m = re.fullmatch(r"(.+?)\s*\b(\w+)(?:\[(\d+)\])?;", line)
        assert m, f"cannot read {line!r}"
        fields.append((m[2], m[1].strip(), int(m[3]) if m[3] else None))
    return fields


def test_result_codes_statuses_flags_and_probe_kinds_match_the_header():
    d = defines()
    codes = {k[len("DBHA_"):]: v for k, v in d.items() if k == "DBHA_OK" or k.startswith("DBHA_E_")}
    assert codes == {k: getattr(dbha, k) for k in codes}, "result codes"
    assert {n for n in dir(dbha) if re.fullmatch(r"E_[A-Z_]+", n)} | {"OK"} == set(codes)
    statuses = {v: k[len("DBHA_STATUS_"):].lower() for k, v in d.items() if k.startswith("DBHA_STATUS_")}
    assert statuses == dbha._STATUS
    probes = {v: k[len("DBHA_PROBE_"):].lower() for k, v in d.items() if k.startswith("DBHA_PROBE_")}
    assert probes == dict(enumerate(dbha._PROBE))
    assert (dbha._FLAG_STOPPED, dbha._FLAG_CONFLICT) == (d["DBHA_FLAG_STOPPED"], d["DBHA_FLAG_CONFLICT"])


C_TYPES = {
    "uint64_t": ctypes.c_uint64,
    "uint32_t": ctypes.c_uint32,
    "uint8_t": ctypes.c_uint8,
    "int": ctypes.c_int,
    "const char *": ctypes.c_char_p,
}


def test_the_snapshot_struct_has_the_headers_fields_types_and_layout(tmp_path):
    header = snapshot_fields()
    ours = _lib.Snapshot._fields_
    assert [name for name, *_ in header] == [name for name, _ in ours]
    for (name, ctype, count), (_, pytype) in zip(header, ours):
        want = C_TYPES[ctype] * count if count else C_TYPES[ctype]
        assert (pytype._type_, pytype._length_) == (want._type_, want._length_) if count else pytype == want, name
    cc = shutil.which("cc")
    if cc is None:
        pytest.fail("cc is needed to read the C layout of dbha_snapshot (tests/setup.sh installs it)")
    prog = tmp_path / "layout.c"
    prog.write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include \"dbha.h\"\nint main(void) {\n"
        + "".join(f'  printf("{n} %zu\\n", offsetof(dbha_snapshot, {n}));\n' for n, *_ in header)
        + '  printf("sizeof %zu\\n", sizeof(dbha_snapshot));\n  return 0;\n}\n')
    exe = tmp_path / "layout"
    subprocess.run([cc, "-std=c11", "-I", str(HEADER.parent), str(prog), "-o", str(exe)], check=True)
    c = dict(line.split() for line in subprocess.run([str(exe)], capture_output=True, text=True,
                                                      check=True).stdout.splitlines())
    for name, _ in ours:
        assert int(c[name]) == getattr(_lib.Snapshot, name).offset, name
    assert int(c["sizeof"]) == ctypes.sizeof(_lib.Snapshot)
