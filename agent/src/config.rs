//! The agent's configuration: TOML, unknown keys rejected, every error located
//! (file, line, column, key) and saying what was expected.

use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::fmt;
use std::net::ToSocketAddrs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

pub const DEFAULT_STATE_FILE: &str = "/run/dbha/state";

/// How the active database is chosen when a better one becomes healthy again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Failback {
    /// Stay on the current database while it is healthy.
    Sticky,
    /// Return to the highest-priority healthy database once it passed `rise` probes.
    Auto,
}

/// What a probe checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Check {
    /// A TCP connection is accepted.
    Tcp,
    /// A PostgreSQL server answers a startup message and accepts connections.
    Postgres,
    /// Patroni's REST API says what the node is (no database login), and the
    /// database port is reachable from this host.
    Patroni,
    /// A MySQL or MariaDB server greets (protocol 10) rather than refusing;
    /// with a `user`, it logs in and reads the role from `read_only`.
    Mysql,
}

impl Check {
    /// Whether the check sees a server's role (primary or standby).
    pub fn sees_roles(self) -> bool {
        matches!(self, Check::Postgres | Check::Patroni)
    }
}

/// Which endpoint may take writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Writes {
    /// Any healthy endpoint (the check does not know roles).
    Any,
    /// Only an endpoint seen as primary (not in recovery, not read-only).
    Primary,
}

/// Which endpoint reads go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reads {
    /// The write endpoint.
    Primary,
    /// A healthy standby, else the write endpoint.
    PreferStandby,
    /// Any healthy endpoint, in priority order.
    Any,
}

/// How the `postgres` check talks to a server it can log in to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Session {
    /// One session kept open between probes: a query per probe, and the server
    /// closing it is seen at once.
    Held,
    /// A new connection and login for every probe.
    PerProbe,
}

impl Session {
    /// As spelled in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Session::Held => "held",
            Session::PerProbe => "per-probe",
        }
    }
}

/// Whether and how the `postgres` check uses TLS, as libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// As spelled in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// A password: never printed, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A password given in code (tests, tools); configurations read it from a file
    /// or the environment.
    pub fn new(password: &str) -> Option<Secret> {
        (!password.is_empty()).then(|| Secret(password.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// One database endpoint, fully resolved (overrides applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Database {
    pub alias: String,
    pub host: String,
    pub port: u16,
    pub check: Check,
    pub interval: Duration,
    /// While a verdict is pending (failures or successes counted toward `fall`
    /// or `rise`), probes run this often instead of every `interval`.
    pub fastinter: Duration,
    /// The whole probe, connection and login included.
    pub timeout: Duration,
    /// The TCP connection alone (at most `timeout`).
    pub connect_timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Held session or a connection per probe (`postgres` check only).
    pub session: Session,
    /// A held session is closed and opened anew after this long, so that what
    /// only a new connection sees (a smart shutdown refusing new sessions with
    /// 57P03, a changed pg_hba.conf) is seen within it, and a smart shutdown
    /// never waits longer than this for the agent.
    pub session_lifetime: Duration,
    /// How often a held session's probe also checks that the server admits a new
    /// connection (a frozen postmaster, or a full `max_connections`, leaves a held
    /// session answering): a startup message on a new connection, which costs
    /// the server a fork.
    pub admission_interval: Duration,
    /// A standby whose replay is further behind takes no reads.
    pub max_replica_lag: Option<Duration>,
    /// A standby whose replay is more bytes of WAL behind the primary takes no
    /// reads (`postgres`, `patroni`); a MySQL replica with more bytes received
    /// and not executed (`mysql`).
    pub max_replica_lag_bytes: Option<u64>,
    /// A MySQL replica more GTID transactions behind the primary takes no
    /// reads (`mysql` only).
    pub max_replica_lag_transactions: Option<u64>,
    /// User name sent in the PostgreSQL startup message.
    pub user: String,
    /// Database name sent in the PostgreSQL startup message.
    pub dbname: String,
    /// Password for md5 or SCRAM-SHA-256 (in cleartext only with
    /// `allow_cleartext_password`, over TLS), from `password_file` or `password_env`.
    pub password: Option<Secret>,
    /// Where the password came from, for messages.
    pub password_source: Option<String>,
    /// TLS for the `postgres` check (default `prefer`).
    pub sslmode: SslMode,
    /// PEM file of the certificate authorities `verify-ca` and `verify-full` trust
    /// (`"system"`: the system's trust store).
    pub sslrootcert: Option<PathBuf>,
    /// Send the password to a server that asks for it in cleartext (only ever
    /// over TLS). Off by default: md5 and SCRAM never reveal it.
    pub allow_cleartext_password: bool,
    /// The `patroni` check's REST API and its credentials (None for the others).
    pub patroni: Option<crate::probe::patroni::Settings>,
    /// The `mysql` check's own settings (None for the others).
    pub mysql: Option<crate::probe::mysql::Settings>,
    /// Under `[dcs]`: the Patroni member this database is (else matched by the
    /// host and port of the member's `conn_url`).
    pub member: Option<String>,
}

impl Database {
    /// Whether the check logs in to the database: `postgres` (when the server
    /// lets it), `mysql` when a user is configured.
    pub fn logs_in(&self) -> bool {
        match self.check {
            Check::Postgres => true,
            Check::Mysql => self.mysql.as_ref().is_some_and(|m| m.login),
            Check::Tcp | Check::Patroni => false,
        }
    }

    /// Whether the check sees the server's role (primary or standby).
    pub fn sees_roles(&self) -> bool {
        self.check == Check::Patroni || self.logs_in()
    }

    /// What identifies the probe target: a reload keeps an endpoint's health only if
    /// this is unchanged.
    pub fn same_target(&self, other: &Database) -> bool {
        (
            &self.alias,
            &self.host,
            self.port,
            self.check,
            &self.user,
            &self.dbname,
        ) == (
            &other.alias,
            &other.host,
            other.port,
            other.check,
            &other.user,
            &other.dbname,
        )
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub state_file: PathBuf,
    /// Heartbeat period and default probe interval.
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub failback: Failback,
    pub writes: Writes,
    pub reads: Reads,
    pub stale_after: Duration,
    /// Under `writes = "primary"`, while writes have no database (a failover
    /// window), the databases that are up and have a held session are probed at
    /// their `fastinter` for at most this long, so that a promotion is published
    /// at once; 0: not at all.
    pub promotion_window: Duration,
    /// Permission bits of the state file.
    pub state_mode: u32,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// In priority order.
    pub databases: Vec<Database>,
    /// Follow Patroni's etcd for the write endpoint.
    pub dcs: Option<crate::dcs::Settings>,
}

/// A configuration error, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the error is not about a place in the file.
    pub line: usize,
    pub column: usize,
    /// The key concerned, like `database[1].port`; empty when unknown.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A duration written like "250ms", "2s", "1.5s" or "1m".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let expected = || format!("expected a duration like \"250ms\", \"2s\" or \"1m\", found {s:?}");
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(expected)?;
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| expected())?;
    let scale = match unit.trim() {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(expected()),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|_| expected())
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        let s = String::deserialize(d).map_err(|_| {
            de::Error::custom("expected a duration string like \"250ms\" or \"2s\"")
        })?;
        parse_duration(&s).map(Dur).map_err(de::Error::custom)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_file: Option<PathBuf>,
    interval: Option<Spanned<Dur>>,
    fastinter: Option<Spanned<Dur>>,
    timeout: Option<Spanned<Dur>>,
    connect_timeout: Option<Spanned<Dur>>,
    rise: Option<Spanned<u32>>,
    fall: Option<Spanned<u32>>,
    session: Option<Spanned<Session>>,
    session_lifetime: Option<Spanned<Dur>>,
    admission_interval: Option<Spanned<Dur>>,
    max_replica_lag: Option<Spanned<Dur>>,
    max_replica_lag_bytes: Option<Spanned<u64>>,
    max_replica_lag_transactions: Option<Spanned<u64>>,
    failback: Option<Failback>,
    writes: Option<Spanned<Writes>>,
    reads: Option<Spanned<Reads>>,
    stale_after: Option<Spanned<Dur>>,
    promotion_window: Option<Spanned<Dur>>,
    state_mode: Option<Spanned<String>>,
    metrics_listen: Option<Spanned<String>>,
    // Credential defaults for every database (not `#[serde(flatten)]`: it would
    // lose the location of an unknown key).
    user: Option<String>,
    dbname: Option<String>,
    password_file: Option<Spanned<PathBuf>>,
    password_env: Option<Spanned<String>>,
    sslmode: Option<Spanned<SslMode>>,
    sslrootcert: Option<Spanned<PathBuf>>,
    allow_cleartext_password: Option<bool>,
    server_public_key: Option<Spanned<PathBuf>>,
    #[serde(default)]
    database: Vec<Spanned<RawDatabase>>,
    dcs: Option<Spanned<RawDcs>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    alias: Spanned<String>,
    host: Spanned<String>,
    port: u16,
    check: Check,
    interval: Option<Spanned<Dur>>,
    fastinter: Option<Spanned<Dur>>,
    timeout: Option<Spanned<Dur>>,
    connect_timeout: Option<Spanned<Dur>>,
    rise: Option<Spanned<u32>>,
    fall: Option<Spanned<u32>>,
    session: Option<Spanned<Session>>,
    session_lifetime: Option<Spanned<Dur>>,
    admission_interval: Option<Spanned<Dur>>,
    max_replica_lag: Option<Spanned<Dur>>,
    max_replica_lag_bytes: Option<Spanned<u64>>,
    max_replica_lag_transactions: Option<Spanned<u64>>,
    user: Option<String>,
    dbname: Option<String>,
    password_file: Option<Spanned<PathBuf>>,
    password_env: Option<Spanned<String>>,
    sslmode: Option<Spanned<SslMode>>,
    sslrootcert: Option<Spanned<PathBuf>>,
    allow_cleartext_password: Option<bool>,
    server_public_key: Option<Spanned<PathBuf>>,
    patroni_url: Option<Spanned<String>>,
    patroni_user: Option<Spanned<String>>,
    patroni_password_file: Option<Spanned<PathBuf>>,
    patroni_password_env: Option<Spanned<String>>,
    member: Option<Spanned<String>>,
}

/// `[dcs]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDcs {
    etcd: Spanned<Vec<String>>,
    namespace: Option<Spanned<String>>,
    scope: Spanned<String>,
    user: Option<Spanned<String>>,
    password_file: Option<Spanned<PathBuf>>,
    password_env: Option<Spanned<String>>,
    cacert: Option<Spanned<PathBuf>>,
    cert: Option<Spanned<PathBuf>>,
    key: Option<Spanned<PathBuf>>,
    timeout: Option<Spanned<Dur>>,
    heartbeat: Option<Spanned<Dur>>,
}

/// Credentials, at the top level (defaults) or per database.
struct RawCredentials<'a> {
    user: &'a Option<String>,
    dbname: &'a Option<String>,
    password_file: &'a Option<Spanned<PathBuf>>,
    password_env: &'a Option<Spanned<String>>,
}

impl RawConfig {
    fn credentials(&self) -> RawCredentials<'_> {
        RawCredentials {
            user: &self.user,
            dbname: &self.dbname,
            password_file: &self.password_file,
            password_env: &self.password_env,
        }
    }
}

impl RawDatabase {
    fn credentials(&self) -> RawCredentials<'_> {
        RawCredentials {
            user: &self.user,
            dbname: &self.dbname,
            password_file: &self.password_file,
            password_env: &self.password_env,
        }
    }
}

const INTERVAL_RANGE: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(3600));
const TIMEOUT_RANGE: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(60));
const STALE_RANGE: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(86_400));
const COUNT_RANGE: (u32, u32) = (1, 100);
const FASTINTER_RANGE: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(3600));
/// The default `fastinter`: a lost session is confirmed, or forgiven, within a
/// few of these.
const FASTINTER: Duration = Duration::from_millis(10);

/// `fastinter` when the configuration does not set it: 10 ms, at most `interval`.
pub fn default_fastinter(interval: Duration) -> Duration {
    FASTINTER.min(interval)
}
const LIFETIME_RANGE: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_secs(86_400));
/// The default `session_lifetime`.
const SESSION_LIFETIME: Duration = Duration::from_secs(60);
/// The default `admission_interval`: a frozen postmaster is seen within about
/// 10 s, for a fork on the server every 10 s (BENCHMARKS.md, "What a probe costs
/// the server").
const ADMISSION_INTERVAL: Duration = Duration::from_secs(10);
/// The default `promotion_window`: longer than an automatic failover takes
/// (Patroni's `ttl` is 30 s by default), short enough that a window a person
/// ends by hand costs the standbys one minute of fast probes, not the whole of it.
const PROMOTION_WINDOW: Duration = Duration::from_secs(60);
const LAG_RANGE: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(86_400));

/// Builds located errors against the source text.
struct Locator<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    fn at(&self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) -> ConfigError {
        let (line, column) = match span {
            Some(r) => {
                let before = &self.text[..r.start.min(self.text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                (line, column)
            }
            None => (0, 0),
        };
        ConfigError {
            file: self.file.to_owned(),
            line,
            column,
            key: key.to_owned(),
            message: message.into(),
        }
    }

    fn duration(
        &self,
        v: &Option<Spanned<Dur>>,
        key: &str,
        default: Duration,
        (lo, hi): (Duration, Duration),
    ) -> Result<Duration, ConfigError> {
        let Some(v) = v else { return Ok(default) };
        let d = v.get_ref().0;
        if d < lo || d > hi {
            return Err(self.at(
                Some(v.span()),
                key,
                format!("expected a duration from {lo:?} to {hi:?}, found {d:?}"),
            ));
        }
        Ok(d)
    }

    fn count(&self, v: &Option<Spanned<u32>>, key: &str, default: u32) -> Result<u32, ConfigError> {
        let Some(v) = v else { return Ok(default) };
        let (lo, hi) = COUNT_RANGE;
        let n = *v.get_ref();
        if n < lo || n > hi {
            return Err(self.at(
                Some(v.span()),
                key,
                format!("expected a count from {lo} to {hi}, found {n}"),
            ));
        }
        Ok(n)
    }
}

impl Locator<'_> {
    /// The password from `password_file` (refused when others may read it, as libpq
    /// refuses such a .pgpass) or from the environment variable `password_env`.
    fn password(
        &self,
        own: &RawCredentials<'_>,
        default: &RawCredentials<'_>,
        key: &str,
    ) -> Result<(Option<Secret>, Option<String>), ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        let file = own
            .password_file
            .as_ref()
            .or(default.password_file.as_ref());
        let env = own.password_env.as_ref().or(default.password_env.as_ref());
        match (file, env) {
            (Some(f), Some(_)) => Err(self.at(
                Some(f.span()),
                &format!("{key}password_file"),
                "give password_file or password_env, not both",
            )),
            (Some(f), None) => {
                let path = f.get_ref();
                let at = |m: String| self.at(Some(f.span()), &format!("{key}password_file"), m);
                let meta = std::fs::metadata(path)
                    .map_err(|e| at(format!("cannot read {}: {e}", path.display())))?;
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(at(format!(
                        "{} has permissions {mode:04o}; expected 0600 or less (others must not read a password): chmod 600 it",
                        path.display()
                    )));
                }
                let text = std::fs::read_to_string(path)
                    .map_err(|e| at(format!("cannot read {}: {e}", path.display())))?;
                let pw = text.lines().next().unwrap_or("").to_owned();
                if pw.is_empty() {
                    return Err(at(format!(
                        "{} holds no password on its first line",
                        path.display()
                    )));
                }
                Ok((Some(Secret(pw)), Some(format!("file {}", path.display()))))
            }
            (None, Some(v)) => {
                let name = v.get_ref();
                match std::env::var(name) {
                    Ok(pw) if !pw.is_empty() => Ok((Some(Secret(pw)), Some(format!("environment variable {name}")))),
                    _ => Err(self.at(
                        Some(v.span()),
                        &format!("{key}password_env"),
                        format!("the environment variable {name} is not set (or empty) in the agent's environment"),
                    )),
                }
            }
            (None, None) => Ok((None, None)),
        }
    }
}

impl Locator<'_> {
    /// A password of a section's own (no defaults from the top level):
    /// `{key}password_file` or `{key}password_env`.
    fn own_password(
        &self,
        file: &Option<Spanned<PathBuf>>,
        env: &Option<Spanned<String>>,
        key: &str,
    ) -> Result<(Option<Secret>, Option<String>), ConfigError> {
        let own = RawCredentials {
            user: &None,
            dbname: &None,
            password_file: file,
            password_env: env,
        };
        let none = RawCredentials {
            user: &None,
            dbname: &None,
            password_file: &None,
            password_env: &None,
        };
        self.password(&own, &none, key)
    }
}

/// Whether a `mysql` check logs in: a user is given, its own or the top
/// level's.
fn mysql_login(db: &RawDatabase, raw: &RawConfig) -> bool {
    db.user.is_some() || raw.user.is_some()
}

/// A database's `fastinter` and `connect_timeout`, resolved.
struct Timing {
    fastinter: Duration,
    connect_timeout: Duration,
}

impl Locator<'_> {
    /// `fastinter` (default the smaller of 10 ms and `interval`, at most
    /// `interval`) and `connect_timeout` (default the smaller of `timeout` and
    /// `interval`, as HAProxy bounds its connect phase; at most `timeout`).
    fn timing(
        &self,
        db: &RawDatabase,
        raw: &RawConfig,
        interval: Duration,
        timeout: Duration,
        key: &dyn Fn(&str) -> String,
    ) -> Result<Timing, ConfigError> {
        let given = db.fastinter.as_ref().or(raw.fastinter.as_ref()).cloned();
        let fastinter = self.duration(
            &given,
            &key("fastinter"),
            FASTINTER.min(interval),
            FASTINTER_RANGE,
        )?;
        if fastinter > interval {
            return Err(self.at(
                given.as_ref().map(Spanned::span),
                &key("fastinter"),
                format!("must be at most interval ({interval:?}), found {fastinter:?}: it is the faster pace used while a verdict is pending"),
            ));
        }
        let given = db
            .connect_timeout
            .as_ref()
            .or(raw.connect_timeout.as_ref())
            .cloned();
        let connect_timeout = self.duration(
            &given,
            &key("connect_timeout"),
            timeout.min(interval),
            TIMEOUT_RANGE,
        )?;
        if connect_timeout > timeout {
            return Err(self.at(
                given.as_ref().map(Spanned::span),
                &key("connect_timeout"),
                format!("must be at most timeout ({timeout:?}), found {connect_timeout:?}: the connection is part of the probe"),
            ));
        }
        Ok(Timing {
            fastinter,
            connect_timeout,
        })
    }
}

impl Locator<'_> {
    /// `sslmode` and `sslrootcert` of a database (its own, else the defaults),
    /// checked: a verifying mode needs certificates, and they must load.
    fn tls(
        &self,
        db: &RawDatabase,
        raw: &RawConfig,
        key: &dyn Fn(&str) -> String,
    ) -> Result<(SslMode, Option<PathBuf>), ConfigError> {
        let mode = db.sslmode.as_ref().or(raw.sslmode.as_ref());
        let root = db.sslrootcert.as_ref().or(raw.sslrootcert.as_ref());
        let sslmode = mode.map_or(SslMode::Prefer, |m| *m.get_ref());
        let greeting_only = db.check == Check::Mysql && !mysql_login(db, raw);
        if db.check == Check::Tcp || greeting_only {
            if let Some(m) = &db.sslmode {
                return Err(self.at(
                    Some(m.span()),
                    &key("sslmode"),
                    "sslmode applies to check = \"postgres\", and to check = \"mysql\" with a user",
                ));
            }
            return Ok((sslmode, None));
        }
        if let Some(r) = root {
            crate::probe::tls::load_roots(r.get_ref())
                .map_err(|e| self.at(Some(r.span()), &key("sslrootcert"), e))?;
        } else if matches!(sslmode, SslMode::VerifyCa | SslMode::VerifyFull) {
            return Err(self.at(
                mode.map(Spanned::span),
                &key("sslmode"),
                format!(
                    "sslmode = \"{}\" needs sslrootcert: a PEM file of the certificate authorities to trust, or \"system\"",
                    sslmode.name()
                ),
            ));
        }
        Ok((sslmode, root.map(|r| r.get_ref().clone())))
    }

    /// The `mysql` check's settings. It logs in when a `user` is given (its
    /// own or the top level's); without one it judges the greeting only, and
    /// the login settings are refused rather than ignored. It logs in without
    /// a default database, and only with mysql_native_password or
    /// caching_sha2_password (no cleartext password plugin).
    fn mysql(
        &self,
        db: &RawDatabase,
        raw: &RawConfig,
        key: &dyn Fn(&str) -> String,
    ) -> Result<crate::probe::mysql::Settings, ConfigError> {
        let never = [
            ("dbname", db.dbname.is_some()),
            (
                "allow_cleartext_password",
                db.allow_cleartext_password.is_some(),
            ),
        ];
        if let Some((name, _)) = never.into_iter().find(|(_, set)| *set) {
            return Err(self.at(
                None,
                &key(name),
                "does not apply to check = \"mysql\": it logs in without a default database, with mysql_native_password or caching_sha2_password",
            ));
        }
        let login = mysql_login(db, raw);
        let needs_user = [
            ("password_file", db.password_file.is_some()),
            ("password_env", db.password_env.is_some()),
            ("sslrootcert", db.sslrootcert.is_some()),
            ("session", db.session.is_some()),
            ("session_lifetime", db.session_lifetime.is_some()),
            ("admission_interval", db.admission_interval.is_some()),
            ("max_replica_lag", db.max_replica_lag.is_some()),
            ("max_replica_lag_bytes", db.max_replica_lag_bytes.is_some()),
            (
                "max_replica_lag_transactions",
                db.max_replica_lag_transactions.is_some(),
            ),
            ("server_public_key", db.server_public_key.is_some()),
        ];
        if !login {
            if let Some((name, _)) = needs_user.into_iter().find(|(_, set)| *set) {
                return Err(self.at(
                    None,
                    &key(name),
                    "needs user: without one, check = \"mysql\" judges the server's greeting only (no login, no TLS, no role)",
                ));
            }
        }
        let server_public_key = match db
            .server_public_key
            .as_ref()
            .or(raw.server_public_key.as_ref())
        {
            Some(path) if login => Some(
                crate::probe::mysql::load_public_key(path.get_ref())
                    .map_err(|e| self.at(Some(path.span()), &key("server_public_key"), e))?,
            ),
            _ => None,
        };
        Ok(crate::probe::mysql::Settings {
            login,
            server_public_key,
        })
    }

    /// The `patroni` check's settings: `patroni_url` (required), optional basic
    /// authentication, and for https `sslmode` (`require`, `verify-ca` or
    /// `verify-full`, the default) with `sslrootcert` (default `"system"`). The
    /// `patroni_*` keys belong to that check only, and the check does not log in
    /// to the database, so a database's own credentials and session settings are
    /// refused on it. Also returns the TLS settings for the REST API.
    #[allow(clippy::type_complexity)]
    fn patroni(
        &self,
        db: &RawDatabase,
        raw: &RawConfig,
        key: &dyn Fn(&str) -> String,
    ) -> Result<
        (
            Option<crate::probe::patroni::Settings>,
            SslMode,
            Option<PathBuf>,
        ),
        ConfigError,
    > {
        let own = [
            ("patroni_url", db.patroni_url.as_ref().map(Spanned::span)),
            ("patroni_user", db.patroni_user.as_ref().map(Spanned::span)),
            (
                "patroni_password_file",
                db.patroni_password_file.as_ref().map(Spanned::span),
            ),
            (
                "patroni_password_env",
                db.patroni_password_env.as_ref().map(Spanned::span),
            ),
        ];
        if db.check != Check::Patroni {
            if let Some((name, span)) = own.into_iter().find(|(_, s)| s.is_some()) {
                return Err(self.at(
                    span,
                    &key(name),
                    format!("{name} applies to check = \"patroni\" only"),
                ));
            }
            let (mode, root) = self.tls(db, raw, key)?;
            return Ok((None, mode, root));
        }
        let login = [
            ("session", db.session.as_ref().map(Spanned::span)),
            (
                "session_lifetime",
                db.session_lifetime.as_ref().map(Spanned::span),
            ),
            (
                "password_file",
                db.password_file.as_ref().map(Spanned::span),
            ),
            ("password_env", db.password_env.as_ref().map(Spanned::span)),
        ];
        if let Some((name, span)) = login.into_iter().find(|(_, s)| s.is_some()) {
            return Err(self.at(
                span,
                &key(name),
                format!("{name} applies to check = \"postgres\": the patroni check does not log in to the database (Patroni's own credentials are patroni_user and patroni_password_file)"),
            ));
        }
        if db.user.is_some() || db.dbname.is_some() || db.allow_cleartext_password.is_some() {
            return Err(self.at(
                None,
                &key(if db.user.is_some() { "user" } else if db.dbname.is_some() { "dbname" } else { "allow_cleartext_password" }),
                "applies to check = \"postgres\": the patroni check does not log in to the database",
            ));
        }
        let Some(url) = &db.patroni_url else {
            return Err(self.at(
                None,
                &key("patroni_url"),
                "check = \"patroni\" needs patroni_url, the node's REST API, like \"http://10.0.0.1:8008\"",
            ));
        };
        let (password, source) = self.own_password(
            &db.patroni_password_file,
            &db.patroni_password_env,
            &key("patroni_"),
        )?;
        let settings = crate::probe::patroni::Settings::new(
            url.get_ref(),
            db.patroni_user.as_ref().map(|u| u.get_ref().clone()),
            password,
            source,
        )
        .map_err(|(name, e)| {
            let span = match name {
                "patroni_user" => db
                    .patroni_password_file
                    .as_ref()
                    .map(Spanned::span)
                    .or(db.patroni_password_env.as_ref().map(Spanned::span)),
                _ => Some(url.span()),
            };
            self.at(span, &key(name), e)
        })?;
        if !settings.url.https {
            if let Some(m) = &db.sslmode {
                return Err(self.at(
                    Some(m.span()),
                    &key("sslmode"),
                    "sslmode applies to an https patroni_url; this one is http",
                ));
            }
            return Ok((Some(settings), SslMode::Disable, None));
        }
        let mode = db
            .sslmode
            .as_ref()
            .map_or(SslMode::VerifyFull, |m| *m.get_ref());
        if matches!(mode, SslMode::Disable | SslMode::Prefer) {
            return Err(self.at(
                db.sslmode.as_ref().map(Spanned::span),
                &key("sslmode"),
                format!("an https patroni_url is always TLS: expected \"require\", \"verify-ca\" or \"verify-full\" (the default), found \"{}\"", mode.name()),
            ));
        }
        let root = db.sslrootcert.as_ref().or(raw.sslrootcert.as_ref());
        let root_path = match root {
            Some(r) => {
                crate::probe::tls::load_roots(r.get_ref())
                    .map_err(|e| self.at(Some(r.span()), &key("sslrootcert"), e))?;
                Some(r.get_ref().clone())
            }
            None if mode == SslMode::Require => None,
            None => Some(PathBuf::from("system")),
        };
        Ok((Some(settings), mode, root_path))
    }
}

impl Locator<'_> {
    /// The `[dcs]` section: etcd's URLs (1 to 16, http or https), Patroni's
    /// namespace and scope, optional authentication and TLS files (checked
    /// now), the request timeout and the heartbeat.
    fn dcs(&self, d: &RawDcs) -> Result<crate::dcs::Settings, ConfigError> {
        let key = |k: &str| format!("dcs.{k}");
        let urls = d.etcd.get_ref();
        if urls.is_empty() || urls.len() > 16 {
            return Err(self.at(
                Some(d.etcd.span()),
                &key("etcd"),
                format!(
                    "expected 1 to 16 etcd client URLs, like [\"http://10.0.0.1:2379\"], found {}",
                    urls.len()
                ),
            ));
        }
        let mut etcd = Vec::new();
        for u in urls {
            let url = crate::http::Url::parse(u)
                .map_err(|e| self.at(Some(d.etcd.span()), &key("etcd"), e))?;
            if !url.base.is_empty() {
                return Err(self.at(
                    Some(d.etcd.span()),
                    &key("etcd"),
                    format!("expected an etcd client URL without a path, found {u:?}"),
                ));
            }
            etcd.push(url);
        }
        let name_ok = |s: &str| {
            !s.is_empty() && s.len() <= 256 && !s.chars().any(|c| c.is_control() || c == ' ')
        };
        let scope = d.scope.get_ref();
        if !name_ok(scope) || scope.contains('/') {
            return Err(self.at(
                Some(d.scope.span()),
                &key("scope"),
                format!("expected Patroni's scope (the cluster's name, without '/' or spaces), found {scope:?}"),
            ));
        }
        let namespace = match &d.namespace {
            None => "/service".to_owned(),
            Some(n) => {
                let v = n.get_ref();
                if !name_ok(v) || !v.starts_with('/') {
                    return Err(self.at(
                        Some(n.span()),
                        &key("namespace"),
                        format!("expected Patroni's namespace, like \"/service\", found {v:?}"),
                    ));
                }
                v.trim_end_matches('/').to_owned()
            }
        };
        let (password, _) = self.own_password(&d.password_file, &d.password_env, "dcs.")?;
        if password.is_some() != d.user.is_some() {
            return Err(self.at(
                d.user.as_ref().map(Spanned::span),
                &key("user"),
                "etcd authentication needs both user and password_file (or password_env)",
            ));
        }
        for (name, f) in [("cacert", &d.cacert), ("cert", &d.cert), ("key", &d.key)] {
            if let Some(f) = f {
                std::fs::metadata(f.get_ref()).map_err(|e| {
                    self.at(
                        Some(f.span()),
                        &key(name),
                        format!("cannot read {}: {e}", f.get_ref().display()),
                    )
                })?;
            }
        }
        if d.cert.is_some() != d.key.is_some() {
            return Err(self.at(
                d.cert.as_ref().or(d.key.as_ref()).map(Spanned::span),
                &key(if d.cert.is_some() { "key" } else { "cert" }),
                "a client certificate needs both cert and key",
            ));
        }
        let settings = crate::dcs::Settings {
            etcd,
            namespace,
            scope: scope.clone(),
            user: d.user.as_ref().map(|u| u.get_ref().clone()),
            password,
            cacert: d.cacert.as_ref().map(|c| c.get_ref().clone()),
            cert: d.cert.as_ref().map(|c| c.get_ref().clone()),
            key: d.key.as_ref().map(|c| c.get_ref().clone()),
            timeout: self.duration(
                &d.timeout,
                &key("timeout"),
                Duration::from_secs(1),
                TIMEOUT_RANGE,
            )?,
            heartbeat: match &d.heartbeat {
                None => None,
                h => Some(self.duration(
                    &h.clone(),
                    &key("heartbeat"),
                    Duration::ZERO,
                    (Duration::from_millis(100), Duration::from_secs(60)),
                )?),
            },
        };
        if settings.etcd.iter().any(|u| u.https) {
            crate::dcs::client::tls_config(&settings)
                .map_err(|e| self.at(None, &key("cacert"), e))?;
        }
        Ok(settings)
    }
}

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read the configuration: {e}"),
        })?;
        Config::parse(path, &text)
    }

    /// Parses and validates configuration `text` (named `file` in errors).
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let loc = Locator { file, text };
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| loc.at(e.span(), "", e.message().trim_end().to_owned()))?;
        let interval = loc.duration(
            &raw.interval,
            "interval",
            Duration::from_secs(1),
            INTERVAL_RANGE,
        )?;
        let timeout = loc.duration(
            &raw.timeout,
            "timeout",
            Duration::from_secs(1),
            TIMEOUT_RANGE,
        )?;
        let rise = loc.count(&raw.rise, "rise", 2)?;
        let fall = loc.count(&raw.fall, "fall", 3)?;
        let stale_after = loc.duration(
            &raw.stale_after,
            "stale_after",
            Duration::from_secs(5),
            STALE_RANGE,
        )?;
        if stale_after <= interval {
            return Err(loc.at(
                raw.stale_after.as_ref().map(Spanned::span),
                "stale_after",
                format!(
                    "must be longer than interval ({interval:?}), found {stale_after:?}: readers would see every heartbeat as stale (3 to 5 intervals is usual)"
                ),
            ));
        }
        let promotion_window = loc.duration(
            &raw.promotion_window,
            "promotion_window",
            PROMOTION_WINDOW,
            (Duration::ZERO, Duration::from_secs(86_400)),
        )?;
        let state_mode = match &raw.state_mode {
            None => 0o644,
            Some(m) => u32::from_str_radix(m.get_ref().trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o777 && m & 0o600 == 0o600 && m & 0o022 == 0)
                .ok_or_else(|| {
                    loc.at(
                        Some(m.span()),
                        "state_mode",
                        format!(
                            "expected an octal mode string such as \"0644\" or \"0640\" (owner read-write, nobody else may write), found {:?}",
                            m.get_ref()
                        ),
                    )
                })?,
        };
        let metrics_listen = match &raw.metrics_listen {
            None => None,
            Some(m) => Some(m.get_ref().parse().map_err(|_| {
                loc.at(
                    Some(m.span()),
                    "metrics_listen",
                    format!(
                        "expected an address and port such as \"127.0.0.1:9187\", found {:?}",
                        m.get_ref()
                    ),
                )
            })?),
        };
        if raw.database.is_empty() {
            return Err(loc.at(
                None,
                "database",
                "no [[database]] entries: expected 1 to 64, in priority order",
            ));
        }
        let max = dbha_protocol::MAX_ENDPOINTS as usize;
        if raw.database.len() > max {
            return Err(loc.at(
                Some(raw.database[max].span()),
                "database",
                format!(
                    "{} [[database]] entries, at most {max} are supported",
                    raw.database.len()
                ),
            ));
        }
        let mut databases: Vec<Database> = Vec::with_capacity(raw.database.len());
        for (i, db) in raw.database.iter().enumerate() {
            let key = |k: &str| format!("database[{i}].{k}");
            let db = db.get_ref();
            let alias = db.alias.get_ref();
            if dbha_protocol::header::encode_alias(alias).is_none() {
                return Err(loc.at(
                    Some(db.alias.span()),
                    &key("alias"),
                    format!(
                        "expected 1 to {} bytes with no NUL, found {alias:?}",
                        dbha_protocol::MAX_ALIAS_LEN
                    ),
                ));
            }
            if let Some(first) = databases.iter().position(|d| &d.alias == alias) {
                return Err(loc.at(
                    Some(db.alias.span()),
                    &key("alias"),
                    format!("alias {alias:?} is already used by database[{first}]: aliases must be unique"),
                ));
            }
            if db.host.get_ref().trim().is_empty() {
                return Err(loc.at(
                    Some(db.host.span()),
                    &key("host"),
                    "expected a host name or address, found an empty string",
                ));
            }
            // The host is published to applications, which connect to it as written.
            if dbha_protocol::header::encode_address(db.host.get_ref(), 1).is_none() {
                return Err(loc.at(
                    Some(db.host.span()),
                    &key("host"),
                    format!(
                        "expected a host name or address of at most {} bytes with no NUL",
                        dbha_protocol::MAX_HOST_LEN
                    ),
                ));
            }
            if db.port == 0 {
                return Err(loc.at(
                    None,
                    &key("port"),
                    "expected a port from 1 to 65535, found 0",
                ));
            }
            let (patroni, sslmode, sslrootcert) = loc.patroni(db, &raw, &key)?;
            let mysql = if db.check == Check::Mysql {
                Some(loc.mysql(db, &raw, &key)?)
            } else {
                if let Some(k) = &db.server_public_key {
                    return Err(loc.at(
                        Some(k.span()),
                        &key("server_public_key"),
                        "server_public_key applies to check = \"mysql\" only",
                    ));
                }
                None
            };
            let sees_roles = db.check.sees_roles() || mysql.as_ref().is_some_and(|m| m.login);
            let (own, defaults) = (db.credentials(), raw.credentials());
            let (password, password_source) = loc.password(&own, &defaults, &key(""))?;
            let credential = |own: &Option<String>, default: &Option<String>| {
                own.clone()
                    .or_else(|| default.clone())
                    .unwrap_or_else(|| "postgres".to_owned())
            };
            let own_interval =
                loc.duration(&db.interval, &key("interval"), interval, INTERVAL_RANGE)?;
            let own_timeout = loc.duration(&db.timeout, &key("timeout"), timeout, TIMEOUT_RANGE)?;
            let timing = loc.timing(db, &raw, own_interval, own_timeout, &key)?;
            let roles_only = |name: &str, span: Option<Range<usize>>| -> Result<(), ConfigError> {
                if !sees_roles && span.is_some() {
                    return Err(loc.at(
                        span,
                        &key(name),
                        format!("{name} applies to check = \"postgres\" or \"patroni\", and to check = \"mysql\" with a user"),
                    ));
                }
                Ok(())
            };
            roles_only("session", db.session.as_ref().map(Spanned::span))?;
            roles_only(
                "session_lifetime",
                db.session_lifetime.as_ref().map(Spanned::span),
            )?;
            let lifetime = db
                .session_lifetime
                .as_ref()
                .or(raw.session_lifetime.as_ref())
                .cloned();
            let session_lifetime = loc.duration(
                &lifetime,
                &key("session_lifetime"),
                SESSION_LIFETIME,
                LIFETIME_RANGE,
            )?;
            roles_only(
                "admission_interval",
                db.admission_interval.as_ref().map(Spanned::span),
            )?;
            let admission = db
                .admission_interval
                .as_ref()
                .or(raw.admission_interval.as_ref())
                .cloned();
            let admission_interval = loc.duration(
                &admission,
                &key("admission_interval"),
                ADMISSION_INTERVAL,
                LIFETIME_RANGE,
            )?;
            roles_only(
                "max_replica_lag",
                db.max_replica_lag.as_ref().map(Spanned::span),
            )?;
            roles_only(
                "max_replica_lag_bytes",
                db.max_replica_lag_bytes.as_ref().map(Spanned::span),
            )?;
            let max_replica_lag = match db.max_replica_lag.as_ref().or(raw.max_replica_lag.as_ref())
            {
                None => None,
                lag => Some(loc.duration(
                    &lag.cloned(),
                    &key("max_replica_lag"),
                    Duration::ZERO,
                    LAG_RANGE,
                )?),
            };
            let transactions = db
                .max_replica_lag_transactions
                .as_ref()
                .or(raw.max_replica_lag_transactions.as_ref());
            let max_replica_lag_transactions = match transactions {
                Some(t) if db.check == Check::Mysql => Some(*t.get_ref()),
                Some(t) if db.max_replica_lag_transactions.is_some() => {
                    return Err(loc.at(
                        Some(t.span()),
                        &key("max_replica_lag_transactions"),
                        "max_replica_lag_transactions applies to check = \"mysql\" only (GTID transactions); the others take max_replica_lag_bytes",
                    ))
                }
                _ => None,
            };
            let max_replica_lag_bytes = db
                .max_replica_lag_bytes
                .as_ref()
                .or(raw.max_replica_lag_bytes.as_ref())
                .map(|b| *b.get_ref());
            databases.push(Database {
                alias: alias.clone(),
                host: db.host.get_ref().clone(),
                port: db.port,
                check: db.check,
                interval: own_interval,
                fastinter: timing.fastinter,
                timeout: own_timeout,
                connect_timeout: timing.connect_timeout,
                rise: loc.count(&db.rise, &key("rise"), rise)?,
                fall: loc.count(&db.fall, &key("fall"), fall)?,
                session: db
                    .session
                    .as_ref()
                    .or(raw.session.as_ref())
                    .map_or(Session::Held, |s| *s.get_ref()),
                session_lifetime,
                admission_interval,
                max_replica_lag: if !sees_roles { None } else { max_replica_lag },
                max_replica_lag_bytes: if !sees_roles {
                    None
                } else {
                    max_replica_lag_bytes
                },
                max_replica_lag_transactions: if !sees_roles {
                    None
                } else {
                    max_replica_lag_transactions
                },
                user: credential(own.user, defaults.user),
                dbname: credential(own.dbname, defaults.dbname),
                password,
                password_source,
                sslmode,
                sslrootcert,
                allow_cleartext_password: db
                    .allow_cleartext_password
                    .or(raw.allow_cleartext_password)
                    .unwrap_or(false),
                patroni,
                mysql,
                member: db.member.as_ref().map(|m| m.get_ref().clone()),
            });
        }
        let dcs = match &raw.dcs {
            None => {
                if let Some((i, m)) = raw
                    .database
                    .iter()
                    .enumerate()
                    .find_map(|(i, d)| Some((i, d.get_ref().member.as_ref()?)))
                {
                    return Err(loc.at(
                        Some(m.span()),
                        &format!("database[{i}].member"),
                        "member names a Patroni member, which only [dcs] uses",
                    ));
                }
                None
            }
            Some(d) => Some(loc.dcs(d.get_ref())?),
        };
        if let Some(w) = &raw.writes {
            if dcs.is_some() && *w.get_ref() == Writes::Any {
                return Err(loc.at(
                    Some(w.span()),
                    "writes",
                    "with [dcs], writes go to Patroni's leader only: writes = \"any\" does not apply (leave it out)",
                ));
            }
        }
        let writes = raw.writes.as_ref().map_or(
            if dcs.is_some() {
                Writes::Primary
            } else {
                Writes::Any
            },
            |w| *w.get_ref(),
        );
        let reads = raw.reads.as_ref().map_or(Reads::Primary, |r| *r.get_ref());
        // Under [dcs] the leader comes from etcd, and roles for reads from the
        // members' keys where a probe does not see them.
        if dcs.is_none() && (writes != Writes::Any || reads != Reads::Primary) {
            if let Some((i, d)) = databases.iter().enumerate().find(|(_, d)| !d.sees_roles()) {
                let span = raw
                    .writes
                    .as_ref()
                    .map(Spanned::span)
                    .or(raw.reads.as_ref().map(Spanned::span));
                return Err(loc.at(
                    span,
                    if writes != Writes::Any { "writes" } else { "reads" },
                    format!(
                        "roles are needed, and database[{i}] ({}) has check = \"{}\", which cannot see them{}: use check = \"postgres\" (with credentials), \"patroni\", or \"mysql\" with a user",
                        d.alias,
                        d.check.name(),
                        if d.check == Check::Mysql { " without a user" } else { "" }
                    ),
                ));
            }
        }
        Ok(Config {
            state_file: raw
                .state_file
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_FILE)),
            interval,
            timeout,
            rise,
            fall,
            failback: raw.failback.unwrap_or(Failback::Sticky),
            writes,
            reads,
            stale_after,
            promotion_window,
            state_mode,
            metrics_listen,
            databases,
            dcs,
        })
    }

    /// Hosts that do not resolve now: worth a warning, not an error (DNS may come
    /// up after the agent).
    pub fn unresolvable_hosts(&self) -> Vec<String> {
        self.databases
            .iter()
            .filter_map(|d| match (d.host.as_str(), d.port).to_socket_addrs() {
                Ok(a) if a.len() > 0 => None,
                Ok(_) => Some(format!(
                    "{}: host {:?} resolves to no address",
                    d.alias, d.host
                )),
                Err(e) => Some(format!(
                    "{}: host {:?} does not resolve: {e}",
                    d.alias, d.host
                )),
            })
            .collect()
    }

    /// The rules a decision follows.
    pub fn policy(&self) -> crate::decide::Policy {
        crate::decide::Policy {
            failback: self.failback,
            writes: self.writes,
            reads: self.reads,
        }
    }

    /// What the state file publishes of each database: alias, host and port.
    pub fn published_endpoints(&self) -> Vec<dbha_protocol::Endpoint> {
        self.databases
            .iter()
            .map(|d| dbha_protocol::Endpoint::new(&d.alias, &d.host, d.port))
            .collect()
    }
}

impl Failback {
    /// As spelled in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Failback::Sticky => "sticky",
            Failback::Auto => "auto",
        }
    }
}

impl Check {
    /// As spelled in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Check::Tcp => "tcp",
            Check::Postgres => "postgres",
            Check::Patroni => "patroni",
            Check::Mysql => "mysql",
        }
    }
}

impl Writes {
    /// As spelled in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Writes::Any => "any",
            Writes::Primary => "primary",
        }
    }
}

impl Reads {
    /// As spelled in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Reads::Primary => "primary",
            Reads::PreferStandby => "prefer-standby",
            Reads::Any => "any",
        }
    }
}

/// A duration as the configuration writes it: "250ms", "2s", "1.5s".
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// A TOML string, quoted and escaped.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The settings the postgres and patroni checks share, as `check` prints them.
fn write_admission_and_lag(f: &mut fmt::Formatter<'_>, d: &Database) -> fmt::Result {
    writeln!(
        f,
        "admission_interval = \"{}\"",
        format_duration(d.admission_interval)
    )?;
    if let Some(l) = d.max_replica_lag {
        writeln!(f, "max_replica_lag = \"{}\"", format_duration(l))?;
    }
    if let Some(b) = d.max_replica_lag_bytes {
        writeln!(f, "max_replica_lag_bytes = {b}")?;
    }
    if let Some(t) = d.max_replica_lag_transactions {
        writeln!(f, "max_replica_lag_transactions = {t}")?;
    }
    Ok(())
}

impl fmt::Display for Config {
    /// The resolved configuration, as `dbha-agent check` prints it: every setting,
    /// defaults filled in, in the configuration's own keys and spelling (a valid
    /// configuration file; passwords are named by their source, not printed).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = |p: &Path| quoted(&p.display().to_string());
        writeln!(f, "state_file = {}", path(&self.state_file))?;
        writeln!(f, "state_mode = \"{:04o}\"", self.state_mode)?;
        if let Some(m) = self.metrics_listen {
            writeln!(f, "metrics_listen = \"{m}\"")?;
        }
        // The heartbeat interval, and the defaults each database below resolved.
        writeln!(f, "interval = \"{}\"", format_duration(self.interval))?;
        writeln!(f, "timeout = \"{}\"", format_duration(self.timeout))?;
        writeln!(f, "rise = {}", self.rise)?;
        writeln!(f, "fall = {}", self.fall)?;
        writeln!(f, "stale_after = \"{}\"", format_duration(self.stale_after))?;
        writeln!(
            f,
            "promotion_window = \"{}\"",
            format_duration(self.promotion_window)
        )?;
        writeln!(f, "failback = \"{}\"", self.failback.name())?;
        writeln!(f, "writes = \"{}\"", self.writes.name())?;
        writeln!(f, "reads = \"{}\"", self.reads.name())?;
        for (i, d) in self.databases.iter().enumerate() {
            writeln!(
                f,
                "\n[[database]] # {i}{}",
                if i == 0 { ", the highest priority" } else { "" }
            )?;
            writeln!(f, "alias = {}", quoted(&d.alias))?;
            writeln!(f, "host = {}", quoted(&d.host))?;
            writeln!(f, "port = {}", d.port)?;
            writeln!(f, "check = \"{}\"", d.check.name())?;
            if let Some(m) = &d.member {
                writeln!(f, "member = {}", quoted(m))?;
            }
            writeln!(f, "interval = \"{}\"", format_duration(d.interval))?;
            writeln!(f, "fastinter = \"{}\"", format_duration(d.fastinter))?;
            writeln!(f, "timeout = \"{}\"", format_duration(d.timeout))?;
            writeln!(
                f,
                "connect_timeout = \"{}\"",
                format_duration(d.connect_timeout)
            )?;
            writeln!(f, "rise = {}", d.rise)?;
            writeln!(f, "fall = {}", d.fall)?;
            if let Some(p) = &d.patroni {
                writeln!(f, "patroni_url = {}", quoted(&p.url.to_string()))?;
                if let Some(u) = &p.user {
                    writeln!(f, "patroni_user = {}", quoted(u))?;
                    writeln!(
                        f,
                        "# patroni password: {}",
                        p.password_source.as_deref().unwrap_or("none")
                    )?;
                }
                if p.url.https {
                    writeln!(f, "sslmode = \"{}\"", d.sslmode.name())?;
                    if let Some(r) = &d.sslrootcert {
                        writeln!(f, "sslrootcert = {}", path(r))?;
                    }
                }
                write_admission_and_lag(f, d)?;
            }
            if d.check == Check::Postgres {
                writeln!(f, "session = \"{}\"", d.session.name())?;
                writeln!(
                    f,
                    "session_lifetime = \"{}\"",
                    format_duration(d.session_lifetime)
                )?;
                write_admission_and_lag(f, d)?;
                writeln!(f, "user = {}", quoted(&d.user))?;
                writeln!(f, "dbname = {}", quoted(&d.dbname))?;
                writeln!(
                    f,
                    "# password: {}",
                    d.password_source.as_deref().unwrap_or("none")
                )?;
                writeln!(f, "sslmode = \"{}\"", d.sslmode.name())?;
                if let Some(r) = &d.sslrootcert {
                    writeln!(f, "sslrootcert = {}", path(r))?;
                }
                writeln!(
                    f,
                    "allow_cleartext_password = {}",
                    d.allow_cleartext_password
                )?;
            }
            if d.check == Check::Mysql && d.logs_in() {
                writeln!(f, "session = \"{}\"", d.session.name())?;
                writeln!(
                    f,
                    "session_lifetime = \"{}\"",
                    format_duration(d.session_lifetime)
                )?;
                write_admission_and_lag(f, d)?;
                writeln!(f, "user = {}", quoted(&d.user))?;
                writeln!(
                    f,
                    "# password: {}",
                    d.password_source.as_deref().unwrap_or("none")
                )?;
                writeln!(f, "sslmode = \"{}\"", d.sslmode.name())?;
                if let Some(r) = &d.sslrootcert {
                    writeln!(f, "sslrootcert = {}", path(r))?;
                }
                if d.mysql
                    .as_ref()
                    .is_some_and(|m| m.server_public_key.is_some())
                {
                    writeln!(f, "# server_public_key: configured")?;
                }
            }
        }
        if let Some(s) = &self.dcs {
            writeln!(f, "\n[dcs]")?;
            let urls: Vec<String> = s.etcd.iter().map(|u| quoted(&u.to_string())).collect();
            writeln!(f, "etcd = [{}]", urls.join(", "))?;
            writeln!(f, "namespace = {}", quoted(&s.namespace))?;
            writeln!(f, "scope = {}", quoted(&s.scope))?;
            if let Some(u) = &s.user {
                writeln!(f, "user = {}", quoted(u))?;
                writeln!(f, "# password: configured")?;
            }
            for (k, v) in [("cacert", &s.cacert), ("cert", &s.cert), ("key", &s.key)] {
                if let Some(p) = v {
                    writeln!(f, "{k} = {}", path(p))?;
                }
            }
            writeln!(f, "timeout = \"{}\"", format_duration(s.timeout))?;
            match s.heartbeat {
                Some(h) => writeln!(f, "heartbeat = \"{}\"", format_duration(h))?,
                None => writeln!(f, "# heartbeat: a quarter of Patroni's ttl (1s to 10s)")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("dbha.toml"), text)
    }

    const THREE: &str = r#"
interval = "250ms"
failback = "auto"

[[database]]
alias = "default"
host = "127.0.0.1"
port = 5432
check = "postgres"

[[database]]
alias = "failover1"
host = "127.0.0.1"
port = 5433
check = "tcp"
fall = 5
timeout = "2s"
"#;

    #[test]
    fn defaults_and_overrides_resolve() {
        let c = parse(THREE).unwrap();
        assert_eq!(c.state_file, Path::new("/run/dbha/state"));
        assert_eq!(c.interval, Duration::from_millis(250));
        assert_eq!((c.rise, c.fall, c.failback), (2, 3, Failback::Auto));
        assert_eq!(c.stale_after, Duration::from_secs(5));
        assert_eq!(c.databases[0].timeout, Duration::from_secs(1));
        assert_eq!(c.databases[0].interval, Duration::from_millis(250));
        assert_eq!(
            (c.databases[1].fall, c.databases[1].timeout),
            (5, Duration::from_secs(2))
        );
        assert_eq!(c.databases[1].rise, 2);
        let aliases: Vec<String> = c
            .published_endpoints()
            .into_iter()
            .map(|e| e.alias)
            .collect();
        assert_eq!(aliases, ["default", "failover1"]);
    }

    const PATRONI: &str = r#"
writes = "primary"
reads = "prefer-standby"
sslmode = "require"

[[database]]
alias = "pg0"
host = "10.0.0.1"
port = 5432
check = "patroni"
patroni_url = "http://10.0.0.1:8008"
max_replica_lag_bytes = 1000000

[[database]]
alias = "pg1"
host = "10.0.0.2"
port = 5432
check = "patroni"
patroni_url = "https://pg1.example:8008"
patroni_user = "dbha"
patroni_password_env = "DBHA_TEST_PATRONI_PASSWORD"
"#;

    #[test]
    fn the_patroni_check_has_its_own_settings() {
        std::env::set_var("DBHA_TEST_PATRONI_PASSWORD", "s3cret");
        let c = parse(PATRONI).unwrap();
        let p0 = c.databases[0].patroni.as_ref().unwrap();
        assert_eq!(
            (p0.url.host.as_str(), p0.url.port, p0.url.https),
            ("10.0.0.1", 8008, false)
        );
        assert_eq!(c.databases[0].max_replica_lag_bytes, Some(1_000_000));
        assert_eq!(c.databases[0].admission_interval, Duration::from_secs(10));
        let p1 = c.databases[1].patroni.as_ref().unwrap();
        assert_eq!(p1.user.as_deref(), Some("dbha"));
        assert_eq!(p1.password.as_ref().map(Secret::expose), Some("s3cret"));
        // https verifies the certificate and its name by default, against the
        // system's roots; the top-level sslmode is the databases', not Patroni's.
        assert_eq!(c.databases[1].sslmode, SslMode::VerifyFull);
        assert_eq!(
            c.databases[1].sslrootcert.as_deref(),
            Some(Path::new("system"))
        );
        let shown = c.to_string();
        assert!(
            shown.contains("patroni_url = \"https://pg1.example:8008\""),
            "{shown}"
        );
        assert!(!shown.contains("s3cret"), "{shown}");
        // What `check` prints is a configuration that parses to the same
        // (passwords are named by their source, not printed).
        let again = parse(&shown).unwrap();
        assert_eq!(again.databases[0], c.databases[0]);
        let p = again.databases[1].patroni.as_ref().unwrap();
        assert_eq!((&p.url, &p.user), (&p1.url, &p1.user));
    }

    #[test]
    fn patroni_settings_are_checked_where_they_are_written() {
        let cases = [
            (
                "patroni_url = \"http://10.0.0.1:8008\"\n",
                "",
                "database[0].patroni_url: check = \"patroni\" needs patroni_url",
            ),
            (
                "check = \"patroni\"",
                "check = \"tcp\"",
                "patroni_url applies to check = \"patroni\" only",
            ),
            (
                "\"http://10.0.0.1:8008\"",
                "\"10.0.0.1:8008\"",
                "expected a URL like",
            ),
            (
                "\"http://10.0.0.1:8008\"",
                "\"http://10.0.0.1:8008/patroni\"",
                "the REST API's address only",
            ),
            (
                "\"http://10.0.0.1:8008\"",
                "\"http://me:pw@10.0.0.1:8008\"",
                "holds credentials",
            ),
            (
                "max_replica_lag_bytes = 1000000\n",
                "session = \"held\"\n",
                "does not log in",
            ),
            (
                "max_replica_lag_bytes = 1000000\n",
                "user = \"x\"\n",
                "database[0].user",
            ),
            (
                "max_replica_lag_bytes = 1000000\n",
                "sslmode = \"require\"\n",
                "this one is http",
            ),
            (
                "patroni_user = \"dbha\"\n",
                "patroni_user = \"dbha\"\nsslmode = \"prefer\"\n",
                "always TLS",
            ),
            ("patroni_user = \"dbha\"\n", "", "without patroni_user"),
        ];
        std::env::set_var("DBHA_TEST_PATRONI_PASSWORD", "s3cret");
        for (from, to, want) in cases {
            let text = PATRONI.replacen(from, to, 1);
            assert_ne!(text, PATRONI, "{from}");
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(want), "{from} -> {to}: {e}");
        }
    }

    #[test]
    fn admission_interval_defaults_to_10s_and_is_for_the_postgres_check() {
        let c = parse(THREE).unwrap();
        assert_eq!(c.databases[0].admission_interval, Duration::from_secs(10));
        let text = THREE.replace(
            "check = \"postgres\"\n",
            "check = \"postgres\"\nadmission_interval = \"30s\"\n",
        );
        assert_eq!(
            parse(&text).unwrap().databases[0].admission_interval,
            Duration::from_secs(30)
        );
        let text = THREE.replace("fall = 5\n", "fall = 5\nadmission_interval = \"30s\"\n");
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains("admission_interval applies to check = \"postgres\" or \"patroni\", and to check = \"mysql\" with a user"),
            "{e}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "5", "fast", "1 fortnight", "-1s", "s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_key_is_located() {
        let e = parse("intervall = \"1s\"\n").unwrap_err();
        assert_eq!((e.line, e.column), (1, 1));
        assert!(e.message.contains("unknown field `intervall`"), "{e}");
        let e = parse(&THREE.replace("fall = 5", "fall = 5\nretries = 3")).unwrap_err();
        assert!(e.message.contains("unknown field `retries`"), "{e}");
        assert_eq!(e.line, 17);
    }

    #[test]
    fn bad_duration_names_line_key_and_expectation() {
        let e = parse(&THREE.replace("\"250ms\"", "\"fast\"")).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().starts_with("dbha.toml:2:"), "{e}");
        assert!(e.message.contains("expected a duration like"), "{e}");
        let e = parse(&THREE.replace("timeout = \"2s\"", "timeout = \"5m\"")).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (17, "database[1].timeout"));
        assert!(
            e.message.contains("expected a duration from 10ms to 60s"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_alias_points_at_the_second() {
        let e = parse(&THREE.replace("\"failover1\"", "\"default\"")).unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (12, "database[1].alias"));
        assert!(e.message.contains("already used by database[0]"), "{e}");
    }

    #[test]
    fn limits_are_enforced() {
        let e = parse("interval = \"1s\"\n").unwrap_err();
        assert!(e.message.contains("no [[database]] entries"), "{e}");
        let long = "x".repeat(64);
        let e = parse(&THREE.replace("\"failover1\"", &format!("\"{long}\""))).unwrap_err();
        assert!(e.message.contains("1 to 63 bytes"), "{e}");
        let e = parse(&THREE.replace("fall = 5", "fall = 0")).unwrap_err();
        assert!(
            e.message
                .contains("expected a count from 1 to 100, found 0"),
            "{e}"
        );
        let e = parse(&THREE.replace("port = 5433", "port = 70000")).unwrap_err();
        assert_eq!(e.line, 14, "{e}");
        let many: String = (0..65)
            .map(|i| {
                format!(
                    "[[database]]\nalias = \"db{i}\"\nhost = \"h\"\nport = 1\ncheck = \"tcp\"\n"
                )
            })
            .collect();
        let e = parse(&many).unwrap_err();
        assert!(
            e.message.contains("65 [[database]] entries, at most 64"),
            "{e}"
        );
        let e = parse(&THREE.replace("check = \"tcp\"", "check = \"ping\"")).unwrap_err();
        assert!(e.message.contains("unknown variant `ping`"), "{e}");
    }

    #[test]
    fn stale_after_must_exceed_interval() {
        let e = parse(&THREE.replace("failback", "stale_after = \"200ms\"\nfailback")).unwrap_err();
        assert_eq!(e.key, "stale_after");
        assert!(e.message.contains("must be longer than interval"), "{e}");
    }

    #[test]
    fn state_mode_is_octal_and_never_world_writable() {
        let c = parse(&format!("state_mode = \"0640\"\n{THREE}")).unwrap();
        assert_eq!(c.state_mode, 0o640);
        for bad in ["\"0666\"", "\"rw\"", "\"0400\""] {
            let e = parse(&format!("state_mode = {bad}\n{THREE}")).unwrap_err();
            assert_eq!(e.key, "state_mode", "{bad}: {e}");
        }
    }

    #[test]
    fn unresolvable_host_is_a_warning() {
        let c = parse(&THREE.replace(
            "host = \"127.0.0.1\"\nport = 5433",
            "host = \"no-such-host.invalid\"\nport = 5433",
        ))
        .unwrap();
        let w = c.unresolvable_hosts();
        assert_eq!(w.len(), 1);
        assert!(
            w[0].starts_with("failover1: host \"no-such-host.invalid\""),
            "{w:?}"
        );
    }

    fn with_password(line: &str) -> String {
        THREE.replace(
            "check = \"postgres\"\n",
            &format!("check = \"postgres\"\n{line}\n"),
        )
    }

    #[test]
    fn a_password_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\nignored\n").unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
        let text = with_password(&format!("password_file = \"{}\"", pw.display()));
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key, "database[0].password_file");
        assert!(
            e.message
                .contains("permissions 0644; expected 0600 or less"),
            "{e}"
        );
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = parse(&text).unwrap();
        assert_eq!(
            c.databases[0].password.as_ref().map(Secret::expose),
            Some("s3cret")
        );
        assert_eq!(
            format!("{:?}", c.databases[0].password),
            "Some(Secret(***))"
        );
        assert!(!c.to_string().contains("s3cret"));
    }

    #[test]
    fn password_env_and_both_sources() {
        std::env::set_var("DBHA_TEST_PW_CONFIG", "from-env");
        let c = parse(&format!("password_env = \"DBHA_TEST_PW_CONFIG\"\n{THREE}")).unwrap();
        // A top-level default applies to every database.
        assert!(c
            .databases
            .iter()
            .all(|d| d.password.as_ref().map(Secret::expose) == Some("from-env")));
        let e = parse(&with_password("password_env = \"DBHA_TEST_PW_UNSET\"")).unwrap_err();
        assert!(e.message.contains("DBHA_TEST_PW_UNSET is not set"), "{e}");
        let e = parse(&with_password(
            "password_env = \"X\"\npassword_file = \"/etc/x\"",
        ))
        .unwrap_err();
        assert!(e.message.contains("not both"), "{e}");
    }

    #[test]
    fn the_mysql_check_logs_in_and_sees_roles_only_with_a_user() {
        let one = |extra: &str| {
            parse(&format!(
                "[[database]]\nalias = \"db0\"\nhost = \"127.0.0.1\"\nport = 3306\ncheck = \"mysql\"\n{extra}"
            ))
        };
        let c = one("").unwrap();
        assert_eq!(c.databases[0].check, Check::Mysql);
        assert!(!c.databases[0].logs_in() && !c.databases[0].sees_roles());
        for key in [
            "password_env = \"PW\"",
            "session = \"held\"",
            "max_replica_lag = \"5s\"",
            "server_public_key = \"/nonexistent\"",
        ] {
            let e = one(key).unwrap_err();
            assert!(
                e.message.contains(
                    "needs user: without one, check = \"mysql\" judges the server's greeting only"
                ),
                "{key}: {e}"
            );
        }
        let e = one("sslmode = \"require\"").unwrap_err();
        assert!(
            e.message.contains("and to check = \"mysql\" with a user"),
            "{e}"
        );
        let e = parse(
            "writes = \"primary\"\n[[database]]\nalias = \"db0\"\nhost = \"127.0.0.1\"\nport = 3306\ncheck = \"mysql\"\n",
        )
        .unwrap_err();
        assert!(
            e.message
                .contains("has check = \"mysql\", which cannot see them without a user"),
            "{e}"
        );

        // With a user (its own or the top level's): a login, TLS, a held
        // session, roles.
        let c = one("user = \"dbha\"\npassword_env = \"HOME\"\nsslmode = \"require\"\nsession = \"per-probe\"\nmax_replica_lag = \"5s\"").unwrap();
        let d = &c.databases[0];
        assert!(d.logs_in() && d.sees_roles());
        assert_eq!(
            (d.user.as_str(), d.sslmode, d.session),
            ("dbha", SslMode::Require, Session::PerProbe)
        );
        assert_eq!(d.max_replica_lag, Some(Duration::from_secs(5)));
        let c = parse(
            "user = \"dbha\"\nwrites = \"primary\"\n[[database]]\nalias = \"db0\"\nhost = \"127.0.0.1\"\nport = 3306\ncheck = \"mysql\"\n",
        )
        .unwrap();
        assert!(c.databases[0].sees_roles());
        assert_eq!(c.databases[0].session, Session::Held);
        for (key, says) in [
            ("dbname = \"app\"", "logs in without a default database"),
            (
                "allow_cleartext_password = true",
                "logs in without a default database",
            ),
            (
                "server_public_key = \"/nonexistent\"",
                "cannot read /nonexistent",
            ),
        ] {
            let e = one(&format!("user = \"dbha\"\n{key}")).unwrap_err();
            assert!(e.message.contains(says), "{key}: {e}");
        }
        let c =
            one("user = \"dbha\"\nmax_replica_lag_bytes = 100\nmax_replica_lag_transactions = 10")
                .unwrap();
        let d = &c.databases[0];
        assert_eq!(
            (d.max_replica_lag_bytes, d.max_replica_lag_transactions),
            (Some(100), Some(10))
        );
        let e = parse("[[database]]\nalias = \"db0\"\nhost = \"h\"\nport = 5432\ncheck = \"postgres\"\nmax_replica_lag_transactions = 10\n").unwrap_err();
        assert!(
            e.message
                .contains("applies to check = \"mysql\" only (GTID transactions)"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let not_a_key = dir.path().join("key.pem");
        std::fs::write(
            &not_a_key,
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        let e = one(&format!(
            "user = \"dbha\"\nserver_public_key = \"{}\"",
            not_a_key.display()
        ))
        .unwrap_err();
        assert!(e.message.contains("not an RSA public key in PEM"), "{e}");
        let e = parse("[[database]]\nalias = \"db0\"\nhost = \"h\"\nport = 5432\ncheck = \"postgres\"\nserver_public_key = \"/k\"\n").unwrap_err();
        assert!(
            e.message.contains("applies to check = \"mysql\" only"),
            "{e}"
        );
    }

    #[test]
    fn roles_need_the_postgres_check() {
        let e = parse(&format!("writes = \"primary\"\n{THREE}")).unwrap_err();
        assert_eq!(e.key, "writes");
        assert!(
            e.message
                .contains("database[1] (failover1) has check = \"tcp\""),
            "{e}"
        );
        let all_pg = THREE.replace("check = \"tcp\"", "check = \"postgres\"");
        let c = parse(&format!(
            "writes = \"primary\"\nreads = \"prefer-standby\"\n{all_pg}"
        ))
        .unwrap();
        assert_eq!((c.writes, c.reads), (Writes::Primary, Reads::PreferStandby));
        let e = parse(&format!("reads = \"standby\"\n{all_pg}")).unwrap_err();
        assert!(e.message.contains("unknown variant `standby`"), "{e}");
    }

    #[test]
    fn tls_settings_default_to_prefer_and_verifying_modes_need_certificates() {
        let all_pg = THREE.replace("check = \"tcp\"", "check = \"postgres\"");
        let c = parse(&all_pg).unwrap();
        assert!(c
            .databases
            .iter()
            .all(|d| d.sslmode == SslMode::Prefer && !d.allow_cleartext_password));
        let e = parse(&format!("sslmode = \"verify-full\"\n{all_pg}")).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("database[0].sslmode", 1), "{e}");
        assert!(e.message.contains("needs sslrootcert"), "{e}");
        let e = parse(&format!(
            "sslmode = \"verify-ca\"\nsslrootcert = \"/nonexistent/ca.pem\"\n{all_pg}"
        ))
        .unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.line),
            ("database[0].sslrootcert", 2),
            "{e}"
        );
        assert!(e.message.contains("cannot read /nonexistent/ca.pem"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "not a certificate\n").unwrap();
        let e = parse(&format!(
            "sslmode = \"verify-ca\"\nsslrootcert = \"{}\"\n{all_pg}",
            not_pem.display()
        ))
        .unwrap_err();
        assert!(e.message.contains("holds no certificate"), "{e}");
        let e = parse(&format!("sslmode = \"strict\"\n{all_pg}")).unwrap_err();
        assert!(e.message.contains("unknown variant `strict`"), "{e}");
        // Per database, and only where it means something.
        let e = parse(&THREE.replace("fall = 5", "fall = 5\nsslmode = \"require\"")).unwrap_err();
        assert_eq!(e.key, "database[1].sslmode", "{e}");
        let c = parse(&format!(
            "allow_cleartext_password = true\n{}",
            all_pg.replace("fall = 5", "fall = 5\nsslmode = \"disable\"")
        ))
        .unwrap();
        assert_eq!(
            (c.databases[0].sslmode, c.databases[1].sslmode),
            (SslMode::Prefer, SslMode::Disable)
        );
        assert!(c.databases[1].allow_cleartext_password);
        assert!(c
            .to_string()
            .contains("sslmode = \"disable\"\nallow_cleartext_password = true"));
    }

    #[test]
    fn the_printed_configuration_reads_back_as_the_same_configuration() {
        let all_pg = THREE.replace("check = \"tcp\"", "check = \"postgres\"");
        for text in [
            THREE.to_owned(),
            format!("writes = \"primary\"\nreads = \"prefer-standby\"\nstate_mode = \"0640\"\nmetrics_listen = \"127.0.0.1:9187\"\ntimeout = \"1.5s\"\n{all_pg}"),
        ] {
            let c = parse(&text).unwrap();
            let printed = c.to_string();
            assert!(!printed.contains("Sticky") && !printed.contains("Tcp"), "{printed}");
            let again = parse(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
            assert_eq!(again, c, "{printed}");
        }
    }
}
