//! Tools written in Rust: what SQL cannot express. Their headers (name, description,
//! input schema, examples) and their SQL live in YAML files with `plugin: <name>`.
//!
//! Each implements the engine's [`Plugin`] interface; [`all`] is the one list that
//! `main` registers, and [`NEEDS`] the names tool files may use with the queries each
//! plugin runs.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::compile::Runs::{Execute, FanOut, Read};
use crate::compile::{PluginNeeds, Runs};
use crate::engine::{
    Engine, Plugin, PluginCall, PluginFuture, Plugins, ToolError, ToolOutput, shape,
};

mod advice;
mod advisor;
mod approval;
mod explain;
mod operations;
mod rebalance_prereqs;
mod snapshot_source;

/// Every plugin a tool file may name, and the queries its file must declare for it.
pub const NEEDS: &[PluginNeeds] = &[
    needs("ping", &[]),
    needs("server_info", &[]),
    needs("explain", &[("reach", Read)]),
    needs("approval", &[]),
    needs(
        "advisor",
        &[
            ("nodes", Read),
            ("tables", Read),
            ("sessions", Read),
            ("lock_waits", Read),
            ("jobs", Read),
            ("cleanup", Read),
            ("prepared_xacts", FanOut),
            ("settings", FanOut),
            ("versions", FanOut),
        ],
    ),
    needs(
        "rebalance_prereqs",
        &[
            ("table", Read),
            ("members", Read),
            ("nodes", Read),
            ("node_settings", FanOut),
            ("jobs", Read),
        ],
    ),
    needs(
        "snapshot_source",
        &[
            ("workers", Read),
            ("health", FanOut),
            ("clones", Read),
            ("split_plan", Read),
            ("functions", Read),
        ],
    ),
    needs("rebalance_execute", &[("start", Execute), ("job", Read)]),
    needs(
        "move_shard_execute",
        &[
            ("resolve", Read),
            ("move_by_id", Execute),
            ("move_by_name", Execute),
            ("progress", Read),
            ("placements", Read),
        ],
    ),
];

const fn needs(name: &'static str, queries: &'static [(&'static str, Runs)]) -> PluginNeeds {
    PluginNeeds { name, queries }
}

/// Every plugin, for [`Engine::with_plugins`].
pub fn all() -> Plugins {
    Plugins::new(vec![
        Arc::new(Ping),
        Arc::new(ServerInfo),
        Arc::new(explain::Explain),
        Arc::new(approval::RequestToken),
        Arc::new(advisor::Advisor),
        Arc::new(rebalance_prereqs::RebalancePrereqs),
        Arc::new(snapshot_source::SnapshotSource),
        Arc::new(operations::RebalanceExecute),
        Arc::new(operations::MoveShardExecute),
    ])
}

/// A plugin whose result is a JSON object shown as compact `key: value` text.
fn object(structured: Value) -> ToolOutput {
    ToolOutput {
        text: shape::object_text(&structured),
        structured,
    }
}

struct Ping;

impl Plugin for Ping {
    fn name(&self) -> &'static str {
        "ping"
    }

    fn call<'a>(&'a self, call: PluginCall<'a>) -> PluginFuture<'a> {
        Box::pin(async move { Ok(object(ping(call.args))) })
    }
}

struct ServerInfo;

impl Plugin for ServerInfo {
    fn name(&self) -> &'static str {
        "server_info"
    }

    fn call<'a>(&'a self, call: PluginCall<'a>) -> PluginFuture<'a> {
        Box::pin(async move { Ok(object(server_info(call.engine, call.limits.timeout).await)) })
    }
}

/// Answers without touching the database.
fn ping(args: &Map<String, Value>) -> Value {
    let message = args
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("pong");
    json!({"message": message})
}

/// The server, its mode, the cluster's versions, and the state of the tool files.
async fn server_info(engine: &Engine, timeout: std::time::Duration) -> Value {
    let registry = engine.registry();
    let s = &engine.settings;
    let mut info = json!({
        "server": {"name": env!("CARGO_PKG_NAME"), "version": env!("CARGO_PKG_VERSION")},
        "mode": if s.admin { "admin" } else { "read_only" },
        "allow_execute": s.allow_execute,
        "tools": engine.visible_tools().len(),
        "tools_loaded": registry.tools.len(),
        "prompts": registry.prompts.len(),
        "spec_errors": registry.errors().map(ToString::to_string).collect::<Vec<_>>(),
        "config_warnings": registry.warnings,
        "limits": {"max_rows": s.max_rows, "max_bytes": s.max_bytes, "statement_timeout_ms": s.statement_timeout_ms},
        "caching": {"enabled": s.enable_caching, "ttl_s": s.cache_ttl_s},
        "fanout": s.fanout,
        "toolsets": s.toolsets.names(),
    });
    // One of several clusters says which, so results from two are not confused.
    if let Some(name) = &s.cluster {
        info["cluster_name"] = json!(name);
    }
    let cluster = match engine.db() {
        None => json!({"connected": false, "error": "no coordinator is configured"}),
        Some(db) => match db.facts_within(timeout).await {
            Ok(f) => json!({
                "connected": true,
                "coordinator": db.target(),
                "postgres_version": f.server_version,
                "postgres_version_num": f.server_version_num,
                "citus": f.citus_version.is_some(),
                "citus_version": f.citus_version,
                "citus_extension_version": f.citus_extension,
                "role": f.role,
                "superuser": f.superuser,
                "role_warnings": f.role_warnings(),
                "capabilities": capabilities(engine, &f),
            }),
            Err(e) => {
                json!({"connected": false, "coordinator": db.target(), "error": ToolError::from(e).message})
            }
        },
    };
    info["cluster"] = cluster;
    info
}

/// Which tools the cluster can serve, and why not for the others.
fn capabilities(engine: &Engine, facts: &crate::db::ServerFacts) -> Value {
    let mut available = Vec::new();
    let mut unavailable = Map::new();
    for t in engine.visible_tools() {
        match t
            .spec
            .requires
            .citus
            .as_deref()
            .map(|req| crate::engine::check_citus(facts, req))
        {
            Some(Err(e)) => {
                unavailable.insert(t.spec.name.clone(), Value::from(e.message));
            }
            _ => available.push(t.spec.name.clone()),
        }
    }
    json!({"available": available, "unavailable": unavailable})
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_match_the_registered_plugins() {
        let names: Vec<&str> = super::NEEDS.iter().map(|n| n.name).collect();
        assert_eq!(super::all().names(), names);
    }
}
