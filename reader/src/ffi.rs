//! The C ABI: a thin skin over [`Reader`]. `include/dbha.h` is generated from this
//! file by cbindgen (see `tests/header.rs`, which fails when it is out of date).
//!
//! Conventions: every symbol starts with `dbha_`; every fallible function returns an
//! `int` result code (`DBHA_OK` or a `DBHA_E_*` constant) with results in
//! out-parameters; handles are created and freed only by the library; no panic ever
//! unwinds across this boundary (each entry point catches it and returns
//! `DBHA_E_PANIC`, or NULL).
#![allow(non_camel_case_types)]

use crate::{Error, Reader, Snapshot, Status};
use dbha_protocol::NONE;
use std::ffi::{c_char, c_int, CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::ptr;

/// Success.
pub const DBHA_OK: c_int = 0;
/// A required pointer argument was NULL, or a string argument was not valid.
pub const DBHA_E_INVALID_ARGUMENT: c_int = 1;
/// Nothing exists at the path (or a symbolic link points to nothing).
pub const DBHA_E_NOT_FOUND: c_int = 2;
/// The process may not read the file.
pub const DBHA_E_PERMISSION: c_int = 3;
/// The path is a directory or another non-regular file.
pub const DBHA_E_NOT_REGULAR_FILE: c_int = 4;
/// The file is empty or shorter than its header says.
pub const DBHA_E_TRUNCATED: c_int = 5;
/// The file is not a dbha state file.
pub const DBHA_E_BAD_MAGIC: c_int = 6;
/// The file has a layout version this library does not support.
pub const DBHA_E_UNSUPPORTED_VERSION: c_int = 7;
/// The header or alias table is inconsistent.
pub const DBHA_E_CORRUPT: c_int = 8;
/// Another I/O error (open, read, mmap).
pub const DBHA_E_IO: c_int = 9;
/// The record stayed mid-update for 100 ms (the writer died or was stopped mid-publication).
pub const DBHA_E_CONTENDED: c_int = 10;
/// An internal error was caught at the boundary; the library's state is unchanged.
pub const DBHA_E_PANIC: c_int = 11;
/// The state file has no endpoint addresses (an agent from before they were published wrote it).
pub const DBHA_E_NO_ADDRESS: c_int = 12;

/// The agent is alive and names a database.
pub const DBHA_STATUS_ACTIVE: c_int = 0;
/// The agent is alive and no database is fit for writes or reads.
pub const DBHA_STATUS_NO_HEALTHY_DATABASE: c_int = 1;
/// The agent's heartbeat is older than its stale_after.
pub const DBHA_STATUS_STALE: c_int = 2;
/// The agent stopped cleanly.
pub const DBHA_STATUS_AGENT_STOPPED: c_int = 3;
/// The agent is alive, no database takes writes, and one is fit for reads (a
/// failover window): serve reads from the read endpoint, refuse writes. A
/// program that predates it must treat an unknown status as "no write endpoint".
pub const DBHA_STATUS_READ_ONLY: c_int = 4;

/// An endpoint index meaning "none".
pub const DBHA_NONE: u32 = 0xFFFF_FFFF;
/// Flag: the agent stopped cleanly.
pub const DBHA_FLAG_STOPPED: u64 = 1;
/// Flag: two or more endpoints claim to be primary.
pub const DBHA_FLAG_CONFLICT: u64 = 2;
/// Flag: the file was replaced (the reader moves to the new one by itself).
pub const DBHA_FLAG_SUPERSEDED: u64 = 4;

/// Last probe result: not reported (yet).
pub const DBHA_PROBE_UNKNOWN: u8 = 0;
/// Last probe result: healthy answer.
pub const DBHA_PROBE_OK: u8 = 1;
/// Last probe result: connection refused.
pub const DBHA_PROBE_REFUSED: u8 = 2;
/// Last probe result: no answer within the timeout.
pub const DBHA_PROBE_TIMEOUT: u8 = 3;
/// Last probe result: the server is starting up, shutting down or in recovery.
pub const DBHA_PROBE_NOT_READY: u8 = 4;
/// Last probe result: not a PostgreSQL server.
pub const DBHA_PROBE_NOT_POSTGRES: u8 = 5;
/// Last probe result: the configured credentials were rejected.
pub const DBHA_PROBE_AUTH_FAILED: u8 = 6;
/// Last probe result: the server refused the session for another reason.
pub const DBHA_PROBE_REJECTED: u8 = 7;
/// Last probe result: the host name did not resolve.
pub const DBHA_PROBE_RESOLVE: u8 = 8;
/// Last probe result: the server closed the connection before answering.
pub const DBHA_PROBE_CLOSED: u8 = 9;
/// Last probe result: another network error.
pub const DBHA_PROBE_IO: u8 = 10;
/// Last probe result: TLS could not be negotiated as `sslmode` requires.
pub const DBHA_PROBE_TLS: u8 = 11;
/// Last probe result: a held session answers, but the server admits no new
/// connection (a frozen postmaster, or too many clients).
pub const DBHA_PROBE_NO_NEW_CONNECTIONS: u8 = 12;
/// Last probe result: what answered is not Patroni's REST API (the `patroni`
/// check).
pub const DBHA_PROBE_NOT_PATRONI: u8 = 13;
/// Last probe result: what answered is not a MySQL or MariaDB server (the
/// `mysql` check).
pub const DBHA_PROBE_NOT_MYSQL: u8 = 14;
/// Last probe result: the MySQL server blocks this host (error 1129, too many
/// aborted connections; `FLUSH HOSTS` clears it).
pub const DBHA_PROBE_HOST_BLOCKED: u8 = 15;

/// An open state file. Opaque: created by `dbha_open`, freed by `dbha_close`.
pub struct dbha_reader(Reader);

/// A consistent copy of the published state, filled by `dbha_read_sized` (or
/// `dbha_read`).
///
/// How it grows: new fields are only ever added at the end, and existing ones
/// never move or change type. Fill it with
/// `dbha_read_sized(reader, &snap, sizeof snap)`: a newer library fills the
/// fields this header knows and no more; a program built against a newer header
/// and run with an older library gets DBHA_E_INVALID_ARGUMENT only if it asks for
/// more than that library has (check with `dbha_snapshot_size()`). `dbha_read`
/// fills exactly the fields below, now and in every later release.
#[repr(C)]
pub struct dbha_snapshot {
    /// Increases every time the published decision changes.
    pub epoch: u64,
    /// Agent's last heartbeat, CLOCK_MONOTONIC nanoseconds.
    pub heartbeat_mono_ns: u64,
    /// Agent's last heartbeat, wall clock, ns since the Unix epoch (display only).
    pub heartbeat_wall_ns: u64,
    /// Age of the heartbeat at the time of the read, nanoseconds.
    pub heartbeat_age_ns: u64,
    /// The agent's staleness threshold, nanoseconds.
    pub stale_after_ns: u64,
    /// Bit i set: endpoint i is healthy.
    pub health_mask: u64,
    /// Bit i set: endpoint i is a primary.
    pub primary_mask: u64,
    /// Bit i set: endpoint i is a standby.
    pub standby_mask: u64,
    /// DBHA_FLAG_* bits.
    pub flags: u64,
    /// Increases every time the agent applies a configuration.
    pub config_generation: u64,
    /// Counts the files this reader has mapped (1 for the first).
    pub generation: u64,
    /// Name of the write endpoint when status is DBHA_STATUS_ACTIVE, else NULL.
    /// Valid until dbha_close.
    pub write_alias: *const c_char,
    /// Name of the read endpoint when status is DBHA_STATUS_ACTIVE or
    /// DBHA_STATUS_READ_ONLY, else NULL. Valid until dbha_close.
    pub read_alias: *const c_char,
    /// Index of the write endpoint, or DBHA_NONE.
    pub write_index: u32,
    /// Index of the read endpoint, or DBHA_NONE.
    pub read_index: u32,
    /// Number of endpoints.
    pub endpoint_count: u32,
    /// Process id of the agent that last wrote the file.
    pub writer_pid: u32,
    /// One of DBHA_STATUS_*.
    pub status: c_int,
    /// The kind of endpoint i's last probe result: one of DBHA_PROBE_*.
    pub last_probe: [u8; 64],
}

fn code(e: &Error) -> c_int {
    match e {
        Error::NotFound { .. } => DBHA_E_NOT_FOUND,
        Error::PermissionDenied { .. } => DBHA_E_PERMISSION,
        Error::NotRegularFile { .. } => DBHA_E_NOT_REGULAR_FILE,
        Error::Truncated { .. } => DBHA_E_TRUNCATED,
        Error::BadMagic { .. } => DBHA_E_BAD_MAGIC,
        Error::UnsupportedVersion { .. } => DBHA_E_UNSUPPORTED_VERSION,
        Error::Corrupt { .. } => DBHA_E_CORRUPT,
        Error::Io { .. } => DBHA_E_IO,
        Error::Contended { .. } => DBHA_E_CONTENDED,
    }
}

fn status_code(s: Status) -> c_int {
    s as c_int
}

/// Runs `f`, turning a panic into `on_panic`.
fn guard<T>(on_panic: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(on_panic)
}

/// Copies `msg` into `buf` (capacity `len`), truncated and always NUL-terminated.
///
/// # Safety
/// `buf` is NULL or valid for `len` bytes of writes.
unsafe fn write_message(buf: *mut c_char, len: usize, msg: &str) {
    if buf.is_null() || len == 0 {
        return;
    }
    let n = msg.len().min(len - 1);
    // SAFETY: the caller guarantees `buf` holds `len` bytes, and n + 1 <= len.
    unsafe {
        ptr::copy_nonoverlapping(msg.as_ptr(), buf.cast::<u8>(), n);
        *buf.add(n) = 0;
    }
}

/// Opens, validates and maps the state file at `path` (a NUL-terminated path;
/// symbolic links are followed) and stores a new handle in `*out`.
///
/// Returns DBHA_OK, or a DBHA_E_* code with `*out` set to NULL. Release the handle
/// with `dbha_close`. Blocks only on the file system calls of opening (open, fstat,
/// pread, mmap); thread-safe.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn dbha_open(path: *const c_char, out: *mut *mut dbha_reader) -> c_int {
    // SAFETY: forwarded from the caller.
    unsafe { dbha_open_err(path, out, ptr::null_mut(), 0) }
}

/// As `dbha_open`, and on failure also writes a message naming the path and what is
/// wrong into `errbuf` (capacity `errlen` bytes, always NUL-terminated, truncated if
/// needed). `errbuf` may be NULL.
///
/// # Safety
/// As `dbha_open`; `errbuf` is NULL or valid for `errlen` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn dbha_open_err(
    path: *const c_char,
    out: *mut *mut dbha_reader,
    errbuf: *mut c_char,
    errlen: usize,
) -> c_int {
    guard(DBHA_E_PANIC, || {
        if out.is_null() {
            // SAFETY: forwarded from the caller.
            unsafe { write_message(errbuf, errlen, "dbha_open: out is NULL") };
            return DBHA_E_INVALID_ARGUMENT;
        }
        // SAFETY: `out` is non-NULL and valid for a write per the contract.
        unsafe { *out = ptr::null_mut() };
        if path.is_null() {
            // SAFETY: forwarded from the caller.
            unsafe { write_message(errbuf, errlen, "dbha_open: path is NULL") };
            return DBHA_E_INVALID_ARGUMENT;
        }
        // SAFETY: `path` is non-NULL and NUL-terminated per the contract.
        let bytes = unsafe { CStr::from_ptr(path) }.to_bytes();
        let path = Path::new(OsStr::from_bytes(bytes));
        match Reader::open(path) {
            Ok(r) => {
                // SAFETY: `out` is valid for a write per the contract.
                unsafe { *out = Box::into_raw(Box::new(dbha_reader(r))) };
                DBHA_OK
            }
            Err(e) => {
                // SAFETY: forwarded from the caller.
                unsafe { write_message(errbuf, errlen, &e.to_string()) };
                code(&e)
            }
        }
    })
}

/// Unmaps the file and frees the handle. Every string the library returned for it
/// becomes invalid. NULL is ignored. Not thread-safe with other calls on the same
/// handle: no other thread may use it during or after this call.
///
/// # Safety
/// `reader` is NULL or a handle from `dbha_open` not closed yet.
#[no_mangle]
pub unsafe extern "C" fn dbha_close(reader: *mut dbha_reader) {
    guard((), || {
        if !reader.is_null() {
            // SAFETY: the handle came from Box::into_raw in dbha_open and is closed once.
            drop(unsafe { Box::from_raw(reader) });
        }
    })
}

/// Fills `*out` with a consistent copy of the published state. Never blocks and makes
/// no system call (except, at most every 250 ms while the state is stale, stopped or
/// contended, a stat of the path to find a replaced file; and a wait of at most
/// 100 ms, sleeping, for a publication the agent was descheduled in the middle of:
/// protocol/LAYOUT.md, "The seqlock"). Thread-safe: any number of threads may
/// call it on one handle.
///
/// Returns DBHA_OK, DBHA_E_INVALID_ARGUMENT for a NULL argument, or DBHA_E_CONTENDED.
///
/// # Safety
/// `reader` is NULL or an open handle; `out` is NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn dbha_read(reader: *const dbha_reader, out: *mut dbha_snapshot) -> c_int {
    guard(DBHA_E_PANIC, || {
        // SAFETY: NULL or an open handle per the contract.
        let Some(r) = (unsafe { reader.as_ref() }) else {
            return DBHA_E_INVALID_ARGUMENT;
        };
        if out.is_null() {
            return DBHA_E_INVALID_ARGUMENT;
        }
        match r.0.snapshot() {
            Ok(s) => {
                // SAFETY: `out` is non-NULL and valid for a write per the contract.
                unsafe { out.write(to_c(&s)) };
                DBHA_OK
            }
            Err(e) => code(&e),
        }
    })
}

/// The size of `dbha_snapshot` in this release: the most `dbha_read_sized` fills.
const SNAPSHOT_SIZE: usize = std::mem::size_of::<dbha_snapshot>();

/// The size of `dbha_snapshot` in the library loaded: the largest `size`
/// `dbha_read_sized` accepts.
#[no_mangle]
pub extern "C" fn dbha_snapshot_size() -> usize {
    SNAPSHOT_SIZE
}

/// As `dbha_read`, filling the first `size` bytes of `*out`: pass
/// `sizeof(dbha_snapshot)` as the program was compiled with (see `dbha_snapshot`
/// for how the struct grows).
///
/// Returns DBHA_OK; DBHA_E_INVALID_ARGUMENT for a NULL argument, or a `size`
/// that is not the size of some release's `dbha_snapshot` (at least this
/// release's first, at most `dbha_snapshot_size()`); or DBHA_E_CONTENDED.
///
/// # Safety
/// `reader` is NULL or an open handle; `out` is NULL or valid for a write of
/// `size` bytes.
#[no_mangle]
pub unsafe extern "C" fn dbha_read_sized(
    reader: *const dbha_reader,
    out: *mut dbha_snapshot,
    size: usize,
) -> c_int {
    guard(DBHA_E_PANIC, || {
        if size != SNAPSHOT_SIZE {
            // The first release that has dbha_read_sized is also the smallest.
            return DBHA_E_INVALID_ARGUMENT;
        }
        // SAFETY: the contract of dbha_read, with `out` valid for `size` bytes,
        // which is the whole struct here.
        unsafe { dbha_read(reader, out) }
    })
}

fn to_c(s: &Snapshot<'_>) -> dbha_snapshot {
    let name = |i: Option<u32>, shown: bool| {
        shown
            .then(|| i.and_then(|i| s.alias_c(i)))
            .flatten()
            .map_or(ptr::null(), CStr::as_ptr)
    };
    dbha_snapshot {
        epoch: s.epoch,
        heartbeat_mono_ns: s.heartbeat_mono_ns,
        heartbeat_wall_ns: s.heartbeat_wall_ns,
        heartbeat_age_ns: s.heartbeat_age.as_nanos() as u64,
        stale_after_ns: s.stale_after.as_nanos() as u64,
        health_mask: s.health_mask,
        primary_mask: s.primary_mask,
        standby_mask: s.standby_mask,
        flags: s.flags,
        config_generation: s.config_generation,
        generation: s.generation,
        write_alias: name(s.write_index, s.status.writes()),
        read_alias: name(s.read_index, s.status.reads()),
        write_index: s.write_index.unwrap_or(NONE),
        read_index: s.read_index.unwrap_or(NONE),
        endpoint_count: s.endpoint_count(),
        writer_pid: s.writer_pid,
        status: status_code(s.status),
        last_probe: s.last_probe,
    }
}

/// The alias the app must use for writes now, or NULL when there is none (reads
/// only, no healthy database, agent stopped, heartbeat stale), when the record is contended, or when
/// `reader` is NULL. The string stays valid until `dbha_close`. Never blocks, no
/// system call (see `dbha_read`); thread-safe.
///
/// # Safety
/// `reader` is NULL or an open handle.
#[no_mangle]
pub unsafe extern "C" fn dbha_write_alias(reader: *const dbha_reader) -> *const c_char {
    guard(ptr::null(), || {
        // SAFETY: NULL or an open handle per the contract.
        match unsafe { reader.as_ref() } {
            Some(r) => r.0.active_alias_c().map_or(ptr::null(), CStr::as_ptr),
            None => ptr::null(),
        }
    })
}

/// The older name of `dbha_write_alias` ("active" meant "where writes go"), kept
/// for existing programs; the same function.
///
/// # Safety
/// `reader` is NULL or an open handle.
#[no_mangle]
pub unsafe extern "C" fn dbha_active_alias(reader: *const dbha_reader) -> *const c_char {
    // SAFETY: the same contract.
    unsafe { dbha_write_alias(reader) }
}

/// The alias the app should use for reads now, or NULL: as `dbha_write_alias`,
/// and also while the status is DBHA_STATUS_READ_ONLY (a failover window: no
/// endpoint takes writes, one takes reads). Valid until `dbha_close`. Never blocks, no system call; thread-safe.
///
/// # Safety
/// `reader` is NULL or an open handle.
#[no_mangle]
pub unsafe extern "C" fn dbha_read_alias(reader: *const dbha_reader) -> *const c_char {
    guard(ptr::null(), || {
        // SAFETY: NULL or an open handle per the contract.
        let Some(r) = (unsafe { reader.as_ref() }) else {
            return ptr::null();
        };
        r.0.read_slot()
            .and_then(|(g, i)| r.0.alias_in_c(g, i))
            .map_or(ptr::null(), CStr::as_ptr)
    })
}

fn slot(s: Option<(u64, u32)>) -> i64 {
    s.map_or(-1, |(g, i)| (g as i64) << 6 | i64::from(i))
}

/// The write endpoint as one integer, for bindings that cache names: -1 when
/// `dbha_write_alias` would return NULL, else `generation * 64 + index`, where the
/// index is meaningful only with the names of that generation of the handle (the
/// generation changes when the agent replaced the file). Resolve a slot with
/// `dbha_slot_name`. Never blocks, no system call; thread-safe.
///
/// # Safety
/// `reader` is NULL or an open handle.
#[no_mangle]
pub unsafe extern "C" fn dbha_write_slot(reader: *const dbha_reader) -> i64 {
    guard(-1, || {
        // SAFETY: NULL or an open handle per the contract.
        unsafe { reader.as_ref() }.map_or(-1, |r| slot(r.0.write_slot()))
    })
}

/// The older name of `dbha_write_slot`, kept for existing programs; the same
/// function.
///
/// # Safety
/// `reader` is NULL or an open handle.
#[no_mangle]
pub unsafe extern "C" fn dbha_active_slot(reader: *const dbha_reader) -> i64 {
    // SAFETY: the same contract.
    unsafe { dbha_write_slot(reader) }
}

/// The read endpoint as one integer: as `dbha_write_slot`.
///
/// # Safety
/// `reader` is NULL or an open handle.
#[no_mangle]
pub unsafe extern "C" fn dbha_read_slot(reader: *const dbha_reader) -> i64 {
    guard(-1, || {
        // SAFETY: NULL or an open handle per the contract.
        unsafe { reader.as_ref() }.map_or(-1, |r| slot(r.0.read_slot()))
    })
}

/// The alias a slot from `dbha_write_slot` or `dbha_read_slot` names, or NULL for
/// -1 or a slot this handle never produced. Valid until `dbha_close`. May wait
/// briefly while another thread maps a replaced file; thread-safe.
///
/// # Safety
/// `reader` is NULL or an open handle.
#[no_mangle]
pub unsafe extern "C" fn dbha_slot_name(reader: *const dbha_reader, slot: i64) -> *const c_char {
    guard(ptr::null(), || {
        // SAFETY: NULL or an open handle per the contract.
        let Some(r) = (unsafe { reader.as_ref() }) else {
            return ptr::null();
        };
        if slot < 0 {
            return ptr::null();
        }
        r.0.alias_in_c((slot >> 6) as u64, (slot & 63) as u32)
            .map_or(ptr::null(), CStr::as_ptr)
    })
}

/// The address of the endpoint a slot from `dbha_write_slot` or `dbha_read_slot`
/// names: its host (a name or an IP address, as in the agent's configuration) in
/// `*host` and its port in `*port`. Either out-parameter may be NULL. The host is
/// always the one of the file the slot was read from, never another file's, and
/// stays valid until `dbha_close`. Pair it with `dbha_slot_name` for the alias.
///
/// Returns DBHA_OK; DBHA_E_INVALID_ARGUMENT for a NULL `reader`, or a slot that is
/// -1 or that this handle never produced; DBHA_E_NO_ADDRESS when the file has no
/// addresses (an older agent wrote it). On error the out-parameters are left
/// untouched. Never blocks (a lock-free walk of the files this handle mapped);
/// thread-safe; no system call.
///
/// # Safety
/// `reader` is NULL or an open handle; `host` and `port` are NULL or valid for a
/// write.
#[no_mangle]
pub unsafe extern "C" fn dbha_slot_address(
    reader: *const dbha_reader,
    slot: i64,
    host: *mut *const c_char,
    port: *mut u16,
) -> c_int {
    guard(DBHA_E_PANIC, || {
        // SAFETY: NULL or an open handle per the contract.
        let Some(r) = (unsafe { reader.as_ref() }) else {
            return DBHA_E_INVALID_ARGUMENT;
        };
        if slot < 0 {
            return DBHA_E_INVALID_ARGUMENT;
        }
        let (generation, index) = ((slot >> 6) as u64, (slot & 63) as u32);
        if r.0.alias_in_c(generation, index).is_none() {
            return DBHA_E_INVALID_ARGUMENT;
        }
        let Some((h, p)) = r.0.host_in_c(generation, index) else {
            return DBHA_E_NO_ADDRESS;
        };
        // SAFETY: each is NULL or valid for a write per the contract.
        unsafe {
            if !host.is_null() {
                *host = h.as_ptr();
            }
            if !port.is_null() {
                *port = p;
            }
        }
        DBHA_OK
    })
}

/// The alias of endpoint `index` in the file the handle maps now, or NULL when the
/// index is out of range or `reader` is NULL. Valid until `dbha_close`. To pair an
/// index from a snapshot with its name, prefer the snapshot's write_alias/read_alias:
/// an index is only meaningful with the names of the file it was read from (the
/// snapshot's `generation`). Never blocks; thread-safe.
///
/// # Safety
/// `reader` is NULL or an open handle.
#[no_mangle]
pub unsafe extern "C" fn dbha_alias_name(reader: *const dbha_reader, index: u32) -> *const c_char {
    guard(ptr::null(), || {
        // SAFETY: NULL or an open handle per the contract.
        match unsafe { reader.as_ref() } {
            Some(r) => r.0.alias_name_c(index).map_or(ptr::null(), CStr::as_ptr),
            None => ptr::null(),
        }
    })
}

/// A static description of a DBHA_OK / DBHA_E_* code ("unknown error code" for
/// others). Never NULL; never free it.
#[no_mangle]
pub extern "C" fn dbha_strerror(code: c_int) -> *const c_char {
    let s: &'static CStr = match code {
        DBHA_OK => c"success",
        DBHA_E_INVALID_ARGUMENT => c"invalid argument (NULL pointer)",
        DBHA_E_NOT_FOUND => c"state file not found",
        DBHA_E_PERMISSION => c"permission denied reading the state file",
        DBHA_E_NOT_REGULAR_FILE => c"state file path is not a regular file",
        DBHA_E_TRUNCATED => c"state file is empty or truncated",
        DBHA_E_BAD_MAGIC => c"not a dbha state file (bad magic)",
        DBHA_E_UNSUPPORTED_VERSION => c"unsupported state file layout version",
        DBHA_E_CORRUPT => c"state file is corrupt",
        DBHA_E_IO => c"I/O error on the state file",
        DBHA_E_CONTENDED => {
            c"state record stayed mid-update for 100 ms (writer died or stopped while publishing?)"
        }
        DBHA_E_PANIC => c"internal error in libdbha",
        DBHA_E_NO_ADDRESS => c"the state file has no endpoint addresses (upgrade dbha-agent)",
        _ => c"unknown error code",
    };
    s.as_ptr()
}

/// The library's version, e.g. "0.1.0". Static; never free it.
#[no_mangle]
pub extern "C" fn dbha_version() -> *const c_char {
    const V: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => panic!("version has a NUL"),
        };
    V.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dbha_protocol::flags;

    // The header carries literals (cbindgen cannot see other crates' constants).
    #[test]
    fn c_constants_match_the_protocol() {
        assert_eq!(DBHA_NONE, NONE);
        assert_eq!(DBHA_FLAG_STOPPED, flags::STOPPED);
        assert_eq!(DBHA_FLAG_CONFLICT, flags::CONFLICT);
        assert_eq!(DBHA_FLAG_SUPERSEDED, flags::SUPERSEDED);
        assert_eq!(DBHA_STATUS_ACTIVE, Status::Active as c_int);
        assert_eq!(
            DBHA_STATUS_NO_HEALTHY_DATABASE,
            Status::NoHealthyDatabase as c_int
        );
        assert_eq!(DBHA_STATUS_STALE, Status::Stale as c_int);
        assert_eq!(DBHA_STATUS_AGENT_STOPPED, Status::AgentStopped as c_int);
        assert_eq!(DBHA_STATUS_READ_ONLY, Status::ReadOnly as c_int);
        use dbha_protocol::probe_result as p;
        assert_eq!(
            [
                DBHA_PROBE_UNKNOWN,
                DBHA_PROBE_OK,
                DBHA_PROBE_REFUSED,
                DBHA_PROBE_TIMEOUT,
                DBHA_PROBE_NOT_READY,
                DBHA_PROBE_NOT_POSTGRES
            ],
            [
                p::UNKNOWN,
                p::OK,
                p::REFUSED,
                p::TIMEOUT,
                p::NOT_READY,
                p::NOT_POSTGRES
            ]
        );
        assert_eq!(
            [
                DBHA_PROBE_AUTH_FAILED,
                DBHA_PROBE_REJECTED,
                DBHA_PROBE_RESOLVE,
                DBHA_PROBE_CLOSED,
                DBHA_PROBE_IO,
                DBHA_PROBE_TLS,
                DBHA_PROBE_NO_NEW_CONNECTIONS,
                DBHA_PROBE_NOT_PATRONI,
                DBHA_PROBE_NOT_MYSQL,
                DBHA_PROBE_HOST_BLOCKED
            ],
            [
                p::AUTH_FAILED,
                p::REJECTED,
                p::RESOLVE,
                p::CLOSED,
                p::IO,
                p::TLS,
                p::NO_NEW_CONNECTIONS,
                p::NOT_PATRONI,
                p::NOT_MYSQL,
                p::HOST_BLOCKED
            ]
        );
    }

    #[test]
    fn strerror_knows_every_code() {
        for c in DBHA_OK..=DBHA_E_NO_ADDRESS {
            // SAFETY: dbha_strerror returns a static NUL-terminated string.
            let s = unsafe { CStr::from_ptr(dbha_strerror(c)) };
            assert_ne!(s.to_str().unwrap(), "unknown error code", "code {c}");
        }
    }
}
