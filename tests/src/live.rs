//! The live PostgreSQL harness: N real clusters (`initdb` in a scratch directory,
//! each on a free loopback port), started side by side, stopped and removed when
//! dropped, also when the test panics. Under `CI=true` a missing PostgreSQL server
//! fails the test; elsewhere the test is skipped, saying why.

use crate::in_ci;
use dbha_harness::pg::{self, Cluster, Scratch};

pub struct Live {
    /// Declared before `dir`: servers stop before their directory is removed.
    pub clusters: Vec<Cluster>,
    pub dir: Scratch,
}

/// The PostgreSQL installation, or None (the test is skipped, saying why); under
/// CI a missing PostgreSQL fails the test instead.
fn install() -> Option<pg::Install> {
    match pg::find() {
        Ok(i) => Some(i),
        Err(why) => {
            assert!(
                !in_ci(),
                "PostgreSQL is required under CI: {why} (tests/setup.sh installs it)"
            );
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

impl Live {
    /// Starts one cluster per name. `None`: PostgreSQL is not installed (not CI).
    pub fn start(names: &[&str]) -> Option<Live> {
        let install = install()?;
        let dir = Scratch::new("live").expect("scratch directory");
        let root = dir.path().to_owned();
        let handles: Vec<_> = names
            .iter()
            .map(|name| {
                let (install, root, name) = (install.clone(), root.clone(), name.to_string());
                std::thread::spawn(move || -> Result<Cluster, String> {
                    let port = pg::free_port("127.0.0.1").map_err(|e| e.to_string())?;
                    let mut c = Cluster::init(&install, &root, &name, "127.0.0.1", port)
                        .map_err(|e| e.to_string())?;
                    c.start_on_free_port().map_err(|e| e.to_string())?;
                    Ok(c)
                })
            })
            .collect();
        let mut clusters = Vec::new();
        let mut failure = None;
        for h in handles {
            match h.join().expect("cluster thread") {
                Ok(c) => clusters.push(c),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        let live = Live { clusters, dir };
        if let Some(e) = failure {
            // `live` drops here: whatever did start is stopped and removed.
            panic!("starting the clusters: {e}");
        }
        Some(live)
    }

    /// A primary and streaming standbys of it (`pg_basebackup -R`), all started.
    /// `auth` is the TCP authentication ("trust", "md5", "scram-sha-256"); with a
    /// `password`, the `postgres` role gets it.
    pub fn replicated(
        primary: &str,
        standbys: &[&str],
        auth: &str,
        password: Option<&str>,
    ) -> Option<Live> {
        let install = install()?;
        let dir = Scratch::new("replicated").expect("scratch directory");
        let clusters = pg::replicated(
            &install,
            dir.path(),
            "127.0.0.1",
            primary,
            standbys,
            auth,
            password,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        Some(Live { clusters, dir })
    }

    /// Commits on the primary (the first cluster) wait for `standby`
    /// (synchronous replication): a promoted `standby` has every acknowledged write.
    pub fn synchronous_to(&self, standby: &str) {
        let primary = &self.clusters[0];
        let sync = format!("ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 ({standby})'");
        for sql in [sync.as_str(), "SELECT pg_reload_conf()"] {
            primary.psql(sql).expect("synchronous replication");
        }
    }

    pub fn cluster(&self, name: &str) -> &Cluster {
        self.clusters
            .iter()
            .find(|c| c.name == name)
            .expect("a cluster of that name")
    }

    /// (alias, host, port, check) of every cluster, in the order they were named.
    pub fn dbs<'a>(&'a self, check: &'a str) -> Vec<(&'a str, &'a str, u16, &'a str)> {
        self.clusters
            .iter()
            .map(|c| (c.name.as_str(), c.host.as_str(), c.port, check))
            .collect()
    }
}
