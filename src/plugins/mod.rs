//! Tools written in Rust: what SQL cannot express. Their headers (name, description,
//! input schema, examples) still live in YAML files with `plugin: <name>`.
//!
//! Registered in one explicit list, [`NAMES`], dispatched by [`call`].

use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::compile::CompiledTool;
use crate::engine::{Engine, ToolError, ToolOutput, shape};

mod explain;

/// Every plugin a tool file may name.
pub const NAMES: &[&str] = &["ping", "server_info", "explain"];

/// Runs a plugin tool.
pub async fn call(
    plugin: &str,
    engine: &Engine,
    tool: &CompiledTool,
    args: &Map<String, Value>,
    cancel: &CancellationToken,
) -> Result<ToolOutput, ToolError> {
    let timeout_ms = tool
        .spec
        .limits
        .timeout_ms
        .unwrap_or(engine.settings.statement_timeout_ms);
    let timeout = std::time::Duration::from_millis(timeout_ms.into());
    let structured = match plugin {
        "ping" => ping(args),
        "server_info" => server_info(engine).await,
        "explain" => {
            let max_bytes = tool
                .spec
                .limits
                .max_bytes
                .unwrap_or(engine.settings.max_bytes) as usize;
            let structured = explain::run(engine, args, timeout, max_bytes, cancel).await?;
            // The model reads a plan tree far more easily than nested JSON.
            return Ok(ToolOutput {
                text: explain::text(&structured),
                structured,
            });
        }
        other => {
            return Err(ToolError::new(
                crate::engine::ErrorCode::Internal,
                format!("tool `{}` names unknown plugin `{other}`", tool.spec.name),
            ));
        }
    };
    Ok(ToolOutput {
        text: shape::object_text(&structured),
        structured,
    })
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
async fn server_info(engine: &Engine) -> Value {
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
    });
    let cluster = match engine.db() {
        None => json!({"connected": false, "error": "no coordinator is configured"}),
        Some(db) => match db.facts().await {
            Ok(f) => json!({
                "connected": true,
                "coordinator": db.target(),
                "postgres_version": f.server_version,
                "postgres_version_num": f.server_version_num,
                "citus": f.citus_version.is_some(),
                "citus_version": f.citus_version,
                "citus_extension_version": f.citus_extension,
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
