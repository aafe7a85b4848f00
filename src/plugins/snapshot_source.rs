//! `citus_snapshot_source_advisor`: which worker to clone for a snapshot-based node
//! addition (Citus 13.2), and why. The tool file reads the workers, their replication
//! health and the clones already registered; this file scores the workers.
//!
//! Citus splits the source's shards between it and the promoted clone, so the source that
//! relieves the cluster most is the one with the most data and shards. Citus refuses a
//! source without shards (shouldhaveshards false) or that is itself a clone, and the clone
//! must stream from it asynchronously, which needs WAL (wal_level replica or logical) and
//! a free WAL sender (node_metadata.c, clonenode_utils.c).

use serde::Serialize;
use serde_json::{Value, json};

use super::advice::{Facts, Read, Record, flag, int, num, pretty_bytes, text, val};
use crate::engine::{Plugin, PluginCall, PluginFuture, ToolError, ToolOutput};

/// The `snapshot_source` plugin.
pub struct SnapshotSource;

impl Plugin for SnapshotSource {
    fn name(&self) -> &'static str {
        "snapshot_source"
    }

    fn call<'a>(&'a self, call: PluginCall<'a>) -> PluginFuture<'a> {
        Box::pin(run(call))
    }
}

/// Weights of the score (out of 100 before penalties): the share of the workers' bytes
/// counts most, since splitting the biggest worker evens out the most data.
const BYTES_WEIGHT: f64 = 70.0;
const SHARDS_WEIGHT: f64 = 30.0;
/// Penalties: the busiest worker loses this much (others in proportion), a worker that
/// already has a clone, one whose replicas lag by more than `LAG_BYTES`, and one without a
/// free replication slot (the replica would stream without one, and may fall behind).
const LOAD_PENALTY: f64 = 10.0;
const CLONE_PENALTY: f64 = 15.0;
const LAG_PENALTY: f64 = 10.0;
const LAG_BYTES: f64 = 64.0 * 1024.0 * 1024.0;
const SLOT_PENALTY: f64 = 5.0;

/// One worker, scored.
#[derive(Debug, Clone, Serialize)]
struct Candidate {
    nodeid: Value,
    node: String,
    eligible: bool,
    score: f64,
    /// Unknown (null) for a worker that did not answer: Citus measures no size there.
    bytes: Option<i64>,
    shards: i64,
    /// Why it scores as it does.
    reasons: Vec<String>,
    /// Why it cannot be the source; empty when it can.
    disqualified_because: Vec<String>,
    health: Value,
    #[serde(skip)]
    add_clone_sql: String,
    #[serde(skip)]
    split_plan_sql: String,
}

async fn run(call: PluginCall<'_>) -> Result<ToolOutput, ToolError> {
    let facts = Facts::gather(
        &call,
        vec![
            Read::coordinator("workers", json!({})),
            Read::nodes("health"),
            Read::coordinator("clones", json!({})),
            Read::coordinator("functions", json!({})),
        ],
    )
    .await?;
    let none: &[Record] = &[];
    let workers = facts.get("workers").unwrap_or(none);
    let health = facts.get("health").unwrap_or(none);
    let candidates = rank_sources(workers, health);
    let recommended = candidates.iter().find(|c| c.eligible);

    // A registered clone's split plan shows what its promotion would do; it is only asked
    // for when one exists, since the function refuses a node that is not a clone.
    let mut clones = Vec::new();
    let mut errors = facts.errors.clone();
    for c in facts.get("clones").unwrap_or(none) {
        let vars = json!({
            "primary_host": val(c, "primary_host"), "primary_port": val(c, "primary_port"),
            "clone_host": val(c, "clone_host"), "clone_port": val(c, "clone_port"),
        });
        let mut clone = json!({
            "clone_nodeid": val(c, "clone_nodeid"), "clone_node": val(c, "clone_node"),
            "is_active": val(c, "is_active"), "primary_nodeid": val(c, "primary_nodeid"),
            "primary_node": val(c, "primary_node"), "promote_sql": val(c, "promote_sql"),
        });
        match call.query("split_plan", vars).await {
            Ok(rows) => clone["split_plan"] = Value::from(super::advice::records(&rows)),
            Err(e) if call.cancel.is_cancelled() => return Err(e),
            Err(e) => {
                clone["split_plan_error"] = json!({"code": e.code, "message": e.message});
            }
        }
        clones.push(clone);
    }
    if facts.get("workers").is_none() {
        errors.push(json!({"query": "workers", "message": "the workers could not be read: no recommendation"}));
    }

    let steps = recommended.map(steps_for).unwrap_or_default();
    let mut out = json!({
        "recommended": recommended.map(|c| json!({
            "node": c.node, "nodeid": c.nodeid, "score": c.score, "reasons": c.reasons,
        })),
        "candidates": candidates,
        "clones": clones,
        "functions": facts.get("functions").and_then(|f| f.first()).cloned(),
        "steps": steps,
    });
    if recommended.is_none() {
        // A failed read judged nothing: that is not "no worker qualifies".
        out["why_none"] = Value::from(if errors.is_empty() {
            "no worker qualifies: see each candidate's disqualified_because (add an empty node with citus_add_node and rebalance instead)"
        } else {
            "not judged: a check could not run (see errors); call again once every node answers"
        });
    }
    if !errors.is_empty() {
        out["errors"] = Value::from(errors);
    }
    if !facts.node_errors.is_empty() {
        out["node_errors"] = Value::from(facts.node_errors.clone());
    }
    // Many workers can outgrow the result limit: their raw health numbers go first (the
    // reasons already say what they mean).
    let mut truncated = !facts.cut.is_empty();
    if serde_json::to_vec(&out).map_or(0, |v| v.len()) > call.limits.max_bytes {
        for c in out["candidates"].as_array_mut().into_iter().flatten() {
            c["health"] = Value::Null;
        }
        truncated = true;
    }
    out["truncated"] = Value::Bool(truncated);
    let text = text_of(&out, &candidates);
    Ok(ToolOutput {
        structured: out,
        text,
    })
}

/// Scores every worker as a source, best first (eligible ones before the others).
fn rank_sources(workers: &[Record], health: &[Record]) -> Vec<Candidate> {
    // Sizes count only from workers that answered: Citus cannot measure the others.
    let answered = |w: &Record| health.iter().any(|h| text(h, "node") == text(w, "node"));
    let total_bytes: f64 = workers
        .iter()
        .filter(|w| answered(w))
        .map(|w| int(w, "bytes") as f64)
        .sum();
    let total_shards: f64 = workers.iter().map(|w| int(w, "shards") as f64).sum();
    let busiest = health
        .iter()
        .map(|h| int(h, "active_sessions"))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let mut out: Vec<Candidate> = workers
        .iter()
        .map(|w| {
            let node = text(w, "node").to_string();
            let h = health.iter().find(|h| text(h, "node") == node);
            let (bytes, shards) = (h.map(|_| int(w, "bytes")), int(w, "shards"));
            let mut reasons = Vec::new();
            let mut out_because = Vec::new();
            let bytes_share = match bytes {
                Some(b) if total_bytes > 0.0 => b as f64 / total_bytes,
                _ => 0.0,
            };
            let shard_share = if total_shards > 0.0 { shards as f64 / total_shards } else { 0.0 };
            let mut score = BYTES_WEIGHT * bytes_share + SHARDS_WEIGHT * shard_share;
            reasons.push(match bytes {
                Some(b) => format!(
                    "holds {} ({:.0}% of the workers' data) in {shards} shard placements ({:.0}%): a split moves half of it to the clone without copying",
                    pretty_bytes(b as f64),
                    100.0 * bytes_share,
                    100.0 * shard_share
                ),
                None => format!(
                    "holds {shards} shard placements ({:.0}%); its size is unknown: it did not answer",
                    100.0 * shard_share
                ),
            });
            if !flag(w, "should_have_shards") {
                out_because.push("shouldhaveshards is false: Citus refuses clones of a node without shards".to_string());
            }
            if shards == 0 {
                out_because.push("holds no distributed shards: a clone would have nothing to take over".to_string());
            }
            let clones = int(w, "clones");
            if clones > 0 {
                score -= CLONE_PENALTY;
                reasons.push(format!("already has {clones} clone(s) registered: promote or remove it first"));
            }
            match h {
                None => out_because.push("did not answer the health check".to_string()),
                Some(h) => {
                    if flag(h, "in_recovery") {
                        out_because.push("is in recovery (a standby), not a primary".to_string());
                    }
                    if text(h, "wal_level") == "minimal" {
                        out_because.push("wal_level is minimal: a streaming replica needs replica or logical".to_string());
                    }
                    let free_senders = int(h, "max_wal_senders") - int(h, "wal_senders_in_use");
                    if free_senders < 1 {
                        out_because.push(format!("no free WAL sender ({} of {} in use): the replica cannot stream from it", int(h, "wal_senders_in_use"), int(h, "max_wal_senders")));
                    }
                    if int(h, "max_replication_slots") - int(h, "replication_slots_in_use") < 1 {
                        score -= SLOT_PENALTY;
                        reasons.push("no free replication slot: the replica would stream without one and may fall behind".to_string());
                    }
                    let lag = num(h, "max_replica_lag_bytes").unwrap_or(0.0);
                    if lag > LAG_BYTES {
                        score -= LAG_PENALTY;
                        reasons.push(format!("its replicas lag by {}: streaming is already behind", pretty_bytes(lag)));
                    }
                    if int(h, "sync_replicas") > 0 {
                        reasons.push("has synchronous replicas: the clone must be asynchronous, or Citus refuses to promote it".to_string());
                    }
                    let active = int(h, "active_sessions");
                    score -= LOAD_PENALTY * active as f64 / busiest;
                    reasons.push(format!("{active} active session(s) now"));
                }
            }
            let eligible = out_because.is_empty();
            Candidate {
                nodeid: val(w, "nodeid"),
                node,
                eligible,
                score: if eligible { (score * 10.0).round() / 10.0 } else { 0.0 },
                bytes,
                shards,
                reasons,
                disqualified_because: out_because,
                health: h.map_or(Value::Null, |h| Value::Object(h.clone())),
                add_clone_sql: text(w, "add_clone_sql").to_string(),
                split_plan_sql: text(w, "split_plan_sql").to_string(),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.eligible
            .cmp(&a.eligible)
            .then(b.score.total_cmp(&a.score))
            .then(b.bytes.cmp(&a.bytes))
    });
    out
}

/// The steps of a snapshot-based node addition from `c`.
fn steps_for(c: &Candidate) -> Vec<String> {
    vec![
        format!("1. Create an asynchronous streaming replica of {} (pg_basebackup -R, or a disk snapshot that then streams); not synchronous: Citus refuses to promote a synchronous clone.", c.node),
        format!("2. Register it on the coordinator: {}", c.add_clone_sql),
        format!("3. Review how the shards would be split: {}", c.split_plan_sql),
        "4. Promote it and split the shards: SELECT pg_catalog.citus_promote_clone_and_rebalance(<clone nodeid>); (writes to the source are blocked while the clone catches up)".to_string(),
    ]
}

fn text_of(out: &Value, candidates: &[Candidate]) -> String {
    let mut s = String::new();
    match out["recommended"].as_object() {
        Some(r) => s.push_str(&format!(
            "recommended source: {} (nodeid {}, score {})\n",
            r.get("node").and_then(Value::as_str).unwrap_or(""),
            r.get("nodeid").unwrap_or(&Value::Null),
            r.get("score").unwrap_or(&Value::Null)
        )),
        None => s.push_str(&format!(
            "no recommendation: {}\n",
            out["why_none"].as_str().unwrap_or("")
        )),
    }
    for c in candidates {
        s.push_str(&format!(
            "- {} score {} bytes {} shards {}{}\n",
            c.node,
            c.score,
            c.bytes
                .map_or_else(|| "unknown".to_string(), |b| b.to_string()),
            c.shards,
            if c.eligible { "" } else { " (not eligible)" }
        ));
        for r in c.disqualified_because.iter().chain(&c.reasons) {
            s.push_str(&format!("    {r}\n"));
        }
    }
    for c in out["clones"].as_array().into_iter().flatten() {
        s.push_str(&format!("clone: {}\n", c));
    }
    for step in out["steps"].as_array().into_iter().flatten() {
        s.push_str(&format!("{}\n", step.as_str().unwrap_or("")));
    }
    if out["truncated"] == true {
        s.push_str("truncated: true\n");
    }
    for e in out["errors"].as_array().into_iter().flatten() {
        s.push_str(&format!("check failed: {e}\n"));
    }
    for e in out["node_errors"].as_array().into_iter().flatten() {
        s.push_str(&format!("node error {}: {}\n", e["node"], e["message"]));
    }
    s.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::super::advice::test_records as recs;
    use super::*;

    const MB: i64 = 1024 * 1024;

    fn workers() -> Vec<Record> {
        recs(json!([
            {"nodeid": 2, "node": "w:9701", "should_have_shards": true, "shards": 40, "bytes": 58 * MB, "clones": 0,
             "add_clone_sql": "SELECT pg_catalog.citus_add_clone_node('<replica-host>', <replica-port>, 'w', 9701);"},
            {"nodeid": 3, "node": "w:9702", "should_have_shards": true, "shards": 39, "bytes": 17 * MB, "clones": 0},
            {"nodeid": 4, "node": "w:9703", "should_have_shards": true, "shards": 0, "bytes": 0, "clones": 0},
        ]))
    }

    fn healthy(node: &str, sessions: i64) -> Value {
        json!({"node": node, "in_recovery": false, "wal_level": "replica", "max_wal_senders": 10, "wal_senders_in_use": 0,
               "max_replication_slots": 10, "replication_slots_in_use": 0, "sync_replicas": 0,
               "max_replica_lag_bytes": null, "active_sessions": sessions})
    }

    #[test]
    fn the_biggest_healthy_worker_is_the_source() {
        let health = recs(json!([
            healthy("w:9701", 1),
            healthy("w:9702", 0),
            healthy("w:9703", 0)
        ]));
        let c = rank_sources(&workers(), &health);
        assert_eq!(c[0].node, "w:9701");
        assert!(c[0].eligible);
        assert!(c[0].score > c[1].score, "{c:?}");
        assert_eq!(c[2].node, "w:9703");
        assert!(!c[2].eligible);
        assert!(c[2].disqualified_because[0].contains("no distributed shards"));
        let steps = steps_for(&c[0]);
        assert!(
            steps[1].contains("citus_add_clone_node('<replica-host>', <replica-port>, 'w', 9701)"),
            "{steps:?}"
        );
    }

    #[test]
    fn a_worker_that_cannot_stream_is_disqualified() {
        let mut busy = healthy("w:9701", 5);
        busy["wal_senders_in_use"] = json!(10);
        let health = recs(json!([busy, healthy("w:9702", 0)]));
        let c = rank_sources(&workers(), &health);
        assert_eq!(c[0].node, "w:9702", "{c:?}");
        let first = c.iter().find(|c| c.node == "w:9701").unwrap();
        assert!(!first.eligible);
        assert!(
            first
                .disqualified_because
                .iter()
                .any(|r| r.contains("WAL sender"))
        );
        let silent = c.iter().find(|c| c.node == "w:9703").unwrap();
        assert!(
            silent
                .disqualified_because
                .iter()
                .any(|r| r.contains("did not answer"))
        );
    }

    #[test]
    fn penalties_for_clones_lag_slots_and_load() {
        let mut w = workers();
        w[0].insert("clones".into(), json!(1));
        let mut lagging = healthy("w:9701", 10);
        lagging["max_replica_lag_bytes"] = json!(200 * MB);
        lagging["replication_slots_in_use"] = json!(10);
        lagging["sync_replicas"] = json!(1);
        let health = recs(json!([lagging, healthy("w:9702", 0), healthy("w:9703", 0)]));
        let c = rank_sources(&w, &health);
        let first = c.iter().find(|c| c.node == "w:9701").unwrap();
        assert!(first.eligible);
        let base = BYTES_WEIGHT * 58.0 / 75.0 + SHARDS_WEIGHT * 40.0 / 79.0;
        let expected = base - CLONE_PENALTY - LAG_PENALTY - SLOT_PENALTY - LOAD_PENALTY;
        assert!(
            (first.score - expected).abs() < 0.1,
            "{} vs {expected}",
            first.score
        );
        for needle in [
            "clone(s) registered",
            "lag by",
            "replication slot",
            "synchronous",
        ] {
            assert!(
                first.reasons.iter().any(|r| r.contains(needle)),
                "{needle}: {:?}",
                first.reasons
            );
        }
    }

    #[test]
    fn no_workers_no_recommendation() {
        assert!(rank_sources(&[], &[]).is_empty());
    }
}
