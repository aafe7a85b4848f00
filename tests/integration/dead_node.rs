//! A stopped worker (issue #6, "dead nodes are visible"): every built-in tool, in both
//! fan-out modes, either lists the worker in `node_errors` (NODE_UNREACHABLE, its nodeid and
//! host:port) next to the other nodes' rows, or fails with NODE_UNREACHABLE naming it. Its
//! shards never show 0 bytes, and no total silently leaves them out.
//!
//! On the fixture the worker is "stopped" by pointing its `pg_dist_node` row at a closed port,
//! in a database of this test's own: the other tests share the first database and must keep
//! seeing a healthy cluster while this one runs. On a real cluster (`CITUS_TEST_DSN`) the
//! worker is really stopped and started again by the commands in `CITUS_TEST_STOP_WORKER`
//! and `CITUS_TEST_START_WORKER` (run with `sh -c`; README shows them for a local cluster);
//! without them the test says so and does nothing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use citus_mcp::db::fanout::FanOutMode;
use citus_mcp::engine::{Engine, ErrorCode, Settings, ToolError, ToolOutput};
use citus_mcp::registry::{Registry, Sources};
use libtest_mimic::Trial;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{Ctx, trial};

pub fn trials(ctx: &Arc<Ctx>) -> Vec<Trial> {
    vec![trial(
        ctx,
        "dead_node::every_tool_names_a_stopped_worker",
        every_tool_names_a_stopped_worker,
    )]
}

/// The worker that is stopped: 127.0.0.1:9702 (group 2) holds shards of every distributed
/// table and a reference-table copy.
const DEAD_NODEID: i64 = 3;
const DEAD_PORT: u16 = 9702;

/// Tools that read no number from the workers on the fixture, and why. Every other tool,
/// including one added later, must name the stopped worker.
const COORDINATOR_ONLY: &[(&str, &str)] = &[
    ("ping", "answers without the database"),
    (
        "citus_request_approval_token",
        "issues a token (admin mode only); reads no node",
    ),
    (
        "server_info",
        "versions and capabilities of the coordinator",
    ),
    (
        "citus_explain_query",
        "plans on the coordinator (the fixture has no Citus planner; on real Citus a remote EXPLAIN on the node fails with NODE_UNREACHABLE)",
    ),
    (
        "citus_rebalance_execute",
        "execute tool: not served outside admin mode, and its example runs outside it; reads no node",
    ),
    (
        "citus_rebalance_stop",
        "execute tool: not served outside admin mode, and its example runs outside it; reads no node",
    ),
    (
        "citus_move_shard_execute",
        "execute tool: not served outside admin mode, and its example runs outside it; reads no node",
    ),
    (
        "citus_job_inspector",
        "its first example lists jobs from pg_dist_background_job (the catalog)",
    ),
];

/// Brings the stopped worker back, also when an assertion fails.
enum Restart<'a> {
    /// The fixture: its row goes back to its port.
    Port { ctx: &'a Ctx, dsn: &'a str },
    /// A real cluster: the command that starts it again.
    Command(String),
}

impl Drop for Restart<'_> {
    fn drop(&mut self) {
        match self {
            // A failed restore only leaves this test's own database behind.
            Restart::Port { ctx, dsn } => {
                let _ = ctx.db().psql_on(
                    dsn,
                    &format!(
                        "UPDATE pg_dist_node SET nodeport = {DEAD_PORT} WHERE nodeid = {DEAD_NODEID}"
                    ),
                );
            }
            Restart::Command(start) => {
                if let Err(e) = sh(start) {
                    eprintln!("dead_node: CITUS_TEST_START_WORKER failed: {e}");
                }
            }
        }
    }
}

/// Runs an operator's command for the real cluster.
fn sh(command: &str) -> Result<(), String> {
    let out = std::process::Command::new("sh")
        .args(["-c", command])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn every_tool_names_a_stopped_worker(ctx: &Ctx) {
    let dsn;
    let dead;
    let _restart;
    if ctx.is_fixture() {
        dsn = ctx
            .db()
            .fixture_database("citus_dead_node")
            .expect("a fixture database of this test's own");
        // A port nothing listens on: connections are refused at once, so no wait is involved.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        dead = format!("127.0.0.1:{closed}");
        _restart = Restart::Port { ctx, dsn: &dsn };
        ctx.db()
            .psql_on(
                &dsn,
                // The recorded rebalance plan moves shards off the worker: Citus would
                // name it by its new port too.
                &format!(
                    "UPDATE pg_dist_node SET nodeport = {closed} WHERE nodeid = {DEAD_NODEID}; \
                     UPDATE citus_mcp_fixture.rebalance_plan SET sourceport = {closed} WHERE sourceport = {DEAD_PORT}; \
                     UPDATE citus_mcp_fixture.rebalance_plan SET targetport = {closed} WHERE targetport = {DEAD_PORT}"
                ),
            )
            .expect("psql");
    } else {
        let (Ok(stop), Ok(start)) = (
            std::env::var("CITUS_TEST_STOP_WORKER"),
            std::env::var("CITUS_TEST_START_WORKER"),
        ) else {
            eprintln!(
                "dead_node: skipped on a real cluster: set CITUS_TEST_STOP_WORKER and CITUS_TEST_START_WORKER to commands that stop and start the worker with nodeid {DEAD_NODEID}"
            );
            return;
        };
        dsn = ctx.dsn();
        dead = ctx
            .db()
            .psql_on(
                &dsn,
                &format!(
                    "SELECT nodename || ':' || nodeport FROM pg_dist_node WHERE nodeid = {DEAD_NODEID}"
                ),
            )
            .expect("psql")
            .trim()
            .to_string();
        sh(&stop).expect("CITUS_TEST_STOP_WORKER stops the worker");
        _restart = Restart::Command(start);
    }
    let psql = |sql: &str| ctx.db().psql_on(&dsn, sql).expect("psql");
    // What the stopped worker holds, by the catalog: tables and colocation groups whose
    // totals cannot be known while it is down.
    let lines = |sql: &str| -> BTreeSet<String> {
        psql(sql)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    };
    let dead_tables = lines(&format!(
        "SELECT DISTINCT s.logicalrelid::regclass::text
           FROM pg_dist_shard s JOIN pg_dist_placement p USING (shardid)
           JOIN pg_dist_node n ON n.groupid = p.groupid
          WHERE n.nodeid = {DEAD_NODEID}"
    ));
    let dead_groups = lines(&format!(
        "SELECT DISTINCT d.colocationid
           FROM pg_dist_shard s JOIN pg_dist_placement p USING (shardid)
           JOIN pg_dist_node n ON n.groupid = p.groupid
           JOIN pg_dist_partition d ON d.logicalrelid = s.logicalrelid
          WHERE n.nodeid = {DEAD_NODEID}"
    ));
    assert!(dead_tables.contains("orders"), "{dead_tables:?}");

    let registry = Registry::build(&Sources::builtin(), None, &[], citus_mcp::plugins::NEEDS);
    let tools: Vec<(String, Value)> = registry
        .tools
        .values()
        .map(|t| {
            let args = t
                .spec
                .examples
                .first()
                .map_or_else(|| json!({}), |e| e.args.clone());
            (t.spec.name.clone(), args)
        })
        .collect();
    let mut failures = Vec::new();
    for mode in [FanOutMode::Coordinator, FanOutMode::Direct] {
        let engine = Engine::new(
            Registry::build(&Sources::builtin(), None, &[], citus_mcp::plugins::NEEDS),
            Some(ctx.pool(&dsn)),
            Settings {
                enable_caching: false,
                fanout: mode,
                ..Settings::default()
            },
        )
        .with_plugins(citus_mcp::plugins::all());
        for (tool, args) in &tools {
            let result = call(ctx, &engine, tool, args.clone());
            let check = Check {
                tool,
                args,
                dead: &dead,
                dead_tables: &dead_tables,
                dead_groups: &dead_groups,
            };
            if let Err(why) = check.result(&result) {
                failures.push(format!("{mode:?} {tool} {args}: {why}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "with {dead} (nodeid {DEAD_NODEID}) stopped:\n{}",
        failures.join("\n")
    );
}

/// One call, bounded: a tool that hangs on a stopped worker fails the test, not the suite.
fn call(ctx: &Ctx, e: &Engine, tool: &str, args: Value) -> Result<ToolOutput, ToolError> {
    ctx.rt.block_on(async {
        match tokio::time::timeout(
            Duration::from_secs(90),
            e.call(tool, args, &CancellationToken::new()),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(ToolError::new(
                ErrorCode::Internal,
                "no answer within 90 s (the test's bound)",
            )),
        }
    })
}

struct Check<'a> {
    tool: &'a str,
    args: &'a Value,
    dead: &'a str,
    dead_tables: &'a BTreeSet<String>,
    dead_groups: &'a BTreeSet<String>,
}

impl Check<'_> {
    fn result(&self, result: &Result<ToolOutput, ToolError>) -> Result<(), String> {
        let exempt = COORDINATOR_ONLY.iter().any(|(t, _)| *t == self.tool);
        let out = match result {
            Err(e) if e.code == ErrorCode::NodeUnreachable && e.message.contains(self.dead) => {
                return Ok(());
            }
            // Not served in this mode (admin-only tools): it reads nothing at all.
            Err(e) if exempt && e.code == ErrorCode::ExecuteDisabled => return Ok(()),
            Err(e) => {
                return Err(format!(
                    "failed without naming the stopped worker: {}",
                    e.text()
                ));
            }
            Ok(out) if exempt => return self.no_zeros(&out.structured),
            Ok(out) => &out.structured,
        };
        let named = out["node_errors"].as_array().is_some_and(|errors| {
            errors.iter().any(|e| {
                e["code"] == "NODE_UNREACHABLE"
                    && e["nodeid"] == DEAD_NODEID
                    && e["node"] == self.dead
            })
        });
        if !named {
            return Err(format!("node_errors does not name it: {out}"));
        }
        self.no_moves_through_it(out)?;
        self.no_zeros(out)?;
        self.no_partial_totals(out)
    }

    /// A plan whose moves go from or to the stopped worker offers nothing to execute.
    fn no_moves_through_it(&self, out: &Value) -> Result<(), String> {
        let through = out["moves"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["source"] == self.dead || m["target"] == self.dead);
        if !through {
            return Ok(());
        }
        let summary = &out["summary"];
        if !summary["execute"].is_null()
            || !summary["unreachable_move_nodes"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n == self.dead))
        {
            return Err(format!(
                "moves go through the stopped worker, yet the plan offers to execute them: {summary}"
            ));
        }
        Ok(())
    }

    /// Nothing that describes the stopped worker carries a size: its bytes are unknown.
    fn no_zeros(&self, out: &Value) -> Result<(), String> {
        let by_bytes = self.args.get("metric").and_then(Value::as_str) != Some("shard_count");
        let mut bad = Vec::new();
        walk(out, &mut |o| {
            let about_dead = o.get("nodeid").and_then(Value::as_i64) == Some(DEAD_NODEID)
                || o.get("node").and_then(Value::as_str) == Some(self.dead)
                || o.get("group_key").and_then(Value::as_str) == Some(self.dead);
            // Evidence keyed by node name (the advisor's per_node) is about it too.
            let o = match o.get(self.dead) {
                Some(Value::Object(inner)) => inner,
                _ if about_dead && !o.contains_key("code") => o,
                _ => return,
            };
            for (k, v) in o {
                let sized = k.contains("bytes")
                    || k == "size"
                    || k.ends_with("_size")
                    || (by_bytes && k == "metric_value");
                if sized && !v.is_null() {
                    bad.push(format!("{k}={v} in {}", Value::Object(o.clone())));
                }
            }
        });
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!("sizes for the stopped worker: {}", bad.join("; ")))
        }
    }

    /// Totals over shards the stopped worker holds are unknown, not a partial sum.
    fn no_partial_totals(&self, out: &Value) -> Result<(), String> {
        let rows = |q: &str| out[q].as_array().cloned().unwrap_or_default();
        let mut bad = Vec::new();
        let expect_null = |bad: &mut Vec<String>, what: String, v: &Value| {
            if !v.is_null() {
                bad.push(format!("{what} = {v}"));
            }
        };
        match self.tool {
            "list_distributed_tables" | "citus_list_distributed_tables" => {
                for t in rows("tables") {
                    let name = match (t["schema_name"].as_str(), t["table_name"].as_str()) {
                        (Some(s), Some(n)) if s != "public" && !n.contains('.') => {
                            format!("{s}.{n}")
                        }
                        (_, Some(n)) => n.to_string(),
                        _ => continue,
                    };
                    if self.dead_tables.contains(&name) {
                        expect_null(&mut bad, format!("size_bytes of {name}"), &t["size_bytes"]);
                    } else if !t["size_bytes"].is_number() {
                        bad.push(format!("{name}, on live nodes only, has no size: {t}"));
                    }
                }
            }
            "citus_colocation_inspector" => {
                for g in rows("groups") {
                    let id = g["colocation_id"].to_string();
                    if self.dead_groups.contains(&id) {
                        expect_null(
                            &mut bad,
                            format!("total_bytes of group {id}"),
                            &g["total_bytes"],
                        );
                    }
                }
            }
            "citus_cluster_summary" => {
                expect_null(
                    &mut bad,
                    "summary.total_bytes".into(),
                    &out["summary"]["total_bytes"],
                );
            }
            "citus_table_inspector" => {
                expect_null(
                    &mut bad,
                    "table.total_bytes".into(),
                    &out["table"]["total_bytes"],
                );
                expect_null(
                    &mut bad,
                    "table.data_bytes".into(),
                    &out["table"]["data_bytes"],
                );
            }
            "citus_shard_skew_report" => {
                expect_null(&mut bad, "summary.total".into(), &out["summary"]["total"]);
            }
            _ => {}
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!("partial totals: {}", bad.join("; ")))
        }
    }
}

/// Calls `f` on every object in `v`, depth first.
fn walk(v: &Value, f: &mut dyn FnMut(&serde_json::Map<String, Value>)) {
    match v {
        Value::Object(o) => {
            f(o);
            for x in o.values() {
                walk(x, f);
            }
        }
        Value::Array(a) => {
            for x in a {
                walk(x, f);
            }
        }
        _ => {}
    }
}
