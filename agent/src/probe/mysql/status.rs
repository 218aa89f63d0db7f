//! The `mysql` check's status query, and what its answer says.
//!
//! One COM_QUERY per probe, two statements in it: the role variables, then the
//! replication status (`SHOW SLAVE STATUS` on MariaDB, `SHOW REPLICA STATUS` on
//! MySQL 8.0.22 and later), read by column name.
//!
//! - Role: primary iff `@@global.read_only = 0` (and on MySQL
//!   `@@global.super_read_only = 0`), standby otherwise. A probe that gets no
//!   answer fails: it never implies read_only.
//! - A standby's replay delay: 0 while both replication threads run and it
//!   has executed all it received; `Seconds_Behind_Master` while they run and
//!   it has not; unknown (over any `max_replica_lag`) when a thread is stopped,
//!   the SQL thread stopped on an error, it replicates from nobody, or the
//!   check's user may not read the replication status. `Seconds_Behind_Master`
//!   alone says 0 while the source is silently gone (until
//!   `slave_net_timeout`) and NULL when the SQL thread stopped; the GTID
//!   position below does not depend on it.
//! - GTID position, as a count of transactions: a primary's
//!   `gtid_current_pos` (MariaDB) or `gtid_executed` (MySQL), a replica's
//!   `gtid_slave_pos` or `gtid_executed`; the agent compares a replica's with
//!   the primary's it measured itself (`max_replica_lag_transactions`).
//! - A replica's backlog: bytes received and not executed
//!   (`Read_Master_Log_Pos - Exec_Master_Log_Pos` while both name the same
//!   binary log; `max_replica_lag_bytes`).

use super::session::Conn;
use crate::probe::{Failure, Role, Up};
use mysql_common::constants::{CapabilityFlags, StatusFlags};
use mysql_common::io::ParseBuf;
use mysql_common::packets::{
    Column, CommonOkPacket, HandshakePacket, OkPacketDeserializer, OldEofPacket,
};
use mysql_common::proto::{MyDeserialize, Text};
use mysql_common::row::RowDeserializer;
use mysql_common::Value;
use std::sync::Arc;
use std::time::Duration;

/// Which server speaks: their variables and statements differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flavor {
    #[default]
    MariaDb,
    /// MySQL, with `SHOW REPLICA STATUS` and its `Source`/`Replica` column
    /// names (8.0.22 and later) or not.
    Mysql { replica_status: bool },
}

impl Flavor {
    /// From the greeting's server version ("5.5.5-10.11.19-MariaDB-0+deb12u1",
    /// "11.4.2-MariaDB", "8.0.36").
    pub fn of(hs: &HandshakePacket<'_>) -> Flavor {
        if hs.server_version_str().contains("MariaDB") {
            return Flavor::MariaDb;
        }
        Flavor::Mysql {
            replica_status: version(&hs.server_version_str()).is_some_and(|v| v >= (8, 0, 22)),
        }
    }

    /// The status query; with the replication status when `replication`.
    pub fn sql(self, replication: bool) -> String {
        let (role, show) = match self {
            Flavor::MariaDb => (
                "SELECT @@global.read_only, 0 AS super_read_only, @@global.gtid_current_pos, @@global.gtid_slave_pos",
                "SHOW SLAVE STATUS",
            ),
            Flavor::Mysql { replica_status } => (
                "SELECT @@global.read_only, @@global.super_read_only, @@global.gtid_executed, @@global.gtid_executed",
                if replica_status {
                    "SHOW REPLICA STATUS"
                } else {
                    "SHOW SLAVE STATUS"
                },
            ),
        };
        if replication {
            format!("{role}; {show}")
        } else {
            role.to_owned()
        }
    }
}

/// The leading "X.Y.Z" of a server version ("8.0.36-log": (8, 0, 36);
/// MariaDB 10's "5.5.5-10.11.19-MariaDB": (5, 5, 5), as clients read it).
/// Read here rather than with `HandshakePacket::server_version_parsed`, whose
/// regular expression costs each probe thread its own compiled cache.
pub fn version(text: &str) -> Option<(u16, u16, u16)> {
    let mut parts = text.splitn(3, '.');
    let number = |p: &str| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u16>().ok()
    };
    let major = parts.next().and_then(|p| p.parse().ok())?;
    let minor = parts.next().and_then(|p| p.parse().ok())?;
    let patch = parts.next().and_then(number)?;
    Some((major, minor, patch))
}

/// At most this many columns in a result set (`SHOW SLAVE STATUS` has about
/// 60), and rows kept of it (one per replication source on MariaDB's
/// multi-source replication; the default one comes first).
const MAX_COLUMNS: u64 = 512;
const MAX_ROWS: usize = 16;
/// At most this many packets in one answer: a server that sends more is not
/// answering the status query.
const MAX_PACKETS: usize = 4096;

/// One result set: column names and the rows kept (NULL as None).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ResultSet {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<Vec<u8>>>>,
}

impl ResultSet {
    /// Row `row`'s value in the column named one of `names`.
    fn get(&self, row: usize, names: &[&str]) -> Option<&[u8]> {
        let i = self
            .columns
            .iter()
            .position(|c| names.iter().any(|n| c.eq_ignore_ascii_case(n)))?;
        self.rows.get(row)?.get(i)?.as_deref()
    }
}

/// The answer to a query: its result sets in order, and the error that ended
/// it after the first one if any (a later statement refused).
pub type Answer = (Vec<ResultSet>, Option<Failure>);

/// Reads packets from `next` as the answer to one COM_QUERY (text protocol,
/// EOF packets). An error before any result set is the answer's failure.
pub fn read_answer(
    mut next: impl FnMut() -> Result<Vec<u8>, Failure>,
    error: impl Fn(&[u8]) -> Failure,
) -> Result<Answer, Failure> {
    let mut sets = Vec::new();
    let mut packets = 0usize;
    let mut recv = || {
        packets += 1;
        if packets > MAX_PACKETS {
            return Err(Failure::NotMysql(format!(
                "more than {MAX_PACKETS} packets in answer to the status query"
            )));
        }
        next()
    };
    loop {
        let p = recv()?;
        let more = match p.first() {
            Some(0xff) if sets.is_empty() => return Err(error(&p)),
            Some(0xff) => return Ok((sets, Some(error(&p)))),
            // A statement without a result set (OK packet).
            Some(0x00) => OkPacketDeserializer::<CommonOkPacket>::deserialize(
                CapabilityFlags::CLIENT_PROTOCOL_41,
                &mut ParseBuf(&p),
            )
            .map_err(|e| Failure::NotMysql(format!("an OK packet that does not parse: {e}")))?
            .into_inner()
            .status_flags()
            .contains(StatusFlags::SERVER_MORE_RESULTS_EXISTS),
            Some(0xfb) => {
                return Err(Failure::NotMysql(
                    "a LOCAL INFILE request in answer to the status query".into(),
                ))
            }
            Some(_) => {
                let count = ParseBuf(&p)
                    .checked_eat_lenenc_int()
                    .filter(|&n| (1..=MAX_COLUMNS).contains(&n))
                    .ok_or_else(|| {
                        Failure::NotMysql("a result set with a bad column count".into())
                    })?;
                let mut columns = Vec::new();
                for _ in 0..count {
                    let c = recv()?;
                    let column = Column::deserialize((), &mut ParseBuf(&c)).map_err(|e| {
                        Failure::NotMysql(format!("a column definition that does not parse: {e}"))
                    })?;
                    columns.push(column);
                }
                eof(&recv()?).ok_or_else(|| {
                    Failure::NotMysql("no EOF packet after the column definitions".into())
                })?;
                let columns: Arc<[Column]> = columns.into();
                let mut set = ResultSet {
                    columns: columns.iter().map(|c| c.name_str().into_owned()).collect(),
                    rows: Vec::new(),
                };
                let more = loop {
                    let r = recv()?;
                    if let Some(flags) = eof(&r) {
                        break flags.contains(StatusFlags::SERVER_MORE_RESULTS_EXISTS);
                    }
                    if r.first() == Some(&0xff) {
                        return Err(error(&r));
                    }
                    if set.rows.len() >= MAX_ROWS {
                        continue;
                    }
                    let row = RowDeserializer::<(), Text>::deserialize(
                        columns.clone(),
                        &mut ParseBuf(&r),
                    )
                    .map_err(|e| Failure::NotMysql(format!("a row that does not parse: {e}")))?;
                    set.rows.push(
                        row.into_inner()
                            .unwrap()
                            .into_iter()
                            .map(|v| match v {
                                Value::Bytes(b) => Some(b),
                                _ => None,
                            })
                            .collect(),
                    );
                };
                sets.push(set);
                more
            }
            None => return Err(Failure::NotMysql("an empty packet".into())),
        };
        if !more {
            return Ok((sets, None));
        }
    }
}

/// An EOF packet's status flags; None if `p` is not one.
fn eof(p: &[u8]) -> Option<StatusFlags> {
    if p.first() != Some(&0xfe) || p.len() >= 9 {
        return None;
    }
    OkPacketDeserializer::<OldEofPacket>::deserialize(Default::default(), &mut ParseBuf(p))
        .ok()
        .map(|ok| ok.into_inner().status_flags())
}

/// Runs the status query on `c` within its deadline: what the server is, and
/// why the replication status could not be read when the server refused it
/// (the role is still known then). With `early`, a server whose kernel has
/// not even acknowledged the query after that long is as gone as one that
/// does not accept a connection in that time (a blackholed host): the probe
/// fails then; one that acknowledged it (busy, or frozen) gets the whole
/// deadline, as on a new connection.
pub fn query(
    c: &mut Conn,
    replication: bool,
    early: Option<Duration>,
) -> Result<(Up, Option<String>), Failure> {
    let mut payload = vec![0x03];
    payload.extend_from_slice(c.flavor.sql(replication).as_bytes());
    c.command(&payload)?;
    let caps = c.caps;
    let deadline = c.deadline;
    if let Some(e) = early {
        c.deadline = deadline.min(std::time::Instant::now() + e);
    }
    let mut recv = || match c.recv() {
        Err(Failure::Timeout(_)) if c.deadline < deadline => {
            if crate::probe::unacknowledged(c.tcp()) {
                return Err(Failure::Timeout(early.unwrap_or_default()));
            }
            c.deadline = deadline;
            c.recv()
        }
        other => other,
    };
    let answer = read_answer(&mut recv, |p| super::session::server_error(p, caps));
    c.deadline = deadline;
    let (sets, refused) = answer?;
    let mut up = judge(&sets, c.flavor)?;
    let refused = match refused {
        Some(f) if replication => {
            up.replay_delay = None;
            Some(f.to_string())
        }
        Some(f) => return Err(f),
        None => None,
    };
    Ok((up, refused))
}

/// What the status query's result sets say.
pub fn judge(sets: &[ResultSet], flavor: Flavor) -> Result<Up, Failure> {
    let role = sets.first().ok_or_else(|| no_answer("no result set"))?;
    let flag = |name: &str, i: usize| match role.rows.first().and_then(|r| r.get(i)) {
        Some(Some(v)) if v == b"0" => Ok(false),
        Some(Some(v)) if v == b"1" => Ok(true),
        _ => Err(no_answer(&format!("no 0 or 1 for {name}"))),
    };
    let read_only = flag("@@global.read_only", 0)? || flag("@@global.super_read_only", 1)?;
    let gtid = |i: usize| {
        let text = role.rows.first()?.get(i)?.as_deref()?;
        transactions(std::str::from_utf8(text).ok()?, flavor)
    };
    if !read_only {
        return Ok(Up {
            role: Some(Role::Primary),
            gtid: gtid(2),
            ..Up::default()
        });
    }
    let status = sets.get(1);
    Ok(Up {
        role: Some(Role::Standby),
        replay_delay: status.and_then(replay_delay),
        gtid: gtid(3),
        backlog: status.and_then(backlog),
        ..Up::default()
    })
}

/// How many transactions a GTID position counts: the sequence numbers of a
/// MariaDB position's domains ("0-1-42,1-2-7"), summed; the intervals of a
/// MySQL GTID set ("3E11FA47-...:1-5:11-18,\n2174B383-...:1-3", tags
/// skipped), counted. None when it does not parse, and for an empty MySQL set
/// (gtid_mode may be off).
pub fn transactions(text: &str, flavor: Flavor) -> Option<u64> {
    let text = text.trim();
    match flavor {
        Flavor::MariaDb => text
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .try_fold(0u64, |sum, g| {
                let seq = g.rsplit('-').next()?.parse::<u64>().ok()?;
                (g.split('-').count() == 3).then(|| sum.saturating_add(seq))
            }),
        Flavor::Mysql { .. } if text.is_empty() => None,
        Flavor::Mysql { .. } => text.split(',').try_fold(0u64, |sum, set| {
            let mut parts = set.trim().split(':');
            parts.next().filter(|uuid| uuid.len() == 36)?;
            parts.try_fold(sum, |sum, part| {
                if part
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                {
                    return Some(sum); // a tag (MySQL 8.3 and later)
                }
                let (a, b) = part.split_once('-').unwrap_or((part, part));
                let (a, b) = (a.parse::<u64>().ok()?, b.parse::<u64>().ok()?);
                (b >= a).then(|| sum.saturating_add(b - a + 1))
            })
        }),
    }
}

/// A replica's backlog (see the module): None unless both positions name the
/// same binary log.
fn backlog(status: &ResultSet) -> Option<u64> {
    let text = |names: &[&str]| status.get(0, names);
    let number = |names: &[&str]| std::str::from_utf8(text(names)?).ok()?.parse::<u64>().ok();
    let file = text(&["Master_Log_File", "Source_Log_File"])?;
    if Some(file) != text(&["Relay_Master_Log_File", "Relay_Source_Log_File"]) {
        return None;
    }
    let read = number(&["Read_Master_Log_Pos", "Read_Source_Log_Pos"])?;
    let exec = number(&["Exec_Master_Log_Pos", "Exec_Source_Log_Pos"])?;
    Some(read.saturating_sub(exec))
}

fn no_answer(why: &str) -> Failure {
    Failure::Rejected(format!("the status query: {why}"))
}

/// A replica's replay delay from its replication status (see the module).
fn replay_delay(status: &ResultSet) -> Option<Duration> {
    let text = |names: &[&str]| status.get(0, names);
    let yes = |names: &[&str]| text(names) == Some(b"Yes");
    let number = |names: &[&str]| {
        text(names)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let running = yes(&["Slave_IO_Running", "Replica_IO_Running"])
        && yes(&["Slave_SQL_Running", "Replica_SQL_Running"])
        && number(&["Last_SQL_Errno"]) == Some(0);
    if !running {
        return None;
    }
    let caught_up = text(&["Master_Log_File", "Source_Log_File"])
        == text(&["Relay_Master_Log_File", "Relay_Source_Log_File"])
        && number(&["Read_Master_Log_Pos", "Read_Source_Log_Pos"]).is_some()
        && number(&["Read_Master_Log_Pos", "Read_Source_Log_Pos"])
            == number(&["Exec_Master_Log_Pos", "Exec_Source_Log_Pos"]);
    if caught_up {
        return Some(Duration::ZERO);
    }
    number(&["Seconds_Behind_Master", "Seconds_Behind_Source"]).map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(columns: &[&str], rows: &[&[Option<&str>]]) -> ResultSet {
        ResultSet {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: rows
                .iter()
                .map(|r| r.iter().map(|v| v.map(|s| s.as_bytes().to_vec())).collect())
                .collect(),
        }
    }

    fn role(read_only: &str, super_read_only: &str) -> ResultSet {
        set(
            &["@@global.read_only", "super_read_only"],
            &[&[Some(read_only), Some(super_read_only)]],
        )
    }

    const COLUMNS: [&str; 9] = [
        "Slave_IO_Running",
        "Slave_SQL_Running",
        "Last_SQL_Errno",
        "Master_Log_File",
        "Read_Master_Log_Pos",
        "Relay_Master_Log_File",
        "Exec_Master_Log_Pos",
        "Seconds_Behind_Master",
        "Last_IO_Errno",
    ];

    fn slave(
        io: &str,
        sql: &str,
        errno: &str,
        read: &str,
        exec: &str,
        sbm: Option<&str>,
    ) -> ResultSet {
        set(
            &COLUMNS,
            &[&[
                Some(io),
                Some(sql),
                Some(errno),
                Some("bin.000002"),
                Some(read),
                Some("bin.000002"),
                Some(exec),
                sbm,
                Some("0"),
            ]],
        )
    }

    fn judge_(sets: &[ResultSet]) -> Result<Up, Failure> {
        judge(sets, Flavor::MariaDb)
    }

    #[test]
    fn ok_packets_between_result_sets_are_parsed_whatever_their_counts() {
        // An OK with 300 affected rows (a 3-byte length-encoded count), then
        // SERVER_MORE_RESULTS_EXISTS, then a result set.
        let mut packets = vec![
            vec![0x00, 0xfc, 0x2c, 0x01, 0x00, 0x0a, 0x00, 0x00, 0x00],
            vec![1],
        ];
        let mut column = Vec::new();
        for part in ["def", "", "", "", "a", "a"] {
            column.push(part.len() as u8);
            column.extend_from_slice(part.as_bytes());
        }
        column.extend_from_slice(&[0x0c, 0xff, 0, 0, 1, 0, 0, 0xfd, 0, 0, 0, 0, 0]);
        packets.push(column);
        packets.push(vec![0xfe, 0, 0, 0x02, 0]);
        packets.push(vec![1, b'1']);
        packets.push(vec![0xfe, 0, 0, 0x02, 0]);
        let mut next = packets.into_iter();
        let (sets, refused) =
            read_answer(|| next.next().ok_or(Failure::Closed), |_| Failure::Closed).unwrap();
        assert!(refused.is_none());
        assert_eq!(sets.len(), 1);
        assert_eq!(sets[0].rows, [[Some(b"1".to_vec())]]);
        // A truncated OK is refused, not taken as the end.
        let mut next = vec![vec![0x00, 0xfc, 0x2c]].into_iter();
        let e =
            read_answer(|| next.next().ok_or(Failure::Closed), |_| Failure::Closed).unwrap_err();
        assert_eq!(e.kind(), dbha_protocol::probe_result::NOT_MYSQL);
    }

    #[test]
    fn server_versions_are_read_from_their_leading_numbers() {
        assert_eq!(version("8.0.36"), Some((8, 0, 36)));
        assert_eq!(version("8.0.22-log"), Some((8, 0, 22)));
        assert_eq!(version("5.5.5-10.11.19-MariaDB-0+deb12u1"), Some((5, 5, 5)));
        assert_eq!(version("11.4.2-MariaDB"), Some((11, 4, 2)));
        for bad in ["", "8", "8.0", "x.0.1", "8.0.x", "99999.0.1"] {
            assert_eq!(version(bad), None, "{bad}");
        }
    }

    #[test]
    fn gtid_positions_count_transactions() {
        let m = Flavor::Mysql {
            replica_status: true,
        };
        assert_eq!(transactions("0-1-42", Flavor::MariaDb), Some(42));
        assert_eq!(transactions("0-1-42,1-2-7", Flavor::MariaDb), Some(49));
        assert_eq!(transactions("", Flavor::MariaDb), Some(0));
        assert_eq!(transactions("0-1", Flavor::MariaDb), None);
        assert_eq!(transactions("x-y-z", Flavor::MariaDb), None);
        assert_eq!(
            transactions(
                "3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5:11-18,\n2174B383-5441-11E8-B90A-C80AA9429562:1-3",
                m
            ),
            Some(5 + 8 + 3)
        );
        assert_eq!(
            transactions("3E11FA47-71CA-11E1-9E33-C80AA9429562:7:tag_a:1-2", m),
            Some(3)
        );
        assert_eq!(transactions("", m), None);
        assert_eq!(transactions("3E11FA47:1-5", m), None);
        assert_eq!(
            transactions("3E11FA47-71CA-11E1-9E33-C80AA9429562:5-1", m),
            None
        );
    }

    #[test]
    fn a_replica_s_backlog_is_within_one_binary_log() {
        let s = slave("Yes", "Yes", "0", "900", "400", Some("3"));
        assert_eq!(backlog(&s), Some(500));
        let mut other = s;
        other.rows[0][5] = Some(b"bin.000001".to_vec());
        assert_eq!(backlog(&other), None);
        let up = judge_(&[
            set(
                &["ro", "sro", "current", "slave"],
                &[&[Some("1"), Some("0"), Some("0-1-50"), Some("0-1-40")]],
            ),
            slave("Yes", "Yes", "0", "900", "400", Some("3")),
        ])
        .unwrap();
        assert_eq!((up.gtid, up.backlog), (Some(40), Some(500)));
        let primary = judge_(&[set(
            &["ro", "sro", "current", "slave"],
            &[&[Some("0"), Some("0"), Some("0-1-50"), Some("0-1-40")]],
        )])
        .unwrap();
        assert_eq!((primary.gtid, primary.backlog), (Some(50), None));
    }

    #[test]
    fn read_only_and_super_read_only_make_the_role() {
        let primary = judge_(&[role("0", "0")]).unwrap();
        assert_eq!(primary.role, Some(Role::Primary));
        assert_eq!(primary.replay_delay, None);
        for (ro, sro) in [("1", "0"), ("0", "1"), ("1", "1")] {
            assert_eq!(judge_(&[role(ro, sro)]).unwrap().role, Some(Role::Standby));
        }
        for bad in [role("", "0"), role("2", "0"), ResultSet::default()] {
            assert_eq!(
                judge_(&[bad]).unwrap_err().kind(),
                dbha_protocol::probe_result::REJECTED
            );
        }
        assert!(judge_(&[]).is_err());
    }

    #[test]
    fn a_replica_s_delay_comes_from_its_threads_and_positions() {
        let delay = |s: ResultSet| judge_(&[role("1", "0"), s]).unwrap().replay_delay;
        assert_eq!(
            delay(slave("Yes", "Yes", "0", "900", "900", Some("0"))),
            Some(Duration::ZERO)
        );
        // Behind: what the server says, even when it says 0 (the SQL thread
        // between events of one transaction).
        assert_eq!(
            delay(slave("Yes", "Yes", "0", "900", "400", Some("12"))),
            Some(Duration::from_secs(12))
        );
        assert_eq!(delay(slave("Yes", "Yes", "0", "900", "400", None)), None);
        // Not replicating: unknown, whatever Seconds_Behind_Master says.
        assert_eq!(
            delay(slave("Connecting", "Yes", "0", "900", "900", Some("0"))),
            None
        );
        assert_eq!(delay(slave("Yes", "No", "1062", "900", "400", None)), None);
        assert_eq!(delay(slave("Yes", "No", "0", "900", "900", None)), None);
        // A replica of nobody (no row), and no replication status at all.
        assert_eq!(delay(set(&COLUMNS, &[])), None);
        assert_eq!(judge_(&[role("1", "0")]).unwrap().replay_delay, None);
    }

    #[test]
    fn mysql_8_column_names_are_read_too() {
        let names: Vec<String> = COLUMNS
            .iter()
            .map(|c| c.replace("Slave", "Replica").replace("Master", "Source"))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut s = slave("Yes", "Yes", "0", "900", "900", Some("0"));
        s.columns = names.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            judge_(&[role("1", "0"), s]).unwrap().replay_delay,
            Some(Duration::ZERO)
        );
        assert!(Flavor::Mysql {
            replica_status: true
        }
        .sql(true)
        .ends_with("@@global.gtid_executed; SHOW REPLICA STATUS"));
        assert!(!Flavor::MariaDb.sql(false).contains("SHOW"));
    }
}
