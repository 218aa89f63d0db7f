//! The dbha state file: its byte layout and the seqlock that guards it.
//!
//! This crate is what every reader and the single writer must agree on; `LAYOUT.md`
//! next to it is the normative, language-neutral description and this code follows
//! it. It holds no I/O policy and no logging. The optional `writer` feature adds the
//! writer's side of the file life cycle (create, reuse, supersede, lock, publish),
//! which only the agent and the tests need.

#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod dcs;
pub mod header;
pub mod lag;
#[cfg(not(loom))]
pub mod mapping;
pub mod record;
pub mod seqlock;
#[cfg(feature = "writer")]
pub mod writer;

pub use dcs::Dcs;
pub use header::{Endpoint, Header, HeaderError};
pub use lag::{Fence, ReplicaLag};
pub use record::{RecordValues, Status};

/// The first eight bytes of every state file.
pub const MAGIC: [u8; 8] = *b"DBHASTAT";
/// The layout version this crate reads and writes. Readers accept only this value.
pub const LAYOUT_VERSION: u32 = 1;
/// Size of the fixed header at offset 0.
pub const HEADER_SIZE: u32 = 128;
/// Offset of the seqlocked record: its own 128-byte line.
pub const RECORD_OFFSET: u32 = 128;
/// Size of the record: 16 little 64-bit words (one sequence word and 15 data words).
pub const RECORD_SIZE: u32 = 128;
/// Offset of the alias table.
pub const ALIASES_OFFSET: u32 = 256;
/// Bytes per alias slot, terminating NUL included.
pub const ALIAS_WIDTH: u32 = 64;
/// Most endpoints one file describes (one bit each in the 64-bit masks).
pub const MAX_ENDPOINTS: u32 = 64;
/// The longest alias, in bytes.
pub const MAX_ALIAS_LEN: usize = ALIAS_WIDTH as usize - 1;
/// Offset of the probe results: one byte per endpoint after the full alias table.
pub const DETAILS_OFFSET: u32 = ALIASES_OFFSET + MAX_ENDPOINTS * ALIAS_WIDTH;
/// Size of the probe results (one byte per possible endpoint).
pub const DETAILS_SIZE: u32 = MAX_ENDPOINTS;
/// Offset of the replication-lag area, right after the probe results.
pub const LAG_OFFSET: u32 = DETAILS_OFFSET + DETAILS_SIZE;
/// Bytes per endpoint in the replication-lag area: four 64-bit words.
pub const LAG_WIDTH: u32 = 32;
/// Size of the replication-lag area (one slot per possible endpoint).
pub const LAG_SIZE: u32 = MAX_ENDPOINTS * LAG_WIDTH;
/// Offset of the DCS area, right after the replication-lag area.
pub const DCS_OFFSET: u32 = LAG_OFFSET + LAG_SIZE;
/// Size of the DCS area: sixteen 64-bit words, a sequence word and 15 data words.
pub const DCS_SIZE: u32 = 128;
/// Offset of the address table, after the first two pages (header, record, alias
/// table, probe results, replication lag). Files written before addresses existed
/// end there.
pub const ADDRESSES_OFFSET: u32 = 8192;
/// Bytes per address slot: a 16-bit port, then the host, NUL-terminated.
pub const ADDRESS_WIDTH: u32 = 256;
/// The longest host, in bytes: a full DNS name (253), which also holds any IP literal.
pub const MAX_HOST_LEN: usize = ADDRESS_WIDTH as usize - 3;
/// Size of a version 1 file as this crate writes it: header, record, a full alias
/// table, the probe results and a full address table, in whole pages of 4 KiB so
/// that a mapping never ends inside a partial page.
pub const FILE_SIZE: u64 = ADDRESSES_OFFSET as u64 + (MAX_ENDPOINTS * ADDRESS_WIDTH) as u64;
/// The endpoint index meaning "no endpoint".
pub const NONE: u32 = u32::MAX;

/// Number of 64-bit words in the record, sequence word included.
pub const RECORD_WORDS: usize = (RECORD_SIZE / 8) as usize;
/// Number of data words (every word after the sequence word).
pub const DATA_WORDS: usize = RECORD_WORDS - 1;

/// The kind of an endpoint's last probe result, one byte each in the details area.
pub mod probe_result {
    /// Not probed yet (or a writer that does not report it).
    pub const UNKNOWN: u8 = 0;
    /// The endpoint answered as healthy.
    pub const OK: u8 = 1;
    /// Connection refused.
    pub const REFUSED: u8 = 2;
    /// No answer within the probe's timeout.
    pub const TIMEOUT: u8 = 3;
    /// SQLSTATE 57P03: starting up, shutting down, in recovery.
    pub const NOT_READY: u8 = 4;
    /// Something answered that is not PostgreSQL.
    pub const NOT_POSTGRES: u8 = 5;
    /// The configured credentials were rejected.
    pub const AUTH_FAILED: u8 = 6;
    /// The server refused the session for another reason.
    pub const REJECTED: u8 = 7;
    /// The host name did not resolve.
    pub const RESOLVE: u8 = 8;
    /// The server closed the connection before answering.
    pub const CLOSED: u8 = 9;
    /// Another network error.
    pub const IO: u8 = 10;
    /// TLS could not be negotiated as the configured `sslmode` requires (no TLS
    /// offered, a certificate not trusted or not for this host).
    pub const TLS: u8 = 11;
    /// A held session answers, but the server admits no new connection (a
    /// frozen postmaster, or 53300 "too many clients").
    pub const NO_NEW_CONNECTIONS: u8 = 12;
    /// Something answered that is not Patroni's REST API (the `patroni` check).
    pub const NOT_PATRONI: u8 = 13;
    /// Something answered that is not a MySQL or MariaDB server (the `mysql`
    /// check).
    pub const NOT_MYSQL: u8 = 14;
    /// The MySQL server blocks this host (error 1129, too many aborted
    /// connections from it: `FLUSH HOSTS` clears it).
    pub const HOST_BLOCKED: u8 = 15;

    /// The stable name of a kind (as `dbha-agent status` prints it).
    pub fn name(kind: u8) -> &'static str {
        match kind {
            OK => "ok",
            REFUSED => "refused",
            TIMEOUT => "timeout",
            NOT_READY => "not_ready",
            NOT_POSTGRES => "not_postgres",
            AUTH_FAILED => "auth_failed",
            REJECTED => "rejected",
            RESOLVE => "resolve",
            CLOSED => "closed",
            IO => "io",
            TLS => "tls",
            NO_NEW_CONNECTIONS => "no_new_connections",
            NOT_PATRONI => "not_patroni",
            NOT_MYSQL => "not_mysql",
            HOST_BLOCKED => "host_blocked",
            _ => "unknown",
        }
    }
}

/// Bits of the record's `flags` word.
pub mod flags {
    /// The agent stopped cleanly and no longer updates this file.
    pub const STOPPED: u64 = 1 << 0;
    /// Two or more endpoints claim to be primary at once.
    pub const CONFLICT: u64 = 1 << 1;
    /// A newer file has replaced this one at the same path: reopen the path.
    pub const SUPERSEDED: u64 = 1 << 2;
    /// Every flag this version defines; readers ignore the other bits.
    pub const KNOWN: u64 = STOPPED | CONFLICT | SUPERSEDED;
}
