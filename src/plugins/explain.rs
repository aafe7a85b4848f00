//! `citus_explain_query`: EXPLAIN of one caller-supplied statement, run read-only, with
//! the distributed plan classified from the JSON plan (router or multi-shard, tasks).
//!
//! This is the one tool that takes SQL text from the caller. It is checked before it
//! reaches the database (one statement; ANALYZE only of statements that cannot write)
//! and always runs inside a READ ONLY transaction that is rolled back.

use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::db::Statement;
use crate::engine::{Engine, ErrorCode, ToolError};
use crate::sql;

/// Statement kinds EXPLAIN ANALYZE may run: they only read (unless they call a function
/// that writes, which the READ ONLY transaction refuses).
const READING: &[&str] = &["select", "with", "values", "table"];

/// Runs the tool; returns its structured result.
pub async fn run(
    engine: &Engine,
    args: &Map<String, Value>,
    timeout: Duration,
    max_bytes: usize,
    cancel: &CancellationToken,
) -> Result<Value, ToolError> {
    let text = args
        .get("sql")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .trim();
    let flag = |k: &str, default: bool| args.get(k).and_then(Value::as_bool).unwrap_or(default);
    let (analyze, verbose, costs) = (
        flag("analyze", false),
        flag("verbose", false),
        flag("costs", true),
    );

    let statement = check(text, analyze)?;
    let db = engine.db().ok_or_else(crate::engine::not_configured)?;
    // The options are fixed keywords chosen by booleans; the statement is the caller's,
    // checked above. No value of any other kind is pasted here.
    let explain = format!(
        "EXPLAIN (FORMAT JSON, ANALYZE {}, VERBOSE {}, COSTS {}{}) {statement}",
        on_off(analyze),
        on_off(verbose),
        on_off(costs),
        if analyze { ", BUFFERS ON" } else { "" },
    );
    let rows = db
        .read_only(
            &[Statement {
                sql: explain,
                binds: vec![],
                max_rows: 1,
            }],
            timeout,
            cancel,
        )
        .await?;
    let plan = rows
        .into_iter()
        .next()
        .and_then(|r| r.rows.into_iter().next())
        .and_then(|r| r.into_iter().next())
        .unwrap_or(Value::Null);
    let mut out = summarize(plan, analyze);
    // A plan of a large query can be huge; the summary above is what matters most.
    if serde_json::to_vec(&out).map_or(0, |v| v.len()) > max_bytes {
        out["plan"] = Value::Null;
        out["truncated"] = Value::Bool(true);
        out["hint"] = Value::from(
            "the full plan is larger than the result limit; call with verbose: false, or raise limits.max_bytes",
        );
    } else {
        out["truncated"] = Value::Bool(false);
    }
    Ok(out)
}

fn on_off(b: bool) -> &'static str {
    if b { "ON" } else { "OFF" }
}

/// The statement to explain, or why it is refused.
fn check(text: &str, analyze: bool) -> Result<&str, ToolError> {
    let invalid =
        |msg: String, hint: &str| Err(ToolError::new(ErrorCode::InvalidArgument, msg).hint(hint));
    let statement = text.trim_end_matches(|c: char| c == ';' || c.is_whitespace());
    match sql::statement_count(statement) {
        0 => return invalid("`sql` is empty".into(), "pass one SQL statement"),
        1 => {}
        n => {
            return invalid(
                format!("`sql` holds {n} statements; EXPLAIN takes exactly one"),
                "pass a single statement without `;` between statements",
            );
        }
    }
    let keyword = sql::first_keyword(statement).unwrap_or_default();
    if keyword == "explain" {
        return invalid(
            "`sql` is already an EXPLAIN".into(),
            "pass the statement itself; the tool adds EXPLAIN and its options",
        );
    }
    if analyze {
        let writes = if READING.contains(&keyword.as_str()) {
            sql::writes(statement)
        } else {
            Some(keyword.clone())
        };
        if let Some(word) = writes {
            return invalid(
                format!("EXPLAIN ANALYZE runs the statement, and this one writes (`{word}`)"),
                "call again with analyze: false to see the plan without running it",
            );
        }
    }
    Ok(statement)
}

/// The plan plus what matters about its distribution.
fn summarize(plan: Value, analyze: bool) -> Value {
    let mut scans = Vec::new();
    collect_citus_scans(&plan, &mut scans);
    let top = plan.get(0).cloned().unwrap_or(Value::Null);
    let task_count: u64 = scans.iter().filter_map(|s| s["task_count"].as_u64()).sum();
    let plan_type = match (scans.len(), task_count) {
        (0, _) => "local",
        (1, 0 | 1) => "router",
        _ => "multi_shard",
    };
    let mut nodes: Vec<Value> = scans
        .iter()
        .flat_map(|s| s["nodes"].as_array().cloned().unwrap_or_default())
        .collect();
    nodes.sort_by_key(ToString::to_string);
    nodes.dedup();
    let mut out = json!({
        "plan_type": plan_type,
        "distributed": !scans.is_empty(),
        "task_count": task_count,
        "nodes_shown": nodes,
        "citus_scans": scans,
        "analyzed": analyze,
        "explanation": match plan_type {
            "router" => "router query: Citus sends it to a single shard on one node (fast path for queries filtered by the distribution column)",
            "multi_shard" => "multi-shard query: Citus runs a task per shard in parallel and combines the results on the coordinator",
            _ => "no Citus scan in the plan: the statement runs on the coordinator only (local or reference-only data, or plain PostgreSQL)",
        },
    });
    for key in ["Planning Time", "Execution Time"] {
        if let Some(v) = top.get(key) {
            out[key.to_ascii_lowercase().replace(' ', "_") + "_ms"] = v.clone();
        }
    }
    out["plan"] = top.get("Plan").cloned().unwrap_or(plan);
    out
}

/// Every Citus custom scan in a JSON plan, outermost first, with its task count and
/// the nodes of the tasks it shows.
fn collect_citus_scans(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| collect_citus_scans(i, out)),
        Value::Object(m) => {
            if let Some(provider) = m
                .get("Custom Plan Provider")
                .and_then(Value::as_str)
                .filter(|p| p.starts_with("Citus"))
            {
                let job = m.get("Distributed Query").and_then(|d| d.get("Job"));
                let nodes: Vec<Value> = job
                    .and_then(|j| j.get("Tasks"))
                    .and_then(Value::as_array)
                    .map(|tasks| {
                        tasks
                            .iter()
                            .filter_map(|t| t.get("Node").and_then(Value::as_str))
                            .map(node_name)
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(json!({
                    "executor": provider,
                    "task_count": job.and_then(|j| j.get("Task Count")).cloned().unwrap_or(Value::Null),
                    "tasks_shown": job.and_then(|j| j.get("Tasks Shown")).cloned().unwrap_or(Value::Null),
                    "nodes": nodes,
                }));
                // Subplans (CTEs, subqueries pulled up by Citus) carry their own scans.
                if let Some(sub) = m.get("Distributed Query").and_then(|d| d.get("Subplans")) {
                    collect_citus_scans(sub, out);
                }
                return;
            }
            for (k, child) in m {
                if k != "Remote Plan" {
                    collect_citus_scans(child, out);
                }
            }
        }
        _ => {}
    }
}

/// The compact text of a result: the summary, then the plan as an indented tree.
pub fn text(out: &Value) -> String {
    let mut s = format!(
        "plan_type: {}\ntask_count: {}\nnodes_shown: {}\n{}\n",
        out["plan_type"].as_str().unwrap_or("?"),
        out["task_count"],
        out["nodes_shown"]
            .as_array()
            .map(|n| n
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default(),
        out["explanation"].as_str().unwrap_or_default(),
    );
    for key in ["planning_time_ms", "execution_time_ms"] {
        if let Some(v) = out.get(key) {
            s.push_str(&format!("{key}: {v}\n"));
        }
    }
    if out["plan"].is_object() {
        s.push_str("plan:\n");
        plan_tree(&out["plan"], 1, &mut s);
    } else if let Some(h) = out["hint"].as_str() {
        s.push_str(&format!("plan: (omitted) {h}\n"));
    }
    s.trim_end().to_string()
}

/// One line per plan node: type, relation or index, and the numbers that matter;
/// Citus tasks show their node and remote plan underneath.
fn plan_tree(node: &Value, depth: usize, s: &mut String) {
    let pad = "  ".repeat(depth);
    let mut line = node["Node Type"].as_str().unwrap_or("?").to_string();
    if let Some(p) = node["Custom Plan Provider"].as_str() {
        line = format!("{line} ({p})");
    }
    if let Some(r) = node["Relation Name"].as_str() {
        line.push_str(&format!(" on {r}"));
    }
    if let Some(i) = node["Index Name"].as_str() {
        line.push_str(&format!(" using {i}"));
    }
    let num = |k: &str| {
        node.get(k)
            .filter(|v| !v.is_null())
            .map(ToString::to_string)
    };
    let mut facts = Vec::new();
    if let Some(v) = num("Actual Rows") {
        facts.push(format!("rows={v}"));
    } else if let Some(v) = num("Plan Rows") {
        facts.push(format!("est_rows={v}"));
    }
    if let Some(v) = num("Actual Total Time") {
        facts.push(format!("ms={v}"));
    } else if let Some(v) = num("Total Cost") {
        facts.push(format!("cost={v}"));
    }
    for k in ["Index Cond", "Filter", "Hash Cond", "Join Filter"] {
        if let Some(c) = node[k].as_str() {
            facts.push(format!("{}: {c}", k.to_ascii_lowercase()));
        }
    }
    if !facts.is_empty() {
        line = format!("{line}  [{}]", facts.join(", "));
    }
    s.push_str(&format!("{pad}{line}\n"));
    if let Some(job) = node.get("Distributed Query").and_then(|d| d.get("Job")) {
        s.push_str(&format!(
            "{pad}  tasks: {} ({})\n",
            job["Task Count"],
            job["Tasks Shown"].as_str().unwrap_or("")
        ));
        for task in job["Tasks"].as_array().into_iter().flatten() {
            s.push_str(&format!(
                "{pad}  task on {}\n",
                task["Node"]
                    .as_str()
                    .map(node_name)
                    .unwrap_or(Value::Null)
                    .as_str()
                    .unwrap_or("?")
            ));
            for remote in task["Remote Plan"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|r| r.as_array().cloned().unwrap_or_default())
            {
                plan_tree(&remote["Plan"], depth + 2, s);
            }
        }
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        plan_tree(child, depth + 1, s);
    }
}

/// `host=10.0.0.1 port=5432 dbname=citus` → `10.0.0.1:5432`.
fn node_name(conninfo: &str) -> Value {
    let field = |k: &str| {
        conninfo
            .split_whitespace()
            .find_map(|p| p.strip_prefix(k))
            .unwrap_or("?")
    };
    Value::from(format!("{}:{}", field("host="), field("port=")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_it_must() {
        assert!(check("SELECT 1", true).is_ok());
        assert_eq!(check("SELECT 1;", false).unwrap(), "SELECT 1");
        assert_eq!(
            check("SELECT 1; SELECT 2", false).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            check("  ", false).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            check("DELETE FROM orders", true).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        assert!(
            check("DELETE FROM orders", false).is_ok(),
            "a plan without running it is fine"
        );
        assert!(
            check(
                "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d",
                true
            )
            .is_err()
        );
        assert!(check("SELECT 'a;b' -- ; x", true).is_ok());
        assert!(check("EXPLAIN SELECT 1", false).is_err());
    }

    #[test]
    fn classifies_router_and_multi_shard_plans() {
        let router = json!([{"Plan": {"Node Type": "Custom Scan", "Custom Plan Provider": "Citus Adaptive",
            "Distributed Query": {"Job": {"Task Count": 1, "Tasks Shown": "All",
              "Tasks": [{"Node": "host=127.0.0.1 port=9702 dbname=citus", "Remote Plan": [[{"Plan": {"Node Type": "Seq Scan"}}]]}]}}}}]);
        let s = summarize(router, false);
        assert_eq!(s["plan_type"], "router");
        assert_eq!(s["nodes_shown"], json!(["127.0.0.1:9702"]));
        let multi = json!([{"Plan": {"Node Type": "Aggregate", "Plans": [{"Node Type": "Custom Scan", "Custom Plan Provider": "Citus Adaptive",
            "Distributed Query": {"Job": {"Task Count": 32, "Tasks Shown": "One of 32", "Tasks": []}}}]}, "Execution Time": 1.5}]);
        let s = summarize(multi, true);
        assert_eq!(s["plan_type"], "multi_shard");
        assert_eq!(s["task_count"], 32);
        assert_eq!(s["execution_time_ms"], 1.5);
        let local = json!([{"Plan": {"Node Type": "Seq Scan"}}]);
        assert_eq!(summarize(local, false)["plan_type"], "local");
    }

    #[test]
    fn text_shows_the_plan_as_a_tree() {
        let router = json!([{"Plan": {"Node Type": "Custom Scan", "Custom Plan Provider": "Citus Adaptive", "Plan Rows": 0, "Total Cost": 0.0,
            "Distributed Query": {"Job": {"Task Count": 1, "Tasks Shown": "All",
              "Tasks": [{"Node": "host=127.0.0.1 port=9702 dbname=citus", "Remote Plan": [[{"Plan": {"Node Type": "Index Scan",
                "Relation Name": "orders_102043", "Index Name": "orders_pkey_102043", "Index Cond": "(customer_id = 1)", "Plan Rows": 15}}]]}]}}}}]);
        let t = text(&summarize(router, false));
        assert!(
            t.starts_with("plan_type: router\ntask_count: 1\nnodes_shown: 127.0.0.1:9702"),
            "{t}"
        );
        assert!(t.contains("  Custom Scan (Citus Adaptive)  [est_rows=0, cost=0.0]\n    tasks: 1 (All)\n    task on 127.0.0.1:9702\n      Index Scan on orders_102043 using orders_pkey_102043  [est_rows=15, index cond: (customer_id = 1)]"), "{t}");
    }
}
