//! `citus_validate_rebalance_prereqs`: whether one table's colocation group can move with
//! logical replication (Citus's default shard_transfer_mode, auto), each prerequisite a
//! check with its evidence and the fix. The tool file reads the catalog and the nodes'
//! settings; this file only judges.

use serde::Serialize;
use serde_json::{Value, json};

use super::advice::{
    COLUMNAR_FIX, COLUMNAR_GAP, Facts, Read, Record, flag, int, is_columnar, replica_identity_gap,
    text, val,
};
use crate::engine::{ErrorCode, Plugin, PluginCall, PluginFuture, ToolError, ToolOutput};

/// The `rebalance_prereqs` plugin.
pub struct RebalancePrereqs;

impl Plugin for RebalancePrereqs {
    fn name(&self) -> &'static str {
        "rebalance_prereqs"
    }

    fn call<'a>(&'a self, call: PluginCall<'a>) -> PluginFuture<'a> {
        Box::pin(run(call))
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Pass,
    Fail,
    /// A node did not answer, so the check could not be made there.
    Unknown,
}

/// One prerequisite.
#[derive(Debug, Clone, Serialize)]
struct Check {
    check: &'static str,
    status: Status,
    /// Whether a failure stops an online move (others only slow it or need a first step).
    blocking: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    table: Option<String>,
    evidence: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

impl Check {
    fn new(check: &'static str, status: Status, evidence: Value) -> Check {
        Check {
            check,
            status,
            blocking: true,
            table: None,
            evidence,
            fix: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Check {
        if self.status != Status::Pass {
            self.fix = Some(fix.into());
        }
        self
    }
}

const BLOCK_WRITES: &str = "shard_transfer_mode => 'block_writes' moves the shards without these prerequisites, but writes to them wait until each move ends";

async fn run(call: PluginCall<'_>) -> Result<ToolOutput, ToolError> {
    let table = call
        .args
        .get("table")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .trim()
        .to_string();
    let vars = json!({"table": table});
    let facts = Facts::gather(
        &call,
        vec![
            Read::coordinator("table", vars.clone()),
            Read::coordinator("members", vars.clone()),
            Read::coordinator("nodes", vars),
            Read::nodes("node_settings"),
            Read::coordinator("jobs", json!({})),
        ],
    )
    .await?;
    // Without the table itself there is nothing to judge: say why.
    let Some(found) = facts.get("table") else {
        let e = facts
            .errors
            .first()
            .and_then(|e| e["message"].as_str())
            .unwrap_or("the catalog could not be read")
            .to_string();
        return Err(ToolError::new(ErrorCode::DbError, e));
    };
    let Some(t) = found.first() else {
        return Err(ToolError::new(
            ErrorCode::NotFound,
            format!("`{table}` does not exist or is not a Citus table"),
        )
        .hint("call citus_list_distributed_tables for the Citus tables; qualify the name with its schema"));
    };
    let none: &[Record] = &[];
    let members = facts.get("members").unwrap_or(none);
    let nodes = facts.get("nodes").unwrap_or(none);
    let settings = facts.get("node_settings");
    let missing_refs = nodes.iter().any(|n| {
        flag(n, "is_active") && !flag(n, "is_clone") && int(n, "missing_reference_shards") > 0
    });

    let mut checks = vec![check_table_type(t)];
    checks.extend(check_replica_identity(members, missing_refs));
    checks.push(check_wal_level(settings, nodes));
    checks.push(check_replication_capacity(settings, nodes));
    checks.push(check_apply_workers(settings, nodes));
    checks.push(check_reference_tables(nodes));
    if let Some(jobs) = facts.get("jobs") {
        checks.push(check_no_running_job(jobs));
    }
    let can_move_online = verdict(&checks, !facts.errors.is_empty());
    let colocated: Vec<&str> = members
        .iter()
        .filter(|m| text(m, "member") == "colocated")
        .map(|m| text(m, "table_name"))
        .collect();
    let mut out = json!({
        "table": val(t, "table_name"),
        "table_type": val(t, "table_type"),
        "colocation_id": val(t, "colocation_id"),
        "colocated_tables": colocated,
        "can_move_online": can_move_online,
        "checks": checks,
        "alternative": BLOCK_WRITES,
    });
    if !facts.errors.is_empty() {
        out["errors"] = Value::from(facts.errors.clone());
    }
    if !facts.node_errors.is_empty() {
        out["node_errors"] = Value::from(facts.node_errors.clone());
    }
    // A group of thousands of tables can outgrow the result limit: the failures matter,
    // so passed checks go first.
    let mut truncated = !facts.cut.is_empty();
    if serde_json::to_vec(&out).map_or(0, |v| v.len()) > call.limits.max_bytes {
        checks.retain(|c| c.status != Status::Pass);
        out["checks"] = json!(checks);
        truncated = true;
    }
    out["truncated"] = Value::Bool(truncated);
    let text = text_of(&out, &checks);
    Ok(ToolOutput {
        structured: out,
        text,
    })
}

/// `can_move_online`: yes only when every blocking check passed; no when one failed;
/// unknown (null) when none failed but a node did not answer for one, or a query behind
/// the checks failed: silence is not a pass, nor a fail.
fn verdict(checks: &[Check], queries_failed: bool) -> Value {
    let blocking = || checks.iter().filter(|c| c.blocking);
    if blocking().any(|c| c.status == Status::Fail) {
        Value::Bool(false)
    } else if blocking().any(|c| c.status != Status::Pass) || queries_failed {
        Value::Null
    } else {
        Value::Bool(true)
    }
}

fn text_of(out: &Value, checks: &[Check]) -> String {
    let mut s = format!(
        "table: {} ({}, colocation {})\ncan_move_online: {}\ncolocated_tables: {}\n",
        out["table"].as_str().unwrap_or(""),
        out["table_type"].as_str().unwrap_or(""),
        out["colocation_id"],
        out["can_move_online"],
        out["colocated_tables"]
    );
    for c in checks {
        let status = serde_json::to_value(c.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        s.push_str(&format!(
            "[{status}] {}{}{}: {}\n",
            c.check,
            c.table
                .as_deref()
                .map(|t| format!(" {t}"))
                .unwrap_or_default(),
            if c.blocking { "" } else { " (not blocking)" },
            c.evidence
        ));
        if let Some(f) = &c.fix {
            s.push_str(&format!("  fix: {f}\n"));
        }
    }
    if out["truncated"] == true {
        s.push_str("truncated: true (passed checks left out)\n");
    }
    if out["can_move_online"] == false {
        s.push_str(&format!("alternative: {BLOCK_WRITES}\n"));
    }
    if out["can_move_online"].is_null() {
        s.push_str("unknown: a node did not answer, or a check's query failed; call again once it answers, or move with shard_transfer_mode 'block_writes'\n");
    }
    for e in out["node_errors"].as_array().into_iter().flatten() {
        s.push_str(&format!("node error {}: {}\n", e["node"], e["message"]));
    }
    s.trim_end().to_string()
}

/// Only distributed and schema-sharded tables have shards that move; reference tables are
/// copied to every node and Citus-local tables stay on the coordinator.
fn check_table_type(t: &Record) -> Check {
    let ty = text(t, "table_type");
    let movable = matches!(ty, "distributed" | "schema");
    let c = Check::new(
        "table_is_movable",
        if movable { Status::Pass } else { Status::Fail },
        json!({"table_type": ty}),
    );
    match ty {
        "reference" => c.fix("nothing to move: a reference table has a copy on every node (SELECT replicate_reference_tables(); adds missing copies)"),
        "local" => c.fix("a Citus-local table lives on the coordinator: distribute it (create_distributed_table) to spread it"),
        _ => c,
    }
}

/// Every table of the group needs a replica identity for logical replication; reference
/// tables too when a node lacks their copy, because Citus copies them first, in the same
/// mode. A partitioned parent holds no rows and qualifies by itself. A columnar table
/// cannot move online whatever its replica identity ([`is_columnar`]).
fn check_replica_identity(members: &[Record], missing_refs: bool) -> Vec<Check> {
    members
        .iter()
        .filter(|m| text(m, "member") == "colocated" || missing_refs)
        .map(|m| {
            if is_columnar(m) {
                let mut c = Check::new(
                    "columnar_writes",
                    Status::Fail,
                    json!({"access_method": "columnar", "member": val(m, "member"), "problem": COLUMNAR_GAP}),
                );
                c.table = Some(text(m, "table_name").to_string());
                return c.fix(COLUMNAR_FIX);
            }
            let gap = replica_identity_gap(m);
            let mut c = Check::new(
                "replica_identity",
                if gap.is_none() { Status::Pass } else { Status::Fail },
                json!({
                    "replica_identity": match text(m, "replica_identity") {
                        "d" => "default", "n" => "nothing", "f" => "full", "i" => "index", other => other,
                    },
                    "has_primary_key": flag(m, "has_primary_key"),
                    "replica_identity_index": val(m, "replica_identity_index"),
                    "usable_unique_index": val(m, "usable_index"),
                    "access_method": val(m, "access_method"),
                    "member": val(m, "member"),
                    "problem": gap,
                }),
            );
            c.table = Some(text(m, "table_name").to_string());
            // A unique index on NOT NULL columns logs only the key; FULL logs whole rows.
            let fix = match text(m, "fix_using_index") {
                "" => format!(
                    "{} (or add a primary key; FULL makes UPDATE and DELETE log whole rows)",
                    text(m, "fix_full")
                ),
                using => format!("{using} (or {})", text(m, "fix_full")),
            };
            c.fix(fix)
        })
        .collect()
}

/// Nodes whose settings matter: `sources` hold shards of the group (they publish), the
/// others may receive shards (they subscribe).
fn roles(nodes: &[Record]) -> (Vec<&str>, Vec<&str>) {
    let active: Vec<&Record> = nodes
        .iter()
        .filter(|n| flag(n, "is_active") && !flag(n, "is_clone"))
        .collect();
    let sources = active
        .iter()
        .filter(|n| flag(n, "holds_group_shards"))
        .map(|n| text(n, "node"))
        .collect();
    let targets = active
        .iter()
        .filter(|n| flag(n, "should_have_shards"))
        .map(|n| text(n, "node"))
        .collect();
    (sources, targets)
}

/// The settings rows of `nodes`, and the nodes without one (they did not answer, or the
/// fan-out failed as a whole).
fn settings_of<'a>(
    settings: Option<&'a [Record]>,
    nodes: &[&str],
) -> (Vec<&'a Record>, Vec<String>) {
    let rows: Vec<&Record> = settings
        .unwrap_or(&[])
        .iter()
        .filter(|r| nodes.contains(&text(r, "node")))
        .collect();
    let silent = nodes
        .iter()
        .filter(|n| !rows.iter().any(|r| text(r, "node") == **n))
        .map(|n| n.to_string())
        .collect();
    (rows, silent)
}

/// The status of a per-node check: fail when a node fails it, unknown when one did not
/// answer, pass otherwise.
fn status(failing: &[Value], silent: &[String]) -> Status {
    if !failing.is_empty() {
        Status::Fail
    } else if !silent.is_empty() {
        Status::Unknown
    } else {
        Status::Pass
    }
}

/// wal_level = logical on every node that holds shards of the group: they publish.
fn check_wal_level(settings: Option<&[Record]>, nodes: &[Record]) -> Check {
    let (sources, _) = roles(nodes);
    let (rows, silent) = settings_of(settings, &sources);
    let failing: Vec<Value> = rows
        .iter()
        .filter(|r| text(r, "wal_level") != "logical")
        .map(|r| json!({"node": val(r, "node"), "wal_level": val(r, "wal_level")}))
        .collect();
    Check::new(
        "wal_level_logical",
        status(&failing, &silent),
        json!({"source_nodes": sources, "not_logical": failing, "not_answered": silent}),
    )
    .fix("ALTER SYSTEM SET wal_level = logical; on each listed node, then restart it")
}

/// A free replication slot and WAL sender on every source node.
fn check_replication_capacity(settings: Option<&[Record]>, nodes: &[Record]) -> Check {
    let (sources, _) = roles(nodes);
    let (rows, silent) = settings_of(settings, &sources);
    let failing: Vec<Value> = rows
        .iter()
        .filter(|r| {
            int(r, "max_replication_slots") - int(r, "replication_slots_in_use") < 1
                || int(r, "max_wal_senders") - int(r, "wal_senders_in_use") < 1
        })
        .map(|r| {
            json!({
                "node": val(r, "node"),
                "max_replication_slots": int(r, "max_replication_slots"),
                "replication_slots_in_use": int(r, "replication_slots_in_use"),
                "max_wal_senders": int(r, "max_wal_senders"),
                "wal_senders_in_use": int(r, "wal_senders_in_use"),
            })
        })
        .collect();
    Check::new(
        "replication_slots_and_senders",
        status(&failing, &silent),
        json!({"source_nodes": sources, "full": failing, "not_answered": silent}),
    )
    .fix("raise max_replication_slots and max_wal_senders (restart) on each listed node, or drop unused slots with pg_drop_replication_slot after checking they are not a replica's")
}

/// Logical replication apply workers on the nodes that receive shards.
fn check_apply_workers(settings: Option<&[Record]>, nodes: &[Record]) -> Check {
    let (_, targets) = roles(nodes);
    let (rows, silent) = settings_of(settings, &targets);
    let failing: Vec<Value> = rows
        .iter()
        .filter(|r| {
            int(r, "max_logical_replication_workers") < 1 || int(r, "max_worker_processes") < 2
        })
        .map(|r| {
            json!({
                "node": val(r, "node"),
                "max_logical_replication_workers": int(r, "max_logical_replication_workers"),
                "max_worker_processes": int(r, "max_worker_processes"),
            })
        })
        .collect();
    Check::new(
        "logical_replication_workers",
        status(&failing, &silent),
        json!({"target_nodes": targets, "too_few": failing, "not_answered": silent}),
    )
    .fix("ALTER SYSTEM SET max_logical_replication_workers = 4; (and max_worker_processes above it) on each listed node, then restart it")
}

/// Citus copies missing reference tables to a node before it moves shards there.
fn check_reference_tables(nodes: &[Record]) -> Check {
    let missing: Vec<Value> = nodes
        .iter()
        .filter(|n| flag(n, "is_active") && !flag(n, "is_clone") && int(n, "missing_reference_shards") > 0)
        .map(|n| json!({"node": val(n, "node"), "missing_reference_shards": int(n, "missing_reference_shards")}))
        .collect();
    let mut c = Check::new(
        "reference_tables_on_every_node",
        if missing.is_empty() { Status::Pass } else { Status::Fail },
        json!({"nodes_missing_reference_tables": missing}),
    )
    .fix("SELECT replicate_reference_tables(); on the coordinator (a rebalance does it first; the reference tables then need a replica identity too, see their replica_identity checks)");
    // A rebalance copies them itself; only a single-shard move to such a node is refused.
    c.blocking = false;
    c
}

/// Citus runs one rebalance at a time, and a running job may be moving this group already.
fn check_no_running_job(jobs: &[Record]) -> Check {
    let running: Vec<Value> = jobs
        .iter()
        .map(|j| json!({"job_id": val(j, "job_id"), "state": val(j, "state"), "job_type": val(j, "job_type"), "started_at": val(j, "started_at")}))
        .collect();
    Check::new(
        "no_background_job_running",
        if running.is_empty() { Status::Pass } else { Status::Fail },
        json!({"active_jobs": running}),
    )
    .fix("wait for the job to finish (citus_job_inspector shows its progress) or cancel it with citus_job_cancel(job_id)")
}

#[cfg(test)]
mod tests {
    use super::super::advice::test_records as recs;
    use super::*;

    fn nodes() -> Vec<Record> {
        recs(json!([
            {"nodeid": 1, "node": "c:9700", "is_active": true, "is_clone": false, "holds_group_shards": false, "should_have_shards": false, "missing_reference_shards": 0},
            {"nodeid": 2, "node": "w:9701", "is_active": true, "is_clone": false, "holds_group_shards": true, "should_have_shards": true, "missing_reference_shards": 0},
            {"nodeid": 3, "node": "w:9702", "is_active": true, "is_clone": false, "holds_group_shards": true, "should_have_shards": true, "missing_reference_shards": 0},
            {"nodeid": 4, "node": "w:9703", "is_active": true, "is_clone": false, "holds_group_shards": false, "should_have_shards": true, "missing_reference_shards": 1},
            {"nodeid": 5, "node": "w:9801", "is_active": false, "is_clone": true, "holds_group_shards": false, "should_have_shards": false, "missing_reference_shards": 1},
        ]))
    }

    fn settings(wal: &str) -> Vec<Record> {
        recs(Value::Array(
            ["c:9700", "w:9701", "w:9702", "w:9703"]
                .iter()
                .map(|n| json!({"node": n, "wal_level": wal, "max_replication_slots": 10, "replication_slots_in_use": 0,
                                "max_wal_senders": 10, "wal_senders_in_use": 0, "max_logical_replication_workers": 4, "max_worker_processes": 8}))
                .collect(),
        ))
    }

    #[test]
    fn a_check_nobody_answered_makes_the_verdict_unknown() {
        let t = |ty: &str| check_table_type(&recs(json!([{"table_type": ty}])).remove(0));
        let wal = |nodes: &[Record], s: Option<&[Record]>| check_wal_level(s, nodes);
        let n = nodes();
        let all = settings("logical");
        // w:9701 holds the group's shards and did not answer.
        let silent: Vec<Record> = all
            .iter()
            .filter(|r| r["node"] != "w:9701")
            .cloned()
            .collect();
        assert_eq!(
            verdict(&[t("distributed"), wal(&n, Some(&all))], false),
            true
        );
        assert_eq!(
            verdict(&[t("distributed"), wal(&n, Some(&silent))], false),
            Value::Null
        );
        assert_eq!(
            verdict(&[t("distributed"), wal(&n, Some(&all))], true),
            Value::Null
        );
        assert_eq!(
            verdict(&[t("reference"), wal(&n, Some(&silent))], false),
            false
        );
        assert_eq!(
            verdict(
                &[t("distributed"), wal(&n, Some(&settings("replica")))],
                false
            ),
            false
        );
    }

    #[test]
    fn only_distributed_and_schema_tables_move() {
        let t = |ty: &str| recs(json!([{"table_type": ty}])).remove(0);
        assert_eq!(check_table_type(&t("distributed")).status, Status::Pass);
        assert_eq!(check_table_type(&t("schema")).status, Status::Pass);
        let r = check_table_type(&t("reference"));
        assert_eq!(r.status, Status::Fail);
        assert!(r.fix.unwrap().contains("replicate_reference_tables"));
        assert_eq!(check_table_type(&t("local")).status, Status::Fail);
    }

    #[test]
    fn replica_identity_checks_each_colocated_table_with_its_fix() {
        let members = recs(json!([
            {"table_name": "public.orders", "member": "colocated", "relkind": "r", "replica_identity": "d", "has_primary_key": true,
             "fix_full": "ALTER TABLE public.orders REPLICA IDENTITY FULL;"},
            {"table_name": "public.\"Odd Name\"", "member": "colocated", "relkind": "r", "replica_identity": "d", "has_primary_key": false,
             "usable_index": "odd_key", "fix_using_index": "ALTER TABLE public.\"Odd Name\" REPLICA IDENTITY USING INDEX odd_key;",
             "fix_full": "ALTER TABLE public.\"Odd Name\" REPLICA IDENTITY FULL;"},
            {"table_name": "public.nothing", "member": "colocated", "relkind": "r", "replica_identity": "n", "has_primary_key": false,
             "fix_full": "ALTER TABLE public.nothing REPLICA IDENTITY FULL;"},
            {"table_name": "public.countries", "member": "reference", "relkind": "r", "replica_identity": "d", "has_primary_key": false,
             "fix_full": "ALTER TABLE public.countries REPLICA IDENTITY FULL;"},
        ]));
        let c = check_replica_identity(&members, false);
        assert_eq!(c.len(), 3, "reference tables only while a node lacks them");
        assert_eq!(c[0].status, Status::Pass);
        assert!(c[0].fix.is_none());
        assert_eq!(c[1].status, Status::Fail);
        assert_eq!(c[1].table.as_deref(), Some("public.\"Odd Name\""));
        assert!(
            c[1].fix.as_deref().unwrap().starts_with(
                "ALTER TABLE public.\"Odd Name\" REPLICA IDENTITY USING INDEX odd_key;"
            ),
            "{:?}",
            c[1].fix
        );
        assert!(
            c[2].fix
                .as_deref()
                .unwrap()
                .starts_with("ALTER TABLE public.nothing REPLICA IDENTITY FULL;")
        );
        assert_eq!(c[2].evidence["replica_identity"], "nothing");
        let c = check_replica_identity(&members, true);
        assert_eq!(c.len(), 4);
        assert_eq!(c[3].status, Status::Fail);
    }

    /// A columnar table fails whatever its replica identity, and its fix is block_writes,
    /// never a replica identity (which would let Citus move it by logical replication).
    #[test]
    fn a_columnar_table_cannot_move_online_even_with_a_primary_key() {
        for has_pk in [false, true] {
            let members = recs(json!([
                {"table_name": "public.archive", "member": "colocated", "relkind": "r", "replica_identity": "d",
                 "has_primary_key": has_pk, "access_method": "columnar",
                 "fix_full": "ALTER TABLE public.archive REPLICA IDENTITY FULL;"},
            ]));
            let c = check_replica_identity(&members, false);
            assert_eq!(c[0].check, "columnar_writes");
            assert_eq!(c[0].status, Status::Fail);
            assert!(c[0].blocking);
            let fix = c[0].fix.as_deref().unwrap();
            assert!(
                fix.contains("block_writes") && !fix.contains("ALTER TABLE"),
                "{fix}"
            );
        }
    }

    #[test]
    fn wal_level_is_checked_on_the_source_nodes_only() {
        let n = nodes();
        let logical = settings("logical");
        assert_eq!(check_wal_level(Some(&logical), &n).status, Status::Pass);
        let mut mixed = settings("logical");
        mixed[0].insert("wal_level".into(), json!("replica")); // the coordinator holds no group shards
        assert_eq!(check_wal_level(Some(&mixed), &n).status, Status::Pass);
        mixed[1].insert("wal_level".into(), json!("replica"));
        let c = check_wal_level(Some(&mixed), &n);
        assert_eq!(c.status, Status::Fail);
        assert_eq!(
            c.evidence["not_logical"],
            json!([{"node": "w:9701", "wal_level": "replica"}])
        );
        assert!(c.fix.unwrap().contains("wal_level = logical"));
        // A source node that did not answer makes the check unknown, not passed.
        let answered: Vec<Record> = logical
            .into_iter()
            .filter(|r| text(r, "node") != "w:9702")
            .collect();
        assert_eq!(check_wal_level(Some(&answered), &n).status, Status::Unknown);
        assert_eq!(check_wal_level(None, &n).status, Status::Unknown);
    }

    #[test]
    fn slots_senders_and_apply_workers() {
        let n = nodes();
        let mut s = settings("logical");
        assert_eq!(
            check_replication_capacity(Some(&s), &n).status,
            Status::Pass
        );
        assert_eq!(check_apply_workers(Some(&s), &n).status, Status::Pass);
        s[2].insert("replication_slots_in_use".into(), json!(10));
        s[3].insert("max_logical_replication_workers".into(), json!(0));
        let c = check_replication_capacity(Some(&s), &n);
        assert_eq!(c.status, Status::Fail);
        assert_eq!(c.evidence["full"][0]["node"], "w:9702");
        let c = check_apply_workers(Some(&s), &n);
        assert_eq!(c.status, Status::Fail);
        assert_eq!(c.evidence["too_few"][0]["node"], "w:9703");
    }

    #[test]
    fn missing_reference_tables_do_not_block_but_are_reported() {
        let c = check_reference_tables(&nodes());
        assert_eq!(c.status, Status::Fail);
        assert!(!c.blocking);
        assert_eq!(
            c.evidence["nodes_missing_reference_tables"][0]["node"],
            "w:9703"
        );
        assert_eq!(
            c.evidence["nodes_missing_reference_tables"]
                .as_array()
                .unwrap()
                .len(),
            1,
            "an inactive clone is not a target"
        );
    }

    #[test]
    fn a_running_job_blocks() {
        assert_eq!(check_no_running_job(&[]).status, Status::Pass);
        let jobs = recs(json!([{"job_id": 7, "state": "running", "job_type": "rebalance"}]));
        let c = check_no_running_job(&jobs);
        assert_eq!(c.status, Status::Fail);
        assert_eq!(c.evidence["active_jobs"][0]["job_id"], 7);
    }
}
