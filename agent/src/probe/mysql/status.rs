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
//!   check's user may not read the replication status.

use super::session::Conn;
use crate::probe::{Failure, Role, Up};
use mysql_common::constants::StatusFlags;
use mysql_common::io::ParseBuf;
use mysql_common::packets::{Column, HandshakePacket, OkPacketDeserializer, OldEofPacket};
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
            replica_status: hs.server_version_parsed().is_some_and(|v| v >= (8, 0, 22)),
        }
    }

    /// The status query; with the replication status when `replication`.
    pub fn sql(self, replication: bool) -> String {
        let (role, show) = match self {
            Flavor::MariaDb => (
                "SELECT @@global.read_only, 0 AS super_read_only",
                "SHOW SLAVE STATUS",
            ),
            Flavor::Mysql { replica_status } => (
                "SELECT @@global.read_only, @@global.super_read_only",
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
            Some(0x00) => {
                let flags = p.get(3..5).map_or(0, |s| u16::from_le_bytes([s[0], s[1]]));
                flags & StatusFlags::SERVER_MORE_RESULTS_EXISTS.bits() != 0
            }
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

/// Runs the status query on `c`: what the server is, and why the replication
/// status could not be read when the server refused it (the role is still
/// known then).
pub fn query(c: &mut Conn, replication: bool) -> Result<(Up, Option<String>), Failure> {
    let mut payload = vec![0x03];
    payload.extend_from_slice(c.flavor.sql(replication).as_bytes());
    c.command(&payload)?;
    let caps = c.caps;
    let (sets, refused) = read_answer(|| c.recv(), |p| super::session::server_error(p, caps))?;
    let mut up = judge(&sets)?;
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
pub fn judge(sets: &[ResultSet]) -> Result<Up, Failure> {
    let role = sets.first().ok_or_else(|| no_answer("no result set"))?;
    let flag = |name: &str, i: usize| match role.rows.first().and_then(|r| r.get(i)) {
        Some(Some(v)) if v == b"0" => Ok(false),
        Some(Some(v)) if v == b"1" => Ok(true),
        _ => Err(no_answer(&format!("no 0 or 1 for {name}"))),
    };
    let read_only = flag("@@global.read_only", 0)? || flag("@@global.super_read_only", 1)?;
    if !read_only {
        return Ok(Up {
            role: Some(Role::Primary),
            ..Up::default()
        });
    }
    Ok(Up {
        role: Some(Role::Standby),
        replay_delay: sets.get(1).and_then(replay_delay),
        ..Up::default()
    })
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

    #[test]
    fn read_only_and_super_read_only_make_the_role() {
        let primary = judge(&[role("0", "0")]).unwrap();
        assert_eq!(primary.role, Some(Role::Primary));
        assert_eq!(primary.replay_delay, None);
        for (ro, sro) in [("1", "0"), ("0", "1"), ("1", "1")] {
            assert_eq!(judge(&[role(ro, sro)]).unwrap().role, Some(Role::Standby));
        }
        for bad in [role("", "0"), role("2", "0"), ResultSet::default()] {
            assert_eq!(
                judge(&[bad]).unwrap_err().kind(),
                dbha_protocol::probe_result::REJECTED
            );
        }
        assert!(judge(&[]).is_err());
    }

    #[test]
    fn a_replica_s_delay_comes_from_its_threads_and_positions() {
        let delay = |s: ResultSet| judge(&[role("1", "0"), s]).unwrap().replay_delay;
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
        assert_eq!(judge(&[role("1", "0")]).unwrap().replay_delay, None);
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
            judge(&[role("1", "0"), s]).unwrap().replay_delay,
            Some(Duration::ZERO)
        );
        assert_eq!(
            Flavor::Mysql {
                replica_status: true
            }
            .sql(true),
            "SELECT @@global.read_only, @@global.super_read_only; SHOW REPLICA STATUS"
        );
        assert_eq!(
            Flavor::MariaDb.sql(false),
            "SELECT @@global.read_only, 0 AS super_read_only"
        );
    }
}
