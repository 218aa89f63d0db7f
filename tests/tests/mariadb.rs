//! MariaDB on loopback, for the mysql check: two real servers with GTID
//! replication, as the harness starts them.

use dbha_tests::mariadb::{self, Pair};
use std::time::{Duration, Instant};

#[test]
fn a_primary_and_its_replica_replicate_and_the_replica_can_be_promoted() {
    let Some(()) = mariadb::prerequisites() else {
        return;
    };
    let p = Pair::start().unwrap();
    assert!(!p.primary.read_only().unwrap());
    assert!(p.replica.read_only().unwrap());
    p.primary
        .sql("CREATE DATABASE app; CREATE TABLE app.t (id INT PRIMARY KEY); INSERT INTO app.t VALUES (1)")
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while p.replica.sql("SELECT COUNT(*) FROM app.t").ok().as_deref() != Some("1") {
        assert!(Instant::now() < until, "the row never reached the replica");
        std::thread::sleep(Duration::from_millis(20));
    }
    p.replica.promote().unwrap();
    assert!(!p.replica.read_only().unwrap());
    p.replica.sql("INSERT INTO app.t VALUES (2)").unwrap();
}
