//! Section 8: memory over many distinct EXPLAINs (issue #6, "bounded state"). Each call's SQL
//! is new, so nothing may be kept for it: not an entry in citus-mcp, not a backend. Caller
//! SQL runs on a connection closed after the call (the planner runs immutable functions,
//! whose labels can lie), so each EXPLAIN also opens a connection: the section shows that
//! none stays open and that this process's resident memory stays flat.

use std::time::Duration;

use anyhow::Result;
use citus_mcp::db::{Db, DbConfig, Dsn};
use citus_mcp::engine::Engine;
use citus_mcp::registry::{Registry, Sources};
use serde_json::json;

use crate::{Bench, Section, call, no_cache};

const APP: &str = "citus-mcp-bench-explains";
const CALLS: usize = 2_000;

pub fn explains(b: &Bench) -> Result<Vec<Section>> {
    let mut s = Section::new(
        format!("8. Memory over {CALLS} distinct EXPLAINs"),
        &["calls", "citus-mcp VmRSS", "backends open", "ms per call"],
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
        let registry = Registry::build(&Sources::builtin(), None, &[], citus_mcp::plugins::NEEDS);
        let engine =
            Engine::new(registry, Some(db), no_cache()).with_plugins(citus_mcp::plugins::all());
        let (observer, conn) = tokio_postgres::connect(&b.dsn, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let mut done = 0;
        for checkpoint in [0, 100, 500, 1_000, 2_000] {
            let started = std::time::Instant::now();
            let first = done;
            while done < checkpoint.max(1) {
                let sql = format!("SELECT {done} AS n{done}, count(*) FROM pg_catalog.pg_class");
                call(&engine, "citus_explain_query", &json!({"sql": sql})).await?;
                done += 1;
            }
            let per_call = started.elapsed().as_secs_f64() * 1e3 / (done - first) as f64;
            let open: i64 = observer
                .query_one(
                    "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE application_name = $1",
                    &[&APP],
                )
                .await?
                .get(0);
            s.row(vec![
                checkpoint.to_string(),
                rss_kb(std::process::id()).map_or("?".into(), kb),
                open.to_string(),
                format!("{per_call:.2}"),
            ]);
        }
        Ok::<_, anyhow::Error>(())
    })?;
    s.note("every call is a new statement text, planned and answered on a connection of its own, closed afterwards: backends open stays 0 between calls");
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
