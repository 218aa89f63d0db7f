//! Following Patroni's keys in etcd: a linearizable read of the cluster's prefix
//! gives revision R; a watch from R+1 brings the changes; a periodic
//! linearizable read of the leader key (the heartbeat) confirms them. Pure: the
//! I/O thread feeds it answers and asks it what etcd says now.
//!
//! What it refuses, each a reason to read everything again (from another
//! endpoint), never to act on:
//! - an answer from another etcd cluster (its cluster id changed: accepted
//!   only when two reads in a row agree on the new one, and then everything
//!   known before is forgotten);
//! - a raft term or a revision that goes backwards (a stale or restored member);
//! - a watch that ends (canceled, compacted), sends what does not parse, or
//!   lost a change: a heartbeat that disagrees with it about the leader key;
//! - events at or below what was applied are passed over, never applied twice.
//!
//! Only a linearizable read confirms: it answered through the raft leader, so
//! what it says was true when the request was sent. Watch events are applied
//! at once (a deleted leader key removes the leader at once), but a watch is
//! silent both when nothing changes and when etcd is hung or without quorum.

use super::etcd::{Event, Header, Range, Watch};
use std::collections::BTreeMap;
use std::time::Instant;

/// Why what etcd said is not taken: read everything again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resync(pub String);

/// etcd's view of the cluster's keys, as followed.
#[derive(Debug, Clone, Default)]
pub struct Follower {
    /// The keys' prefix, `/<namespace>/<scope>/`.
    prefix: String,
    cluster_id: Option<u64>,
    /// A new cluster id seen once (adopted when the next read agrees).
    pending_cluster: Option<u64>,
    raft_term: u64,
    /// The revision applied: everything up to it is in `keys`.
    revision: u64,
    /// Key (after the prefix) -> (value, mod_revision).
    keys: BTreeMap<String, (Vec<u8>, u64)>,
    /// When the last read that confirmed the keys was sent.
    confirmed: Option<Instant>,
    /// A read of everything has been applied since the last [`Follower::lost`].
    synced: bool,
}

impl Follower {
    pub fn new(prefix: &str) -> Follower {
        Follower {
            prefix: prefix.to_owned(),
            ..Follower::default()
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The revision applied.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// When the last confirming read was sent; None before the first.
    pub fn confirmed(&self) -> Option<Instant> {
        self.confirmed
    }

    /// Synced: a full read applied, and no break of the watch since.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// The value of `key` (after the prefix), with its mod_revision.
    pub fn get(&self, key: &str) -> Option<(&[u8], u64)> {
        self.keys.get(key).map(|(v, r)| (v.as_slice(), *r))
    }

    /// The keys (after the prefix).
    pub fn keys(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.keys
            .iter()
            .map(|(k, (v, _))| (k.as_str(), v.as_slice()))
    }

    /// The sync broke (the watch ended, a request failed): the keys stay as
    /// they were, confirmed when they were; a full read comes next.
    pub fn lost(&mut self) {
        self.synced = false;
    }

    /// Checks an answer's header against what was seen before: same cluster,
    /// no term or revision going back.
    fn check(&self, h: &Header, what: &str) -> Result<(), Resync> {
        if let Some(id) = self.cluster_id {
            if h.cluster_id != id {
                return Err(Resync(format!(
                    "{what} comes from another etcd cluster (cluster id {} instead of {id})",
                    h.cluster_id
                )));
            }
        }
        if h.raft_term < self.raft_term {
            return Err(Resync(format!(
                "{what}: the raft term went back from {} to {} (a stale member)",
                self.raft_term, h.raft_term
            )));
        }
        if h.revision != 0 && h.revision < self.revision {
            return Err(Resync(format!(
                "{what}: the revision went back from {} to {} (a stale or restored member)",
                self.revision, h.revision
            )));
        }
        Ok(())
    }

    fn relative<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(self.prefix.as_str())
    }

    /// A linearizable read of every key under the prefix, sent at `sent`.
    pub fn snapshot(&mut self, r: &Range, sent: Instant) -> Result<(), Resync> {
        let h = r.header;
        if self.cluster_id.is_some_and(|id| id != h.cluster_id) {
            if self.pending_cluster == Some(h.cluster_id) {
                // Two reads in a row agree: a new etcd cluster (rebuilt or
                // restored). What the old one said is forgotten.
                *self = Follower::new(&self.prefix);
            } else {
                self.pending_cluster = Some(h.cluster_id);
                self.synced = false;
                return Err(Resync(format!(
                    "the etcd cluster id changed from {} to {}: not trusted until another read agrees",
                    self.cluster_id.unwrap_or(0),
                    h.cluster_id
                )));
            }
        }
        self.check(&h, "a read")?;
        let mut keys = BTreeMap::new();
        for kv in &r.kvs {
            if let Some(k) = self.relative(&kv.key) {
                keys.insert(k.to_owned(), (kv.value.clone(), kv.mod_revision));
            }
        }
        self.cluster_id = Some(h.cluster_id);
        self.pending_cluster = None;
        self.raft_term = h.raft_term;
        self.revision = h.revision;
        self.keys = keys;
        self.confirmed = Some(sent);
        self.synced = true;
        Ok(())
    }

    /// One watch message. Ok(true) when it changed a key.
    pub fn watched(&mut self, m: &Watch) -> Result<bool, Resync> {
        match m {
            Watch::Created(h) | Watch::Progress(h) => {
                self.check(h, "the watch")?;
                Ok(false)
            }
            Watch::Canceled {
                compact_revision,
                reason,
                ..
            } => Err(Resync(match compact_revision {
                Some(c) => format!(
                    "the watch was canceled: revision {} was compacted (compact revision {c})",
                    self.revision + 1
                ),
                None if reason.is_empty() => "the watch was canceled".into(),
                None => format!("the watch was canceled: {reason}"),
            })),
            Watch::Events(h, events) => {
                self.check(h, "the watch")?;
                let mut changed = false;
                for e in events {
                    // At or below what was applied: already in the keys.
                    if e.revision() <= self.revision {
                        continue;
                    }
                    match e {
                        Event::Put(kv) => {
                            if let Some(k) = self.relative(&kv.key) {
                                self.keys
                                    .insert(k.to_owned(), (kv.value.clone(), kv.mod_revision));
                                changed = true;
                            }
                        }
                        Event::Delete { key, .. } => {
                            if let Some(k) = self.relative(key) {
                                changed |= self.keys.remove(k).is_some();
                            }
                        }
                    }
                    self.revision = e.revision();
                }
                self.raft_term = self.raft_term.max(h.raft_term);
                Ok(changed)
            }
        }
    }

    /// A heartbeat: a linearizable read of `key` (after the prefix) alone,
    /// sent at `sent`. It confirms the keys when it agrees with them about
    /// `key`. Any disagreement means the watch lost a change or has not
    /// delivered it yet: either way the read, not the watch, is the truth, and
    /// a full read follows. (The store's revision cannot tell a watch that
    /// fell behind: writes under other prefixes move it with no event here.)
    pub fn heartbeat(&mut self, key: &str, r: &Range, sent: Instant) -> Result<(), Resync> {
        self.check(&r.header, "a heartbeat")?;
        let full = format!("{}{key}", self.prefix);
        let read = r
            .kvs
            .iter()
            .find(|kv| kv.key == full)
            .map(|kv| (kv.value.as_slice(), kv.mod_revision));
        let mine = self.get(key);
        if read != mine {
            return Err(Resync(format!(
                "a heartbeat read {} while the watch has {}",
                describe(read),
                describe(mine)
            )));
        }
        self.raft_term = r.header.raft_term;
        self.confirmed = Some(sent);
        Ok(())
    }
}

fn describe(v: Option<(&[u8], u64)>) -> String {
    match v {
        None => "no key".into(),
        Some((value, rev)) => format!("{:?} (revision {rev})", crate::probe::server_text(value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcs::etcd::Kv;
    use std::time::Duration;

    const P: &str = "/service/dbha/";

    fn header(revision: u64, term: u64) -> Header {
        Header {
            cluster_id: 7,
            member_id: 1,
            revision,
            raft_term: term,
        }
    }

    fn kv(key: &str, value: &str, rev: u64) -> Kv {
        Kv {
            key: format!("{P}{key}"),
            value: value.as_bytes().to_vec(),
            create_revision: rev,
            mod_revision: rev,
            lease: 0,
        }
    }

    fn range(revision: u64, kvs: Vec<Kv>) -> Range {
        Range {
            header: header(revision, 2),
            kvs,
        }
    }

    fn leader(f: &Follower) -> Option<String> {
        f.get("leader")
            .map(|(v, _)| String::from_utf8_lossy(v).into_owned())
    }

    fn synced_at(rev: u64, leader: &str) -> (Follower, Instant) {
        let mut f = Follower::new(P);
        let t = Instant::now();
        f.snapshot(
            &range(
                rev,
                vec![kv("leader", leader, rev - 1), kv("config", "{}", 1)],
            ),
            t,
        )
        .unwrap();
        (f, t)
    }

    #[test]
    fn a_read_then_events_in_order_never_twice() {
        let (mut f, t) = synced_at(10, "pg0");
        assert_eq!(
            (leader(&f), f.revision(), f.confirmed()),
            (Some("pg0".into()), 10, Some(t))
        );
        // A delete removes the leader; an event at or below the read is skipped.
        let m = Watch::Events(
            header(12, 2),
            vec![
                Event::Put(kv("leader", "stale", 9)),
                Event::Delete {
                    key: format!("{P}leader"),
                    mod_revision: 11,
                },
            ],
        );
        assert_eq!(f.watched(&m), Ok(true));
        assert_eq!((leader(&f), f.revision()), (None, 11));
        f.watched(&Watch::Events(
            header(12, 2),
            vec![Event::Put(kv("leader", "pg1", 12))],
        ))
        .unwrap();
        assert_eq!(leader(&f), Some("pg1".into()));
        // Delivered again (a watch re-armed from an older revision): no effect.
        let again = Watch::Events(
            header(12, 2),
            vec![Event::Delete {
                key: format!("{P}leader"),
                mod_revision: 11,
            }],
        );
        assert_eq!(f.watched(&again), Ok(false));
        assert_eq!(leader(&f), Some("pg1".into()));
        // Keys of other clusters are not ours.
        let other = Watch::Events(
            header(13, 2),
            vec![Event::Put(Kv {
                key: "/service/other/leader".into(),
                ..kv("leader", "x", 13)
            })],
        );
        assert_eq!(f.watched(&other), Ok(false));
        assert_eq!(leader(&f), Some("pg1".into()));
        // Events never confirm: only linearizable reads do.
        assert_eq!(f.confirmed(), Some(t));
    }

    #[test]
    fn every_end_of_a_watch_is_a_resync() {
        let (mut f, _) = synced_at(10, "pg0");
        let compacted = Watch::Canceled {
            header: header(0, 2),
            compact_revision: Some(30),
            reason: String::new(),
        };
        assert!(f.watched(&compacted).unwrap_err().0.contains("compacted"));
        let canceled = Watch::Canceled {
            header: header(0, 2),
            compact_revision: None,
            reason: "permission denied".into(),
        };
        assert!(f
            .watched(&canceled)
            .unwrap_err()
            .0
            .contains("permission denied"));
    }

    #[test]
    fn heartbeats_confirm_what_agrees_and_catch_a_watch_that_missed_a_change() {
        let (mut f, t) = synced_at(10, "pg0");
        let later = t + Duration::from_secs(2);
        // Other keys moved the store's revision: no matter.
        f.heartbeat("leader", &range(25, vec![kv("leader", "pg0", 9)]), later)
            .unwrap();
        assert_eq!(f.confirmed(), Some(later));
        // The leader changed and the watch did not say so (vip-manager #394).
        let t3 = later + Duration::from_secs(2);
        let e = f
            .heartbeat("leader", &range(26, vec![kv("leader", "pg1", 26)]), t3)
            .unwrap_err();
        assert!(e.0.contains("\"pg1\" (revision 26)"), "{e:?}");
        assert_eq!(
            f.confirmed(),
            Some(later),
            "a disagreement confirms nothing"
        );
        // A key deleted while the watch says it is there.
        let (mut f, t) = synced_at(10, "pg0");
        let e = f.heartbeat("leader", &range(11, vec![]), t).unwrap_err();
        assert!(e.0.contains("no key"), "{e:?}");
        // No leader on both sides agrees.
        let mut f = Follower::new(P);
        f.snapshot(&range(3, vec![]), t).unwrap();
        f.heartbeat("leader", &range(4, vec![]), later).unwrap();
        assert_eq!(f.confirmed(), Some(later));
    }

    #[test]
    fn a_stale_member_or_a_foreign_cluster_is_not_followed() {
        let (mut f, t) = synced_at(10, "pg0");
        // A revision that goes back: a member that missed writes.
        let e = f
            .snapshot(&range(8, vec![kv("leader", "old", 5)]), t)
            .unwrap_err();
        assert!(e.0.contains("went back"), "{e:?}");
        assert_eq!(leader(&f), Some("pg0".into()));
        // A raft term that goes back.
        let old_term = Range {
            header: header(12, 1),
            kvs: vec![],
        };
        assert!(f
            .snapshot(&old_term, t)
            .unwrap_err()
            .0
            .contains("raft term"));
        assert!(f.heartbeat("leader", &old_term, t).is_err());
        assert!(f.watched(&Watch::Events(header(12, 1), vec![])).is_err());
        // Another cluster: refused once, then adopted from scratch when a second
        // read agrees (its revisions are its own).
        let foreign = Range {
            header: Header {
                cluster_id: 99,
                ..header(3, 1)
            },
            kvs: vec![kv("leader", "pgx", 2)],
        };
        let e = f.snapshot(&foreign, t).unwrap_err();
        assert!(e.0.contains("cluster id changed"), "{e:?}");
        assert!(!f.synced());
        assert!(f
            .watched(&Watch::Progress(Header {
                cluster_id: 99,
                ..header(3, 1)
            }))
            .is_err());
        f.snapshot(&foreign, t).unwrap();
        assert_eq!((leader(&f), f.revision()), (Some("pgx".into()), 3));
    }
}
