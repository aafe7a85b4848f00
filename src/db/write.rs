//! The read-write path of execute tools: one statement in autocommit.
//!
//! Citus's operations (`citus_rebalance_start`, `citus_move_shard_placement`, ...) change
//! the cluster and several of them must not run inside a transaction block, so they
//! cannot share the pooled `READ ONLY` path. Each call opens a connection of its own
//! whose startup packet carries the call's `statement_timeout` and `lock_timeout` (they
//! bind before anything is parsed, as `SET LOCAL` does for read-only calls), runs the one
//! statement with bind parameters, and closes the connection: no session with changed
//! settings ever reaches the pool. Like a read-only call it is listed among the calls in
//! flight, and a call that is cancelled, times out or is dropped sends a cancel request.
//!
//! Only the engine calls it, and only for an execute-class tool whose approval token the
//! gate has accepted (`engine::PluginCall::execute` and the engine's SQL path).

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;

use super::value::Bind;
use super::{CLIENT_GRACE, Db, DbError, RowDecoder, Rows, Running, Statement, sql_error};

impl Db {
    /// Runs `st` alone, in autocommit, on a new connection whose session timeouts are
    /// `timeout` (never above the pool's ceiling), and closes that connection.
    pub(crate) async fn read_write(
        &self,
        st: &Statement,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<Rows, DbError> {
        let timeout = timeout.min(self.config.timeout_ceiling);
        let timeout_ms = timeout.as_millis().max(1) as u64;
        let pg = super::with_session_timeouts(&self.startup, timeout);
        let connect = async {
            let (client, connection) =
                pg.connect(self.tls.clone())
                    .await
                    .map_err(|e| DbError::Connect {
                        target: self.target(),
                        reason: e
                            .as_db_error()
                            .map(|d| d.message().to_string())
                            .or_else(|| std::error::Error::source(&e).map(ToString::to_string))
                            .unwrap_or_else(|| e.to_string()),
                    })?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!("read-write connection ended: {}", crate::redact::shown(&e));
                }
            });
            Ok::<_, DbError>(client)
        };
        let client = tokio::select! {
            c = tokio::time::timeout(self.config.connect_timeout, connect) => match c {
                Ok(c) => c?,
                Err(_) => return Err(DbError::Connect { target: self.target(), reason: "timed out".into() }),
            },
            () = cancel.cancelled() => return Err(DbError::Cancelled),
        };
        let mut guard = WriteGuard::new(self, client.cancel_token());
        let work = async {
            let stmt = client.prepare(&st.sql).await.map_err(sql_error)?;
            let binds: Vec<Bind<'_>> = st.binds.iter().map(Bind).collect();
            let params: Vec<&(dyn ToSql + Sync)> =
                binds.iter().map(|b| b as &(dyn ToSql + Sync)).collect();
            // No transaction: the extended protocol's Sync commits the statement alone.
            let rows = client.query(&stmt, &params).await.map_err(sql_error)?;
            let mut decoded = RowDecoder::new(stmt.columns());
            for row in rows.iter().take(st.max_rows) {
                decoded.push(row)?;
            }
            Ok(decoded.finish(rows.len() > st.max_rows))
        };
        let result = tokio::select! {
            r = tokio::time::timeout(timeout + CLIENT_GRACE, work) => match r {
                Ok(r) => r,
                Err(_) => Err(DbError::Timeout(timeout_ms)),
            },
            () = cancel.cancelled() => Err(DbError::Cancelled),
        };
        match result {
            Err(DbError::Sql { sqlstate, .. })
                if sqlstate == SqlState::QUERY_CANCELED.code()
                    || sqlstate == SqlState::LOCK_NOT_AVAILABLE.code() =>
            {
                guard.finish();
                Err(DbError::Timeout(timeout_ms))
            }
            // The statement may still run: the guard's drop cancels it.
            Err(e @ (DbError::Cancelled | DbError::Timeout(_))) => Err(e),
            other => {
                guard.finish();
                other
            }
        }
        // `client` is dropped here: the connection closes, whatever it was set to.
    }
}

/// A read-write call in flight. Dropped before [`WriteGuard::finish`] (cancelled, timed
/// out, or its future dropped), it sends a cancel request for the running statement.
struct WriteGuard {
    call: u64,
    running: Running,
    cancel: Option<tokio_postgres::CancelToken>,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
}

impl WriteGuard {
    fn new(db: &Db, token: tokio_postgres::CancelToken) -> WriteGuard {
        WriteGuard {
            call: db.running.add(token.clone()),
            running: db.running.clone(),
            cancel: Some(token),
            tls: db.tls.clone(),
        }
    }

    fn finish(&mut self) {
        self.cancel = None;
        self.running.remove(self.call);
    }
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        super::cancel_in_background(self.cancel.take(), &self.tls, &self.running, self.call);
    }
}

#[cfg(test)]
mod tests {
    /// The read-write path is reachable only through the engine, which calls it after
    /// the approval gate: no other module of the crate may call it.
    #[test]
    fn only_the_engine_calls_the_read_write_path() {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).expect("src is readable").flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        walk(&root, &mut files);
        let mut callers = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).expect("source is readable");
            // This file names the call in its own test.
            if text.contains(".read_write(") && !f.ends_with("db/write.rs") {
                let rel = f.strip_prefix(&root).expect("under src").to_path_buf();
                callers.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
        callers.sort();
        assert_eq!(callers, ["engine/mod.rs", "engine/plugin.rs"]);
    }
}
