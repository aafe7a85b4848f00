//! `citus_advisor`: runs the tool file's read-only queries for the requested focus and
//! judges their rows with one function per rule. Each rule returns findings with the
//! evidence it saw, what to do, and the tool to call next.
//!
//! Thresholds are constants here, beside the rules that use them; a query that filters
//! on one receives it as a bind.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::advice::{
    COLUMNAR_FIX, COLUMNAR_GAP, Facts, Finding, Read, Record, Severity, findings_text, flag, int,
    is_columnar, num, pretty_bytes, replica_identity_gap, sort, summary, text, val,
};
use crate::engine::{Plugin, PluginCall, PluginFuture, ToolError, ToolOutput};

/// The `advisor` plugin.
pub struct Advisor;

impl Plugin for Advisor {
    fn name(&self) -> &'static str {
        "advisor"
    }

    fn call<'a>(&'a self, call: PluginCall<'a>) -> PluginFuture<'a> {
        Box::pin(run(call))
    }
}

/// Workers whose bytes exceed the average by this factor are skewed...
const SKEW_RATIO: f64 = 1.5;
/// ...when the gap between the fullest and the emptiest is at least this much: small
/// clusters are always "uneven" in relative terms.
const SKEW_MIN_BYTES: f64 = 10.0 * 1024.0 * 1024.0;
/// A shard this many times the table's average shard is a hot shard...
const HOT_SHARD_RATIO: f64 = 3.0;
/// ...if it is at least this big and its table has at least `HOT_SHARD_MIN_SHARDS` shards.
const HOT_SHARD_MIN_BYTES: f64 = 1024.0 * 1024.0;
const HOT_SHARD_MIN_SHARDS: i64 = 4;
/// How long sessions, waits and prepared transactions may last before they are findings:
/// a warning from these values (the defaults, in seconds; the caller may override them),
/// critical from `CRITICAL_FACTOR` times them.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Limits {
    /// An active query.
    long_query: f64,
    /// A session idle in a transaction: it holds locks and blocks vacuum and shard moves.
    idle_in_transaction: f64,
    /// A lock wait.
    lock_wait: f64,
    /// Citus recovers its own prepared transactions every citus.recover_2pc_interval (1 min
    /// by default); one older than this was left behind.
    prepared_xact: f64,
}

const DEFAULT_LIMITS: Limits = Limits {
    long_query: 300.0,
    idle_in_transaction: 60.0,
    lock_wait: 10.0,
    prepared_xact: 300.0,
};

const CRITICAL_FACTOR: f64 = 10.0;

impl Limits {
    fn from_args(args: &Map<String, Value>) -> Limits {
        let t = args.get("thresholds");
        let get = |key: &str, default: f64| {
            t.and_then(|t| t.get(key))
                .and_then(Value::as_f64)
                .filter(|v| v.is_finite() && *v >= 0.0)
                .unwrap_or(default)
        };
        let d = DEFAULT_LIMITS;
        Limits {
            long_query: get("long_query_secs", d.long_query),
            idle_in_transaction: get("idle_in_transaction_secs", d.idle_in_transaction),
            lock_wait: get("lock_wait_secs", d.lock_wait),
            prepared_xact: get("prepared_xact_secs", d.prepared_xact),
        }
    }
}

/// Per-kind cap on findings about individual sessions, transactions and jobs.
const MAX_LISTED: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Focus {
    Skew,
    Ops,
    Schema,
    Config,
    All,
}

impl Focus {
    fn parse(s: &str) -> Focus {
        match s {
            "skew" => Focus::Skew,
            "ops" => Focus::Ops,
            "schema" => Focus::Schema,
            "config" => Focus::Config,
            _ => Focus::All,
        }
    }

    fn has(self, area: Focus) -> bool {
        self == Focus::All || self == area
    }
}

async fn run(call: PluginCall<'_>) -> Result<ToolOutput, ToolError> {
    let focus_name = call
        .args
        .get("focus")
        .and_then(Value::as_str)
        .unwrap_or("all");
    let focus = Focus::parse(focus_name);
    let max_tables = call
        .args
        .get("max_tables")
        .and_then(Value::as_u64)
        .map_or(20, |n| n.clamp(1, 1000) as usize);

    let limits = Limits::from_args(call.args);

    let mut reads = vec![Read::coordinator("nodes", json!({}))];
    if focus.has(Focus::Skew) || focus.has(Focus::Schema) {
        reads.push(Read::coordinator("tables", json!({})));
    }
    if focus.has(Focus::Ops) {
        let min_secs = limits.idle_in_transaction.min(limits.long_query);
        reads.push(Read::coordinator("sessions", json!({"min_secs": min_secs})));
        reads.push(Read::coordinator("lock_waits", json!({})));
        reads.push(Read::coordinator("jobs", json!({})));
        reads.push(Read::coordinator("cleanup", json!({})));
        reads.push(Read::nodes("prepared_xacts"));
    }
    if focus.has(Focus::Config) {
        reads.push(Read::nodes("settings"));
        reads.push(Read::nodes("versions"));
    }
    let asked = reads.len();
    let mut facts = Facts::gather(&call, reads).await?;
    let nodes = facts.get("nodes").unwrap_or_default().to_vec();
    name_unreachable_nodes(&nodes, &mut facts.node_errors);
    let mut findings = judge(&facts, focus, max_tables, &limits);
    findings.extend(checks_failed(&facts, asked));

    let registry = call.engine.registry();
    let mut findings: Vec<Finding> = findings
        .into_iter()
        .map(|mut f| {
            // A tool the server does not serve (disabled) is no help as a next step.
            if f.next_tool
                .as_ref()
                .is_some_and(|n| !registry.tools.contains_key(n.name))
            {
                f.next_tool = None;
            }
            f
        })
        .collect();
    sort(&mut findings);
    Ok(output(focus_name, findings, &facts, call.limits.max_bytes))
}

/// Nodes the `nodes` query found silent (`reachable` false) go to `node_errors`, as the
/// other tools name them, unless a fan-out already did: their sizes are unknown (null).
fn name_unreachable_nodes(nodes: &[Record], node_errors: &mut Vec<Value>) {
    for n in nodes {
        if n.get("reachable") != Some(&Value::Bool(false))
            || node_errors.iter().any(|o| o["nodeid"] == val(n, "nodeid"))
        {
            continue;
        }
        node_errors.push(json!({
            "nodeid": val(n, "nodeid"),
            "node": val(n, "node"),
            "code": crate::engine::ErrorCode::NodeUnreachable,
            "message": format!(
                "the coordinator cannot reach node {}: its numbers are missing from this result",
                text(n, "node")
            ),
        }));
    }
}

/// Every rule the focus asks for, over the facts that were read.
fn judge(facts: &Facts, focus: Focus, max_tables: usize, limits: &Limits) -> Vec<Finding> {
    let none: &[Record] = &[];
    let nodes = facts.get("nodes").unwrap_or(none);
    let tables = facts.get("tables");
    let mut out = Vec::new();
    if focus.has(Focus::Skew) {
        if facts.get("nodes").is_some() {
            out.extend(node_skew(nodes));
            out.extend(empty_workers(nodes, tables.unwrap_or(none)));
        }
        if let Some(t) = tables {
            out.extend(hot_shards(t, max_tables));
        }
    }
    if focus.has(Focus::Schema)
        && let Some(t) = tables
    {
        out.extend(tables_without_replica_identity(t, nodes, max_tables));
    }
    if focus.has(Focus::Ops) {
        if facts.get("nodes").is_some() {
            out.extend(node_states(nodes));
            out.extend(missing_reference_tables(nodes));
        }
        if let Some(s) = facts.get("sessions") {
            out.extend(long_sessions(s, limits));
        }
        if let Some(w) = facts.get("lock_waits") {
            out.extend(lock_waits(w, limits));
        }
        if let Some(j) = facts.get("jobs") {
            out.extend(background_jobs(j));
        }
        if let Some(c) = facts.get("cleanup") {
            out.extend(leftover_cleanup(c, facts.get("jobs").unwrap_or(none)));
        }
        if let Some(x) = facts.get("prepared_xacts") {
            out.extend(orphaned_prepared_xacts(x, limits));
        }
    }
    if focus.has(Focus::Config) {
        if let Some(s) = facts.get("settings") {
            let settings = by_node(s);
            out.extend(blocking_settings(&settings, nodes));
            out.extend(setting_drift(&settings));
        }
        if let Some(v) = facts.get("versions") {
            out.extend(version_mismatch(v));
        }
    }
    out
}

/// A check whose query failed judged nothing: the rules that read it did not run, so an
/// empty list of findings would read as a clean bill of health.
fn checks_failed(facts: &Facts, asked: usize) -> Option<Finding> {
    if facts.errors.is_empty() {
        return None;
    }
    let failed: Vec<&str> = facts
        .errors
        .iter()
        .filter_map(|e| e["query"].as_str())
        .collect();
    let severity = if failed.len() >= asked {
        Severity::Critical
    } else {
        Severity::Warning
    };
    Some(
        Finding::new(
            severity,
            "checks_failed",
            format!(
                "{} of {asked} checks could not run ({}): the rules that read them were not judged",
                failed.len(),
                failed.join(", ")
            ),
        )
        .evidence(json!({"failed_checks": failed}))
        .recommend(
            "see each check's error: a TIMEOUT or NODE_UNREACHABLE usually means a node that does not answer; call again once it does, or narrow `focus`",
        )
        .next("list_nodes", json!({})),
    )
}

/// The result object and its text, cut to `max_bytes` by dropping the least severe
/// findings first.
fn output(focus: &str, mut findings: Vec<Finding>, facts: &Facts, max_bytes: usize) -> ToolOutput {
    let mut truncated = !facts.cut.is_empty();
    loop {
        let mut out = json!({
            "focus": focus,
            "summary": summary(&findings),
            "findings": findings,
            "truncated": truncated,
        });
        if !facts.cut.is_empty() {
            out["partial_checks"] = json!(facts.cut);
        }
        if !facts.errors.is_empty() {
            out["errors"] = Value::from(facts.errors.clone());
        }
        if !facts.node_errors.is_empty() {
            out["node_errors"] = Value::from(facts.node_errors.clone());
        }
        let size = serde_json::to_vec(&out).map_or(0, |v| v.len());
        if size > max_bytes && !findings.is_empty() {
            findings.pop();
            truncated = true;
            continue;
        }
        let mut text = format!("focus: {focus}\nsummary: {}\n", out["summary"]);
        if findings.is_empty() {
            text.push_str("no findings: every rule that ran passed\n");
        }
        text.push_str(&findings_text(&findings));
        for e in &facts.errors {
            text.push_str(&format!(
                "check failed: {} {} {}\n",
                e["query"].as_str().unwrap_or(""),
                e["code"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or("")
            ));
        }
        for e in &facts.node_errors {
            text.push_str(&format!(
                "node error {}: {} {}\n",
                e["node"].as_str().unwrap_or(""),
                e["code"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or("")
            ));
        }
        if !facts.cut.is_empty() {
            text.push_str(&format!(
                "partial checks (row cap reached): {}\n",
                facts.cut.join(", ")
            ));
        }
        if truncated {
            text.push_str("truncated: true\n");
        }
        return ToolOutput {
            structured: out,
            text: text.trim_end().to_string(),
        };
    }
}

// ----- skew -------------------------------------------------------------------------------

/// Active primary workers meant to hold distributed shards (clones hold none until promoted).
fn shard_workers(nodes: &[Record]) -> Vec<&Record> {
    nodes
        .iter()
        .filter(|n| {
            text(n, "role") == "primary"
                && flag(n, "is_active")
                && flag(n, "should_have_shards")
                && !flag(n, "is_clone")
        })
        .collect()
}

fn has_distributed_tables(nodes: &[Record]) -> bool {
    nodes
        .first()
        .is_some_and(|n| int(n, "distributed_tables") > 0)
}

/// Data (bytes) and shard-count skew across the workers that should hold shards, empty
/// ones included: a rebalance moves shards towards the average.
fn node_skew(nodes: &[Record]) -> Vec<Finding> {
    let workers = shard_workers(nodes);
    if workers.len() < 2 || !has_distributed_tables(nodes) {
        return vec![];
    }
    let per_node: Map<String, Value> = workers
        .iter()
        .map(|n| {
            (
                text(n, "node").to_string(),
                json!({"bytes": val(n, "bytes"), "shards": int(n, "shards")}),
            )
        })
        .collect();
    let mut out = Vec::new();
    // A worker that did not answer has no size (null): data skew is then unknown, while
    // shard counts come from the catalog and still count.
    let bytes: Option<Vec<f64>> = workers.iter().map(|n| num(n, "bytes")).collect();
    let shards: Vec<f64> = workers.iter().map(|n| int(n, "shards") as f64).collect();
    if let Some(bytes) = bytes
        && let (max_b, min_b, avg_b) = stats(&bytes)
        && avg_b > 0.0
        && max_b > SKEW_RATIO * avg_b
        && max_b - min_b >= SKEW_MIN_BYTES
    {
        let fullest = workers[argmax(&bytes)];
        out.push(
            Finding::new(
                Severity::Warning,
                "data_skew",
                format!(
                    "data is unevenly spread: {} holds {} ({:.1}x the worker average of {}; the emptiest holds {})",
                    text(fullest, "node"),
                    pretty_bytes(max_b),
                    max_b / avg_b,
                    pretty_bytes(avg_b),
                    pretty_bytes(min_b)
                ),
            )
            .evidence(json!({
                "max_bytes": max_b, "min_bytes": min_b, "avg_bytes": avg_b.round(),
                "max_avg_ratio": round2(max_b / avg_b), "threshold_ratio": SKEW_RATIO,
                "per_node": per_node,
            }))
            .recommend("rebalance by disk size (rebalance_strategy by_disk_size) after checking the prerequisites: the plan shows the moves and bytes per node after; hot shards (one tenant) need tenant isolation instead (citus_shard_skew_report names them)")
            .next("citus_rebalance_plan", json!({"strategy": "by_disk_size"})),
        );
    }
    let (max_s, min_s, avg_s) = stats(&shards);
    if max_s - min_s > (avg_s * 0.2).max(2.0) {
        let fullest = workers[argmax(&shards)];
        out.push(
            Finding::new(
                Severity::Warning,
                "shard_count_skew",
                format!(
                    "shard counts differ across workers: {} has {} shard placements, the fewest is {} (average {:.1})",
                    text(fullest, "node"),
                    max_s,
                    min_s,
                    avg_s
                ),
            )
            .evidence(json!({
                "max_shards": max_s, "min_shards": min_s, "avg_shards": round2(avg_s),
                "per_node": per_node,
            }))
            .recommend("rebalance with the strategy by_shard_count, which evens out placements: the plan shows the moves")
            .next("citus_rebalance_plan", json!({"strategy": "by_shard_count"})),
        );
    }
    out
}

/// Workers that should have shards but hold none while distributed tables exist.
fn empty_workers(nodes: &[Record], tables: &[Record]) -> Vec<Finding> {
    if !has_distributed_tables(nodes) {
        return vec![];
    }
    // The biggest movable table is where a prerequisite check pays off first.
    let largest = tables
        .iter()
        .find(|t| matches!(text(t, "table_type"), "distributed" | "schema"))
        .map(|t| text(t, "table_name"));
    shard_workers(nodes)
        .into_iter()
        .filter(|n| int(n, "shards") == 0)
        .map(|n| {
            let f = Finding::new(
                Severity::Warning,
                "empty_worker",
                format!(
                    "worker {} should have shards but holds none: it adds no capacity until a rebalance moves shards to it",
                    text(n, "node")
                ),
            )
            .evidence(json!({
                "nodeid": val(n, "nodeid"), "node": val(n, "node"), "shards": 0,
                "should_have_shards": true,
                "missing_reference_shards": int(n, "missing_reference_shards"),
            }))
            .recommend("run a rebalance (it first copies the reference tables to the node); check that the tables can move online first");
            match largest {
                Some(t) => f.next("citus_validate_rebalance_prereqs", json!({"table": t})),
                None => f.next("citus_shard_skew_report", json!({})),
            }
        })
        .collect()
}

/// Tables with a shard far bigger than their average shard: one hot distribution value
/// (tenant), which moving shards cannot even out.
fn hot_shards(tables: &[Record], max_tables: usize) -> Vec<Finding> {
    tables
        .iter()
        .filter(|t| matches!(text(t, "table_type"), "distributed" | "schema"))
        .filter_map(|t| {
            let shards = int(t, "shards");
            // Unknown (null) while a node holding one of its shards does not answer.
            let largest = num(t, "largest_shard_bytes")?;
            let avg = num(t, "bytes")? / shards.max(1) as f64;
            (shards >= HOT_SHARD_MIN_SHARDS
                && largest >= HOT_SHARD_MIN_BYTES
                && largest > HOT_SHARD_RATIO * avg)
                .then(|| {
                    Finding::new(
                        Severity::Warning,
                        "hot_shard",
                        format!(
                            "shard {} of {} holds {} ({:.0}% of the table, {:.1}x its average shard)",
                            val(t, "largest_shardid"),
                            text(t, "table_name"),
                            pretty_bytes(largest),
                            100.0 * largest / (int(t, "bytes") as f64).max(1.0),
                            largest / avg.max(1.0)
                        ),
                    )
                    .evidence(json!({
                        "table": val(t, "table_name"), "shardid": val(t, "largest_shardid"),
                        "shard_bytes": largest, "table_bytes": int(t, "bytes"),
                        "shards": shards, "avg_shard_bytes": avg.round(),
                        "threshold_ratio": HOT_SHARD_RATIO,
                    }))
                    .recommend("one distribution value dominates: a rebalance moves the shard whole; isolate the tenant into its own shard (isolate_tenant_to_new_shard) or choose a distribution column with more even values")
                    .next("citus_shard_heatmap", json!({"table": val(t, "table_name")}))
                })
        })
        .take(max_tables)
        .collect()
}

// ----- schema -----------------------------------------------------------------------------

/// Tables whose shards cannot move with logical replication (no primary key or usable
/// replica identity): a rebalance or move in the default mode (auto) refuses them and
/// every table colocated with them. Reference tables matter when a node lacks their
/// copy, since Citus copies them in the same mode.
fn tables_without_replica_identity(
    tables: &[Record],
    nodes: &[Record],
    max_tables: usize,
) -> Vec<Finding> {
    let copies_pending = nodes
        .iter()
        .any(|n| flag(n, "is_active") && int(n, "missing_reference_shards") > 0);
    // A columnar table cannot move online whatever its replica identity (is_columnar).
    let blocked: Vec<(&Record, &str)> = tables
        .iter()
        .filter(|t| text(t, "table_type") != "local")
        .filter_map(|t| {
            let why = if is_columnar(t) {
                Some(COLUMNAR_GAP)
            } else {
                replica_identity_gap(t)
            };
            why.map(|why| (t, why))
        })
        .collect();
    let mut out: Vec<Finding> = blocked
        .iter()
        .take(max_tables)
        .map(|(t, why)| {
            let reference = text(t, "table_type") == "reference";
            let severity = if reference && !copies_pending {
                Severity::Info
            } else {
                Severity::Warning
            };
            let title = if reference {
                format!("reference table {} cannot be copied to a new node online: {why}", text(t, "table_name"))
            } else {
                format!("shards of {} cannot move online: {why}", text(t, "table_name"))
            };
            let (rule, recommendation) = if is_columnar(t) {
                ("columnar_moves_block_writes", COLUMNAR_FIX)
            } else {
                ("no_replica_identity", "add a primary key, or set REPLICA IDENTITY USING INDEX (a unique index on NOT NULL columns) or FULL; until then moves need shard_transfer_mode 'block_writes' (writes wait during the move)")
            };
            Finding::new(severity, rule, title)
                .evidence(json!({
                    "table": val(t, "table_name"), "table_type": val(t, "table_type"),
                    "replica_identity": val(t, "replica_identity"),
                    "has_primary_key": val(t, "has_primary_key"),
                    "access_method": val(t, "access_method"),
                    "colocation_id": val(t, "colocation_id"), "bytes": val(t, "bytes"),
                }))
                .recommend(recommendation)
                .next("citus_validate_rebalance_prereqs", json!({"table": val(t, "table_name")}))
        })
        .collect();
    if blocked.len() > max_tables {
        out.push(
            Finding::new(
                Severity::Info,
                "no_replica_identity",
                format!(
                    "{} more tables cannot move online (max_tables is {max_tables})",
                    blocked.len() - max_tables
                ),
            )
            .evidence(json!({"tables_without_replica_identity": blocked.len()}))
            .recommend("call again with a higher max_tables to list them"),
        );
    }
    out
}

// ----- ops --------------------------------------------------------------------------------

/// Inactive nodes, draining workers, unsynced metadata and clones waiting for promotion.
/// A Citus 13.2 clone is registered inactive by design: it is reported, not alarmed on.
fn node_states(nodes: &[Record]) -> Vec<Finding> {
    let mut out = Vec::new();
    for n in nodes {
        let node = text(n, "node");
        let ev = json!({
            "nodeid": val(n, "nodeid"), "node": node, "groupid": val(n, "groupid"), "role": val(n, "role"),
            "is_active": val(n, "is_active"), "should_have_shards": val(n, "should_have_shards"),
            "is_clone": val(n, "is_clone"), "shards": int(n, "shards"),
        });
        if flag(n, "is_clone") {
            out.push(
                Finding::new(
                    Severity::Info,
                    "clone_node",
                    format!(
                        "node {node} is a clone of nodeid {} (snapshot-based node addition), inactive until promoted",
                        n.get("primary_nodeid").unwrap_or(&Value::Null)
                    ),
                )
                .evidence(ev)
                .recommend("promote it with citus_promote_clone_and_rebalance when it has caught up, or remove it with citus_remove_clone_node")
                .next("citus_snapshot_source_advisor", json!({})),
            );
            continue;
        }
        if !flag(n, "is_active") {
            out.push(
                Finding::new(
                    Severity::Critical,
                    "inactive_node",
                    format!("node {node} (nodeid {}) is inactive: queries and shard moves skip it", val(n, "nodeid")),
                )
                .evidence(ev)
                .recommend("bring the node back and run citus_activate_node, or remove it (citus_remove_node) after moving its shards away")
                .next("list_nodes", json!({})),
            );
            continue;
        }
        if text(n, "role") != "primary" {
            continue;
        }
        // Reachable is null when not checked; false when the coordinator's check failed.
        if n.get("reachable") == Some(&Value::Bool(false)) {
            out.push(
                Finding::new(
                    Severity::Critical,
                    "unreachable_node",
                    format!(
                        "node {node} (nodeid {}) does not answer the coordinator: queries that need its shards fail, and its sizes are unknown",
                        val(n, "nodeid")
                    ),
                )
                .evidence(ev.clone())
                .recommend("check that PostgreSQL runs on the node and accepts the coordinator's connections (citus_check_connection_to_node); until it answers, skew and sizes cannot be judged")
                .next("list_nodes", json!({})),
            );
        }
        if !flag(n, "is_coordinator") && !flag(n, "should_have_shards") {
            let shards = int(n, "shards");
            let (severity, title) = if shards > 0 {
                (
                    Severity::Warning,
                    format!(
                        "worker {node} is set to hold no shards but still holds {shards}: a drain has not finished"
                    ),
                )
            } else {
                (
                    Severity::Info,
                    format!(
                        "worker {node} holds no shards by configuration (shouldhaveshards false)"
                    ),
                )
            };
            out.push(
                Finding::new(severity, "non_shard_node", title)
                    .evidence(ev.clone())
                    .recommend("to drain it, run a rebalance with drain_only; to use it again, citus_set_node_property(..., 'shouldhaveshards', true) and rebalance")
                    .next("list_nodes", json!({})),
            );
        }
        if flag(n, "has_metadata") && !flag(n, "metadata_synced") {
            out.push(
                Finding::new(
                    Severity::Warning,
                    "metadata_not_synced",
                    format!("node {node} has metadata that is not synced yet: it cannot route distributed queries until the maintenance daemon syncs it"),
                )
                .evidence(ev)
                .recommend("wait for the maintenance daemon, or run start_metadata_sync_to_node; persistent failures show in the coordinator's log")
                .next("list_nodes", json!({})),
            );
        }
    }
    out
}

/// Active primaries that lack reference-table shards: joins with reference tables fail on
/// them, and Citus refuses moves to them until the copies exist.
fn missing_reference_tables(nodes: &[Record]) -> Vec<Finding> {
    nodes
        .iter()
        .filter(|n| {
            text(n, "role") == "primary"
                && flag(n, "is_active")
                && !flag(n, "is_clone")
                && int(n, "missing_reference_shards") > 0
        })
        .map(|n| {
            let tables = n
                .get("missing_reference_tables")
                .cloned()
                .unwrap_or(Value::Null);
            let first = tables
                .as_array()
                .and_then(|a| a.first())
                .cloned()
                .unwrap_or(Value::Null);
            let f = Finding::new(
                Severity::Warning,
                "reference_tables_missing",
                format!(
                    "node {} lacks {} of {} reference-table shards",
                    text(n, "node"),
                    int(n, "missing_reference_shards"),
                    int(n, "reference_shards")
                ),
            )
            .evidence(json!({
                "nodeid": val(n, "nodeid"), "node": val(n, "node"),
                "missing_reference_shards": int(n, "missing_reference_shards"),
                "reference_shards": int(n, "reference_shards"),
                "missing_tables": tables,
            }))
            .recommend("SELECT replicate_reference_tables(); on the coordinator (a rebalance does it first); in auto mode the reference tables need a primary key or replica identity");
            if first.is_string() {
                f.next("citus_table_inspector", json!({"table": first, "include_shards": false}))
            } else {
                f.next("list_nodes", json!({}))
            }
        })
        .collect()
}

fn graded(secs: f64, warning: f64) -> Option<Severity> {
    if secs >= warning * CRITICAL_FACTOR {
        Some(Severity::Critical)
    } else if secs >= warning {
        Some(Severity::Warning)
    } else {
        None
    }
}

/// Long-running queries and sessions idle in a transaction.
fn long_sessions(sessions: &[Record], limits: &Limits) -> Vec<Finding> {
    let mut long = Vec::new();
    let mut idle = Vec::new();
    for s in sessions {
        let state = text(s, "state");
        let ev = json!({
            "global_pid": val(s, "global_pid"), "node": val(s, "node"), "usename": val(s, "usename"),
            "application_name": val(s, "application_name"), "state": state,
            "wait_event_type": val(s, "wait_event_type"), "wait_event": val(s, "wait_event"),
            "query_secs": val(s, "query_secs"), "xact_secs": val(s, "xact_secs"), "query": val(s, "query"),
        });
        let next = json!({"global_pid": val(s, "global_pid"), "query_max_chars": 2000});
        if state == "active" {
            let secs = num(s, "query_secs").unwrap_or(0.0);
            if let Some(sev) = graded(secs, limits.long_query) {
                long.push(
                    Finding::new(sev, "long_running_query", format!("a query has run for {} (global pid {})", duration(secs), val(s, "global_pid")))
                        .evidence(ev)
                        .recommend("check that it is expected (a report, a migration); otherwise cancel it with pg_cancel_backend(global_pid)")
                        .next("citus_activity", next),
                );
            }
        } else if state.starts_with("idle in transaction") {
            let secs = num(s, "state_secs").unwrap_or(0.0);
            if let Some(sev) = graded(secs, limits.idle_in_transaction) {
                idle.push(
                    Finding::new(sev, "idle_in_transaction", format!("a session has been idle in a transaction for {} (global pid {}): it holds its locks and blocks vacuum and shard moves", duration(secs), val(s, "global_pid")))
                        .evidence(ev)
                        .recommend("fix the application to commit or roll back; end the session with pg_terminate_backend(global_pid), and set idle_in_transaction_session_timeout")
                        .next("citus_activity", next),
                );
            }
        }
    }
    capped(long, "long_running_query")
        .into_iter()
        .chain(capped(idle, "idle_in_transaction"))
        .collect()
}

/// Sessions waiting for a lock held by another.
fn lock_waits(waits: &[Record], limits: &Limits) -> Vec<Finding> {
    let found = waits
        .iter()
        .filter_map(|w| {
            let secs = num(w, "wait_secs").unwrap_or(0.0);
            graded(secs, limits.lock_wait).map(|sev| {
                Finding::new(sev, "lock_wait", format!("global pid {} has waited {} for a lock held by global pid {}", val(w, "waiting_gpid"), duration(secs), val(w, "blocking_gpid")))
                    .evidence(json!({
                        "waiting_gpid": val(w, "waiting_gpid"), "blocking_gpid": val(w, "blocking_gpid"),
                        "wait_secs": val(w, "wait_secs"), "blocked_statement": val(w, "blocked_statement"),
                        "blocking_statement": val(w, "blocking_statement"),
                    }))
                    .recommend("find the root blocker and end its transaction (commit, roll back, or pg_cancel_backend / pg_terminate_backend its global pid)")
                    .next("citus_lock_inspector", json!({"include_locks": true}))
            })
        })
        .collect();
    capped(found, "lock_wait")
}

/// Failed, failing or stuck background jobs (rebalances, moves) and tasks in `error`.
fn background_jobs(jobs: &[Record]) -> Vec<Finding> {
    let mut out = Vec::new();
    for j in jobs {
        let state = text(j, "state");
        let id = &val(j, "job_id");
        let ev = json!({
            "job_id": id, "state": state, "job_type": val(j, "job_type"),
            "description": val(j, "description"), "started_at": val(j, "started_at"),
            "finished_at": val(j, "finished_at"), "tasks": int(j, "tasks"),
            "tasks_done": int(j, "tasks_done"), "tasks_error": int(j, "tasks_error"),
            "tasks_retrying": int(j, "tasks_retrying"), "first_error_task": val(j, "first_error_task"),
            "last_message": val(j, "last_message"),
        });
        let next = json!({"job_id": id, "include_tasks": true});
        let finding = match state {
            "failed" | "failing" => Some(Finding::new(
                Severity::Warning,
                "background_job_failed",
                format!("background job {id} ({}) is {state}: {} of {} tasks done, {} in error", text(j, "job_type"), int(j, "tasks_done"), int(j, "tasks"), int(j, "tasks_error")),
            )
            .recommend("read the error task's message; fix the cause (replica identity, disk space, connectivity) and start the operation again: a rebalance continues from where the cluster is now")),
            "cancelling" => Some(Finding::new(
                Severity::Warning,
                "background_job_stuck",
                format!("background job {id} ({}) is still cancelling", text(j, "job_type")),
            )
            .recommend("running tasks finish or are terminated first; if it stays, check the task's backend in citus_activity")),
            _ if int(j, "tasks_error") > 0 => Some(Finding::new(
                Severity::Warning,
                "background_task_error",
                format!("background job {id} ({}) is {state} with {} task(s) in error (first: task {})", text(j, "job_type"), int(j, "tasks_error"), val(j, "first_error_task")),
            )
            .recommend("the job cannot finish while a task is in error: read its message, fix the cause, then cancel the job (citus_job_cancel) and start it again")),
            _ if int(j, "tasks_retrying") > 0 && int(j, "tasks_running") == 0 => Some(Finding::new(
                Severity::Warning,
                "background_job_stuck",
                format!("background job {id} ({}) is {state} but no task runs: {} task(s) wait to retry after errors", text(j, "job_type"), int(j, "tasks_retrying")),
            )
            .recommend("read the last message: the task retries until the cause (connectivity, locks, disk) is fixed")),
            _ => None,
        };
        if let Some(f) = finding {
            // A rebalance has its own status tool: tasks with their shards and bytes.
            let f = if text(j, "job_type") == "rebalance" {
                f.next(
                    "citus_rebalance_status",
                    json!({"job_id": id, "verbose": true}),
                )
            } else {
                f.next("citus_job_inspector", next)
            };
            out.push(f.evidence(ev));
        }
    }
    capped(out, "background_job")
}

/// Records in pg_dist_cleanup: shards, slots, subscriptions or publications that a failed
/// or finished move or split left for Citus to drop. During a running job they are
/// expected; otherwise they are leftovers that hold disk space or replication slots.
fn leftover_cleanup(cleanup: &[Record], jobs: &[Record]) -> Vec<Finding> {
    let records: i64 = cleanup.iter().map(|c| int(c, "records")).sum();
    if records == 0 {
        return vec![];
    }
    let running = jobs.iter().any(|j| {
        matches!(
            text(j, "state"),
            "scheduled" | "running" | "cancelling" | "failing"
        )
    });
    let severity = if running {
        Severity::Info
    } else {
        Severity::Warning
    };
    let title = if running {
        format!(
            "{records} cleanup record(s) in pg_dist_cleanup while a background job runs: expected until it finishes"
        )
    } else {
        format!(
            "{records} leftover cleanup record(s) in pg_dist_cleanup from earlier moves or splits"
        )
    };
    vec![
        Finding::new(severity, "leftover_cleanup", title)
            .evidence(json!({"records": records, "by_node_and_type": cleanup}))
            .recommend("CALL citus_cleanup_orphaned_resources(); on the coordinator once no move or split runs (the maintenance daemon does it every citus.defer_shard_delete_interval unless disabled)")
            .next("citus_job_inspector", json!({"state": "running"})),
    ]
}

/// Prepared (two-phase) transactions older than Citus's recovery would leave them: they
/// hold locks and block vacuum on their node until committed or rolled back.
fn orphaned_prepared_xacts(xacts: &[Record], limits: &Limits) -> Vec<Finding> {
    let found = xacts
        .iter()
        .filter(|x| num(x, "age_secs").unwrap_or(0.0) >= limits.prepared_xact)
        .map(|x| {
            let gid = text(x, "gid");
            let citus = gid.starts_with("citus_");
            Finding::new(
                Severity::Warning,
                "orphaned_prepared_transaction",
                format!("prepared transaction {gid} on {} is {} old", text(x, "node"), duration(num(x, "age_secs").unwrap_or(0.0))),
            )
            .evidence(json!({
                "node": val(x, "node"), "gid": gid, "owner": val(x, "owner"), "database": val(x, "database"),
                "prepared": val(x, "prepared"), "age_secs": val(x, "age_secs"), "citus_transaction": citus,
            }))
            .recommend(if citus {
                "SELECT recover_prepared_transactions(); on the coordinator commits or rolls it back from Citus's commit records; check that citus.recover_2pc_interval is not -1"
            } else {
                "not a Citus transaction: its owner must COMMIT PREPARED or ROLLBACK PREPARED it on that node"
            })
            .next("citus_lock_inspector", json!({"include_locks": true}))
        })
        .collect();
    capped(found, "orphaned_prepared_transaction")
}

/// The first `MAX_LISTED` findings, and one more that counts the rest.
fn capped(mut found: Vec<Finding>, rule: &'static str) -> Vec<Finding> {
    if found.len() > MAX_LISTED {
        let rest = found.len() - MAX_LISTED;
        found.truncate(MAX_LISTED);
        found.push(
            Finding::new(Severity::Info, rule, format!("{rest} more like the above"))
                .evidence(json!({"not_listed": rest})),
        );
    }
    found
}

// ----- config -----------------------------------------------------------------------------

/// Settings per node: node → name → value.
type NodeSettings = BTreeMap<String, BTreeMap<String, String>>;

fn by_node(rows: &[Record]) -> NodeSettings {
    let mut out = NodeSettings::new();
    for r in rows {
        out.entry(text(r, "node").to_string())
            .or_default()
            .insert(text(r, "name").to_string(), text(r, "setting").to_string());
    }
    out
}

fn get<'a>(node: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    node.get(name).map(String::as_str)
}

fn int_of(node: &BTreeMap<String, String>, name: &str) -> Option<i64> {
    get(node, name).and_then(|v| v.parse().ok())
}

/// Settings that stop shard moves (logical replication), background jobs or 2PC recovery.
fn blocking_settings(settings: &NodeSettings, nodes: &[Record]) -> Vec<Finding> {
    // Shards move out of and into the workers (and a coordinator that holds shards).
    let shard_nodes: BTreeSet<&str> = nodes
        .iter()
        .filter(|n| {
            text(n, "role") == "primary"
                && !flag(n, "is_clone")
                && (flag(n, "should_have_shards") || int(n, "shards") > 0)
        })
        .map(|n| text(n, "node"))
        .collect();
    let relevant = |node: &str| shard_nodes.is_empty() || shard_nodes.contains(node);
    let mut out = Vec::new();

    let not_logical: Map<String, Value> = settings
        .iter()
        .filter(|(n, s)| relevant(n) && get(s, "wal_level").is_some_and(|v| v != "logical"))
        .map(|(n, s)| (n.clone(), Value::from(get(s, "wal_level").unwrap_or(""))))
        .collect();
    if !not_logical.is_empty() {
        out.push(
            Finding::new(
                Severity::Warning,
                "wal_level_not_logical",
                format!("wal_level is not logical on {} node(s) that hold shards: shard moves cannot use logical replication (online moves) from them", not_logical.len()),
            )
            .evidence(json!({"wal_level": not_logical}))
            .recommend("ALTER SYSTEM SET wal_level = logical; on each listed node and restart it; until then only shard_transfer_mode 'block_writes' works")
            .next("citus_config_drift", json!({"include_all": true, "name_like": "wal_level"})),
        );
    }

    let mut slots = Map::new();
    for (n, s) in settings.iter().filter(|(n, _)| relevant(n)) {
        let (Some(max_slots), Some(max_senders)) = (
            int_of(s, "max_replication_slots"),
            int_of(s, "max_wal_senders"),
        ) else {
            continue;
        };
        let used_slots = int_of(s, "replication_slots_in_use").unwrap_or(0);
        let used_senders = int_of(s, "wal_senders_in_use").unwrap_or(0);
        if max_slots - used_slots < 1 || max_senders - used_senders < 1 {
            slots.insert(
                n.clone(),
                json!({
                    "max_replication_slots": max_slots, "replication_slots_in_use": used_slots,
                    "max_wal_senders": max_senders, "wal_senders_in_use": used_senders,
                }),
            );
        }
    }
    if !slots.is_empty() {
        out.push(
            Finding::new(
                Severity::Warning,
                "replication_capacity",
                format!("{} node(s) have no free replication slot or WAL sender: an online shard move from them cannot start", slots.len()),
            )
            .evidence(json!({"per_node": slots}))
            .recommend("raise max_replication_slots / max_wal_senders (restart), or drop unused replication slots (pg_drop_replication_slot) after checking they are not a replica's")
            .next("citus_config_drift", json!({"include_all": true, "name_like": "max_%"})),
        );
    }

    for (n, s) in settings {
        let executors = int_of(s, "citus.max_background_task_executors");
        let workers = int_of(s, "max_worker_processes");
        if let (Some(e), Some(w)) = (executors, workers)
            && e >= w
        {
            out.push(
                Finding::new(
                    Severity::Warning,
                    "background_executors",
                    format!("on {n}, citus.max_background_task_executors ({e}) is not below max_worker_processes ({w}): background tasks compete with every other background worker and may not start"),
                )
                .evidence(json!({"node": n, "citus.max_background_task_executors": e, "max_worker_processes": w}))
                .recommend("lower citus.max_background_task_executors, or raise max_worker_processes (restart)")
                .next("citus_config_drift", json!({"include_all": true, "name_like": "%worker%"})),
            );
        }
        if let Some(i) = int_of(s, "citus.background_task_queue_interval")
            && i <= 0
        {
            out.push(
                Finding::new(
                    Severity::Warning,
                    "background_tasks_disabled",
                    format!("on {n}, citus.background_task_queue_interval is {i}: the background task queue is never checked, so background rebalances never run"),
                )
                .evidence(json!({"node": n, "citus.background_task_queue_interval": i}))
                .recommend("ALTER SYSTEM SET citus.background_task_queue_interval = '5s'; SELECT pg_reload_conf();")
                .next("citus_job_inspector", json!({"state": "scheduled"})),
            );
        }
        if let Some(i) = int_of(s, "citus.recover_2pc_interval")
            && i < 0
        {
            out.push(
                Finding::new(
                    Severity::Warning,
                    "recovery_disabled",
                    format!("on {n}, citus.recover_2pc_interval is {i}: failed two-phase commits are never recovered automatically"),
                )
                .evidence(json!({"node": n, "citus.recover_2pc_interval": i}))
                .recommend("ALTER SYSTEM SET citus.recover_2pc_interval = '1min'; SELECT pg_reload_conf();")
                .next("citus_config_drift", json!({"include_all": true, "name_like": "citus.recover_2pc_interval"})),
            );
        }
        if let Some(i) = int_of(s, "citus.defer_shard_delete_interval")
            && i < 0
        {
            out.push(
                Finding::new(
                    Severity::Info,
                    "cleanup_disabled",
                    format!("on {n}, citus.defer_shard_delete_interval is {i}: records in pg_dist_cleanup are only processed by hand"),
                )
                .evidence(json!({"node": n, "citus.defer_shard_delete_interval": i}))
                .recommend("set it back to a positive interval, or run CALL citus_cleanup_orphaned_resources(); after moves")
                .next("citus_config_drift", json!({"include_all": true, "name_like": "citus.defer_shard_delete_interval"})),
            );
        }
    }
    let serial: Vec<&String> = settings
        .iter()
        .filter(|(_, s)| int_of(s, "citus.max_background_task_executors_per_node") == Some(1))
        .map(|(n, _)| n)
        .collect();
    if !serial.is_empty() {
        out.push(
            Finding::new(
                Severity::Info,
                "serial_shard_moves",
                "citus.max_background_task_executors_per_node is 1: a background rebalance moves one shard group at a time per node, and Citus 13.2's parallel transfers cannot run in parallel",
            )
            .evidence(json!({"nodes": serial, "citus.max_background_task_executors_per_node": 1}))
            .recommend("for a faster rebalance, raise citus.max_background_task_executors_per_node (and citus.max_background_task_executors) on the coordinator, within max_worker_processes")
            .next("citus_config_drift", json!({"include_all": true, "name_like": "citus.max_background%"})),
        );
    }
    out
}

/// Settings whose values differ between nodes (or that some nodes lack). The fan-out's own
/// counters are not settings and are left out.
fn setting_drift(settings: &NodeSettings) -> Vec<Finding> {
    let mut names: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    for (node, s) in settings {
        for (name, value) in s {
            if name.ends_with("_in_use") {
                continue;
            }
            names
                .entry(name.as_str())
                .or_default()
                .insert(node.clone(), Value::from(value.as_str()));
        }
    }
    let differing: Map<String, Value> = names
        .into_iter()
        .filter(|(_, per_node)| {
            let distinct: BTreeSet<&str> = per_node.values().filter_map(Value::as_str).collect();
            distinct.len() > 1 || per_node.len() < settings.len()
        })
        .map(|(name, per_node)| (name.to_string(), Value::Object(per_node)))
        .collect();
    if differing.is_empty() {
        return vec![];
    }
    let listed: Vec<&String> = differing.keys().take(5).collect();
    vec![
        Finding::new(
            Severity::Warning,
            "settings_differ",
            format!("{} setting(s) differ between nodes: {}", differing.len(), listed.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")),
        )
        .evidence(json!({"value_per_node": differing}))
        .recommend("Citus expects nodes to behave alike: set the same values on every node (ALTER SYSTEM, then reload or restart), or confirm the difference is intended")
        .next("citus_config_drift", json!({})),
    ]
}

/// Different Citus releases or extension versions between nodes, and nodes whose
/// extension is older than the installed library.
fn version_mismatch(versions: &[Record]) -> Vec<Finding> {
    let mut out = Vec::new();
    let release = |r: &Record| {
        text(r, "citus_version")
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .trim_end_matches(',')
            .to_string()
    };
    let per_node: Map<String, Value> = versions
        .iter()
        .map(|r| {
            (
                text(r, "node").to_string(),
                json!({"citus": release(r), "extversion": val(r, "extversion"), "postgres_version_num": val(r, "postgres_version_num")}),
            )
        })
        .collect();
    let releases: BTreeSet<String> = versions.iter().map(release).collect();
    let extversions: BTreeSet<&str> = versions.iter().map(|r| text(r, "extversion")).collect();
    if releases.len() > 1 || extversions.len() > 1 {
        out.push(
            Finding::new(
                Severity::Critical,
                "citus_version_mismatch",
                format!("nodes run different Citus versions: {}", releases.iter().chain(extversions.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>().iter()).cloned().collect::<Vec<_>>().join(", ")),
            )
            .evidence(json!({"per_node": per_node}))
            .recommend("install the same Citus package on every node, then ALTER EXTENSION citus UPDATE; on each (workers first, then the coordinator); distributed operations may fail until they match")
            .next("server_info", json!({})),
        );
    }
    for r in versions {
        let (ext, available) = (text(r, "extversion"), text(r, "available_version"));
        if !ext.is_empty() && !available.is_empty() && ext != available {
            out.push(
                Finding::new(
                    Severity::Warning,
                    "citus_extension_outdated",
                    format!(
                        "on {}, the citus extension is at {ext} but {available} is installed",
                        text(r, "node")
                    ),
                )
                .evidence(
                    json!({"node": val(r, "node"), "extversion": ext, "available_version": available}),
                )
                .recommend("ALTER EXTENSION citus UPDATE; on that node")
                .next("server_info", json!({})),
            );
        }
    }
    out
}

// ----- numbers ----------------------------------------------------------------------------

/// (max, min, average); zeros for an empty list.
fn stats(v: &[f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let max = v.iter().cloned().fold(f64::MIN, f64::max);
    let min = v.iter().cloned().fold(f64::MAX, f64::min);
    (max, min, v.iter().sum::<f64>() / v.len() as f64)
}

fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f64::MIN),
            |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) },
        )
        .0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Seconds as a short human duration.
fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{:.1} h", s as f64 / 3600.0),
    }
}

/// Every tool name a rule may suggest as the next call (checked against tools.d).
#[cfg(test)]
pub(crate) const NEXT_TOOLS: &[&str] = &[
    "citus_shard_skew_report",
    "citus_validate_rebalance_prereqs",
    "citus_shard_heatmap",
    "citus_snapshot_source_advisor",
    "list_nodes",
    "citus_table_inspector",
    "citus_activity",
    "citus_lock_inspector",
    "citus_job_inspector",
    "citus_config_drift",
    "server_info",
];

#[cfg(test)]
mod tests;
