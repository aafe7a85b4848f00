//! Fan-out: one statement on every worker (or every node), each node's rows or error
//! reported next to the others.
//!
//! Two ways to reach the nodes. Through the coordinator, with Citus's
//! `run_command_on_workers` / `run_command_on_all_nodes`: no extra credentials, the
//! rows travel back as JSON. Or directly, with a pool per node (`worker_dsns`, or the
//! coordinator's settings with the node's host and port), each with its own timeout.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{Column, Db, DbError, Rows, Statement};

/// Which nodes a fan-out reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeSet {
    Workers,
    AllNodes,
}

/// How a fan-out reaches the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FanOutMode {
    #[default]
    Coordinator,
    Direct,
}

/// A node as `pg_dist_node` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub nodeid: Option<i32>,
    pub host: String,
    pub port: i32,
    pub is_coordinator: bool,
}

impl Node {
    pub fn name(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// One node's share of a fan-out.
#[derive(Debug)]
pub struct NodeResult {
    pub node: Node,
    pub result: Result<Rows, DbError>,
}

impl Db {
    /// Runs `st` (which has no bind parameters) on every node of `set`.
    pub async fn fan_out(
        &self,
        set: NodeSet,
        mode: FanOutMode,
        st: &Statement,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<Vec<NodeResult>, DbError> {
        self.read_only_statement(&st.sql)?;
        match mode {
            FanOutMode::Coordinator => self.fan_out_via_coordinator(set, st, timeout, cancel).await,
            FanOutMode::Direct => self.fan_out_direct(set, st, timeout, cancel).await,
        }
    }

    async fn fan_out_via_coordinator(
        &self,
        set: NodeSet,
        st: &Statement,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<Vec<NodeResult>, DbError> {
        // Citus runs the command on each node in autocommit, outside this call's
        // READ ONLY transaction, so the command makes its own transaction read-only
        // before the query is evaluated: the CASE runs the set_config calls first and
        // the query (an initplan, run when first needed) only then. Anything after it
        // in the same text would run in that same read-only transaction, with JIT off
        // as on the coordinator (`jit_for`). Each node
        // answers with its rows as one JSON array, the row cap applied there. Citus
        // cancels the nodes' statements when this call's own statement times out.
        let ms = timeout.as_millis().max(1);
        let command = format!(
            "SELECT CASE WHEN pg_catalog.set_config('transaction_read_only', 'on', true) \
             || pg_catalog.set_config('lock_timeout', '{ms}', true) \
             || pg_catalog.set_config('jit', 'off', true) IS NOT NULL \
             THEN (SELECT coalesce(pg_catalog.json_agg(q), '[]'::json)::text \
             FROM (SELECT * FROM ({}\n) q0 LIMIT {}) q) END",
            st.sql,
            st.max_rows.saturating_add(1)
        );
        // The text sent is read again as a whole: a query that closes the wrapper's
        // parentheses to add statements of its own is refused here.
        self.read_only_statement(&command)?;
        let sql = match set {
            NodeSet::Workers => include_str!("fanout_workers.sql"),
            NodeSet::AllNodes => include_str!("fanout_all.sql"),
        };
        let rows = self
            .infra_rows(sql, Value::from(command), timeout, cancel)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let node = node_of(&r);
                let text = r[5].as_str().unwrap_or_default();
                let result = if r[4].as_bool() == Some(true) {
                    json_rows(text, st.max_rows)
                } else {
                    Err(remote_error(text, &node))
                };
                NodeResult { node, result }
            })
            .collect())
    }

    async fn fan_out_direct(
        &self,
        set: NodeSet,
        st: &Statement,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<Vec<NodeResult>, DbError> {
        let all = Value::Bool(set == NodeSet::AllNodes);
        let started = std::time::Instant::now();
        let rows = self
            .infra_rows(include_str!("fanout.sql"), all, timeout, cancel)
            .await?;
        // Each node gets what is left of the call's time, connecting included.
        let timeout = timeout.saturating_sub(started.elapsed());
        let nodes: Vec<Node> = rows.iter().map(|r| node_of(r)).collect();
        let runs = nodes.into_iter().map(|node| async move {
            let result = async {
                let pool = if node.is_coordinator {
                    None
                } else {
                    Some(self.node_pool(&node)?)
                };
                let db = pool.as_deref().unwrap_or(self);
                // Bounded by `timeout`, waiting for (or opening) the connection included.
                db.read_only(std::slice::from_ref(st), timeout, cancel)
                    .await
                    .map(|mut v| v.pop().expect("one statement, one result"))
            }
            .await;
            NodeResult { node, result }
        });
        Ok(join_all(runs).await)
    }

    /// Rows of one of this module's own statements, which take a single parameter.
    async fn infra_rows(
        &self,
        sql: &str,
        param: Value,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<Vec<Vec<Value>>, DbError> {
        let st = Statement::new(sql, vec![param], 10_000);
        Ok(self
            .read_only(&[st], timeout, cancel)
            .await?
            .pop()
            .map(|r| r.rows)
            .unwrap_or_default())
    }

    /// The pool of direct connections to a node, made on first use.
    fn node_pool(&self, node: &Node) -> Result<Arc<Db>, DbError> {
        let key = node.name();
        let mut pools = self.nodes.lock().expect("node pools lock");
        if let Some(p) = pools.get(&key) {
            return Ok(p.clone());
        }
        let port = u16::try_from(node.port).unwrap_or(5432);
        let dsn = match self
            .config
            .worker_dsns
            .iter()
            .find(|d| targets(d, &node.host, port))
        {
            Some(d) => d.clone(),
            None => {
                let mut d = self.dsn.clone();
                let mut cfg = tokio_postgres::Config::new();
                cfg.host(&node.host).port(port);
                if let Some(u) = d.config.get_user() {
                    cfg.user(u);
                }
                if let Some(p) = d.config.get_password() {
                    cfg.password(p);
                }
                if let Some(db) = d.config.get_dbname() {
                    cfg.dbname(db);
                }
                cfg.ssl_mode(d.config.get_ssl_mode());
                d.config = cfg;
                d
            }
        };
        let cfg = super::DbConfig {
            dsn,
            worker_dsns: vec![],
            pool_size: 2,
            ..self.config.clone()
        };
        let db = Arc::new(Db::new(cfg).map_err(|e| DbError::Connect {
            target: key.clone(),
            reason: e.to_string(),
        })?);
        pools.insert(key, db.clone());
        Ok(db)
    }
}

/// At most this many fan-out texts are remembered as checked; past it the list starts over.
const CHECKED_TEXTS_MAX: usize = 512;

impl Db {
    /// [`read_only_statement`], remembering the texts that passed.
    fn read_only_statement(&self, sql: &str) -> Result<(), DbError> {
        if self
            .read_only_texts
            .lock()
            .expect("checked texts lock")
            .contains(sql)
        {
            return Ok(());
        }
        read_only_statement(sql)?;
        let mut checked = self.read_only_texts.lock().expect("checked texts lock");
        if checked.len() >= CHECKED_TEXTS_MAX {
            checked.clear();
        }
        checked.insert(sql.to_string());
        Ok(())
    }
}

/// Refuses text that is not exactly one statement that reads, by PostgreSQL's grammar.
fn read_only_statement(sql: &str) -> Result<(), DbError> {
    let refuse = |why: String| DbError::Sql {
        sqlstate: "25006".into(),
        message: format!("a fan-out query must be one statement that only reads: {why}"),
        detail: None,
        hint: Some("fix the tool file's query; run `citus-mcp lint` on it".into()),
    };
    let parsed = crate::sql::parse(sql).map_err(|e| refuse(e.to_string()))?;
    if parsed.len() != 1 {
        return Err(refuse(format!(
            "the text holds {} statements",
            parsed.len()
        )));
    }
    match parsed.writes() {
        Some(what) => Err(refuse(format!("it writes or locks ({what})"))),
        None => Ok(()),
    }
}

/// A node from the first four columns of a node list: nodeid, host, port, is_coordinator.
fn node_of(r: &[Value]) -> Node {
    Node {
        nodeid: r[0].as_i64().map(|n| n as i32),
        host: r[1].as_str().unwrap_or_default().to_string(),
        port: r[2].as_i64().unwrap_or_default() as i32,
        is_coordinator: r[3].as_bool().unwrap_or(false),
    }
}

fn targets(dsn: &super::Dsn, host: &str, port: u16) -> bool {
    use tokio_postgres::config::Host;
    let h = matches!(dsn.config.get_hosts().first(), Some(Host::Tcp(h)) if h == host);
    let p = dsn.config.get_ports().first().copied().unwrap_or(5432) == port;
    h && p
}

/// A node's JSON array of row objects → rows, capped at `max_rows`.
fn json_rows(text: &str, max_rows: usize) -> Result<Rows, DbError> {
    let decode = |reason: String| DbError::Decode {
        column: "result".into(),
        reason,
    };
    let items: Vec<serde_json::Map<String, Value>> =
        serde_json::from_str(text).map_err(|e| decode(e.to_string()))?;
    let columns: Vec<Column> = items
        .first()
        .map(|o| {
            o.keys()
                .map(|k| Column {
                    name: k.clone(),
                    type_name: "json".into(),
                })
                .collect()
        })
        .unwrap_or_default();
    let more = items.len() > max_rows;
    let rows = items
        .into_iter()
        .take(max_rows)
        .map(|mut o| {
            columns
                .iter()
                .map(|c| o.remove(&c.name).unwrap_or(Value::Null))
                .collect()
        })
        .collect();
    Ok(Rows {
        columns,
        rows,
        more,
    })
}

/// Citus reports a node's failure as text, e.g. `ERROR:  relation "x" does not exist`,
/// or `failed to connect to host:port` when it could not reach the node (citus_tools.c).
/// A node the coordinator cannot reach is the same error, NODE_UNREACHABLE, as one a
/// direct connection cannot reach.
fn remote_error(text: &str, node: &Node) -> DbError {
    let message = text.trim().trim_start_matches("ERROR:").trim().to_string();
    if message.contains("connection")
        || message.contains("could not connect")
        || message.contains("failed to connect")
    {
        DbError::Connect {
            target: node.name(),
            reason: format!("the coordinator reports: {message}"),
        }
    } else if message.contains("in a read-only transaction") {
        // The node's own READ ONLY transaction refused a write: the same code as a
        // direct connection reports.
        DbError::Sql {
            sqlstate: "25006".into(),
            message,
            detail: None,
            hint: None,
        }
    } else {
        DbError::Sql {
            sqlstate: "XX000".into(),
            message,
            detail: None,
            hint: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Node {
        Node {
            nodeid: Some(3),
            host: "10.0.0.2".into(),
            port: 5432,
            is_coordinator: false,
        }
    }

    #[test]
    fn a_node_the_coordinator_cannot_reach_is_a_connect_error_naming_it() {
        for text in [
            "failed to connect to 10.0.0.2:5432",
            "ERROR:  connection to the remote node postgres@10.0.0.2:5432 failed with the following error: Connection refused",
            "could not connect to server",
        ] {
            match remote_error(text, &node()) {
                DbError::Connect { target, reason } => {
                    assert_eq!(target, "10.0.0.2:5432");
                    assert!(
                        reason.contains(text.trim_start_matches("ERROR:").trim()),
                        "{reason}"
                    );
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn other_remote_errors_keep_their_meaning() {
        assert!(matches!(
            remote_error("ERROR:  cannot execute INSERT in a read-only transaction", &node()),
            DbError::Sql { sqlstate, .. } if sqlstate == "25006"
        ));
        assert!(matches!(
            remote_error("ERROR:  relation \"x\" does not exist", &node()),
            DbError::Sql { sqlstate, .. } if sqlstate == "XX000"
        ));
    }
}
