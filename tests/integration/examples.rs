//! The generic test: every example of every built-in tool file, run through the
//! engine against the test database, checked against its `expect`.

use std::sync::Arc;

use citus_mcp::engine::{Engine, Settings};
use citus_mcp::registry::{Registry, Sources, builtin_prompts, builtin_tools};
use libtest_mimic::Trial;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::Ctx;

pub fn trials(ctx: &Arc<Ctx>) -> Vec<Trial> {
    let registry = Registry::build(
        &Sources {
            tools: vec![builtin_tools()],
            prompts: vec![builtin_prompts()],
            problems: vec![],
        },
        None,
        &[],
        citus_mcp::plugins::NAMES,
    );
    let mut out = Vec::new();
    for tool in registry.tools.values() {
        if tool.spec.examples.is_empty() {
            let name = tool.spec.name.clone();
            out.push(Trial::test(
                format!("examples::{name}::has_examples"),
                move || Err(format!("tool {name} has no examples").into()),
            ));
        }
        for (i, ex) in tool.spec.examples.iter().enumerate() {
            let ctx = ctx.clone();
            let name = tool.spec.name.clone();
            let ex = ex.clone();
            let title = ex.title.clone().unwrap_or_default();
            out.push(Trial::test(format!("examples::{name}::{i} {title}"), move || {
                let engine = Engine::new(
                    Registry::build(&Sources { tools: vec![builtin_tools()], prompts: vec![], problems: vec![] }, None, &[], citus_mcp::plugins::NAMES),
                    Some(ctx.pool(&ctx.dsn())),
                    Settings { enable_caching: false, ..Settings::default() },
                );
                let result = ctx.rt.block_on(engine.call(&name, ex.args.clone(), &CancellationToken::new()));
                match (&ex.expect.error, result) {
                    (Some(code), Err(e)) if e.code.as_str() == code => Ok(()),
                    (Some(code), Err(e)) => Err(format!("expected error {code}, got {}", e.text()).into()),
                    (Some(code), Ok(out)) => Err(format!("expected error {code}, got a result: {}", out.text).into()),
                    (None, Err(e)) => Err(format!("args {} failed: {}", ex.args, e.text()).into()),
                    (None, Ok(out)) => {
                        let obj = out.structured.as_object().ok_or("structured content is not an object")?;
                        if !obj.contains_key("truncated") && tool_is_sql(&name) {
                            return Err("result has no `truncated` flag".into());
                        }
                        for (query, min) in &ex.expect.min_rows {
                            let n = match obj.get(query) {
                                Some(Value::Array(rows)) => rows.len() as u64,
                                Some(Value::Null) | None => 0,
                                Some(_) => 1,
                            };
                            if n < *min {
                                return Err(format!("query `{query}` returned {n} rows, expected at least {min}\n{}", out.text).into());
                            }
                        }
                        if out.text.is_empty() {
                            return Err("empty text rendering".into());
                        }
                        Ok(())
                    }
                }
            }));
        }
    }
    out
}

fn tool_is_sql(name: &str) -> bool {
    !matches!(name, "ping" | "server_info")
}
