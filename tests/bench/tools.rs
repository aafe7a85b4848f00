//! Section 10: every built-in tool's examples over stdio, as a user's client calls them.
//!
//! The per-call figures of section 0 measure citus-mcp's own path on trivial statements; what
//! a user waits for is mostly the tool's SQL. This table times each example of each served
//! tool through the release binary: the first call (the statements are prepared, and on Citus
//! the backend opens its connections to the workers) and the calls after it. Run against a
//! real cluster (`CITUS_TEST_DSN`) it is where a slow plan shows, e.g. LLVM compiling a
//! catalog query for most of a second, or a page that threw away its warm connection.

use std::time::{Duration, Instant};

use anyhow::Result;
use citus_mcp::registry::{Registry, Sources};
use serde_json::json;

use crate::{Bench, Section, Stats, fmt_duration};

/// Calls per example after the first.
const CALLS: usize = 10;

pub fn tools(b: &Bench) -> Result<Vec<Section>> {
    let mut s = Section::new(
        "10. Every built-in tool's examples over stdio (caching off)",
        &["tool", "example", "first", "median", "p95", "notes"],
    );
    let registry = Registry::build(&Sources::builtin(), None, &[], citus_mcp::plugins::NEEDS);
    let mut server = b.server(&[], &[("CITUS_MCP_ENABLE_CACHING", "false")])?;
    server.initialize()?;
    let (_, listed) = server.request("tools/list", json!({}))?;
    let served: Vec<&str> = listed["result"]["tools"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    let mut total = Duration::ZERO;
    for tool in registry.tools.values() {
        let name = tool.spec.name.as_str();
        if !served.contains(&name) {
            continue;
        }
        for (i, ex) in tool.spec.examples.iter().enumerate() {
            let mut samples = Vec::with_capacity(CALLS + 1);
            let mut error = None;
            for _ in 0..=CALLS {
                let sent = Instant::now();
                let (at, v) =
                    server.request("tools/call", json!({"name": name, "arguments": ex.args}))?;
                samples.push(at - sent);
                if v["result"]["isError"] == json!(true) {
                    error = v["result"]["structuredContent"]["error"]["code"]
                        .as_str()
                        .map(String::from)
                        .or_else(|| Some("an error".into()));
                }
            }
            let first = samples.remove(0);
            let st = Stats::of(&samples);
            total += st.median;
            let mut note = ex.title.clone().unwrap_or_default();
            match (&error, &ex.expect.error) {
                (Some(got), Some(want)) if got == want => {}
                (Some(got), _) => note = format!("answered {got}: {note}"),
                (None, Some(want)) => note = format!("expected {want}, got a result: {note}"),
                (None, None) => {}
            }
            s.row(vec![
                name.to_string(),
                i.to_string(),
                fmt_duration(first),
                fmt_duration(st.median),
                fmt_duration(st.p95),
                note,
            ]);
        }
    }
    s.note(format!(
        "first = the example's first call on this server; median and p95 over the {CALLS} calls after it; sum of the medians {}",
        fmt_duration(total)
    ));
    s.note("tools served by default (read-only mode); an example that answers an error not in its `expect` says so");
    Ok(vec![s])
}
