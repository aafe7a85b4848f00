//! Section 8: memory over many distinct EXPLAINs (issue #6, "bounded state"). Each call's SQL
//! is new, so nothing may be kept for it: not a prepared statement on the backend, not an
//! entry in citus-mcp. The backend's and this process's resident memory are read at
//! checkpoints; flat means the last checkpoint is where the first one was.

use std::time::Duration;

use anyhow::{Context, Result};
use citus_mcp::db::{Db, DbConfig, Dsn};
use citus_mcp::engine::Engine;
use citus_mcp::registry::{Registry, Sources};
use serde_json::json;

use crate::{Bench, Section, call, no_cache};

const APP: &str = "citus-mcp-bench-explains";
const CALLS: usize = 10_000;

pub fn explains(b: &Bench) -> Result<Vec<Section>> {
    let mut s = Section::new(
        format!("8. Memory over {CALLS} distinct EXPLAINs (one pooled connection)"),
        &[
            "calls",
            "backend VmRSS",
            "citus-mcp VmRSS",
            "prepared on the backend",
        ],
    );
    b.rt.block_on(async {
        let mut dsn = Dsn::parse(&b.dsn)?;
        dsn.config.application_name(APP);
        let db = Db::new(DbConfig {
            dsn,
            worker_dsns: vec![],
            connect_timeout: Duration::from_secs(10),
            pool_size: 1,
            application_name: APP.into(),
            timeout_ceiling: Duration::from_secs(60),
        })?;
        let registry = Registry::build(&Sources::builtin(), None, &[], citus_mcp::plugins::NAMES);
        let engine =
            Engine::new(registry, Some(db), no_cache()).with_plugins(citus_mcp::plugins::all());
        let (observer, conn) = tokio_postgres::connect(&b.dsn, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let mut done = 0;
        for checkpoint in [0, 100, 1_000, 2_500, 5_000, 10_000] {
            while done < checkpoint.max(1) {
                let sql = format!("SELECT {done} AS n{done}, count(*) FROM pg_catalog.pg_class");
                call(&engine, "citus_explain_query", &json!({"sql": sql})).await?;
                done += 1;
            }
            let row = observer
                .query_one(
                    "SELECT pid FROM pg_catalog.pg_stat_activity WHERE application_name = $1",
                    &[&APP],
                )
                .await
                .context("the pooled backend")?;
            let pid: i32 = row.get(0);
            // A second session cannot see another's prepared statements: ask through the
            // engine's own connection, with a statement of its own.
            let prepared = citus_mcp::db::Statement::new(
                "SELECT count(*)::int8 FROM pg_catalog.pg_prepared_statements",
                vec![],
                1,
            );
            let n = engine
                .db()
                .context("a database")?
                .read_only(
                    &[prepared],
                    Duration::from_secs(10),
                    &tokio_util::sync::CancellationToken::new(),
                )
                .await?;
            s.row(vec![
                checkpoint.to_string(),
                rss_kb(pid as u32).map_or("?".into(), kb),
                rss_kb(std::process::id()).map_or("?".into(), kb),
                n[0].rows[0][0].to_string(),
            ]);
        }
        Ok::<_, anyhow::Error>(())
    })?;
    s.note("every call is a new statement text, planned and answered; plain EXPLAIN keeps its pooled connection, so the backend is one process throughout");
    s.note("citus-mcp VmRSS is this benchmark's process, which holds the engine, the pool and the runtime");
    Ok(vec![s])
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn kb(n: u64) -> String {
    format!("{:.1} MB", n as f64 / 1024.0)
}
