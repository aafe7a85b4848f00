//! Startup checks of the configuration against the cluster: best effort, warnings only.
//!
//! They run once the server is up, so an unreachable coordinator delays nothing and
//! stops nothing; what they find goes to the log and to `server_info`
//! (through `watch::Reloader::add_warnings`).

use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_util::sync::CancellationToken;

use crate::db::{Db, Dsn, Statement};

/// Worker DSNs that match no node of `pg_dist_node` by host and port, as warnings.
/// Fan-out only uses a worker DSN for the node it names, so such a DSN is never used:
/// usually a typo in the host or the port. Nothing is reported when the node list
/// cannot be read (no coordinator, no Citus): the check is best effort.
pub async fn worker_dsns(db: &Db, workers: &[Dsn], timeout: Duration) -> Vec<String> {
    if workers.is_empty() {
        return vec![];
    }
    let st = Statement::new(include_str!("nodes.sql"), vec![], 10_000);
    let nodes = match db
        .read_only(&[st], timeout, &CancellationToken::new())
        .await
    {
        Ok(mut rows) => rows.pop().map(|r| r.rows).unwrap_or_default(),
        Err(e) => {
            tracing::debug!("worker_dsns not checked: cannot read pg_dist_node: {e}");
            return vec![];
        }
    };
    let nodes: Vec<(String, u16)> = nodes
        .iter()
        .filter_map(|r| {
            let host = r.first()?.as_str()?.to_string();
            let port = u16::try_from(r.get(1)?.as_i64()?).ok()?;
            Some((host, port))
        })
        .collect();
    let unmatched: Vec<String> = workers
        .iter()
        .filter(|w| {
            let host = match w.config.get_hosts().first() {
                Some(Host::Tcp(h)) => h.as_str(),
                _ => return true,
            };
            let port = w.config.get_ports().first().copied().unwrap_or(5432);
            !nodes.iter().any(|(h, p)| h == host && *p == port)
        })
        // describe() gives host:port/db, never a password.
        .map(|w| format!("`{}`", w.describe()))
        .collect();
    if unmatched.is_empty() {
        return vec![];
    }
    let known: Vec<String> = nodes.iter().map(|(h, p)| format!("{h}:{p}")).collect();
    vec![format!(
        "worker_dsns: {} match no node in pg_dist_node ({}); fan-out never uses them",
        unmatched.join(", "),
        if known.is_empty() {
            "it lists none".to_string()
        } else {
            format!("it lists {}", known.join(", "))
        }
    )]
}
