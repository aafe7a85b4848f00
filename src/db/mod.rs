//! The database layer: connections, read-only transactions, timeouts, cancellation,
//! and rows → JSON.
//!
//! It knows nothing about MCP or tool files: it takes rendered statements and limits,
//! and returns rows or a [`DbError`]. The only SQL it owns is infrastructure
//! (`probe.sql` and the `set_config` calls); tool SQL comes from `template`.

pub mod dsn;
pub mod fanout;
pub mod value;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::future::try_join_all;
use serde_json::Value;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;

pub use dsn::{Dsn, DsnError};
use value::{Bind, PgJson};

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
}

/// One statement to run: SQL with `$n` placeholders, its values, and a row cap.
#[derive(Debug, Clone)]
pub struct Statement {
    pub sql: String,
    pub binds: Vec<Value>,
    /// At most this many rows are fetched (the protocol stops the server there).
    pub max_rows: usize,
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
}

impl ServerFacts {
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
    #[error("the statement ran longer than {0} ms and was cancelled")]
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
}

const FACTS_TTL: Duration = Duration::from_secs(60);

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
        })
    }

    /// `host:port/db` of the coordinator, safe to print.
    pub fn target(&self) -> String {
        self.dsn.describe()
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        self.pool.get().await.map_err(|e| {
            // A failed connection attempt invalidates what we knew about the server.
            *self.facts.lock().expect("facts lock") = None;
            DbError::Connect {
                target: self.target(),
                reason: pool_reason(e),
            }
        })
    }

    /// Server and Citus versions; cached for a minute.
    pub async fn facts(&self) -> Result<ServerFacts, DbError> {
        if let Some((at, f)) = self.facts.lock().expect("facts lock").as_ref()
            && at.elapsed() < FACTS_TTL
        {
            return Ok(f.clone());
        }
        let client = self.client().await?;
        let row = client
            .query_one(include_str!("probe.sql"), &[])
            .await
            .map_err(sql_error)?;
        let has_citus: bool = row.get("has_citus");
        let citus_version = if has_citus {
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
        let facts = ServerFacts {
            server_version: row.get("server_version"),
            server_version_num: row.get("server_version_num"),
            citus_extension: row.get("citus_extension"),
            citus_version,
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
        let mut client = self.client().await?;
        let cancel_token = client.cancel_token();
        let timeout_ms = timeout.as_millis() as u64;
        let work = async {
            // Round trips: the statements are parsed once per connection (cached), then
            // BEGIN, then set_config and every Bind in one pipelined flight, then every
            // Execute in another; the rollback is sent without waiting for its answer.
            let set_sql = "SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $1, true)";
            let (set, prepared) = tokio::try_join!(
                client.prepare_cached(set_sql),
                try_join_all(statements.iter().map(|st| client.prepare_cached(&st.sql))),
            )
            .map_err(sql_error)?;
            let tx = client
                .build_transaction()
                .read_only(true)
                .start()
                .await
                .map_err(sql_error)?;
            let ms = timeout_ms.to_string();
            // set_config(..., true) is SET LOCAL with a bind parameter; it ends with the
            // transaction, so pooled connections keep no state. It is sent first, so the
            // server applies it before any statement runs.
            let set_timeout = async { tx.execute(&set, &[&ms]).await.map_err(sql_error) };
            let run_all = try_join_all(statements.iter().zip(&prepared).map(|(st, stmt)| {
                let tx = &tx;
                async move {
                    let binds: Vec<Bind<'_>> = st.binds.iter().map(Bind).collect();
                    let params: Vec<&(dyn ToSql + Sync)> =
                        binds.iter().map(|b| b as &(dyn ToSql + Sync)).collect();
                    let portal = tx.bind(stmt, &params).await.map_err(sql_error)?;
                    let fetch = i32::try_from(st.max_rows.saturating_add(1)).unwrap_or(i32::MAX);
                    let rows = tx.query_portal(&portal, fetch).await.map_err(sql_error)?;
                    to_rows(stmt.columns(), rows, st.max_rows)
                }
            }));
            let (_, out) = tokio::try_join!(set_timeout, run_all)?;
            // Dropping a transaction sends ROLLBACK without waiting; the connection answers
            // it before anything its next user sends.
            drop(tx);
            Ok(out)
        };
        let result = tokio::select! {
            r = work => r,
            () = cancel.cancelled() => {
                // Best effort: the server stops the statement; the connection is then dropped.
                let _ = cancel_token.cancel_query(self.tls.clone()).await;
                Err(DbError::Cancelled)
            }
        };
        match result {
            Err(DbError::Sql { sqlstate, .. }) if sqlstate == SqlState::QUERY_CANCELED.code() => {
                Err(DbError::Timeout(timeout_ms))
            }
            Err(DbError::Cancelled) => {
                // The connection may still be mid-statement; do not return it to the pool.
                let _ = deadpool_postgres::Object::take(client);
                Err(DbError::Cancelled)
            }
            other => other,
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

fn to_rows(
    columns: &[tokio_postgres::Column],
    rows: Vec<tokio_postgres::Row>,
    max_rows: usize,
) -> Result<Rows, DbError> {
    let more = rows.len() > max_rows;
    let columns: Vec<Column> = columns
        .iter()
        .map(|c| Column {
            name: c.name().to_string(),
            type_name: c.type_().name().to_string(),
        })
        .collect();
    let mut out = Vec::with_capacity(rows.len().min(max_rows));
    for row in rows.into_iter().take(max_rows) {
        let mut values = Vec::with_capacity(columns.len());
        for (i, col) in columns.iter().enumerate() {
            let PgJson(v) = row.try_get(i).map_err(|e| DbError::Decode {
                column: col.name.clone(),
                reason: std::error::Error::source(&e)
                    .map_or_else(|| e.to_string(), ToString::to_string),
            })?;
            values.push(v);
        }
        out.push(values);
    }
    Ok(Rows {
        columns,
        rows: out,
        more,
    })
}

fn sql_error(e: tokio_postgres::Error) -> DbError {
    match e.as_db_error() {
        Some(db) => DbError::Sql {
            sqlstate: db.code().code().to_string(),
            message: db.message().to_string(),
            detail: db.detail().map(str::to_string),
            hint: db.hint().map(str::to_string),
        },
        None if e.is_closed() => DbError::Connect {
            target: "the coordinator".into(),
            reason: "the connection was closed".into(),
        },
        None => DbError::Sql {
            sqlstate: "08000".into(),
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
