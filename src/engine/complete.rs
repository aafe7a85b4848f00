//! Argument completions for prompts and resource templates: declared values (a prompt
//! argument's `enum`, an enum in the tool's input schema) or a query of
//! `completions.yaml` chosen by the argument's name.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::Engine;
use crate::db::Statement;
use crate::template::Templates;

/// What is being completed.
#[derive(Debug, Clone, Copy)]
pub enum CompletionRef<'a> {
    Prompt(&'a str),
    /// A resource template URI, e.g. `citus://tables/{table}`.
    Resource(&'a str),
}

/// At most this many values go back (the MCP limit).
const MAX_VALUES: usize = 100;

struct Sources {
    templates: Templates,
    names: Vec<String>,
}

static SOURCES: LazyLock<Sources> = LazyLock::new(|| {
    let map: BTreeMap<String, String> = serde_yaml::from_str(include_str!("completions.yaml"))
        .expect("completions.yaml is a mapping of names to SQL");
    let mut templates = Templates::new();
    for (name, sql) in &map {
        templates
            .add_sql(name, sql)
            .expect("completions.yaml templates compile");
    }
    Sources {
        templates,
        names: map.into_keys().collect(),
    }
});

impl Engine {
    /// Values for `argument` starting with `prefix`; empty when nothing is known.
    pub async fn complete(
        &self,
        target: CompletionRef<'_>,
        argument: &str,
        prefix: &str,
    ) -> Vec<String> {
        let registry = self.registry();
        // Only an argument the prompt or resource template has: a made-up reference gets
        // nothing, not the cluster's table names.
        let takes = match target {
            CompletionRef::Prompt(name) => registry
                .prompts
                .get(name)
                .is_some_and(|p| p.spec.arguments.iter().any(|a| a.name == argument)),
            CompletionRef::Resource(uri) => {
                uri.contains(&format!("{{{argument}}}"))
                    && registry
                        .tools
                        .values()
                        .any(|t| t.spec.resources.iter().any(|r| r.uri == uri))
            }
        };
        if !takes {
            return vec![];
        }
        let declared: Option<Vec<String>> = match target {
            CompletionRef::Prompt(name) => registry
                .prompts
                .get(name)
                .and_then(|p| p.spec.arguments.iter().find(|a| a.name == argument))
                .map(|a| a.choices.clone())
                .filter(|c| !c.is_empty()),
            CompletionRef::Resource(uri) => registry
                .tools
                .values()
                .find(|t| t.spec.resources.iter().any(|r| r.uri == uri))
                .and_then(|t| {
                    t.spec
                        .input_schema
                        .pointer(&format!("/properties/{argument}/enum"))
                        .cloned()
                })
                .and_then(|e| {
                    e.as_array().map(|a| {
                        a.iter()
                            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                            .collect()
                    })
                }),
        };
        if let Some(values) = declared {
            return values
                .into_iter()
                .filter(|v| v.starts_with(prefix))
                .take(MAX_VALUES)
                .collect();
        }
        let (Some(db), true) = (self.db(), SOURCES.names.iter().any(|n| n == argument)) else {
            return vec![];
        };
        let rendered = match SOURCES
            .templates
            .render(argument, &json!({"prefix": prefix}))
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("completion query for `{argument}` does not render: {e}");
                return vec![];
            }
        };
        let st = Statement::new(rendered.sql, rendered.binds, MAX_VALUES);
        match db
            .read_only(&[st], Duration::from_secs(5), &CancellationToken::new())
            .await
        {
            Ok(mut rows) => rows
                .pop()
                .map(|r| r.rows)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|r| r.into_iter().next())
                .map(|v| match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
                .collect(),
            Err(e) => {
                // A completion is a convenience: a failure shows as no suggestions.
                tracing::info!(
                    "completion of `{argument}` failed: {}",
                    crate::redact::shown(&e)
                );
                vec![]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_sources_compile() {
        assert!(SOURCES.names.contains(&"table".to_string()));
        for name in &SOURCES.names {
            let r = SOURCES
                .templates
                .render(name, &json!({"prefix": "o'; --"}))
                .unwrap();
            assert_eq!(r.binds, vec![json!("o'; --")], "{name}");
        }
    }
}
