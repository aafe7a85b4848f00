//! The database layer: connections, read-only transactions, timeouts, cancellation,
//! and rows → JSON.
//!
//! It knows nothing about MCP or tool files: it takes rendered statements and limits,
//! and returns rows or a [`DbError`]. The only SQL it owns is infrastructure
//! (`probe.sql` and the `set_config` calls); tool SQL comes from `template`.

pub mod dsn;
pub mod fanout;
mod nonce;
pub mod value;
mod write;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::future::{join_all, try_join_all};
use serde_json::Value;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;

pub use dsn::{Dsn, DsnError};
use value::{Bind, ColumnDecoder, Raw};

/// How to reach the coordinator.
#[derive(Debug, Clone)]
pub struct DbConfig {
    pub dsn: Dsn,
    /// Direct connections to workers for fan-out, matched to nodes by host and port;
    /// other nodes are reached with the coordinator's settings and the node's address.
    pub worker_dsns: Vec<Dsn>,
    pub connect_timeout: Duration,
    pub pool_size: usize,
    pub application_name: String,
    /// The longest any statement on these connections may run or wait for a lock,
    /// set when the connection starts (so it covers every Parse, even outside a
    /// call's own transaction); a call lowers it for its own statements.
    pub timeout_ceiling: Duration,
}

/// One statement to run: SQL with `$n` placeholders, its values, and a row cap.
#[derive(Debug, Clone)]
pub struct Statement {
    pub sql: String,
    pub binds: Vec<Value>,
    /// At most this many rows are fetched (the protocol stops the server there).
    pub max_rows: usize,
    /// Kept prepared on the connection for the next call with the same text. Text
    /// that varies per call (a caller's SQL) is prepared for this call only, so the
    /// server keeps no state for it.
    pub cached: bool,
}

impl Statement {
    /// A statement of a tool file: its text recurs, so it stays prepared.
    pub fn new(sql: impl Into<String>, binds: Vec<Value>, max_rows: usize) -> Statement {
        Statement {
            sql: sql.into(),
            binds,
            max_rows,
            cached: true,
        }
    }

    /// Prepared for this call only and closed after it.
    pub fn once(mut self) -> Statement {
        self.cached = false;
        self
    }
}

/// What happens to the connection after a read-only call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterCall {
    /// Back to the pool.
    Reuse,
    /// Closed: the call ran a caller's statement (EXPLAIN ANALYZE) and the session
    /// is not trusted to be as it was.
    Discard,
}

/// At most this many statements stay prepared per connection; past it the cache is
/// emptied (each statement is closed on the server), so hot reloads and many tools
/// cannot grow a backend without bound.
const STATEMENT_CACHE_MAX: usize = 128;

/// The per-call settings, sent before the first Parse of the call. `set_config(...,
/// true)` is SET LOCAL with bind parameters: it ends with the transaction, so pooled
/// connections keep nothing. The lexer setting is pinned so the server reads text as
/// the parser of `sql` does. `$3` is `jit`: see [`jit_for`].
const CALL_SETTINGS: &str = "SELECT pg_catalog.set_config('statement_timeout', $1, true), \
     pg_catalog.set_config('lock_timeout', $1, true), \
     pg_catalog.set_config('idle_in_transaction_session_timeout', $2, true), \
     pg_catalog.set_config('standard_conforming_strings', 'on', true), \
     pg_catalog.set_config('jit', $3, true), \
     pg_catalog.set_config('citus.node_connection_timeout', $4, true)";

/// How long Citus may take to connect to another node within a call of `timeout`
/// (`citus.node_connection_timeout`, 30 s by default): a third of the call, so that a node
/// that accepts connections but never answers them (a hung host, a stopped postmaster) is
/// named by the call's node-health check, with time left for the rest, instead of the whole
/// call ending in TIMEOUT. Within Citus's bounds (10 ms to an hour), and never over its default.
fn node_connect_ms(timeout: Duration) -> u64 {
    (timeout.as_millis() as u64 / 3).clamp(10, 30_000)
}

/// The `jit` a call runs with. A tool file's statements run with JIT off: they read
/// catalogs and Citus's fan-out functions, whose row estimates (a thousand rows per
/// set-returning function, more for a recursive CTE over one) put a plan costing
/// milliseconds past `jit_optimize_above_cost`, and LLVM then spends most of a second
/// compiling it (`citus_lock_inspector` on the sample cluster: 0.82 s with JIT, 0.11 s
/// without). A call that runs a caller's statement (EXPLAIN of their query) keeps the
/// server's own setting (`NULL` resets to it), so the plan is the one their application
/// gets.
fn jit_for(statements: &[Statement]) -> Option<&'static str> {
    statements.iter().all(|st| st.cached).then_some("off")
}

/// Our own transaction statements, prepared once per connection.
const BEGIN_READ_ONLY: &str = "START TRANSACTION READ ONLY";
const BEGIN_READ_WRITE: &str = "START TRANSACTION READ WRITE";
const ROLLBACK: &str = "ROLLBACK";

/// A pool's use at one moment ([`Db::pool_use`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUse {
    pub open: usize,
    pub idle: usize,
    pub max: usize,
    pub waiting: usize,
}

/// A result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_name: String,
}

/// The rows of one statement.
#[derive(Debug, Clone)]
pub struct Rows {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Value>>,
    /// The server had more rows than `max_rows`.
    pub more: bool,
}

/// Facts about the server, probed once per connection lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFacts {
    pub server_version: String,
    pub server_version_num: i32,
    /// The extension version in pg_extension (e.g. `13.2-1`), if installed.
    pub citus_extension: Option<String>,
    /// `citus_version()` as reported, e.g. `Citus 13.2.2 on x86_64-pc-linux-gnu, ...`.
    pub citus_version: Option<String>,
    /// The role citus-mcp connects as.
    pub role: String,
    pub superuser: bool,
    /// A user table the role may change (INSERT, UPDATE, DELETE or TRUNCATE), if any.
    pub writable_table: Option<String>,
}

impl ServerFacts {
    /// What is wrong with the role citus-mcp connects as, for a read-only server: a
    /// least-privilege role (README, "Least privilege") can do everything it needs.
    pub fn role_warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.superuser {
            out.push(format!(
                "connected as superuser `{}`: a least-privilege role is safer (README: Least privilege)",
                self.role
            ));
        } else if let Some(t) = &self.writable_table {
            out.push(format!(
                "role `{}` can change user tables (e.g. {t}): a read-only role is safer (README: Least privilege)",
                self.role
            ));
        }
        out
    }

    /// The Citus release as numbers, e.g. `[13, 2, 2]`.
    pub fn citus_release(&self) -> Option<Vec<u32>> {
        let v = self.citus_version.as_deref()?;
        let word = v.split_whitespace().nth(1)?;
        let nums: Vec<u32> = word
            .split(['.', '-'])
            .map_while(|p| p.parse().ok())
            .collect();
        (!nums.is_empty()).then_some(nums)
    }
}

/// What went wrong talking to the database. Messages never contain credentials.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to {target}: {reason}")]
    Connect { target: String, reason: String },
    /// Every connection of the pool stayed busy with other calls for as long as a call
    /// waits for one: the server is up, this process is saturated.
    #[error(
        "all {connections} connections to {target} were busy with other calls for {waited_ms} ms"
    )]
    Busy {
        target: String,
        connections: usize,
        waited_ms: u64,
    },
    /// The call's time ran out while a statement ran (or waited to start); the number is
    /// the time that was left for it, which is the call's whole timeout for a call of one
    /// stage.
    #[error("the call's time ran out and its statement was cancelled (it had {0} ms)")]
    Timeout(u64),
    #[error("the call was cancelled")]
    Cancelled,
    #[error("{message}")]
    Sql {
        sqlstate: String,
        message: String,
        detail: Option<String>,
        hint: Option<String>,
    },
    #[error("column `{column}`: {reason}")]
    Decode { column: String, reason: String },
    /// The server ended the session while the call's statements ran (an administrator
    /// terminated the backend, the server shut down). Unlike a session found dead before
    /// the call began, this is not run again elsewhere: someone may have meant to stop it.
    #[error("the session ended while the call ran: {0}")]
    Ended(String),
}

/// A pool of connections to the coordinator (or, for fan-out, to one node).
pub struct Db {
    pool: Pool,
    dsn: Dsn,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    facts: Mutex<Option<(Instant, ServerFacts)>>,
    config: DbConfig,
    /// Pools of direct connections to other nodes, by `host:port`.
    nodes: Mutex<std::collections::HashMap<String, std::sync::Arc<Db>>>,
    /// The calls in flight, so that shutting down can cancel their statements.
    running: Running,
    /// Fan-out texts already read by the parser and found to be one statement that only
    /// reads: a tool's fan-out text recurs call after call, and is parsed once.
    read_only_texts: Mutex<std::collections::HashSet<String>>,
    /// How a connection is made, before the session's timeouts are added: a
    /// read-write call opens its own connection with its own timeouts from this.
    startup: tokio_postgres::Config,
}

/// Cancel tokens of the calls in flight, by call number.
#[derive(Default, Clone)]
struct Running(
    std::sync::Arc<
        Mutex<(
            u64,
            std::collections::HashMap<u64, tokio_postgres::CancelToken>,
        )>,
    >,
);

impl Running {
    fn add(&self, token: tokio_postgres::CancelToken) -> u64 {
        let mut g = self.0.lock().expect("running lock");
        g.0 += 1;
        let id = g.0;
        g.1.insert(id, token);
        id
    }

    fn remove(&self, id: u64) {
        self.0.lock().expect("running lock").1.remove(&id);
    }

    fn is_empty(&self) -> bool {
        self.0.lock().expect("running lock").1.is_empty()
    }

    fn all(&self) -> Vec<tokio_postgres::CancelToken> {
        self.0
            .lock()
            .expect("running lock")
            .1
            .values()
            .cloned()
            .collect()
    }
}

const FACTS_TTL: Duration = Duration::from_secs(60);

/// How long a call's transaction may sit idle between its round trips before the
/// server ends the session: the client side is pipelined, so only a stalled or
/// vanished citus-mcp leaves a transaction idle.
const IDLE_GRACE_MS: u128 = 5_000;

/// How much longer than its timeout a call may take, counted by citus-mcp itself,
/// before it cancels the statement and drops the connection (a server that does
/// not answer, a network that does not deliver the cancel).
const CLIENT_GRACE: Duration = Duration::from_millis(1_000);

impl Db {
    /// Builds the pool; no connection is made until the first statement.
    pub fn new(cfg: DbConfig) -> Result<Db, DsnError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = cfg.clone();
        let tls = cfg.dsn.tls()?;
        let mut pg = cfg.dsn.config.clone();
        pg.connect_timeout(cfg.connect_timeout);
        if pg.get_application_name().is_none() {
            pg.application_name(&cfg.application_name);
        }
        let startup = pg.clone();
        // Session defaults from the startup packet: every statement on these
        // connections, the version probe and `lint --db`'s prepares included, is
        // bounded before anything is parsed. Calls lower them with SET LOCAL.
        // Pooled sessions are read-only by default too: a statement that ever ran
        // outside the call's own transaction could still not write. The paths that
        // write (an approved ANALYZE, the nonce ledger) ask for READ WRITE explicitly.
        let mut pg = with_session_timeouts(&startup, cfg.timeout_ceiling);
        let options = format!(
            "{} -c default_transaction_read_only=on",
            pg.get_options().unwrap_or_default()
        );
        pg.options(&options);
        let mgr = Manager::from_config(
            pg,
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(cfg.pool_size)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(cfg.connect_timeout))
            .wait_timeout(Some(cfg.connect_timeout * 2))
            .build()
            .map_err(|e| DsnError::Invalid(e.to_string()))?;
        Ok(Db {
            pool,
            dsn: cfg.dsn,
            tls,
            facts: Mutex::new(None),
            config,
            nodes: Mutex::new(std::collections::HashMap::new()),
            running: Running::default(),
            read_only_texts: Mutex::new(std::collections::HashSet::new()),
            startup,
        })
    }

    /// How the pool is used now: connections open, idle among them, the most it opens,
    /// and calls waiting for one.
    pub fn pool_use(&self) -> PoolUse {
        let st = self.pool.status();
        PoolUse {
            open: st.size,
            idle: st.available,
            max: st.max_size,
            waiting: st.waiting,
        }
    }

    /// `host:port/db` of the coordinator, safe to print.
    pub fn target(&self) -> String {
        self.dsn.describe()
    }

    /// Cancels every statement in flight, on this pool and on the node pools: for a
    /// server on its way out, whose calls' futures will never finish.
    pub async fn cancel_running(&self) {
        let nodes: Vec<std::sync::Arc<Db>> = self
            .nodes
            .lock()
            .expect("node pools lock")
            .values()
            .cloned()
            .collect();
        let mut tokens = self.running.all();
        for n in &nodes {
            tokens.extend(n.running.all());
        }
        let tls = self.tls.clone();
        join_all(tokens.into_iter().map(|t| {
            let tls = tls.clone();
            async move {
                if let Err(e) = t.cancel_query(tls).await {
                    tracing::debug!("cancel request failed: {}", crate::redact::shown(&e));
                }
            }
        }))
        .await;
    }

    /// A pooled connection within `within` (the call's time left), or why there is none.
    async fn client_within(
        &self,
        within: Duration,
        cancel: &CancellationToken,
    ) -> Result<deadpool_postgres::Object, DbError> {
        let started = Instant::now();
        tokio::select! {
            // An idle pooled connection answers on the first poll: no timer is armed and
            // no waiter registered with the cancellation token on a call's usual path.
            biased;
            r = tokio::time::timeout(within, self.client()) => match r {
                Ok(r) => r,
                Err(_) => Err(self.no_connection(started.elapsed())),
            },
            () = cancel.cancelled() => Err(DbError::Cancelled),
        }
    }

    /// Waiting `waited` for a connection got none. Every slot held by a call that runs is a
    /// busy pool; every slot still connecting is a server that accepts connections and
    /// never answers them.
    fn no_connection(&self, waited: Duration) -> DbError {
        if self.running.is_empty() {
            DbError::Connect {
                target: self.target(),
                reason: format!(
                    "no connection was established within {} ms: the server accepts connections but does not answer them",
                    waited.as_millis()
                ),
            }
        } else {
            DbError::Busy {
                target: self.target(),
                connections: self.config.pool_size,
                waited_ms: waited.as_millis() as u64,
            }
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => {
                self.no_connection(self.pool.timeouts().wait.unwrap_or_default())
            }
            e => {
                // A failed connection attempt invalidates what we knew about the server.
                *self.facts.lock().expect("facts lock") = None;
                DbError::Connect {
                    target: self.target(),
                    reason: pool_reason(e),
                }
            }
        })
    }

    /// An idle pooled connection to hold while a call whose connection is closed
    /// afterwards takes its own, so that the pool opens a new one for that call instead of
    /// spending one whose statements are prepared and whose backend's catalog caches are
    /// warm (planning a large catalog query on a new backend costs more than connecting).
    /// Only when one is idle and the pool has room for another; never waits.
    async fn keep_warm(&self) -> Option<deadpool_postgres::Object> {
        let status = self.pool.status();
        if status.available == 0 || status.size >= status.max_size {
            return None;
        }
        let now = deadpool_postgres::Timeouts {
            wait: Some(Duration::ZERO),
            create: Some(Duration::ZERO),
            recycle: None,
        };
        self.pool.timeout_get(&now).await.ok()
    }

    /// Server and Citus versions; cached for a minute. Bounded by the pool's ceiling.
    pub async fn facts(&self) -> Result<ServerFacts, DbError> {
        self.facts_within(self.config.timeout_ceiling).await
    }

    /// [`Db::facts`], bounded by a call's own timeout. On Citus the probe is not free:
    /// the first statement of a new backend loads Citus's metadata cache, which waits
    /// for any lock held on `pg_dist_node`, before a call's SET LOCAL timeouts can
    /// apply. Past `timeout` the probe is cancelled and its connection closed.
    pub async fn facts_within(&self, timeout: Duration) -> Result<ServerFacts, DbError> {
        if let Some((at, f)) = self.facts.lock().expect("facts lock").as_ref()
            && at.elapsed() < FACTS_TTL
        {
            return Ok(f.clone());
        }
        let timeout_ms = timeout.as_millis() as u64;
        let started = Instant::now();
        let client = self
            .client_within(timeout, &CancellationToken::new())
            .await?;
        let timeout = timeout.saturating_sub(started.elapsed());
        // Dropped unfinished (timed out, or a failed probe), the guard cancels the
        // probe on the server and closes the connection instead of pooling it.
        let mut guard = CallGuard::new(self, client);
        let client = guard.client.as_mut().expect("set above");
        let probe = async {
            let row = client
                .query_one(include_str!("probe.sql"), &[])
                .await
                .map_err(sql_error)?;
            let has_citus: bool = row.get("has_citus");
            let citus_version: Option<String> = if has_citus {
                Some(
                    client
                        .query_one("SELECT pg_catalog.citus_version()", &[])
                        .await
                        .map_err(sql_error)?
                        .get(0),
                )
            } else {
                None
            };
            Ok::<_, DbError>((row, citus_version))
        };
        let (row, citus_version) = match tokio::time::timeout(timeout, probe).await {
            Ok(Ok(r)) => r,
            // The session ceiling or lock timeout (startup options) ended the probe.
            Ok(Err(DbError::Sql { sqlstate, .. }))
                if sqlstate == SqlState::QUERY_CANCELED.code()
                    || sqlstate == SqlState::LOCK_NOT_AVAILABLE.code() =>
            {
                return Err(DbError::Timeout(timeout_ms));
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(DbError::Timeout(timeout_ms)),
        };
        guard.finish(AfterCall::Reuse);
        let facts = ServerFacts {
            server_version: row.get("server_version"),
            server_version_num: row.get("server_version_num"),
            citus_extension: row.get("citus_extension"),
            citus_version,
            role: row.get("role"),
            superuser: row.get("superuser"),
            writable_table: row.get("writable_table"),
        };
        *self.facts.lock().expect("facts lock") = Some((Instant::now(), facts.clone()));
        Ok(facts)
    }

    /// Runs statements in one READ ONLY transaction with a statement timeout, and
    /// rolls it back. Cancelling `cancel` cancels the running statement on the server.
    pub async fn read_only(
        &self,
        statements: &[Statement],
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<Vec<Rows>, DbError> {
        self.read_only_then(statements, timeout, cancel, AfterCall::Reuse)
            .await
    }

    /// [`Db::read_only`], choosing what becomes of the connection afterwards.
    ///
    /// Round trips: `START TRANSACTION READ ONLY`; then, in one flight, the call's
    /// settings (timeouts in force before anything else is parsed), the Parse of any
    /// statement not prepared yet, and every Bind/Execute (a cold statement adds one
    /// round trip between the two); the ROLLBACK is sent without waiting for it.
    ///
    /// The call never outlives `timeout` by more than a second: the server's timeout
    /// cancels each statement, and citus-mcp's own clock cancels the call and drops
    /// the connection if the server does not answer. A call whose future is dropped
    /// (its client went away) cancels its statement on the server and drops the
    /// connection instead of returning it busy to the pool.
    pub async fn read_only_then(
        &self,
        statements: &[Statement],
        timeout: Duration,
        cancel: &CancellationToken,
        after: AfterCall,
    ) -> Result<Vec<Rows>, DbError> {
        self.in_transaction(statements, timeout, cancel, after, true)
            .await
    }

    /// Like [`Db::read_only_then`], but in a READ WRITE transaction that is still rolled
    /// back, on a connection that is closed afterwards: for a statement a person approved
    /// to run although the read-only rules refuse it (EXPLAIN ANALYZE of a write).
    pub async fn rolled_back(
        &self,
        statements: &[Statement],
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<Vec<Rows>, DbError> {
        self.in_transaction(statements, timeout, cancel, AfterCall::Discard, false)
            .await
    }

    /// One call in a transaction that is rolled back. A pooled connection the server
    /// ended (a restart, a terminated backend) fails only its own attempt: it is closed,
    /// and the call, which changed nothing, runs again on another connection.
    async fn in_transaction(
        &self,
        statements: &[Statement],
        timeout: Duration,
        cancel: &CancellationToken,
        after: AfterCall,
        read_only: bool,
    ) -> Result<Vec<Rows>, DbError> {
        let mut attempts = self.config.pool_size.max(1) + 1;
        let started = Instant::now();
        loop {
            attempts -= 1;
            // Another attempt has what is left of the call's time, not all of it again.
            let timeout = timeout.saturating_sub(started.elapsed());
            match self
                .in_transaction_once(statements, timeout, cancel, after, read_only)
                .await
            {
                Err(e) if attempts > 0 && connection_lost(&e) => {
                    tracing::debug!(
                        "retrying on another connection: {}",
                        crate::redact::shown(&e)
                    );
                }
                other => return other,
            }
        }
    }

    async fn in_transaction_once(
        &self,
        statements: &[Statement],
        timeout: Duration,
        cancel: &CancellationToken,
        after: AfterCall,
        read_only: bool,
    ) -> Result<Vec<Rows>, DbError> {
        let warm = match after {
            AfterCall::Discard => self.keep_warm().await,
            AfterCall::Reuse => None,
        };
        // Waiting for a connection is part of the call's time: what is left of it bounds
        // the statements.
        let started = Instant::now();
        let client = self.client_within(timeout, cancel).await?;
        drop(warm);
        let timeout = timeout.saturating_sub(started.elapsed());
        if timeout < MIN_STATEMENT_TIME {
            return Err(DbError::Timeout(started.elapsed().as_millis() as u64));
        }
        let mut guard = CallGuard::new(self, client);
        let client = guard.client.as_mut().expect("set above");
        let result = race(
            pipelined(client, statements, timeout, read_only),
            timeout,
            cancel,
        )
        .await;
        match result {
            // The last statement had more rows than the call takes and the server is still
            // sending them, or the ROLLBACK went unanswered: the guard cancels what runs
            // and closes the connection.
            Ok(Ran {
                rows,
                reusable: false,
            }) => {
                drop(guard);
                Ok(rows)
            }
            other => guard.settle(other.map(|ran| ran.rows), timeout, after),
        }
    }

    /// Prepares (does not execute) a statement and reports its result columns; for `lint --db`.
    pub async fn describe(&self, sql: &str) -> Result<Vec<(Column, bool)>, DbError> {
        let client = self.client().await?;
        let st = client.prepare(sql).await.map_err(sql_error)?;
        Ok(st
            .columns()
            .iter()
            .map(|c| {
                (
                    Column {
                        name: c.name().to_string(),
                        type_name: c.type_().name().to_string(),
                    },
                    value::decodable(c.type_()),
                )
            })
            .collect())
    }
}

/// What a pipelined call read.
struct Ran {
    rows: Vec<Rows>,
    /// False when the last statement was still sending rows past its cap when the call
    /// stopped reading, or the ROLLBACK did not answer: the connection must not be reused.
    reusable: bool,
}

/// One call in one flight on a warm connection: `START TRANSACTION`, the call's
/// settings, every statement's Bind/Execute and the ROLLBACK are sent before any answer
/// is awaited (tokio-postgres sends requests in the order their futures are first
/// polled), and the answers are read back in order. A statement not prepared on this
/// connection yet is parsed after the settings are sent, so the call's timeouts bind
/// its Parse; that costs one more round trip, once per connection.
///
/// Each message group ends in its own Sync, so a failed statement leaves the
/// transaction aborted for those after it; the ROLLBACK, always sent once the
/// transaction was begun, ends it. The session's own `default_transaction_read_only`
/// (set at connection start) keeps even a failed `START TRANSACTION` from running
/// anything read-write.
///
/// Rows come through the unnamed portal: the call reads `max_rows + 1` of them and
/// stops. Rows past the cap of an earlier statement are read and dropped (the next
/// statement's answer comes after them). Past the cap of the last one, the call reads
/// on only through what has already arrived: a statement that ended there (a page
/// query's `LIMIT size + 1`, a result a few rows over) leaves its connection to the
/// pool, warm; one still sending rows is cancelled with its connection
/// ([`Ran::reusable`]), so the call never waits for rows it will not use.
///
/// The ROLLBACK's answer comes in the same burst as the last rows, so the call waits for
/// it at no extra round trip: the connection goes back to the pool idle, and the next
/// call's requests leave together instead of chasing this one's.
async fn pipelined(
    client: &deadpool_postgres::Object,
    statements: &[Statement],
    timeout: Duration,
    read_only: bool,
) -> Result<Ran, DbError> {
    use futures_util::TryStreamExt as _;
    use futures_util::future::{MaybeDone, maybe_done};
    use std::future::Future;
    use std::pin::Pin;

    /// Polls a request's future once: its message is on its way; its answer is kept.
    async fn send<F: Future>(mut f: Pin<&mut MaybeDone<F>>) {
        std::future::poll_fn(|cx| {
            let _ = f.as_mut().poll(cx);
            std::task::Poll::Ready(())
        })
        .await;
    }
    /// The answer of a request sent with [`send`].
    async fn answer<F: Future>(mut f: Pin<&mut MaybeDone<F>>) -> F::Output {
        f.as_mut().await;
        f.take_output().expect("awaited above")
    }

    // Our own statements are constant text, prepared once per connection.
    let begin = if read_only {
        BEGIN_READ_ONLY
    } else {
        BEGIN_READ_WRITE
    };
    let begin = client.prepare_cached(begin).await.map_err(sql_error)?;
    let settings = client
        .prepare_cached(CALL_SETTINGS)
        .await
        .map_err(sql_error)?;
    let rollback = client.prepare_cached(ROLLBACK).await.map_err(sql_error)?;

    let timeout_ms = timeout.as_millis() as u64;
    let ms = timeout_ms.to_string();
    let idle = (u128::from(timeout_ms) + IDLE_GRACE_MS).to_string();
    let mut begun = std::pin::pin!(maybe_done(client.execute(&begin, &[])));
    send(begun.as_mut()).await;
    let jit = jit_for(statements);
    let connect = node_connect_ms(timeout).to_string();
    let values: [&(dyn ToSql + Sync); 4] = [&ms, &idle, &jit, &connect];
    let mut set = std::pin::pin!(maybe_done(client.execute(&settings, &values)));
    send(set.as_mut()).await;

    // Cached statements resolve without I/O; the others are parsed now, after the
    // settings. A statement that does not parse is the call's answer, after the ROLLBACK.
    let prepared = try_join_all(statements.iter().map(|st| async move {
        if st.cached {
            client.prepare_cached(&st.sql).await
        } else {
            client.prepare(&st.sql).await
        }
    }))
    .await
    .map_err(sql_error);
    let (prepared, unparsed) = match prepared {
        Ok(p) => (p, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let binds: Vec<Vec<Bind<'_>>> = statements
        .iter()
        .map(|st| st.binds.iter().map(Bind).collect())
        .collect();
    let mut queries = Vec::new();
    for (stmt, binds) in prepared.iter().zip(&binds) {
        let params = binds.iter().map(|b| b as &(dyn ToSql + Sync));
        let mut q = Box::pin(maybe_done(client.query_raw(stmt, params)));
        send(q.as_mut()).await;
        queries.push(q);
    }
    let mut rolled_back = std::pin::pin!(maybe_done(client.execute(&rollback, &[])));
    send(rolled_back.as_mut()).await;

    answer(begun).await.map_err(sql_error)?;
    // The session took the flight: from here on, losing it means losing the call.
    let sql_error = |e| ended_during_call(sql_error(e));
    answer(set).await.map_err(sql_error)?;
    if let Some(e) = unparsed {
        return Err(e);
    }
    let mut out = Vec::with_capacity(statements.len());
    let last = statements.len().saturating_sub(1);
    for (i, ((st, stmt), mut q)) in statements.iter().zip(&prepared).zip(queries).enumerate() {
        let stream = answer(q.as_mut()).await.map_err(sql_error)?;
        let mut stream = std::pin::pin!(stream);
        // Each row is decoded as it arrives, while the server is still sending the next.
        let mut rows = RowDecoder::new(stmt.columns());
        let mut more = false;
        while let Some(row) = stream.try_next().await.map_err(sql_error)? {
            if rows.len() == st.max_rows {
                more = true;
                break;
            }
            rows.push(&row)?;
        }
        if more && i < last {
            while stream.try_next().await.map_err(sql_error)?.is_some() {}
        } else if more && !ended_already(stream.as_mut()) {
            out.push(rows.finish(true));
            return Ok(Ran {
                rows: out,
                reusable: false,
            });
        }
        out.push(rows.finish(more));
    }
    let reusable = match answer(rolled_back).await {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(
                "ROLLBACK failed, the connection is closed: {}",
                crate::redact::shown(&e)
            );
            false
        }
    };
    Ok(Ran {
        rows: out,
        reusable,
    })
}

/// At most this many rows past the last statement's cap are read to see whether it ended.
const READ_ON_ROWS: usize = 1_000;

/// Reads `stream` on through the rows that have already arrived, without waiting for
/// more and through [`READ_ON_ROWS`] at most (on a multi-threaded runtime the connection's
/// task keeps delivering while this reads): true when the statement's end was among them.
fn ended_already(mut stream: std::pin::Pin<&mut tokio_postgres::RowStream>) -> bool {
    use futures_util::{FutureExt as _, TryStreamExt as _};
    for _ in 0..=READ_ON_ROWS {
        match stream.try_next().now_or_never() {
            Some(Ok(Some(_))) => continue,
            Some(Ok(None)) => return true,
            Some(Err(_)) | None => return false,
        }
    }
    false
}

/// A pooled connection while a call uses it. Dropped before [`CallGuard::finish`]
/// (the call was cancelled, timed out, or its future dropped), it sends a cancel
/// request for whatever still runs and closes the connection instead of pooling it.
struct CallGuard {
    client: Option<deadpool_postgres::Object>,
    /// This call's entry in the pool's list of calls in flight.
    call: u64,
    running: Running,
    cancel: Option<tokio_postgres::CancelToken>,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
}

/// Less time than this left for the statements after waiting for a connection is a
/// timeout already: `statement_timeout` takes milliseconds, and 0 would mean none.
const MIN_STATEMENT_TIME: Duration = Duration::from_millis(1);

/// Runs a call's work under citus-mcp's own clock (its timeout plus a grace) and its
/// cancellation token.
async fn race<T>(
    work: impl std::future::Future<Output = Result<T, DbError>>,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<T, DbError> {
    tokio::select! {
        r = tokio::time::timeout(timeout + CLIENT_GRACE, work) => match r {
            Ok(r) => r,
            Err(_) => Err(DbError::Timeout(timeout.as_millis() as u64)),
        },
        () = cancel.cancelled() => Err(DbError::Cancelled),
    }
}

impl CallGuard {
    /// The call's outcome, with the server's timeouts as [`DbError::Timeout`]. A call
    /// that finished (even with an error) gives its connection back per `after`; one
    /// cut short keeps it in the guard, which cancels and closes it when dropped.
    fn settle<T>(
        &mut self,
        result: Result<T, DbError>,
        timeout: Duration,
        after: AfterCall,
    ) -> Result<T, DbError> {
        match result {
            // statement_timeout, or lock_timeout while waiting for a lock (Parse included).
            Err(DbError::Sql { sqlstate, .. })
                if sqlstate == SqlState::QUERY_CANCELED.code()
                    || sqlstate == SqlState::LOCK_NOT_AVAILABLE.code() =>
            {
                self.finish(after);
                Err(DbError::Timeout(timeout.as_millis() as u64))
            }
            // The statement may still run (a value that did not decode stops the call
            // while rows still come): the guard cancels it and drops the connection.
            Err(e @ (DbError::Cancelled | DbError::Timeout(_) | DbError::Decode { .. })) => Err(e),
            // The server ended this connection: it goes, it does not go back to the pool.
            Err(e) if connection_lost(&e) => {
                self.finish(AfterCall::Discard);
                Err(e)
            }
            other => {
                self.finish(after);
                other
            }
        }
    }

    /// Takes `client` for one call of `db`, listed among its calls in flight.
    fn new(db: &Db, client: deadpool_postgres::Object) -> CallGuard {
        let token = client.cancel_token();
        CallGuard {
            client: Some(client),
            call: db.running.add(token.clone()),
            running: db.running.clone(),
            cancel: Some(token),
            tls: db.tls.clone(),
        }
    }

    fn finish(&mut self, after: AfterCall) {
        self.cancel = None;
        self.running.remove(self.call);
        if let Some(client) = self.client.take() {
            if after == AfterCall::Discard {
                drop(deadpool_postgres::Object::take(client));
            } else {
                if client.statement_cache.size() > STATEMENT_CACHE_MAX {
                    client.statement_cache.clear();
                }
                drop(client);
            }
        }
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            self.running.remove(self.call);
            return;
        };
        drop(deadpool_postgres::Object::take(client));
        cancel_in_background(self.cancel.take(), &self.tls, &self.running, self.call);
    }
}

/// Sends a cancel request for a call cut short, from a task of its own (a `Drop` cannot
/// wait). The call stays listed as running until the request is through, so a shutdown
/// that overtakes the task still cancels the statement. Best effort: the server's own
/// statement timeout ends the statement if the request is lost.
fn cancel_in_background(
    token: Option<tokio_postgres::CancelToken>,
    tls: &tokio_postgres_rustls::MakeRustlsConnect,
    running: &Running,
    call: u64,
) {
    let (Some(token), Ok(rt)) = (token, tokio::runtime::Handle::try_current()) else {
        running.remove(call);
        return;
    };
    let (tls, running) = (tls.clone(), running.clone());
    rt.spawn(async move {
        if let Err(e) = token.cancel_query(tls).await {
            tracing::debug!("cancel request failed: {}", crate::redact::shown(&e));
        }
        running.remove(call);
    });
}

/// `base` with `timeout` as the session's statement and lock timeouts (and the idle
/// limit a little above them), set in the startup packet so that they bind before the
/// first statement is parsed. The caller's own `options` are kept, ours come last.
fn with_session_timeouts(
    base: &tokio_postgres::Config,
    timeout: Duration,
) -> tokio_postgres::Config {
    let ms = timeout.as_millis().max(1);
    let ours = format!(
        "-c statement_timeout={ms} -c lock_timeout={ms} -c idle_in_transaction_session_timeout={}",
        ms + IDLE_GRACE_MS
    );
    let options = match base.get_options() {
        Some(theirs) if !theirs.trim().is_empty() => format!("{theirs} {ours}"),
        _ => ours,
    };
    let mut pg = base.clone();
    pg.options(&options);
    pg
}

/// A statement's rows, decoded to JSON one by one as they come in.
pub(crate) struct RowDecoder {
    columns: Vec<Column>,
    types: Vec<(postgres_types::Type, ColumnDecoder)>,
    rows: Vec<Vec<Value>>,
}

impl RowDecoder {
    pub(crate) fn new(columns: &[tokio_postgres::Column]) -> RowDecoder {
        RowDecoder {
            columns: columns
                .iter()
                .map(|c| Column {
                    name: c.name().to_string(),
                    type_name: c.type_().name().to_string(),
                })
                .collect(),
            types: columns
                .iter()
                .map(|c| (c.type_().clone(), ColumnDecoder::new(c.type_())))
                .collect(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// Decodes `row`; a value JSON cannot hold is an error naming its column.
    pub(crate) fn push(&mut self, row: &tokio_postgres::Row) -> Result<(), DbError> {
        let mut values = Vec::with_capacity(self.columns.len());
        for (i, (ty, decoder)) in self.types.iter().enumerate() {
            let decoded = row
                .try_get(i)
                .map_err(|e| e.to_string())
                .and_then(|Raw(raw)| decoder.decode(ty, raw).map_err(|e| e.to_string()));
            match decoded {
                Ok(v) => values.push(v),
                Err(reason) => {
                    return Err(DbError::Decode {
                        column: self.columns[i].name.clone(),
                        reason,
                    });
                }
            }
        }
        self.rows.push(values);
        Ok(())
    }

    pub(crate) fn finish(self, more: bool) -> Rows {
        Rows {
            columns: self.columns,
            rows: self.rows,
            more,
        }
    }
}

/// A lost session, once the call's statements reached it, as [`DbError::Ended`].
fn ended_during_call(e: DbError) -> DbError {
    if connection_lost(&e) {
        DbError::Ended(e.to_string())
    } else {
        e
    }
}

/// The server ended an established connection (shutdown, restart, terminated backend,
/// broken socket), as opposed to refusing a new one or failing a statement.
fn connection_lost(e: &DbError) -> bool {
    match e {
        DbError::Connect { reason, .. } => reason == CONNECTION_CLOSED,
        // The server ending this session. A class 08 error the server sends is about
        // another connection: Citus reports a worker it cannot reach as 08006 over a
        // healthy coordinator session, and running the call again would not help.
        DbError::Sql { sqlstate, .. } => matches!(sqlstate.as_str(), "57P01" | "57P02" | "57P03"),
        _ => false,
    }
}

const CONNECTION_CLOSED: &str = "the connection was closed";

fn sql_error(e: tokio_postgres::Error) -> DbError {
    match e.as_db_error() {
        Some(db) => DbError::Sql {
            sqlstate: db.code().code().to_string(),
            message: db.message().to_string(),
            detail: db.detail().map(str::to_string),
            hint: db.hint().map(str::to_string),
        },
        // A closed connection or a broken socket: the session is gone, the call changed
        // nothing and may run again elsewhere. Other client-side errors (a parameter that
        // does not encode, an unexpected message) are not retried.
        None if e.is_closed()
            || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>()) =>
        {
            DbError::Connect {
                target: "the coordinator".into(),
                reason: CONNECTION_CLOSED.into(),
            }
        }
        // Not the server's word and not a lost connection: a statement and its values
        // that do not fit (a wrong number of parameters, a value that does not encode).
        None => DbError::Sql {
            sqlstate: "XX000".into(),
            message: e.to_string(),
            detail: None,
            hint: None,
        },
    }
}

fn pool_reason(e: deadpool_postgres::PoolError) -> String {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Timeout(_) => "timed out".into(),
        PoolError::Backend(e) => match e.as_db_error() {
            Some(db) => db.message().to_string(),
            None => std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string()),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(state: &str) -> DbError {
        DbError::Sql {
            sqlstate: state.into(),
            message: String::new(),
            detail: None,
            hint: None,
        }
    }

    #[test]
    fn only_an_ended_session_is_retried() {
        let closed = DbError::Connect {
            target: "x".into(),
            reason: CONNECTION_CLOSED.into(),
        };
        assert!(connection_lost(&closed));
        assert!(
            connection_lost(&sql("57P01")),
            "terminated by an administrator"
        );
        // A client-side error, a refused connection, a statement error, a worker Citus
        // cannot reach: not retried.
        assert!(!connection_lost(&sql("08006")));
        assert!(!connection_lost(&sql("08000")));
        assert!(!connection_lost(&sql("42601")));
        assert!(!connection_lost(&DbError::Connect {
            target: "x".into(),
            reason: "Connection refused".into(),
        }));
        assert!(!connection_lost(&DbError::Timeout(1)));
    }
}
