//! The writer's side of the state file: the single process (the agent) that creates,
//! reuses, replaces and publishes into it. See LAYOUT.md, "Life cycle".
//!
//! - One writer per path, enforced by a write lock (`F_OFD_SETLK`) on `PATH.lock`,
//!   which only the writer's user can open for writing.
//! - A state or lock file removed under the writer is put back (`StateFile::restore`).
//! - A new file is built under a temporary name in the same directory, reserved with
//!   `posix_fallocate` (a full tmpfs fails here, not later as SIGBUS in a reader),
//!   fully initialised, and only then renamed into place.
//! - A valid file with the layout this writer writes and the same endpoints (aliases
//!   and addresses) is reused in place (same inode, readers keep their mapping, the
//!   epoch continues). Any other valid file is replaced by a new one, and the old one
//!   is then flagged SUPERSEDED so its readers reopen.
//! - A file is never truncated or shrunk.

use crate::header::{
    decode_addresses, decode_aliases, encode_address, encode_alias, Endpoint, Header, HeaderError,
};
use crate::record::RecordValues;
use crate::{
    flags, seqlock, Fence, ReplicaLag, DATA_WORDS, DETAILS_OFFSET, FILE_SIZE, HEADER_SIZE,
    LAG_OFFSET, MAX_ENDPOINTS, NONE, RECORD_OFFSET, RECORD_SIZE, RECORD_WORDS,
};
use memmap2::{MmapOptions, MmapRaw};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Everything that can go wrong on the writer's side, with the path it concerns.
#[derive(Debug)]
pub enum WriterError {
    /// Another process holds the lock: only one writer per state file.
    Locked {
        /// The lock file.
        lock: PathBuf,
        /// The pid the holder wrote in it, if readable.
        holder: Option<u32>,
    },
    /// A system call failed.
    Io {
        /// The file it concerned.
        path: PathBuf,
        /// What was being done ("open", "rename", ...).
        op: &'static str,
        /// The system's error.
        source: io::Error,
    },
    /// Something is at the path that is not a state file this writer may replace.
    NotAStateFile {
        /// The path.
        path: PathBuf,
        /// Why what is there is not a state file.
        reason: HeaderError,
    },
    /// The path is a symbolic link, a directory or another non-regular file.
    NotRegular {
        /// The path.
        path: PathBuf,
        /// What is there ("symbolic link", "directory", ...).
        kind: &'static str,
    },
    /// An alias that does not fit the layout.
    InvalidAlias {
        /// The endpoint's index.
        index: usize,
        /// The alias.
        alias: String,
    },
    /// A host or port that does not fit the layout.
    InvalidAddress {
        /// The endpoint's index.
        index: usize,
        /// The host.
        host: String,
        /// The port.
        port: u16,
    },
    /// More endpoints than the masks hold.
    TooManyEndpoints(usize),
}

impl fmt::Display for WriterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriterError::Locked { lock, holder } => {
                write!(f, "{} is locked by another dbha-agent", lock.display())?;
                if let Some(pid) = holder {
                    write!(f, " (pid {pid})")?;
                }
                f.write_str(": only one agent may write a state file; stop it or choose another state_file")
            }
            WriterError::Io { path, op, source } => {
                write!(f, "{}: {op} failed: {source}", path.display())
            }
            WriterError::NotAStateFile { path, reason } => write!(
                f,
                "{} exists and {reason}; refusing to replace it: remove it or choose another state_file",
                path.display()
            ),
            WriterError::NotRegular { path, kind } => write!(
                f,
                "{} is a {kind}, expected a regular file (or nothing)",
                path.display()
            ),
            WriterError::InvalidAlias { index, alias } => write!(
                f,
                "alias {index} ({alias:?}) must be 1 to {} bytes with no NUL",
                crate::MAX_ALIAS_LEN
            ),
            WriterError::InvalidAddress { index, host, port } => write!(
                f,
                "endpoint {index}: host {host:?} must be 1 to {} bytes with no NUL and port {port} 1 to 65535",
                crate::MAX_HOST_LEN
            ),
            WriterError::TooManyEndpoints(n) => {
                write!(f, "{n} endpoints, at most {MAX_ENDPOINTS} are supported")
            }
        }
    }
}

impl std::error::Error for WriterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WriterError::Io { source, .. } => Some(source),
            WriterError::NotAStateFile { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> WriterError + 'a {
    move |source| WriterError::Io {
        path: path.to_owned(),
        op,
        source,
    }
}

/// What the agent decided, to be published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publication {
    /// Index of the write endpoint, or [`crate::NONE`].
    pub write_index: u32,
    /// Index of the read endpoint, or [`crate::NONE`].
    pub read_index: u32,
    /// Bit i: endpoint i is healthy.
    pub health_mask: u64,
    /// Bit i: endpoint i was seen as a primary.
    pub primary_mask: u64,
    /// Bit i: endpoint i was seen as a standby.
    pub standby_mask: u64,
    /// Several endpoints claim to be primary (the CONFLICT flag).
    pub conflict: bool,
}

impl Publication {
    /// Nothing known yet: no endpoint, nothing healthy.
    pub const NOTHING: Publication = Publication {
        write_index: NONE,
        read_index: NONE,
        health_mask: 0,
        primary_mask: 0,
        standby_mask: 0,
        conflict: false,
    };
}

/// Settings carried in the record that come from the agent's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Readers report Stale when the heartbeat is older than this.
    pub stale_after_ns: u64,
    /// Permission bits of the file (e.g. 0o644, or 0o640 with a group), applied to a
    /// new file and to one that is reused or reconfigured.
    pub mode: u32,
}

/// How [`StateFile::open`] or [`StateFile::reconfigure`] came by the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// Nothing was at the path: a new file.
    Created,
    /// A valid file of this writer's layout with the same endpoints: reused in
    /// place, epoch and decision kept.
    Reused,
    /// A file with other endpoints (aliases or addresses), or of an older layout: a
    /// new file replaced it and the old one is flagged superseded.
    Replaced,
}

/// What [`StateFile::restore`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// The state file was gone from its path and was created again.
    pub state: bool,
    /// The lock file was gone (or replaced) and was created and locked again.
    pub lock: bool,
    /// Another file stands at the state path: left alone, and this writer's file
    /// is no longer the one new readers open.
    pub elsewhere: bool,
}

/// The open, locked, mapped state file.
pub struct StateFile {
    path: PathBuf,
    map: MmapRaw,
    endpoints: Vec<Endpoint>,
    values: RecordValues,
    /// Offset of the record in the mapping (another writer's file, about to be
    /// replaced, may have it elsewhere than [`RECORD_OFFSET`]).
    record_offset: usize,
    /// The file has this writer's own layout, mapped whole: the probe results and
    /// the replication-lag area are at [`DETAILS_OFFSET`] and [`LAG_OFFSET`] and
    /// this writer writes them. False for another writer's file about to be
    /// replaced, of which only the record is touched.
    ours: bool,
    /// The mapped file, for its permissions.
    file: File,
    lock: File,
}

impl fmt::Debug for StateFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateFile")
            .field("path", &self.path)
            .field("endpoints", &self.endpoints)
            .field("values", &self.values)
            .finish()
    }
}

/// Current `CLOCK_MONOTONIC` and wall-clock time in nanoseconds.
pub fn now_ns() -> (u64, u64) {
    let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0);
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (mono, wall)
}

/// The lock file guarding `path`.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// The writer's lock: an open file description lock (`F_OFD_SETLK`) for writing
/// on `PATH.lock`, which the agent creates 0600. A write lock needs a descriptor
/// opened for writing, so a user who can only read the file (or an older lock
/// file left 0644) cannot hold it, unlike `flock`, which any reader can take.
/// The lock is released when the file is closed, also when the process dies.
fn take_lock(path: &Path) -> Result<File, WriterError> {
    let lock = lock_path(path);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&lock)
        .map_err(io_err(&lock, "open lock file"))?;
    // A whole-file write lock (l_start = l_len = 0). OFD locks need l_pid = 0.
    let whole = nix::libc::flock {
        l_type: nix::libc::F_WRLCK as i16,
        l_whence: nix::libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    match nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_OFD_SETLK(&whole)) {
        Ok(_) => {}
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => {
            let mut s = String::new();
            let holder = file
                .read_to_string(&mut s)
                .ok()
                .and_then(|_| s.trim().parse().ok());
            return Err(WriterError::Locked { lock, holder });
        }
        Err(e) => return Err(io_err(&lock, "lock (F_OFD_SETLK)")(e.into())),
    }
    // Owner only, also for a lock file an older version left readable to all.
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(&lock, "chmod lock file"))?;
    // The holder's pid, for the message the next would-be writer gets.
    file.set_len(0)
        .map_err(io_err(&lock, "truncate lock file"))?;
    file.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0)
        .map_err(io_err(&lock, "write lock file"))?;
    Ok(file)
}

/// Whether `path` names the same inode as the open `file` (false when nothing is
/// at `path`).
fn names(path: &Path, file: &File) -> io::Result<bool> {
    let ours = file.metadata()?;
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok((m.dev(), m.ino()) == (ours.dev(), ours.ino())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The immutable tables of a new file, encoded.
struct Tables {
    aliases: Vec<u8>,
    addresses: Vec<u8>,
}

fn encode_tables(endpoints: &[Endpoint]) -> Result<Tables, WriterError> {
    if endpoints.len() > MAX_ENDPOINTS as usize {
        return Err(WriterError::TooManyEndpoints(endpoints.len()));
    }
    let mut t = Tables {
        aliases: Vec::with_capacity(endpoints.len() * crate::ALIAS_WIDTH as usize),
        addresses: Vec::with_capacity(endpoints.len() * crate::ADDRESS_WIDTH as usize),
    };
    for (index, e) in endpoints.iter().enumerate() {
        let alias = encode_alias(&e.alias).ok_or_else(|| WriterError::InvalidAlias {
            index,
            alias: e.alias.clone(),
        })?;
        let address =
            encode_address(&e.host, e.port).ok_or_else(|| WriterError::InvalidAddress {
                index,
                host: e.host.clone(),
                port: e.port,
            })?;
        t.aliases.extend_from_slice(&alias);
        t.addresses.extend_from_slice(&address);
    }
    Ok(t)
}

/// What is at the path now.
enum Existing {
    Nothing,
    /// A valid version 1 file, perhaps of another layout than this writer's.
    Valid {
        file: File,
        header: Header,
        /// Its endpoints; a file without an address table has empty hosts and port
        /// 0, which no configuration has, so it is never reused.
        endpoints: Vec<Endpoint>,
    },
}

fn inspect(path: &Path) -> Result<Existing, WriterError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Existing::Nothing),
        Err(e) => return Err(io_err(path, "stat")(e)),
    };
    let ft = meta.file_type();
    if !ft.is_file() {
        let kind = if ft.is_symlink() {
            "symbolic link"
        } else if ft.is_dir() {
            "directory"
        } else {
            "special file"
        };
        return Err(WriterError::NotRegular {
            path: path.to_owned(),
            kind,
        });
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err(path, "open"))?;
    let len = file.metadata().map_err(io_err(path, "fstat"))?.len();
    let not_ours = |reason| WriterError::NotAStateFile {
        path: path.to_owned(),
        reason,
    };
    let mut head = vec![0u8; (HEADER_SIZE as u64).min(len) as usize];
    file.read_exact_at(&mut head, 0)
        .map_err(io_err(path, "read"))?;
    let header = Header::decode(&head).map_err(not_ours)?;
    if len < header.file_size {
        return Err(not_ours(HeaderError::Truncated {
            needed: header.file_size,
            have: len,
        }));
    }
    let read_table = |offset: u32, end: u64| -> Result<Vec<u8>, WriterError> {
        let mut table = vec![0u8; (end - u64::from(offset)) as usize];
        file.read_exact_at(&mut table, u64::from(offset))
            .map_err(io_err(path, "read"))?;
        Ok(table)
    };
    let aliases = decode_aliases(
        &read_table(header.aliases_offset, header.aliases_end())?,
        header.endpoint_count,
    )
    .map_err(not_ours)?;
    let addresses = if header.addresses_offset == 0 {
        vec![(String::new(), 0); aliases.len()]
    } else {
        decode_addresses(
            &read_table(header.addresses_offset, header.addresses_end())?,
            header.endpoint_count,
        )
        .map_err(not_ours)?
    };
    let endpoints = aliases
        .into_iter()
        .zip(addresses)
        .map(|(alias, (host, port))| Endpoint { alias, host, port })
        .collect();
    Ok(Existing::Valid {
        file,
        header,
        endpoints,
    })
}

/// Maps the first `len` bytes of `file` read-write.
fn map(file: &File, path: &Path, len: u64) -> Result<MmapRaw, WriterError> {
    MmapOptions::new()
        .len(len as usize)
        .map_raw(file)
        .map_err(io_err(path, "mmap"))
}

/// Gives the file `mode` and this process's group, whether it is new or reused: after
/// the operator changes `state_mode` or the service's group, a restart or reload
/// must not leave the old access in place (readers that have it open keep reading).
fn set_access(file: &File, path: &Path, mode: u32) -> Result<(), WriterError> {
    let gid = nix::unistd::getegid().as_raw();
    if file.metadata().map_err(io_err(path, "fstat"))?.gid() != gid {
        std::os::unix::fs::fchown(file, None, Some(gid)).map_err(io_err(path, "chown"))?;
    }
    // Explicitly: the umask may have cleared bits the operator asked for.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io_err(path, "chmod"))
}

/// Builds a complete new file under a temporary name next to `path` and renames it
/// into place. Returns the open file.
fn create(
    path: &Path,
    tables: &Tables,
    count: usize,
    initial: &RecordValues,
    mode: u32,
) -> Result<File, WriterError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| WriterError::NotRegular {
        path: path.to_owned(),
        kind: "directory",
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    // A leftover from a writer that crashed mid-creation under the same pid.
    let _ = std::fs::remove_file(&tmp);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(io_err(&tmp, "create"))?;
    let result = (|| {
        set_access(&file, &tmp, mode)?;
        nix::fcntl::posix_fallocate(&file, 0, FILE_SIZE as i64)
            .map_err(|e| io_err(&tmp, "posix_fallocate")(e.into()))?;
        let (_, wall) = now_ns();
        let header = Header::new(count as u32, wall);
        file.write_all_at(&header.encode(), 0)
            .map_err(io_err(&tmp, "write"))?;
        let mut record = Vec::with_capacity(RECORD_WORDS * 8);
        record.extend_from_slice(&0u64.to_ne_bytes());
        for w in initial.to_words() {
            record.extend_from_slice(&w.to_ne_bytes());
        }
        file.write_all_at(&record, u64::from(RECORD_OFFSET))
            .map_err(io_err(&tmp, "write"))?;
        file.write_all_at(&tables.aliases, u64::from(header.aliases_offset))
            .map_err(io_err(&tmp, "write"))?;
        file.write_all_at(&tables.addresses, u64::from(header.addresses_offset))
            .map_err(io_err(&tmp, "write"))?;
        std::fs::rename(&tmp, path).map_err(io_err(path, "rename"))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| file)
}

impl StateFile {
    /// Takes the writer's lock on `path` and opens the state file there: reuses a
    /// valid file of this layout with the same endpoints, replaces any other valid
    /// one, creates one where there is none. `initial` is what a new file starts
    /// with; a reused file keeps the decision it holds.
    pub fn open(
        path: &Path,
        endpoints: &[Endpoint],
        settings: Settings,
        initial: &Publication,
    ) -> Result<(StateFile, Opened), WriterError> {
        let tables = encode_tables(endpoints)?;
        let lock = take_lock(path)?;
        let (mono, wall) = now_ns();
        let base = RecordValues {
            heartbeat_mono_ns: mono,
            heartbeat_wall_ns: wall,
            stale_after_ns: settings.stale_after_ns,
            writer_pid: std::process::id(),
            ..RecordValues::default()
        };
        let (file, opened) = match inspect(path)? {
            Existing::Valid {
                file,
                header,
                endpoints: old_endpoints,
            } => {
                // Only a file whose header is the one this writer writes is used with
                // this writer's offsets; of any other, only its own record is touched
                // (to flag it superseded), where its own header says it is.
                let ours = header.same_layout(&Header::new(endpoints.len() as u32, 0));
                let (len, record_offset) = if ours {
                    (FILE_SIZE, RECORD_OFFSET)
                } else {
                    let end = u64::from(header.record_offset) + u64::from(RECORD_SIZE);
                    (end, header.record_offset)
                };
                let old_map = map(&file, path, len)?;
                let mut old = StateFile {
                    path: path.to_owned(),
                    values: read_own(&old_map, record_offset as usize),
                    map: old_map,
                    endpoints: old_endpoints,
                    record_offset: record_offset as usize,
                    ours,
                    file,
                    lock,
                };
                if ours && old.endpoints == endpoints {
                    // Same inode, same decision, same epoch: readers carry on. The
                    // access is the configured one, as for a new file. The health
                    // and role masks stay as the previous writer left them, not yet
                    // confirmed: the new writer publishes over them as its probes
                    // conclude.
                    let mut v = old.values;
                    v.heartbeat_mono_ns = mono;
                    v.heartbeat_wall_ns = wall;
                    v.stale_after_ns = settings.stale_after_ns;
                    v.writer_pid = std::process::id();
                    v.flags &= flags::CONFLICT;
                    v.config_generation += 1;
                    set_access(&old.file, path, settings.mode)?;
                    old.store(v);
                    // The previous writer's probe results and lags are as
                    // unknown to this one as its health masks; its fences are
                    // kept, for the agent to take over.
                    old.clear_details();
                    return Ok((old, Opened::Reused));
                }
                old.replace(endpoints, &tables, settings, initial)?;
                return Ok((old, Opened::Replaced));
            }
            Existing::Nothing => {
                let values = with_publication(
                    RecordValues {
                        epoch: 1,
                        config_generation: 1,
                        ..base
                    },
                    initial,
                );
                let file = create(path, &tables, endpoints.len(), &values, settings.mode)?;
                (file, Opened::Created)
            }
        };
        let map = map(&file, path, FILE_SIZE)?;
        let values = read_own(&map, RECORD_OFFSET as usize);
        Ok((
            StateFile {
                path: path.to_owned(),
                map,
                endpoints: endpoints.to_vec(),
                values,
                record_offset: RECORD_OFFSET as usize,
                ours: true,
                file,
                lock,
            },
            opened,
        ))
    }

    /// Applies a new configuration. Same endpoints: the settings change in place
    /// and the config generation goes up. Other endpoints (an alias or an address
    /// changed): a new file replaces this one (see [`Opened::Replaced`]), starting
    /// from `initial`.
    pub fn reconfigure(
        &mut self,
        endpoints: &[Endpoint],
        settings: Settings,
        initial: &Publication,
    ) -> Result<Opened, WriterError> {
        let tables = encode_tables(endpoints)?;
        if self.endpoints == endpoints {
            set_access(&self.file, &self.path, settings.mode)?;
            let mut v = self.values;
            v.stale_after_ns = settings.stale_after_ns;
            v.config_generation += 1;
            self.store(v);
            return Ok(Opened::Reused);
        }
        self.replace(endpoints, &tables, settings, initial)?;
        Ok(Opened::Replaced)
    }

    /// Puts the state file and its lock file back when something removed them from
    /// their paths under the running writer (`rm`, a tmpfiles clean of /run):
    /// a new file with the same tables and the current decision (same epoch) takes
    /// the path, and readers of the removed one are told to move to it. Returns
    /// what was restored, for the log; does nothing while both paths name this
    /// writer's files, or when another file now stands at the state path (never
    /// overwritten: the caller is told).
    pub fn restore(&mut self, settings: Settings) -> Result<Restored, WriterError> {
        let lock = lock_path(&self.path);
        let mut restored = Restored::default();
        if !names(&lock, &self.lock).map_err(io_err(&lock, "stat"))? {
            // Ours again before anything else: the new lock is taken, then the old
            // one closed (releasing its lock on the unlinked inode).
            self.lock = take_lock(&self.path)?;
            restored.lock = true;
        }
        if names(&self.path, &self.file).map_err(io_err(&self.path, "stat"))? {
            return Ok(restored);
        }
        match std::fs::symlink_metadata(&self.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&self.path, "stat")(e)),
            Ok(_) => {
                restored.elsewhere = true;
                return Ok(restored);
            }
        }
        let tables = encode_tables(&self.endpoints)?;
        let mut values = self.values;
        values.flags &= !(flags::SUPERSEDED | flags::STOPPED);
        self.move_to_new_file(&tables, self.endpoints.len(), &values, settings)?;
        restored.state = true;
        Ok(restored)
    }

    /// Creates a complete new file at the path with `values` (see `create`), maps
    /// it, and only then flags the file this writer had SUPERSEDED, so that its
    /// readers move to the new one; from here on this writer writes the new file.
    fn move_to_new_file(
        &mut self,
        tables: &Tables,
        count: usize,
        values: &RecordValues,
        settings: Settings,
    ) -> Result<(), WriterError> {
        let file = create(&self.path, tables, count, values, settings.mode)?;
        let new_map = map(&file, &self.path, FILE_SIZE)?;
        let mut old = self.values;
        old.flags |= flags::SUPERSEDED;
        self.store(old);
        self.map = new_map;
        self.file = file;
        self.record_offset = RECORD_OFFSET as usize;
        self.ours = true;
        self.values = read_own(&self.map, self.record_offset);
        Ok(())
    }

    fn replace(
        &mut self,
        endpoints: &[Endpoint],
        tables: &Tables,
        settings: Settings,
        initial: &Publication,
    ) -> Result<(), WriterError> {
        let (mono, wall) = now_ns();
        let values = with_publication(
            RecordValues {
                // Index meanings change with the aliases, so this is a new decision.
                epoch: self.values.epoch + 1,
                heartbeat_mono_ns: mono,
                heartbeat_wall_ns: wall,
                stale_after_ns: settings.stale_after_ns,
                writer_pid: std::process::id(),
                config_generation: self.values.config_generation + 1,
                ..RecordValues::default()
            },
            initial,
        );
        self.move_to_new_file(tables, endpoints.len(), &values, settings)?;
        self.endpoints = endpoints.to_vec();
        Ok(())
    }

    /// Publishes a decision with a fresh heartbeat. The epoch goes up by one exactly
    /// when the write or read index differs from the published one. Returns the new
    /// epoch when it did.
    pub fn publish(&mut self, p: &Publication) -> Option<u64> {
        let (mono, wall) = now_ns();
        let mut v = with_publication(self.values, p);
        v.heartbeat_mono_ns = mono;
        v.heartbeat_wall_ns = wall;
        let changed =
            (v.write_index, v.read_index) != (self.values.write_index, self.values.read_index);
        if changed {
            v.epoch += 1;
        }
        self.store(v);
        changed.then_some(v.epoch)
    }

    /// Marks the file "agent stopped" (readers report AgentStopped). Called on a
    /// clean shutdown; the next agent on this path clears it.
    pub fn mark_stopped(&mut self) {
        let mut v = self.values;
        v.flags |= flags::STOPPED;
        self.store(v);
    }

    /// Records the kind of endpoint `index`'s last probe result (a
    /// [`crate::probe_result`] constant). Outside the seqlock: each byte stands alone,
    /// for display.
    pub fn set_probe_result(&mut self, index: usize, kind: u8) {
        if !self.ours || index >= crate::DETAILS_SIZE as usize {
            return;
        }
        // A file of this writer's own layout is mapped FILE_SIZE bytes, which
        // holds the area; checked again all the same.
        let Some(words) = crate::mapping::probe_results(&self.map, DETAILS_OFFSET as usize) else {
            return;
        };
        let word = &words[index / 8];
        // The single writer is the only one to store: a relaxed read-modify-write.
        let mut bytes = word.load(Ordering::Relaxed).to_ne_bytes();
        bytes[index % 8] = kind;
        word.store(u64::from_ne_bytes(bytes), Ordering::Relaxed);
    }

    /// Records endpoint `index`'s replication lag, for display. Outside the
    /// seqlock: each word stands alone.
    pub fn set_lag(&mut self, index: usize, lag: &ReplicaLag) {
        self.update_slot(index, |w| lag.onto(w));
    }

    /// Records whether endpoint `index` is fenced and its timeline as a primary,
    /// which the next writer on this file takes over (see [`StateFile::fence`]).
    pub fn set_fence(&mut self, index: usize, fence: &Fence) {
        self.update_slot(index, |w| fence.onto(w));
    }

    /// Records whether the agent's verdict on endpoint `index` is down (see
    /// [`crate::lag::flags::DOWN`]), for display.
    pub fn set_down(&mut self, index: usize, down: bool) {
        use crate::lag::{flags::DOWN, word::FLAGS};
        self.update_slot(index, |mut w| {
            w[FLAGS] = (w[FLAGS] & !DOWN) | if down { DOWN } else { 0 };
            w
        });
    }

    /// Endpoint `index`'s fence as last recorded; a reused file has the previous
    /// writer's.
    pub fn fence(&self, index: usize) -> Fence {
        self.slot(index)
            .map(|slot| {
                Fence::from_words(&std::array::from_fn(|i| slot[i].load(Ordering::Relaxed)))
            })
            .unwrap_or_default()
    }

    fn slot(&self, index: usize) -> Option<&[AtomicU64; 4]> {
        if !self.ours || index >= MAX_ENDPOINTS as usize {
            return None;
        }
        crate::mapping::lag_slot(&self.map, LAG_OFFSET as usize, index)
    }

    /// Rewrites endpoint `index`'s lag slot as `f` says. The single writer is the
    /// only one to store: relaxed loads and stores.
    fn update_slot(&mut self, index: usize, f: impl FnOnce([u64; 4]) -> [u64; 4]) {
        let Some(slot) = self.slot(index) else {
            return;
        };
        let now: [u64; 4] = std::array::from_fn(|i| slot[i].load(Ordering::Relaxed));
        for (w, (old, new)) in slot.iter().zip(now.iter().zip(f(now))) {
            // Unchanged words are not stored again: most probes change nothing.
            if *old != new {
                w.store(new, Ordering::Relaxed);
            }
        }
    }

    /// Publishes what the agent knows of the DCS it follows (None: it follows
    /// none), for display, under the area's own seqlock; nothing is stored when
    /// the area already says it.
    pub fn set_dcs(&mut self, dcs: Option<&crate::Dcs>) {
        if !self.ours {
            return;
        }
        let Some((seq, data)) = crate::mapping::dcs(&self.map, crate::DCS_OFFSET as usize) else {
            return;
        };
        let words = dcs.map_or([0; DATA_WORDS], crate::Dcs::to_words);
        // The single writer is the only one to store: its relaxed loads see its
        // own stores.
        let now: [u64; DATA_WORDS] = std::array::from_fn(|i| data[i].load(Ordering::Relaxed));
        if now != words {
            seqlock::write(seq, data, &words);
        }
    }

    /// Every probe result unknown and every lag unmeasured, the DCS area
    /// empty; fences are kept (the agent's memory across its restarts).
    fn clear_details(&mut self) {
        self.set_dcs(None);
        for i in 0..MAX_ENDPOINTS as usize {
            self.set_probe_result(i, crate::probe_result::UNKNOWN);
            self.set_lag(i, &ReplicaLag::default());
            self.set_down(i, false);
        }
    }

    /// What was last published.
    pub fn values(&self) -> &RecordValues {
        &self.values
    }

    /// The endpoints of the current file, in index order.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn store(&mut self, values: RecordValues) {
        let (seq, data) = record(&self.map, self.record_offset);
        seqlock::write(seq, data, &values.to_words());
        self.values = values;
    }
}

fn with_publication(mut v: RecordValues, p: &Publication) -> RecordValues {
    v.write_index = p.write_index;
    v.read_index = p.read_index;
    v.health_mask = p.health_mask;
    v.primary_mask = p.primary_mask;
    v.standby_mask = p.standby_mask;
    v.flags = (v.flags & !flags::CONFLICT) | if p.conflict { flags::CONFLICT } else { 0 };
    v
}

/// The record at `offset` inside a read-write mapping.
fn record(map: &MmapRaw, offset: usize) -> (&AtomicU64, &[AtomicU64; DATA_WORDS]) {
    // The writer maps every file it keeps at least to the end of its record (see
    // `map` calls): a record outside the mapping is a bug here, not bad input.
    crate::mapping::record(map, offset)
        .unwrap_or_else(|| panic!("record at {offset} outside a {}-byte mapping", map.len()))
}

/// Reads the record of a mapping this process is about to own as the writer.
fn read_own(map: &MmapRaw, offset: usize) -> RecordValues {
    let (_, data) = record(map, offset);
    RecordValues::from_words(&std::array::from_fn(|i| data[i].load(Ordering::Relaxed)))
}
