//! The execute tools that outlast one statement: `citus_rebalance_execute` (starts Citus's
//! background rebalance, then optionally waits for it) and `citus_move_shard_execute` (a
//! foreground move, watched from another connection while it runs). Both report progress
//! through `Caller::progress`.
//!
//! Their SQL is in their tool files: the statement that changes the cluster runs through
//! `PluginCall::execute` (autocommit, on a connection of its own, only after the engine's
//! approval gate accepted the token), every poll through `PluginCall::query` (read-only).
//! This file decides only when to poll and what to report.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::advice::{Record, int, records, text};
use crate::engine::{ErrorCode, Plugin, PluginCall, PluginFuture, ToolError, ToolOutput};

/// How often a running operation is polled for progress: often enough for a person to
/// see it move, rarely enough to cost the coordinator nothing measurable.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What a wait leaves of the tool's timeout for the last poll and the answer.
const ANSWER_MARGIN: Duration = Duration::from_secs(2);

/// Background job states after which nothing more happens (Citus's citus_job_status).
const JOB_OVER: &[&str] = &["finished", "cancelled", "failed"];

/// The `rebalance_execute` plugin.
pub struct RebalanceExecute;

impl Plugin for RebalanceExecute {
    fn name(&self) -> &'static str {
        "rebalance_execute"
    }

    fn call<'a>(&'a self, call: PluginCall<'a>) -> PluginFuture<'a> {
        Box::pin(rebalance(call))
    }
}

/// The `move_shard_execute` plugin.
pub struct MoveShardExecute;

impl Plugin for MoveShardExecute {
    fn name(&self) -> &'static str {
        "move_shard_execute"
    }

    fn call<'a>(&'a self, call: PluginCall<'a>) -> PluginFuture<'a> {
        Box::pin(move_shard(call))
    }
}

/// The call's arguments with the schema's defaults, as the tool file's templates see them.
fn vars(call: &PluginCall<'_>) -> Map<String, Value> {
    let mut v = call.tool.context(call.args);
    // The token is the gate's business; it never reaches SQL or a result.
    v.remove("approval_token");
    v
}

fn first(rows: &crate::db::Rows) -> Option<Record> {
    records(rows).into_iter().next()
}

async fn rebalance(call: PluginCall<'_>) -> Result<ToolOutput, ToolError> {
    let args = vars(&call);
    let started = call.execute("start", Value::Object(args.clone())).await?;
    let job_id = first(&started).and_then(|r| r.get("job_id").cloned());
    let mut out = json!({
        "started": false,
        "function": "citus_rebalance_start",
        "arguments": args,
        "approval_id": call.approval_id(),
    });
    let Some(job_id) = job_id.filter(|j| !j.is_null()) else {
        out["job_id"] = Value::Null;
        out["note"] = json!(
            "Citus started no job: no moves are available for rebalancing (citus_rebalance_plan shows the plan)"
        );
        return Ok(super::object(out));
    };
    out["started"] = json!(true);
    out["job_id"] = job_id.clone();
    let wait = Duration::from_secs(
        args.get("wait_seconds")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    )
    .min(call.limits.timeout.saturating_sub(ANSWER_MARGIN));
    let deadline = tokio::time::Instant::now() + wait;
    let mut job = job_state(&call, &job_id).await?;
    let mut waited = false;
    while !wait.is_zero() && !over(&job) {
        report_job(&call, &job).await;
        if tokio::time::Instant::now() + POLL_INTERVAL > deadline {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(POLL_INTERVAL) => {}
            () = call.cancel.cancelled() => return Err(ToolError::new(ErrorCode::Cancelled, "the wait was cancelled; the rebalance job keeps running").hint("follow it with citus_rebalance_status")),
        }
        waited = true;
        job = job_state(&call, &job_id).await?;
    }
    if waited || !wait.is_zero() {
        report_job(&call, &job).await;
    }
    out["finished"] = json!(over(&job));
    out["job"] = Value::Object(job.clone());
    out["next"] = json!(if over(&job) {
        "citus_rebalance_status shows the job's tasks; list_nodes the bytes per node now"
    } else {
        "the job runs in the background: follow it with citus_rebalance_status, stop it with citus_rebalance_stop"
    });
    Ok(super::object(out))
}

async fn job_state(call: &PluginCall<'_>, job_id: &Value) -> Result<Record, ToolError> {
    let rows = call.query("job", json!({"job_id": job_id})).await?;
    first(&rows).ok_or_else(|| {
        ToolError::new(
            ErrorCode::NotFound,
            format!("rebalance job {job_id} is gone from pg_dist_background_job"),
        )
        .hint("citus_job_inspector lists the background jobs")
    })
}

fn over(job: &Record) -> bool {
    JOB_OVER.contains(&text(job, "state"))
}

/// Tasks done of all, as MCP progress, with what is being copied.
async fn report_job(call: &PluginCall<'_>, job: &Record) {
    let (done, total) = (int(job, "tasks_done"), int(job, "tasks"));
    let mut message = format!(
        "rebalance job {}: {}, {done} of {total} tasks done",
        int(job, "job_id"),
        text(job, "state")
    );
    if job.get("bytes_in_flight").is_some_and(|v| !v.is_null()) {
        message.push_str(&format!(
            ", copying {} of {} bytes",
            int(job, "bytes_copied"),
            int(job, "bytes_in_flight")
        ));
    }
    call.caller
        .progress(done as f64, Some(total as f64), &message)
        .await;
}

async fn move_shard(call: PluginCall<'_>) -> Result<ToolOutput, ToolError> {
    let mut args = vars(&call);
    let shard_id = args.get("shard_id").cloned().unwrap_or(Value::Null);
    let resolved = call.query("resolve", Value::Object(args.clone())).await?;
    let r = first(&resolved).unwrap_or_default();
    if r.get("shard_exists") != Some(&Value::Bool(true)) {
        return Err(
            ToolError::new(ErrorCode::NotFound, format!("there is no shard {shard_id}"))
                .hint("list_shards or citus_table_inspector (include_shards) show the shard ids"),
        );
    }
    let node = |key: &str, what: &str| -> Result<Value, ToolError> {
        r.get(key).filter(|v| !v.is_null()).cloned().ok_or_else(|| {
            ToolError::new(ErrorCode::NotFound, format!("the {what} node does not exist"))
                .hint("list_nodes shows the nodes; citus_move_shard_plan checks a move before it is approved")
        })
    };
    let by_name = args.contains_key("source_node_name") && args.contains_key("target_node_name");
    let query = if by_name {
        "move_by_name"
    } else {
        // A source or target given by host and port, or a source left out, is passed to
        // Citus as the node id it resolves to.
        let source = r
            .get("source_node_id")
            .filter(|v| !v.is_null())
            .cloned()
            .ok_or_else(|| {
                let (what, hint) = if args.contains_key("source_node_id")
                    || args.contains_key("source_node_name")
                {
                    (
                        "the source node does not exist",
                        "list_nodes shows the nodes",
                    )
                } else {
                    (
                        "the shard has no single placement to move from",
                        "name the source node (source_node_id)",
                    )
                };
                ToolError::new(ErrorCode::NotFound, what).hint(hint)
            })?;
        args.insert("source_node_id".into(), source);
        args.insert("target_node_id".into(), node("target_node_id", "target")?);
        "move_by_id"
    };
    let group = r.get("shard_group").cloned().unwrap_or(json!([]));
    let progress_vars = json!({"shard_group": group});

    // The move holds its connection until it is done; progress is read meanwhile from
    // another connection, as Citus's get_rebalance_progress is meant to be.
    let moving = call.execute(query, Value::Object(args.clone()));
    tokio::pin!(moving);
    let mut reports = 0u32;
    let result = loop {
        tokio::select! {
            r = &mut moving => break r,
            () = tokio::time::sleep(POLL_INTERVAL) => {
                // A failed poll must not fail a move that may be succeeding: the move's
                // own result decides, and the poll is tried again next time.
                match call.query("progress", progress_vars.clone()).await {
                    Ok(rows) => {
                        report_move(&call, &shard_id, &records(&rows)).await;
                        reports += 1;
                    }
                    Err(e) => tracing::debug!("progress poll failed: {}", crate::redact::secrets(&e.message)),
                }
            }
        }
    };
    result?;
    let placements = call.query("placements", progress_vars).await?;
    let out = json!({
        "moved": true,
        "function": "citus_move_shard_placement",
        "overload": if by_name { "by node name and port" } else { "by node id" },
        "arguments": args,
        "shard_group": group,
        "placements": records(&placements),
        "progress_reports": reports,
        "approval_id": call.approval_id(),
    });
    Ok(super::object(out))
}

/// Bytes copied of the shard group's moves in flight, as MCP progress.
async fn report_move(call: &PluginCall<'_>, shard_id: &Value, rows: &[Record]) {
    let total: i64 = rows.iter().map(|r| int(r, "source_shard_size")).sum();
    let done: i64 = rows.iter().map(|r| int(r, "target_shard_size")).sum();
    let phases: Vec<&str> = rows
        .iter()
        .map(|r| text(r, "phase"))
        .filter(|p| !p.is_empty())
        .collect();
    let message = if rows.is_empty() {
        format!("moving shard {shard_id}: Citus reports no progress yet")
    } else {
        format!(
            "moving shard {shard_id}: {done} of {total} bytes copied ({})",
            phases.join(", ")
        )
    };
    let total = (total > 0).then_some(total as f64);
    call.caller.progress(done as f64, total, &message).await;
}
