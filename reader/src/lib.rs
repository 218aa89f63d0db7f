//! Read the dbha agent's current decision (which database to use) from its state
//! file, in nanoseconds and with no system call on the hot path.
//!
//! This crate opens and validates the file, maps it read-only and reads its
//! seqlocked record. It is loaded into every application process, so it stays small:
//! no logging, no threads, no allocation after open. The C ABI (`libdbha`, header
//! `include/dbha.h`) is a thin skin over it in [`ffi`]. It never writes: the writer
//! side lives in `dbha-protocol`'s `writer` feature and is used by the agent.
//!
//! ```no_run
//! let reader = dbha::Reader::open("/run/dbha/state")?;
//! let db = reader.write_alias().unwrap_or("default");
//! if let Some(e) = reader.write_endpoint() {
//!     println!("writes go to {} at {}:{}", e.alias, e.host, e.port);
//! }
//! # Ok::<(), dbha::Error>(())
//! ```

#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

mod clock;
pub mod ffi;

// Readers load atomics from memory mapped read-only. Rust defines that only for
// relaxed loads of up to the target's limit (8 bytes on these); on other targets
// the reader would need another design, so refuse to build.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!(
    "dbha-reader supports x86_64 and aarch64 (relaxed 8-byte loads from read-only memory)"
);

pub use dbha_protocol::dcs::no_writes;
use dbha_protocol::header::{decode_addresses, decode_aliases, Header, HeaderError};
use dbha_protocol::{flags, seqlock, RecordValues, DATA_WORDS, NONE};
pub use dbha_protocol::{Dcs, Fence, ReplicaLag, Status};
use memmap2::{MmapOptions, MmapRaw};
use std::ffi::{CStr, CString};
use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::time::Duration;

/// How many times a read spins while the writer is mid-publication before it
/// starts to wait. A publication takes tens of nanoseconds, so spinning ends it
/// unless the writer was descheduled in the middle of one (a busy host).
pub const MAX_RETRIES: u32 = 10_000;

/// How long a read then waits, sleeping between looks, for a publication in
/// progress to end before giving up with [`Error::Contended`]: longer than a
/// runnable writer waits for a CPU on a loaded host (the scheduler's latency,
/// a few to tens of milliseconds), so only a writer that died or was stopped
/// mid-publication makes reads fail. A record found stuck at the same sequence
/// as the last give-up fails at once, without waiting again.
pub const WRITER_WAIT: Duration = Duration::from_millis(100);

/// After a stale or stopped read, the reader checks at most this often whether a
/// different file now sits at the path (one `stat`).
const RECHECK_NS: u64 = 250_000_000;

/// Why a state file could not be opened or read. Every variant names the path.
#[derive(Debug)]
pub enum Error {
    /// Nothing at the path (or a symbolic link to nothing).
    NotFound {
        /// The state file's path.
        path: PathBuf,
        /// The path is a symbolic link whose target does not exist.
        dangling_link: bool,
    },
    /// The process may not read the file.
    PermissionDenied {
        /// The state file's path.
        path: PathBuf,
    },
    /// The path is a directory or another non-regular file.
    NotRegularFile {
        /// The state file's path.
        path: PathBuf,
        /// What is there ("directory", "FIFO", ...).
        kind: &'static str,
    },
    /// The file is shorter than its header or than the size its header claims.
    Truncated {
        /// The state file's path.
        path: PathBuf,
        /// Its size.
        have: u64,
        /// The size needed.
        needed: u64,
    },
    /// The file does not start with the dbha magic.
    BadMagic {
        /// The state file's path.
        path: PathBuf,
    },
    /// The file has a layout version this reader does not support.
    UnsupportedVersion {
        /// The state file's path.
        path: PathBuf,
        /// The file's layout version.
        version: u32,
    },
    /// The header or alias table holds values no valid writer produces.
    Corrupt {
        /// The state file's path.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Another I/O error while opening or mapping.
    Io {
        /// The state file's path.
        path: PathBuf,
        /// What was being done ("open", "mmap", ...).
        op: &'static str,
        /// The system's error.
        source: io::Error,
    },
    /// The record stayed mid-publication for [`WRITER_WAIT`] (the writer died
    /// or was stopped while publishing).
    Contended {
        /// The state file's path.
        path: PathBuf,
    },
}

impl Error {
    /// The path the error concerns.
    pub fn path(&self) -> &Path {
        match self {
            Error::NotFound { path, .. }
            | Error::PermissionDenied { path }
            | Error::NotRegularFile { path, .. }
            | Error::Truncated { path, .. }
            | Error::BadMagic { path }
            | Error::UnsupportedVersion { path, .. }
            | Error::Corrupt { path, .. }
            | Error::Io { path, .. }
            | Error::Contended { path } => path,
        }
    }

    fn from_header(path: &Path, e: HeaderError) -> Error {
        let path = path.to_owned();
        match e {
            HeaderError::Truncated { needed, have } => Error::Truncated { path, have, needed },
            HeaderError::BadMagic => Error::BadMagic { path },
            HeaderError::UnsupportedVersion(version) => Error::UnsupportedVersion { path, version },
            HeaderError::Corrupt(what) => Error::Corrupt { path, what },
        }
    }

    fn from_io(path: &Path, op: &'static str, source: io::Error) -> Error {
        let path = path.to_owned();
        match source.kind() {
            io::ErrorKind::NotFound => {
                let dangling_link = std::fs::symlink_metadata(&path)
                    .map(|m| m.file_type().is_symlink())
                    .unwrap_or(false);
                Error::NotFound {
                    path,
                    dangling_link,
                }
            }
            io::ErrorKind::PermissionDenied => Error::PermissionDenied { path },
            _ => Error::Io { path, op, source },
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.path().display();
        match self {
            Error::NotFound {
                dangling_link: true,
                ..
            } => write!(f, "{p} is a symbolic link to a file that does not exist"),
            Error::NotFound { .. } => write!(
                f,
                "{p} does not exist: is dbha-agent running with this state_file?"
            ),
            Error::PermissionDenied { .. } => write!(
                f,
                "{p} is not readable by this process: add its user to the state file's group"
            ),
            Error::NotRegularFile { kind, .. } => {
                write!(f, "{p} is a {kind}, not a dbha state file")
            }
            Error::Truncated { have: 0, .. } => write!(f, "{p} is empty, not a dbha state file"),
            Error::Truncated { have, needed, .. } => write!(
                f,
                "{p} is truncated ({have} bytes, at least {needed} needed)"
            ),
            Error::BadMagic { .. } => write!(f, "{p} is not a dbha state file (bad magic)"),
            Error::UnsupportedVersion { version, .. } => write!(
                f,
                "{p} has layout version {version}, this reader supports {}: upgrade the reader (libdbha) to match the agent",
                dbha_protocol::LAYOUT_VERSION
            ),
            Error::Corrupt { what, .. } => write!(f, "{p} is corrupt: {what}"),
            Error::Io { op, source, .. } => write!(f, "{p}: {op} failed: {source}"),
            Error::Contended { .. } => write!(
                f,
                "{p}: the record stayed mid-update for {} ms (writer died or stopped while publishing?)",
                WRITER_WAIT.as_millis()
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A role an endpoint was seen in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not in recovery.
    Primary,
    /// In recovery (a standby).
    Standby,
    /// Not known: no login to see it, or not probed yet.
    Unknown,
}

impl Role {
    /// The stable name ("primary", "standby", "unknown"), as `dbha-agent status`
    /// and the metrics spell it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
            Role::Unknown => "unknown",
        }
    }
}

/// One mapped file, with its aliases. Never freed before the [`Reader`] is dropped,
/// so names handed out stay valid across reopens.
struct Generation {
    number: u64,
    /// The generation this one replaced (null for the first), set before this
    /// one is published and never changed: the reader's generations form a list
    /// from the current one back, which needs no lock to walk or to extend.
    prev: *mut Generation,
    map: MmapRaw,
    record_offset: usize,
    /// Where the probe results are in the mapping, when the file has them.
    details_offset: Option<usize>,
    /// Where the replication-lag area is in the mapping, when the file has one.
    lag_offset: Option<usize>,
    /// Where the DCS area is in the mapping, when the file has one.
    dcs_offset: Option<usize>,
    aliases: Vec<Name>,
    /// One per alias; empty when the file has no address table (an agent from
    /// before addresses were published).
    addresses: Vec<Address>,
    dev: u64,
    ino: u64,
}

impl Generation {
    fn open(path: &Path, number: u64) -> Result<Generation, Error> {
        // O_NONBLOCK: a FIFO (or a device) at the path must not make the open wait
        // for a writer; it is then refused as not a regular file. Reads of the
        // regular file (pread) ignore the flag.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| Error::from_io(path, "open", e))?;
        let meta = file
            .metadata()
            .map_err(|e| Error::from_io(path, "fstat", e))?;
        let ft = meta.file_type();
        if !ft.is_file() {
            let kind = if ft.is_dir() {
                "directory"
            } else {
                "special file"
            };
            return Err(Error::NotRegularFile {
                path: path.to_owned(),
                kind,
            });
        }
        let size = meta.len();
        let mut head = vec![0u8; size.min(u64::from(dbha_protocol::HEADER_SIZE)) as usize];
        file.read_exact_at(&mut head, 0)
            .map_err(|e| Error::from_io(path, "read", e))?;
        let header = Header::decode(&head).map_err(|e| Error::from_header(path, e))?;
        if size < header.file_size {
            return Err(Error::Truncated {
                path: path.to_owned(),
                have: size,
                needed: header.file_size,
            });
        }
        // Both tables are bounded by the header check (64 slots of fixed width).
        let read_table = |offset: u32, end: u64| -> Result<Vec<u8>, Error> {
            let mut table = vec![0u8; (end - u64::from(offset)) as usize];
            file.read_exact_at(&mut table, u64::from(offset))
                .map_err(|e| Error::from_io(path, "read", e))?;
            Ok(table)
        };
        let aliases = decode_aliases(
            &read_table(header.aliases_offset, header.aliases_end())?,
            header.endpoint_count,
        )
        .map_err(|e| Error::from_header(path, e))?
        .into_iter()
        .map(Name::new)
        .collect();
        let addresses = if header.addresses_offset == 0 {
            Vec::new()
        } else {
            decode_addresses(
                &read_table(header.addresses_offset, header.addresses_end())?,
                header.endpoint_count,
            )
            .map_err(|e| Error::from_header(path, e))?
            .into_iter()
            .map(|(host, port)| Address {
                host: Name::new(host),
                port,
            })
            .collect()
        };
        let record_end = u64::from(header.record_offset) + u64::from(header.record_size);
        let details_offset = (header.details_offset != 0).then_some(header.details_offset as usize);
        let lag_offset = (header.lag_offset != 0).then_some(header.lag_offset as usize);
        let dcs_offset = (header.dcs_offset != 0).then_some(header.dcs_offset as usize);
        // The header check keeps the areas inside file_size, which the file has.
        let end = record_end
            .max(header.details_end())
            .max(header.lag_end())
            .max(header.dcs_end());
        let map = MmapOptions::new()
            .offset(0)
            .len(end as usize)
            .map_raw_read_only(&file)
            .map_err(|e| Error::from_io(path, "mmap", e))?;
        Ok(Generation {
            number,
            prev: std::ptr::null_mut(),
            map,
            record_offset: header.record_offset as usize,
            details_offset,
            lag_offset,
            dcs_offset,
            aliases,
            addresses,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// The record's sequence word and data words.
    #[inline(always)]
    fn record(&self) -> (&AtomicU64, &[AtomicU64; DATA_WORDS]) {
        // Mapped at least to the record's end at open (record_size >= 128 and
        // record_offset a multiple of 128, checked in the header).
        dbha_protocol::mapping::record(&self.map, self.record_offset)
            .expect("the record is inside the mapping (checked at open)")
    }

    #[inline(always)]
    fn read(&self) -> Option<RecordValues> {
        let (seq, data) = self.record();
        seqlock::read(seq, data, MAX_RETRIES)
            .ok()
            .map(|(w, _)| RecordValues::from_words(&w).within(self.aliases.len()))
    }

    /// The record's sequence word as it is now.
    fn sequence(&self) -> u64 {
        self.record().0.load(Ordering::Relaxed)
    }

    /// Waits up to [`WRITER_WAIT`] for a publication in progress to end: the
    /// writer was descheduled (or died) in the middle of one. Sleeps between
    /// looks, so the writer gets the CPU a spinning reader would hold. None if
    /// the record is still mid-publication, at once if it is stuck at `stuck`.
    #[cold]
    fn wait_for_writer(&self, stuck: u64) -> Option<RecordValues> {
        let deadline = std::time::Instant::now() + WRITER_WAIT;
        loop {
            if stuck & 1 == 1 && self.sequence() == stuck {
                return None;
            }
            let (seq, data) = self.record();
            if let Some(w) = seqlock::try_read(seq, data) {
                return Some(RecordValues::from_words(&w).within(self.aliases.len()));
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    fn alias(&self, index: u32) -> Option<&Name> {
        self.aliases.get(index as usize)
    }

    fn endpoint(&self, index: u32) -> Option<Endpoint<'_>> {
        endpoint(&self.aliases, &self.addresses, index)
    }

    /// Endpoint `index`'s replication lag as last written (empty when the file has
    /// no lag area or the index is past its endpoints). Each word stands alone.
    fn replica_lag(&self, index: u32) -> ReplicaLag {
        ReplicaLag::from_words(&self.lag_words(index))
    }

    /// Endpoint `index`'s fence as last written (none when the file has no lag
    /// area or the index is past its endpoints).
    fn fence(&self, index: u32) -> Fence {
        Fence::from_words(&self.lag_words(index))
    }

    /// Endpoint `index`'s slot in the lag area; zeros when there is none.
    fn lag_words(&self, index: u32) -> [u64; 4] {
        if index as usize >= self.aliases.len() {
            return [0; 4];
        }
        self.lag_offset
            .and_then(|o| dbha_protocol::mapping::lag_slot(&self.map, o, index as usize))
            .map_or([0; 4], |slot| {
                std::array::from_fn(|i| slot[i].load(Ordering::Relaxed))
            })
    }

    /// The DCS area (None when the file has none, the agent follows no DCS,
    /// or the area stayed busy for every attempt).
    fn dcs(&self) -> Option<Dcs> {
        let (seq, data) = dbha_protocol::mapping::dcs(&self.map, self.dcs_offset?)?;
        let (words, _) = seqlock::read(seq, data, MAX_RETRIES).ok()?;
        Dcs::from_words(&words)
    }

    /// The kind of each endpoint's last probe result (all UNKNOWN when the file
    /// has none). Each byte stands alone: no seqlock.
    fn probe_results(&self) -> [u8; 64] {
        let Some(offset) = self.details_offset else {
            return [0; 64];
        };
        let Some(words) = dbha_protocol::mapping::probe_results(&self.map, offset) else {
            return [0; 64];
        };
        let mut out = [0u8; 64];
        for (chunk, w) in out.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
        }
        out
    }
}

impl fmt::Debug for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Generation")
            .field("number", &self.number)
            .field("dev", &self.dev)
            .field("ino", &self.ino)
            .finish_non_exhaustive()
    }
}

/// An alias or a host, kept both ways so that neither Rust nor C callers pay a
/// conversion.
#[derive(Debug)]
struct Name {
    c: CString,
    s: Box<str>,
}

impl Name {
    fn new(name: String) -> Name {
        Name {
            // The table decoders stop at the first NUL, so there is none inside.
            c: CString::new(name.as_bytes()).expect("name without interior NUL"),
            s: name.into_boxed_str(),
        }
    }
}

/// An endpoint's address, from the file's address table.
#[derive(Debug)]
struct Address {
    host: Name,
    port: u16,
}

/// Where the application connects for one endpoint, as the agent's configuration
/// names it: the alias, and the host (a name or an IP address, resolved by the
/// application) and port. Taken from the same file as the index that chose it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint<'r> {
    /// The name applications use (a Django `DATABASES` key).
    pub alias: &'r str,
    /// A host name or an IP address, as the agent's configuration gives it.
    pub host: &'r str,
    /// The TCP port.
    pub port: u16,
}

fn endpoint<'r>(aliases: &'r [Name], addresses: &'r [Address], index: u32) -> Option<Endpoint<'r>> {
    let address = addresses.get(index as usize)?;
    Some(Endpoint {
        alias: &aliases.get(index as usize)?.s,
        host: &address.host.s,
        port: address.port,
    })
}

/// An open state file. Cheap to read from any number of threads at once
/// (`Reader: Sync`); opened before `fork`, it keeps working in the children, since
/// the mapping is shared and read-only.
///
/// When the agent replaces the file (its aliases changed) the reader notices the
/// superseded flag and maps the new file on its next read; when the state is stale or
/// stopped it checks, at most every 250 ms, whether another file now sits at the path.
/// Names it handed out stay valid until the reader is dropped.
pub struct Reader {
    path: PathBuf,
    /// The newest generation, from `Box::into_raw`; each points to the one before
    /// (`Generation::prev`). All are freed together when the reader is dropped.
    /// No lock anywhere: a process forked while another thread was reopening or
    /// looking up a generation inherits nothing held. (`Reader` is Send and Sync
    /// through this AtomicPtr: sound, as a published Generation is immutable, its
    /// mapping read only through atomics, and freed only with the reader.)
    current: AtomicPtr<Generation>,
    last_recheck_ns: AtomicU64,
    /// The generation whose supersession was last acted on.
    reopen_tried: AtomicU64,
    /// The sequence word at which the record was last given up on as stuck
    /// (0: none; a stuck sequence is odd).
    stuck_sequence: AtomicU64,
}

impl Drop for Reader {
    fn drop(&mut self) {
        // Frees the list from the newest back, without recursion.
        let mut p = *self.current.get_mut();
        while !p.is_null() {
            // SAFETY: each pointer in the list came from `Box::into_raw` and is
            // owned by this reader alone (`&mut self`); it is freed exactly once.
            let g = unsafe { Box::from_raw(p) };
            p = g.prev;
        }
    }
}

impl fmt::Debug for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader").field("path", &self.path).finish()
    }
}

impl Reader {
    /// Opens, validates and maps the state file at `path` (symbolic links are
    /// followed). Fails with a specific [`Error`] naming the path.
    pub fn open(path: impl AsRef<Path>) -> Result<Reader, Error> {
        let path = path.as_ref().to_owned();
        let first = Box::into_raw(Box::new(Generation::open(&path, 1)?));
        Ok(Reader {
            path,
            current: AtomicPtr::new(first),
            last_recheck_ns: AtomicU64::new(0),
            reopen_tried: AtomicU64::new(0),
            stuck_sequence: AtomicU64::new(0),
        })
    }

    /// The path this reader was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    #[inline(always)]
    fn generation(&self) -> &Generation {
        // SAFETY: `current` always holds a pointer from `Box::into_raw` that is
        // freed only in `Drop for Reader`, so the Generation outlives the returned
        // borrow of `self`. Acquire pairs with the Release in `reopen`, so the
        // Generation's contents are visible.
        unsafe { &*self.current.load(Ordering::Acquire) }
    }

    /// Reads the record, reopening first if the file was superseded (or, when stale or
    /// stopped, replaced by another file at the path).
    #[inline(always)]
    fn load(&self) -> Result<(&Generation, RecordValues, u64), Error> {
        let g = self.generation();
        let now = clock::coarse_monotonic_ns();
        let Some(v) = g.read() else {
            return self.load_contended(g);
        };
        self.checked(g, v, now)
    }

    /// `v` as read from `g`, or what the slow path finds when it is superseded,
    /// stopped or stale.
    #[inline(always)]
    fn checked<'a>(
        &'a self,
        g: &'a Generation,
        v: RecordValues,
        now: u64,
    ) -> Result<(&'a Generation, RecordValues, u64), Error> {
        if v.flags & (flags::SUPERSEDED | flags::STOPPED) == 0 && v.status(now) != Status::Stale {
            return Ok((g, v, now));
        }
        self.load_slow(g, v, now)
    }

    #[cold]
    fn load_slow<'a>(
        &'a self,
        g: &'a Generation,
        v: RecordValues,
        now: u64,
    ) -> Result<(&'a Generation, RecordValues, u64), Error> {
        let superseded = v.flags & flags::SUPERSEDED != 0;
        // The first reopen after a supersession is immediate (the new file is in
        // place before the flag is set); any further attempt, as every check of a
        // stale or stopped file, waits RECHECK_NS, so a file that cannot be opened
        // costs one attempt per period, not one per read.
        let first_try =
            superseded && self.reopen_tried.swap(g.number, Ordering::Relaxed) != g.number;
        let last = self.last_recheck_ns.load(Ordering::Relaxed);
        if !first_try && now.saturating_sub(last) < RECHECK_NS {
            return Ok((g, v, now));
        }
        self.last_recheck_ns.store(now, Ordering::Relaxed);
        match self.reopen(g, superseded) {
            Some(new) => match new.read() {
                Some(nv) => Ok((new, nv, now)),
                None => Err(Error::Contended {
                    path: self.path.clone(),
                }),
            },
            None => Ok((g, v, now)),
        }
    }

    /// The record stayed mid-publication while the read spun: wait for the
    /// writer (descheduled in the middle of a publication). If it stays so, the
    /// writer died or stopped during one: if another file now sits at the path
    /// (a new agent made one), move to it, at most one look every RECHECK_NS.
    #[cold]
    fn load_contended<'a>(
        &'a self,
        g: &'a Generation,
    ) -> Result<(&'a Generation, RecordValues, u64), Error> {
        let stuck = self.stuck_sequence.load(Ordering::Relaxed);
        if let Some(v) = g.wait_for_writer(stuck) {
            return self.checked(g, v, clock::coarse_monotonic_ns());
        }
        self.stuck_sequence.store(g.sequence(), Ordering::Relaxed);
        let now = clock::coarse_monotonic_ns();
        let last = self.last_recheck_ns.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= RECHECK_NS {
            self.last_recheck_ns.store(now, Ordering::Relaxed);
            if let Some((new, nv)) = self.reopen(g, false).and_then(|n| Some((n, n.read()?))) {
                return Ok((new, nv, now));
            }
        }
        Err(Error::Contended {
            path: self.path.clone(),
        })
    }

    /// Maps the file now at the path if it differs from `g`. Never blocks and takes
    /// no lock: two threads may open the new file at once, and the one that
    /// publishes second drops its copy and uses the other's.
    fn reopen(&self, g: &Generation, superseded: bool) -> Option<&Generation> {
        let latest = self.generation();
        if latest.number != g.number {
            // Another thread already moved on.
            return Some(latest);
        }
        if !superseded {
            let meta = std::fs::metadata(&self.path).ok()?;
            if (meta.dev(), meta.ino()) == (g.dev, g.ino) {
                return None;
            }
        }
        let mut new = Box::new(Generation::open(&self.path, g.number + 1).ok()?);
        if (new.dev, new.ino) == (g.dev, g.ino) {
            // The path still names this very file (flagged superseded, yet nothing
            // replaced it): nothing new to map, and mapping it again on every read
            // would exhaust the process's mappings.
            return None;
        }
        let old = g as *const Generation as *mut Generation;
        new.prev = old;
        let new = Box::into_raw(new);
        match self
            .current
            .compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire)
        {
            // SAFETY: `new` is now the reader's current generation, freed only by
            // `Drop for Reader` (see `generation`).
            Ok(_) => Some(unsafe { &*new }),
            Err(_) => {
                // SAFETY: `new` came from `Box::into_raw` above and was never
                // published: this thread still owns it.
                drop(unsafe { Box::from_raw(new) });
                Some(self.generation())
            }
        }
    }

    /// A consistent copy of everything the agent published.
    pub fn snapshot(&self) -> Result<Snapshot<'_>, Error> {
        let (g, v, now) = self.load()?;
        Ok(Snapshot::new(g, &v, now))
    }

    /// The alias the app must use now for writes, or `None` when there is none:
    /// reads only (a failover window), no healthy database, the agent stopped, or
    /// its heartbeat is stale. No system
    /// call, no allocation.
    #[inline]
    pub fn write_alias(&self) -> Option<&str> {
        self.active(|a| &*a.s)
    }

    /// The older name of [`Reader::write_alias`] ("active" meant "where writes
    /// go"), kept for existing callers.
    #[inline]
    pub fn active_alias(&self) -> Option<&str> {
        self.write_alias()
    }

    /// As [`Reader::write_alias`], as a C string.
    #[inline]
    pub fn active_alias_c(&self) -> Option<&CStr> {
        self.active(|a| a.c.as_c_str())
    }

    #[inline(always)]
    fn active<'a, T: ?Sized>(&'a self, f: impl FnOnce(&'a Name) -> &'a T) -> Option<&'a T> {
        let (g, v, now) = self.load().ok()?;
        if v.status(now) != Status::Active {
            return None;
        }
        g.alias(v.write_index).map(f)
    }

    /// The alias the app should use for reads now: as [`Reader::write_alias`], and
    /// also while the status is [`Status::ReadOnly`] (no endpoint takes writes,
    /// one takes reads).
    #[inline]
    pub fn read_alias(&self) -> Option<&str> {
        self.read_slot().and_then(|(g, i)| self.alias_in(g, i))
    }

    /// The write endpoint as (generation, index): the index is meaningful with the
    /// names of that generation (see [`Reader::alias_in`]). No system call, no
    /// allocation.
    #[inline]
    pub fn write_slot(&self) -> Option<(u64, u32)> {
        let (g, v, now) = self.load().ok()?;
        (v.status(now) == Status::Active && g.alias(v.write_index).is_some())
            .then_some((g.number, v.write_index))
    }

    /// The older name of [`Reader::write_slot`], kept for existing callers.
    #[inline]
    pub fn active_slot(&self) -> Option<(u64, u32)> {
        self.write_slot()
    }

    /// The read endpoint as (generation, index), as [`Reader::write_slot`].
    #[inline]
    pub fn read_slot(&self) -> Option<(u64, u32)> {
        let (g, v, now) = self.load().ok()?;
        (v.status(now).reads() && g.alias(v.read_index).is_some())
            .then_some((g.number, v.read_index))
    }

    fn generation_number(&self, number: u64) -> Option<&Generation> {
        let current = self.generation();
        if current.number == number {
            return Some(current);
        }
        // Another generation: walk back from the current one.
        let mut p = current.prev;
        while !p.is_null() {
            // SAFETY: every `prev` was a published generation, which is freed only
            // by `Drop for Reader` (see `generation`); `prev` never changes once
            // its generation is published.
            let g = unsafe { &*p };
            if g.number == number {
                return Some(g);
            }
            p = g.prev;
        }
        None
    }

    /// Where writes go now: the write endpoint's alias, host and port, or `None`
    /// when there is none (as [`Reader::write_alias`]) or the file has no
    /// addresses (written by an agent from before they were published). No system
    /// call, no allocation.
    #[inline]
    pub fn write_endpoint(&self) -> Option<Endpoint<'_>> {
        self.write_slot().and_then(|(g, i)| self.endpoint_in(g, i))
    }

    /// Where reads go now, as [`Reader::write_endpoint`].
    #[inline]
    pub fn read_endpoint(&self) -> Option<Endpoint<'_>> {
        self.read_slot().and_then(|(g, i)| self.endpoint_in(g, i))
    }

    /// Endpoint `index` of generation `generation` of this reader (see
    /// [`Reader::write_slot`]): its alias and address always come from the file
    /// the index was read from.
    pub fn endpoint_in(&self, generation: u64, index: u32) -> Option<Endpoint<'_>> {
        self.generation_number(generation)?.endpoint(index)
    }

    pub(crate) fn host_in_c(&self, generation: u64, index: u32) -> Option<(&CStr, u16)> {
        let a = self
            .generation_number(generation)?
            .addresses
            .get(index as usize)?;
        Some((a.host.c.as_c_str(), a.port))
    }

    /// The name of endpoint `index` in generation `generation` of this reader.
    pub fn alias_in(&self, generation: u64, index: u32) -> Option<&str> {
        self.generation_number(generation)?
            .alias(index)
            .map(|a| &*a.s)
    }

    pub(crate) fn alias_in_c(&self, generation: u64, index: u32) -> Option<&CStr> {
        self.generation_number(generation)?
            .alias(index)
            .map(|a| a.c.as_c_str())
    }

    /// The name of endpoint `index` in the file mapped now.
    pub fn alias_name(&self, index: u32) -> Option<&str> {
        self.generation().alias(index).map(|a| &*a.s)
    }

    pub(crate) fn alias_name_c(&self, index: u32) -> Option<&CStr> {
        self.generation().alias(index).map(|a| a.c.as_c_str())
    }
}

/// A consistent view of the state, with the names of the file it was read from.
#[derive(Debug, Clone)]
pub struct Snapshot<'r> {
    /// Increases every time the published decision changes.
    pub epoch: u64,
    /// Agent's last heartbeat, `CLOCK_MONOTONIC` nanoseconds.
    pub heartbeat_mono_ns: u64,
    /// Agent's last heartbeat, wall clock, nanoseconds since the Unix epoch (display only).
    pub heartbeat_wall_ns: u64,
    /// How old the heartbeat was at the time of the read.
    pub heartbeat_age: Duration,
    /// The staleness threshold from the agent's configuration.
    pub stale_after: Duration,
    /// Index of the write endpoint, if any.
    pub write_index: Option<u32>,
    /// Index of the read endpoint, if any.
    pub read_index: Option<u32>,
    /// Bit i: endpoint i is healthy.
    pub health_mask: u64,
    /// Bit i: endpoint i was seen as a primary.
    pub primary_mask: u64,
    /// Bit i: endpoint i was seen as a standby.
    pub standby_mask: u64,
    /// The `dbha_protocol::flags` bits.
    pub flags: u64,
    /// Process id of the agent that last wrote the file.
    pub writer_pid: u32,
    /// Goes up each time the agent applies a configuration.
    pub config_generation: u64,
    /// Counts the files this reader has mapped (1 for the first); changes when the
    /// reader moved to a replacement file.
    pub generation: u64,
    /// What the reader concludes (LAYOUT.md, "Status").
    pub status: Status,
    /// The kind of each endpoint's last probe result (`dbha_protocol::probe_result`).
    pub last_probe: [u8; 64],
    /// The file this snapshot was read from: its names, addresses and lags.
    file: &'r Generation,
}

impl<'r> Snapshot<'r> {
    fn new(g: &'r Generation, v: &RecordValues, now: u64) -> Snapshot<'r> {
        let idx = |i: u32| (i != NONE && (i as usize) < g.aliases.len()).then_some(i);
        Snapshot {
            epoch: v.epoch,
            heartbeat_mono_ns: v.heartbeat_mono_ns,
            heartbeat_wall_ns: v.heartbeat_wall_ns,
            heartbeat_age: Duration::from_nanos(v.heartbeat_age_ns(now)),
            stale_after: Duration::from_nanos(v.stale_after_ns),
            write_index: idx(v.write_index),
            read_index: idx(v.read_index),
            health_mask: v.health_mask,
            primary_mask: v.primary_mask,
            standby_mask: v.standby_mask,
            flags: v.flags,
            writer_pid: v.writer_pid,
            config_generation: v.config_generation,
            generation: g.number,
            status: v.status(now),
            last_probe: g.probe_results(),
            file: g,
        }
    }

    /// Number of endpoints in the file this snapshot was read from.
    pub fn endpoint_count(&self) -> u32 {
        self.file.aliases.len() as u32
    }

    /// Alias of endpoint `index` in this snapshot's file.
    pub fn alias(&self, index: u32) -> Option<&'r str> {
        self.file.alias(index).map(|a| &*a.s)
    }

    pub(crate) fn alias_c(&self, index: u32) -> Option<&'r CStr> {
        self.file.alias(index).map(|a| a.c.as_c_str())
    }

    /// All aliases, in priority (index) order.
    pub fn aliases(&self) -> impl Iterator<Item = &'r str> + 'r {
        self.file.aliases.iter().map(|a| &*a.s)
    }

    /// Endpoint `index` of this snapshot's file, with its address; `None` when out
    /// of range or the file has no addresses.
    pub fn endpoint(&self, index: u32) -> Option<Endpoint<'r>> {
        self.file.endpoint(index)
    }

    /// The write endpoint when the status is Active (and the file has addresses).
    pub fn write_endpoint(&self) -> Option<Endpoint<'r>> {
        (self.status == Status::Active)
            .then(|| self.write_index.and_then(|i| self.endpoint(i)))
            .flatten()
    }

    /// The read endpoint when the status is Active or ReadOnly (and the file has
    /// addresses).
    pub fn read_endpoint(&self) -> Option<Endpoint<'r>> {
        self.status
            .reads()
            .then(|| self.read_index.and_then(|i| self.endpoint(i)))
            .flatten()
    }

    /// The write alias when the status is Active.
    pub fn write_alias(&self) -> Option<&'r str> {
        (self.status == Status::Active)
            .then(|| self.write_index.and_then(|i| self.alias(i)))
            .flatten()
    }

    /// The read alias when the status is Active or ReadOnly.
    pub fn read_alias(&self) -> Option<&'r str> {
        self.status
            .reads()
            .then(|| self.read_index.and_then(|i| self.alias(i)))
            .flatten()
    }

    /// Endpoint `index` is healthy.
    pub fn is_healthy(&self, index: u32) -> bool {
        index < 64 && self.health_mask & (1 << index) != 0
    }

    /// The role endpoint `index` was seen in.
    pub fn role(&self, index: u32) -> Role {
        if index >= 64 {
            Role::Unknown
        } else if self.primary_mask & (1 << index) != 0 {
            Role::Primary
        } else if self.standby_mask & (1 << index) != 0 {
            Role::Standby
        } else {
            Role::Unknown
        }
    }

    /// The name of endpoint `index`'s last probe result ("ok", "refused",
    /// "auth_failed", ...; "unknown" when not reported).
    pub fn last_probe_name(&self, index: u32) -> &'static str {
        dbha_protocol::probe_result::name(self.last_probe.get(index as usize).copied().unwrap_or(0))
    }

    /// Endpoint `index`'s replication lag, for display: read from this snapshot's
    /// file when called (like the probe results, it is outside the seqlock and
    /// may be a probe newer than the snapshot). Empty for a primary, an endpoint
    /// not measured yet, and a file from an agent that does not publish lag.
    pub fn replica_lag(&self, index: u32) -> ReplicaLag {
        self.file.replica_lag(index)
    }

    /// What the agent knows of the DCS it follows (Patroni's etcd), for
    /// display: read from this snapshot's file when called, under the area's
    /// own seqlock (it may be newer than the snapshot). None when the agent
    /// follows no DCS, or its file has no DCS area.
    pub fn dcs(&self) -> Option<Dcs> {
        self.file.dcs()
    }

    /// The agent's verdict on endpoint `index` is down (not merely no verdict
    /// yet: an endpoint neither healthy nor down has none). Read when called,
    /// like [`Snapshot::replica_lag`]; always false in files of agents that do
    /// not record it.
    pub fn is_down(&self, index: u32) -> bool {
        self.file.lag_words(index)[dbha_protocol::lag::word::FLAGS]
            & dbha_protocol::lag::flags::DOWN
            != 0
    }

    /// Whether the agent holds endpoint `index` fenced (no writes until it is
    /// seen as a standby or an operator clears it), and its timeline as a
    /// primary, for display; read when called, like [`Snapshot::replica_lag`].
    pub fn fence(&self, index: u32) -> Fence {
        self.file.fence(index)
    }

    /// The agent stopped cleanly (flag STOPPED).
    pub fn stopped(&self) -> bool {
        self.flags & flags::STOPPED != 0
    }

    /// Several endpoints claim to be primary (flag CONFLICT).
    pub fn conflict(&self) -> bool {
        self.flags & flags::CONFLICT != 0
    }
}
