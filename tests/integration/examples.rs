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
    let mut out = vec![readme_example(ctx)];
    out.extend(tool_examples(ctx));
    out
}

fn tool_examples(ctx: &Arc<Ctx>) -> Vec<Trial> {
    let registry = Registry::build(
        &Sources {
            tools: vec![builtin_tools()],
            prompts: vec![builtin_prompts()],
            ..Default::default()
        },
        None,
        &[],
        citus_mcp::plugins::NEEDS,
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
            out.push(Trial::test(
                format!("examples::{name}::{i} {title}"),
                move || {
                    let engine = Engine::new(
                        Registry::build(
                            &Sources {
                                tools: vec![builtin_tools()],
                                prompts: vec![],
                                ..Default::default()
                            },
                            None,
                            &[],
                            citus_mcp::plugins::NEEDS,
                        ),
                        // Read-only tools run as the least-privilege role of README's recipe.
                        Some(ctx.reader_pool()),
                        Settings {
                            enable_caching: false,
                            ..Settings::default()
                        },
                    )
                    .with_plugins(citus_mcp::plugins::all());
                    let result = ctx.rt.block_on(engine.call(
                        &name,
                        ex.args.clone(),
                        &CancellationToken::new(),
                    ));
                    match (&ex.expect.error, result) {
                        (Some(code), Err(e)) if e.code.as_str() == code => Ok(()),
                        (Some(code), Err(e)) => {
                            Err(format!("expected error {code}, got {}", e.text()).into())
                        }
                        (Some(code), Ok(out)) => {
                            Err(format!("expected error {code}, got a result: {}", out.text).into())
                        }
                        (None, Err(e)) => {
                            Err(format!("args {} failed: {}", ex.args, e.text()).into())
                        }
                        (None, Ok(out)) => {
                            let obj = out
                                .structured
                                .as_object()
                                .ok_or("structured content is not an object")?;
                            if !obj.contains_key("truncated") && tool_is_sql(&name) {
                                return Err("result has no `truncated` flag".into());
                            }
                            rows_as_expected(&ex.expect, &out.structured)
                                .map_err(|e| format!("{e}\n{}", out.text))?;
                            if out.text.is_empty() {
                                return Err("empty text rendering".into());
                            }
                            Ok(())
                        }
                    }
                },
            ));
        }
    }
    out
}

/// An example's `min_rows` and `max_rows` against its result: a `one` query's object counts
/// as one row, a missing or null one as none.
fn rows_as_expected(expect: &citus_mcp::spec::Expect, result: &Value) -> Result<(), String> {
    let rows = |query: &str| match result.get(query) {
        Some(Value::Array(rows)) => rows.len() as u64,
        Some(Value::Null) | None => 0,
        Some(_) => 1,
    };
    for (query, min) in &expect.min_rows {
        let n = rows(query);
        if n < *min {
            return Err(format!(
                "query `{query}` returned {n} rows, expected at least {min}"
            ));
        }
    }
    for (query, max) in &expect.max_rows {
        let n = rows(query);
        if n > *max {
            return Err(format!(
                "query `{query}` returned {n} rows, expected at most {max}"
            ));
        }
    }
    Ok(())
}

fn tool_is_sql(name: &str) -> bool {
    !matches!(name, "ping" | "server_info")
}

/// The tool file shown in README.md ("Adding a tool") compiles and its examples run.
pub fn readme_example(ctx: &Arc<Ctx>) -> Trial {
    let ctx = ctx.clone();
    Trial::test("examples::readme_example_tool_works", move || {
        let readme = include_str!("../../README.md");
        let section = readme
            .split("## Adding a tool")
            .nth(1)
            .ok_or("README has no `Adding a tool` section")?;
        let yaml = section
            .split("```yaml\n")
            .nth(1)
            .and_then(|s| s.split("```").next())
            .ok_or("no yaml block")?;
        let file = citus_mcp::compile::SourceFile {
            origin: "README.md/biggest_shards.yaml".into(),
            text: yaml.into(),
        };
        let registry = Registry::build(
            &Sources {
                tools: vec![vec![file]],
                prompts: vec![],
                ..Default::default()
            },
            None,
            &[],
            citus_mcp::plugins::NEEDS,
        );
        let problems: Vec<String> = registry
            .diagnostics
            .iter()
            .map(ToString::to_string)
            .collect();
        let tool = registry
            .tools
            .values()
            .next()
            .ok_or_else(|| format!("the README tool does not compile: {problems:?}"))?
            .clone();
        let name = tool.spec.name.clone();
        let examples = tool.spec.examples.clone();
        let engine = Engine::new(
            registry,
            Some(ctx.pool(&ctx.dsn())),
            Settings {
                enable_caching: false,
                ..Settings::default()
            },
        )
        .with_plugins(citus_mcp::plugins::all());
        for ex in examples {
            let out = ctx
                .rt
                .block_on(engine.call(&name, ex.args.clone(), &CancellationToken::new()))
                .map_err(|e| format!("{}: {}", ex.args, e.text()))?;
            rows_as_expected(&ex.expect, &out.structured)
                .map_err(|e| format!("{}: {e}", ex.args))?;
        }
        Ok(())
    })
}
