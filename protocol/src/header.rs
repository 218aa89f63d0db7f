//! The fixed header, the alias table and the address table: written once before the
//! file becomes visible under its name, never changed afterwards, so readers copy
//! them out with ordinary reads at open time and never touch them through the
//! mapping.

use crate::{
    ADDRESSES_OFFSET, ADDRESS_WIDTH, ALIASES_OFFSET, ALIAS_WIDTH, DCS_OFFSET, DCS_SIZE,
    DETAILS_OFFSET, DETAILS_SIZE, FILE_SIZE, HEADER_SIZE, LAG_OFFSET, LAG_WIDTH, LAYOUT_VERSION,
    MAGIC, MAX_ALIAS_LEN, MAX_ENDPOINTS, MAX_HOST_LEN, RECORD_OFFSET, RECORD_SIZE,
};
use std::fmt;

/// The decoded header of a state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Layout version; see [`LAYOUT_VERSION`].
    pub layout_version: u32,
    /// Size of the fixed header in bytes (at least [`HEADER_SIZE`]).
    pub header_size: u32,
    /// The size the file has (readers check the real size is at least this).
    pub file_size: u64,
    /// Where the seqlocked record starts.
    pub record_offset: u32,
    /// Size of the record in bytes.
    pub record_size: u32,
    /// Where the alias table starts.
    pub aliases_offset: u32,
    /// Bytes per alias slot.
    pub alias_width: u32,
    /// Number of endpoints, 0 to [`MAX_ENDPOINTS`].
    pub endpoint_count: u32,
    /// Where the per-endpoint probe results are; 0 when the file has none.
    pub details_offset: u32,
    /// Wall-clock time the file was created, nanoseconds since the Unix epoch.
    pub created_wall_ns: u64,
    /// Where the address table is; 0 when the file has none.
    pub addresses_offset: u32,
    /// Bytes per address slot ([`ADDRESS_WIDTH`] when there is a table, else 0).
    pub address_width: u32,
    /// Where the replication-lag area is; 0 when the file has none.
    pub lag_offset: u32,
    /// Bytes per replication-lag slot ([`LAG_WIDTH`] when there is an area, else 0).
    pub lag_width: u32,
    /// Where the DCS area is; 0 when the file has none.
    pub dcs_offset: u32,
    /// Size of the DCS area ([`DCS_SIZE`] when there is one, else 0).
    pub dcs_size: u32,
}

/// Why a byte buffer is not a header this version understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer bytes than the part of the header that was needed.
    Truncated {
        /// Bytes needed.
        needed: u64,
        /// Bytes there are.
        have: u64,
    },
    /// The first eight bytes are not [`MAGIC`].
    BadMagic,
    /// A layout version other than [`LAYOUT_VERSION`].
    UnsupportedVersion(u32),
    /// A field holds a value no valid writer produces.
    Corrupt(String),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Truncated { needed, have } => {
                write!(f, "is truncated ({have} bytes, at least {needed} needed)")
            }
            HeaderError::BadMagic => f.write_str("is not a dbha state file (bad magic)"),
            HeaderError::UnsupportedVersion(v) => write!(
                f,
                "has layout version {v}, this reader supports {LAYOUT_VERSION}"
            ),
            HeaderError::Corrupt(what) => write!(f, "is corrupt: {what}"),
        }
    }
}

impl std::error::Error for HeaderError {}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().expect("4-byte slice"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().expect("8-byte slice"))
}

impl Header {
    /// A version 1 header for `endpoint_count` endpoints.
    pub fn new(endpoint_count: u32, created_wall_ns: u64) -> Header {
        Header {
            layout_version: LAYOUT_VERSION,
            header_size: HEADER_SIZE,
            file_size: FILE_SIZE,
            record_offset: RECORD_OFFSET,
            record_size: RECORD_SIZE,
            aliases_offset: ALIASES_OFFSET,
            alias_width: ALIAS_WIDTH,
            endpoint_count,
            details_offset: DETAILS_OFFSET,
            created_wall_ns,
            addresses_offset: ADDRESSES_OFFSET,
            address_width: ADDRESS_WIDTH,
            lag_offset: LAG_OFFSET,
            lag_width: LAG_WIDTH,
            dcs_offset: DCS_OFFSET,
            dcs_size: DCS_SIZE,
        }
    }

    /// The header's bytes, native endian, reserved bytes zero.
    pub fn encode(&self) -> [u8; HEADER_SIZE as usize] {
        let mut b = [0u8; HEADER_SIZE as usize];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.layout_version.to_ne_bytes());
        b[12..16].copy_from_slice(&self.header_size.to_ne_bytes());
        b[16..24].copy_from_slice(&self.file_size.to_ne_bytes());
        b[24..28].copy_from_slice(&self.record_offset.to_ne_bytes());
        b[28..32].copy_from_slice(&self.record_size.to_ne_bytes());
        b[32..36].copy_from_slice(&self.aliases_offset.to_ne_bytes());
        b[36..40].copy_from_slice(&self.alias_width.to_ne_bytes());
        b[40..44].copy_from_slice(&self.endpoint_count.to_ne_bytes());
        b[44..48].copy_from_slice(&self.details_offset.to_ne_bytes());
        b[48..56].copy_from_slice(&self.created_wall_ns.to_ne_bytes());
        b[56..60].copy_from_slice(&self.addresses_offset.to_ne_bytes());
        b[60..64].copy_from_slice(&self.address_width.to_ne_bytes());
        b[64..68].copy_from_slice(&self.lag_offset.to_ne_bytes());
        b[68..72].copy_from_slice(&self.lag_width.to_ne_bytes());
        b[72..76].copy_from_slice(&self.dcs_offset.to_ne_bytes());
        b[76..80].copy_from_slice(&self.dcs_size.to_ne_bytes());
        b
    }

    /// Decodes and validates a header, in the order LAYOUT.md prescribes: magic,
    /// then version, then sizes and offsets. `bytes` is the start of the file
    /// (possibly shorter than a header when the file is truncated).
    pub fn decode(bytes: &[u8]) -> Result<Header, HeaderError> {
        let have = bytes.len() as u64;
        let need = |n: usize| -> Result<(), HeaderError> {
            if bytes.len() < n {
                Err(HeaderError::Truncated {
                    needed: n as u64,
                    have,
                })
            } else {
                Ok(())
            }
        };
        need(8)?;
        if bytes[0..8] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        need(12)?;
        let layout_version = u32_at(bytes, 8);
        if layout_version != LAYOUT_VERSION {
            return Err(HeaderError::UnsupportedVersion(layout_version));
        }
        need(HEADER_SIZE as usize)?;
        let h = Header {
            layout_version,
            header_size: u32_at(bytes, 12),
            file_size: u64_at(bytes, 16),
            record_offset: u32_at(bytes, 24),
            record_size: u32_at(bytes, 28),
            aliases_offset: u32_at(bytes, 32),
            alias_width: u32_at(bytes, 36),
            endpoint_count: u32_at(bytes, 40),
            details_offset: u32_at(bytes, 44),
            created_wall_ns: u64_at(bytes, 48),
            addresses_offset: u32_at(bytes, 56),
            address_width: u32_at(bytes, 60),
            lag_offset: u32_at(bytes, 64),
            lag_width: u32_at(bytes, 68),
            dcs_offset: u32_at(bytes, 72),
            dcs_size: u32_at(bytes, 76),
        };
        h.validate()?;
        Ok(h)
    }

    fn validate(&self) -> Result<(), HeaderError> {
        let corrupt = |s: String| Err(HeaderError::Corrupt(s));
        if self.header_size < HEADER_SIZE {
            return corrupt(format!("header size {} < {HEADER_SIZE}", self.header_size));
        }
        if self.record_size < RECORD_SIZE {
            return corrupt(format!("record size {} < {RECORD_SIZE}", self.record_size));
        }
        if !self.record_offset.is_multiple_of(128) || self.record_offset < self.header_size {
            return corrupt(format!(
                "record offset {} is not a multiple of 128 after the header",
                self.record_offset
            ));
        }
        if self.alias_width != ALIAS_WIDTH {
            return corrupt(format!(
                "alias width {} (expected {ALIAS_WIDTH})",
                self.alias_width
            ));
        }
        if self.endpoint_count > MAX_ENDPOINTS {
            return corrupt(format!(
                "endpoint count {} > {MAX_ENDPOINTS}",
                self.endpoint_count
            ));
        }
        let record_end = u64::from(self.record_offset) + u64::from(self.record_size);
        if u64::from(self.aliases_offset) < record_end {
            return corrupt(format!(
                "alias table at {} overlaps the record",
                self.aliases_offset
            ));
        }
        self.area(
            "probe-results area",
            self.details_offset,
            self.details_end(),
            self.aliases_end(),
            "the alias table",
        )?;
        if self.file_size < self.aliases_end() {
            return corrupt(format!(
                "file size {} < end of alias table {}",
                self.file_size,
                self.aliases_end()
            ));
        }
        if self.lag_offset != 0 && self.lag_width != LAG_WIDTH {
            return corrupt(format!(
                "replication-lag width {} (expected {LAG_WIDTH})",
                self.lag_width
            ));
        }
        self.area(
            "replication-lag area",
            self.lag_offset,
            self.lag_end(),
            self.aliases_end().max(self.details_end()),
            "the alias table and probe results",
        )?;
        if self.dcs_offset != 0 && self.dcs_size != DCS_SIZE {
            return corrupt(format!(
                "DCS area size {} (expected {DCS_SIZE})",
                self.dcs_size
            ));
        }
        self.area(
            "DCS area",
            self.dcs_offset,
            self.dcs_end(),
            self.aliases_end()
                .max(self.details_end())
                .max(self.lag_end()),
            "the alias table, probe results and replication lag",
        )?;
        if self.addresses_offset != 0 && self.address_width != ADDRESS_WIDTH {
            return corrupt(format!(
                "address width {} (expected {ADDRESS_WIDTH})",
                self.address_width
            ));
        }
        self.area(
            "address table",
            self.addresses_offset,
            self.addresses_end(),
            self.aliases_end()
                .max(self.details_end())
                .max(self.lag_end())
                .max(self.dcs_end()),
            "the alias table, probe results, replication lag and DCS area",
        )
    }

    /// An optional area (`offset` 0: the file has none) starts at a multiple of 8,
    /// at or after `after`, the end of what must precede it (`precedes`), and
    /// ends (`end`) inside the file.
    fn area(
        &self,
        what: &str,
        offset: u32,
        end: u64,
        after: u64,
        precedes: &str,
    ) -> Result<(), HeaderError> {
        if offset != 0
            && (!offset.is_multiple_of(8) || u64::from(offset) < after || end > self.file_size)
        {
            return Err(HeaderError::Corrupt(format!(
                "{what} at {offset} is not an aligned area after {precedes} inside the file"
            )));
        }
        Ok(())
    }

    /// Offset one past the probe results (0 when the file has none).
    pub fn details_end(&self) -> u64 {
        if self.details_offset == 0 {
            return 0;
        }
        u64::from(self.details_offset) + u64::from(DETAILS_SIZE)
    }

    /// Offset one past the last replication-lag slot in use (0 when the file has
    /// no lag area).
    pub fn lag_end(&self) -> u64 {
        if self.lag_offset == 0 {
            return 0;
        }
        u64::from(self.lag_offset) + u64::from(self.endpoint_count) * u64::from(self.lag_width)
    }

    /// Offset one past the DCS area (0 when the file has none).
    pub fn dcs_end(&self) -> u64 {
        if self.dcs_offset == 0 {
            return 0;
        }
        u64::from(self.dcs_offset) + u64::from(self.dcs_size)
    }

    /// Offset one past the last address slot (0 when the file has no address table).
    pub fn addresses_end(&self) -> u64 {
        if self.addresses_offset == 0 {
            return 0;
        }
        u64::from(self.addresses_offset)
            + u64::from(self.endpoint_count) * u64::from(self.address_width)
    }

    /// True when `self` describes the same layout as `other`: every field but the
    /// creation time. A writer reuses a file in place only when its header is the
    /// one the writer would write.
    pub fn same_layout(&self, other: &Header) -> bool {
        Header {
            created_wall_ns: 0,
            ..self.clone()
        } == Header {
            created_wall_ns: 0,
            ..other.clone()
        }
    }

    /// Offset one past the last alias slot.
    pub fn aliases_end(&self) -> u64 {
        u64::from(self.aliases_offset)
            + u64::from(self.endpoint_count) * u64::from(self.alias_width)
    }
}

/// Encodes an alias into its fixed-width, NUL-padded slot. `None` when the alias is
/// empty, too long, or contains a NUL byte.
pub fn encode_alias(alias: &str) -> Option<[u8; ALIAS_WIDTH as usize]> {
    if alias.is_empty() || alias.len() > MAX_ALIAS_LEN || alias.as_bytes().contains(&0) {
        return None;
    }
    let mut slot = [0u8; ALIAS_WIDTH as usize];
    slot[..alias.len()].copy_from_slice(alias.as_bytes());
    Some(slot)
}

/// What the file says about one endpoint: the name the application uses for it and
/// the address (host and port from the agent's configuration) it connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The name applications use (a Django `DATABASES` key).
    pub alias: String,
    /// A host name or an IP address, as configured; the application resolves it.
    pub host: String,
    /// The TCP port.
    pub port: u16,
}

impl Endpoint {
    /// An endpoint from its parts.
    pub fn new(alias: impl Into<String>, host: impl Into<String>, port: u16) -> Endpoint {
        Endpoint {
            alias: alias.into(),
            host: host.into(),
            port,
        }
    }
}

/// Encodes an address into its fixed-width slot: the port (u16, native endian), then
/// the host, NUL-terminated and NUL-padded. `None` when the host is empty, longer
/// than [`MAX_HOST_LEN`] or contains a NUL byte, or the port is 0.
pub fn encode_address(host: &str, port: u16) -> Option<[u8; ADDRESS_WIDTH as usize]> {
    if host.is_empty() || host.len() > MAX_HOST_LEN || host.as_bytes().contains(&0) || port == 0 {
        return None;
    }
    let mut slot = [0u8; ADDRESS_WIDTH as usize];
    slot[0..2].copy_from_slice(&port.to_ne_bytes());
    slot[2..2 + host.len()].copy_from_slice(host.as_bytes());
    Some(slot)
}

/// Slot `i` of a table of `width`-byte slots.
fn slot<'t>(table: &'t [u8], width: usize, i: usize, what: &str) -> Result<&'t [u8], HeaderError> {
    table
        .get(i * width..(i + 1) * width)
        .ok_or_else(|| HeaderError::Corrupt(format!("{what} table ends before slot {i}")))
}

/// The non-empty UTF-8 string that `bytes` holds before its first NUL.
fn nul_terminated<'b>(bytes: &'b [u8], what: &str, i: usize) -> Result<&'b str, HeaderError> {
    let len = bytes
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| HeaderError::Corrupt(format!("{what} {i} is not NUL-terminated")))?;
    if len == 0 {
        return Err(HeaderError::Corrupt(format!("{what} {i} is empty")));
    }
    std::str::from_utf8(&bytes[..len])
        .map_err(|_| HeaderError::Corrupt(format!("{what} {i} is not UTF-8")))
}

/// Decodes the address table (`table` holds `count` slots of [`ADDRESS_WIDTH`]
/// bytes) into (host, port) pairs.
pub fn decode_addresses(table: &[u8], count: u32) -> Result<Vec<(String, u16)>, HeaderError> {
    (0..count as usize)
        .map(|i| {
            let slot = slot(table, ADDRESS_WIDTH as usize, i, "address")?;
            let port = u16::from_ne_bytes([slot[0], slot[1]]);
            if port == 0 {
                return Err(HeaderError::Corrupt(format!("address {i} has port 0")));
            }
            Ok((nul_terminated(&slot[2..], "host", i)?.to_owned(), port))
        })
        .collect()
}

/// Decodes the alias table (`table` holds `count` slots of [`ALIAS_WIDTH`] bytes).
pub fn decode_aliases(table: &[u8], count: u32) -> Result<Vec<String>, HeaderError> {
    (0..count as usize)
        .map(|i| {
            let slot = slot(table, ALIAS_WIDTH as usize, i, "alias")?;
            Ok(nul_terminated(slot, "alias", i)?.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = Header::new(3, 42);
        assert_eq!(Header::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn every_truncation_of_the_header_is_reported_as_truncated_or_bad_magic() {
        let bytes = Header::new(3, 42).encode();
        for n in 0..bytes.len() {
            match Header::decode(&bytes[..n]) {
                Err(HeaderError::Truncated { have, .. }) => assert_eq!(have, n as u64),
                other => panic!("truncated at {n}: {other:?}"),
            }
        }
    }

    #[test]
    fn newer_version_is_refused_by_number() {
        let mut bytes = Header::new(3, 42).encode();
        bytes[8..12].copy_from_slice(&3u32.to_ne_bytes());
        let e = Header::decode(&bytes).unwrap_err();
        assert_eq!(e, HeaderError::UnsupportedVersion(3));
        assert_eq!(
            e.to_string(),
            "has layout version 3, this reader supports 1"
        );
    }

    #[test]
    fn too_many_endpoints_is_corrupt() {
        let mut bytes = Header::new(3, 42).encode();
        bytes[40..44].copy_from_slice(&65u32.to_ne_bytes());
        assert!(matches!(
            Header::decode(&bytes),
            Err(HeaderError::Corrupt(_))
        ));
    }

    #[test]
    fn a_header_without_addresses_is_valid_and_a_misplaced_table_is_corrupt() {
        // Files written before the address table existed have zeros there.
        let mut bytes = Header::new(3, 42).encode();
        bytes[56..64].fill(0);
        let h = Header::decode(&bytes).unwrap();
        assert_eq!((h.addresses_offset, h.addresses_end()), (0, 0));
        for (offset, width) in [
            (4096u32, 256u32),
            (8196, 256),
            (8192, 255),
            (FILE_SIZE as u32, 256),
        ] {
            let mut bytes = Header::new(3, 42).encode();
            bytes[56..60].copy_from_slice(&offset.to_ne_bytes());
            bytes[60..64].copy_from_slice(&width.to_ne_bytes());
            assert!(
                matches!(Header::decode(&bytes), Err(HeaderError::Corrupt(_))),
                "addresses at {offset} width {width}"
            );
        }
    }

    #[test]
    fn a_header_without_a_lag_area_is_valid_and_a_misplaced_area_is_corrupt() {
        // Files written before the lag area existed have zeros there.
        let mut bytes = Header::new(3, 42).encode();
        bytes[64..72].fill(0);
        let h = Header::decode(&bytes).unwrap();
        assert_eq!((h.lag_offset, h.lag_end()), (0, 0));
        let h = Header::new(64, 42);
        assert_eq!(h.lag_end(), u64::from(LAG_OFFSET + 64 * LAG_WIDTH));
        assert!(h.lag_end() <= u64::from(ADDRESSES_OFFSET));
        for (offset, width) in [
            // Inside the alias table, inside the probe results, unaligned.
            (4096u32, 32u32),
            (DETAILS_OFFSET + 8, 32),
            (LAG_OFFSET + 4, 32),
            // Another width; running into the address table; past the file.
            (LAG_OFFSET, 24),
            (ADDRESSES_OFFSET - 64, 32),
            (FILE_SIZE as u32 - 32, 32),
        ] {
            let mut bytes = Header::new(3, 42).encode();
            bytes[64..68].copy_from_slice(&offset.to_ne_bytes());
            bytes[68..72].copy_from_slice(&width.to_ne_bytes());
            assert!(
                matches!(Header::decode(&bytes), Err(HeaderError::Corrupt(_))),
                "lag area at {offset} width {width}"
            );
        }
    }

    #[test]
    fn same_layout_ignores_only_the_creation_time() {
        let h = Header::new(3, 42);
        assert!(h.same_layout(&Header::new(3, 7)));
        assert!(!h.same_layout(&Header::new(2, 42)));
        let old = Header {
            addresses_offset: 0,
            address_width: 0,
            ..Header::new(3, 42)
        };
        assert!(!h.same_layout(&old));
        let no_lag = Header {
            lag_offset: 0,
            lag_width: 0,
            ..Header::new(3, 42)
        };
        assert!(!h.same_layout(&no_lag));
    }

    #[test]
    fn addresses_round_trip_and_bad_slots_are_rejected() {
        let mut table = Vec::new();
        for (h, p) in [("db1.example.com", 5432u16), ("::1", 6543)] {
            table.extend_from_slice(&encode_address(h, p).unwrap());
        }
        assert_eq!(
            decode_addresses(&table, 2).unwrap(),
            [
                ("db1.example.com".to_string(), 5432),
                ("::1".to_string(), 6543)
            ]
        );
        assert!(encode_address("", 5432).is_none());
        assert!(encode_address("db", 0).is_none());
        assert!(encode_address("a\0b", 1).is_none());
        assert!(encode_address(&"h".repeat(MAX_HOST_LEN + 1), 1).is_none());
        let longest = encode_address(&"h".repeat(MAX_HOST_LEN), 1).unwrap();
        assert_eq!(
            decode_addresses(&longest, 1).unwrap()[0].0.len(),
            MAX_HOST_LEN
        );
        let mut unterminated = [b'h'; ADDRESS_WIDTH as usize];
        unterminated[0..2].copy_from_slice(&1u16.to_ne_bytes());
        assert!(decode_addresses(&unterminated, 1).is_err());
        let mut port0 = encode_address("db", 1).unwrap();
        port0[0..2].fill(0);
        assert!(decode_addresses(&port0, 1).is_err());
        assert!(decode_addresses(&table, 3).is_err());
    }

    #[test]
    fn aliases_round_trip_and_bad_slots_are_rejected() {
        let mut table = Vec::new();
        for a in ["default", "failover1"] {
            table.extend_from_slice(&encode_alias(a).unwrap());
        }
        assert_eq!(decode_aliases(&table, 2).unwrap(), ["default", "failover1"]);
        assert!(encode_alias("").is_none());
        assert!(encode_alias(&"x".repeat(64)).is_none());
        assert!(encode_alias(&"x".repeat(63)).is_some());
        let unterminated = [b'a'; 64];
        assert!(decode_aliases(&unterminated, 1).is_err());
        assert!(decode_aliases(&table, 3).is_err());
    }
}
