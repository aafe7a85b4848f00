//! A tool's manual: the markdown served on demand as `citus://tools/{name}` and printed by
//! `citus-mcp tools show`.
//!
//! `tools/list` carries only what a model needs to pick a tool (issue #8: every session
//! pays for it before the user asks anything). Everything else — result columns, rules,
//! every parameter's bounds, examples — is here, built from the tool file alone. It shows
//! no SQL: the manual is for the model and the person, and the server never sees SQL.

use serde_json::{Map, Value};

use crate::compile::CompiledTool;
use crate::spec::{Paging, Safety};

/// The URI scheme and prefix of tool manuals.
pub const URI_PREFIX: &str = "citus://tools/";

/// The URI template that lists the manuals as one MCP resource template.
pub const URI_TEMPLATE: &str = "citus://tools/{name}";

/// The manual URI of a tool.
pub fn uri(tool: &str) -> String {
    format!("{URI_PREFIX}{tool}")
}

/// The tool a manual URI names, if it is one (percent-encoding is not needed: tool names
/// are `[a-z0-9_]`).
pub fn tool_of(uri: &str) -> Option<&str> {
    uri.strip_prefix(URI_PREFIX).filter(|n| !n.is_empty())
}

/// The manual of one tool, in markdown.
pub fn markdown(tool: &CompiledTool) -> String {
    let spec = &tool.spec;
    let mut s = format!("# {}", spec.name);
    if let Some(title) = &spec.title {
        s.push_str(&format!(" — {title}"));
    }
    s.push_str("\n\n");
    let safety = match spec.safety {
        Safety::ReadOnly => "read-only",
        Safety::Plan => "plan (reads only, prepares a change)",
        Safety::Execute => "execute (changes the cluster; needs an approval token)",
    };
    s.push_str(&format!("Safety: {safety}."));
    if let Some(t) = spec.toolset {
        s.push_str(&format!(" Toolset: {}.", t.as_str()));
    }
    if let Some(req) = &spec.requires.citus {
        let version = req.trim_start_matches(">=").trim();
        s.push_str(&format!(" Needs Citus {version} or later."));
    }
    s.push_str("\n\n");
    s.push_str(spec.description.trim());
    s.push_str("\n\n");

    let properties = tool
        .input_schema
        .get("properties")
        .and_then(Value::as_object)
        .filter(|p| !p.is_empty());
    if let Some(props) = properties {
        s.push_str("## Parameters\n\n");
        let required = required(&tool.input_schema);
        for (name, schema) in props {
            parameter(&mut s, "", name, schema, required.contains(&name.as_str()));
        }
        s.push('\n');
    }
    match tool.pager() {
        Some((_, Paging::Offset)) => s.push_str(
            "## Paging\n\nPaged with `limit` and `offset`: a result with more rows carries `next_offset`; \
             pass it back as `offset` with the same other arguments.\n\n",
        ),
        Some((_, Paging::Keyset(_))) => s.push_str(
            "## Paging\n\nKeyset-paged: a result with more rows carries `next_cursor`; pass it back as \
             `cursor` with the same other arguments.\n\n",
        ),
        None => {}
    }
    if let Some(details) = &spec.details {
        s.push_str(details.trim());
        s.push_str("\n\n");
    }
    s.push_str(
        "## Result size\n\nA result larger than the server's byte budget (`max_text_bytes`) is cut: \
         it then says `truncated: true` and `how_to_get_more` names the arguments that fetch the rest.\n\n",
    );
    if !spec.resources.is_empty() {
        s.push_str("## Resources\n\n");
        for r in &spec.resources {
            s.push_str(&format!("- `{}`", r.uri));
            if let Some(d) = &r.description {
                s.push_str(&format!(": {}", d.trim()));
            }
            s.push('\n');
        }
        s.push('\n');
    }
    let examples: Vec<String> = spec
        .examples
        .iter()
        .filter(|e| e.expect.error.is_none())
        .map(|e| {
            let args = e.args.to_string();
            match &e.title {
                Some(t) => format!("- {t}: `{args}`"),
                None => format!("- `{args}`"),
            }
        })
        .collect();
    if !examples.is_empty() {
        s.push_str("## Examples\n\n");
        s.push_str(&examples.join("\n"));
        s.push('\n');
    }
    s.trim_end().to_string() + "\n"
}

fn required(schema: &Map<String, Value>) -> Vec<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// One parameter as a list item: name, type, bounds, default, description; an object's
/// own properties follow, indented.
fn parameter(s: &mut String, indent: &str, name: &str, schema: &Value, is_required: bool) {
    let mut facts = Vec::new();
    match schema.get("type") {
        Some(Value::String(t)) => facts.push(t.clone()),
        Some(Value::Array(ts)) => facts.push(
            ts.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" or "),
        ),
        _ => {}
    }
    if is_required {
        facts.push("required".into());
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let values: Vec<String> = values.iter().map(plain).collect();
        facts.push(format!("one of {}", values.join(", ")));
    }
    match (schema.get("minimum"), schema.get("maximum")) {
        (Some(lo), Some(hi)) => facts.push(format!("{}–{}", plain(lo), plain(hi))),
        (Some(lo), None) => facts.push(format!("at least {}", plain(lo))),
        (None, Some(hi)) => facts.push(format!("at most {}", plain(hi))),
        (None, None) => {}
    }
    if let Some(max) = schema.get("maxLength") {
        facts.push(format!("at most {} characters", plain(max)));
    }
    if let Some(d) = schema.get("default") {
        facts.push(format!("default {}", plain(d)));
    }
    s.push_str(&format!("{indent}- `{name}`"));
    if !facts.is_empty() {
        s.push_str(&format!(" ({})", facts.join(", ")));
    }
    if let Some(d) = schema.get("description").and_then(Value::as_str) {
        s.push_str(&format!(": {}", d.trim()));
    }
    s.push('\n');
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        let inner = schema.as_object().map(required).unwrap_or_default();
        let deeper = format!("{indent}  ");
        for (n, p) in props {
            parameter(s, &deeper, n, p, inner.contains(&n.as_str()));
        }
    }
}

/// A JSON value as it reads in prose: strings bare, everything else as JSON.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Registry, Sources};

    #[test]
    fn manual_uris_round_trip() {
        assert_eq!(uri("list_nodes"), "citus://tools/list_nodes");
        assert_eq!(tool_of("citus://tools/list_nodes"), Some("list_nodes"));
        assert_eq!(tool_of("citus://tools/"), None);
        assert_eq!(tool_of("citus://tables/x"), None);
    }

    #[test]
    fn every_builtin_manual_has_parameters_details_and_no_sql() {
        let reg = Registry::build(&Sources::builtin(), None, &[], crate::plugins::NEEDS);
        for t in reg.tools.values() {
            let m = markdown(t);
            assert!(m.starts_with(&format!("# {}", t.spec.name)), "{m}");
            assert!(m.contains(t.spec.description.trim()), "{}", t.spec.name);
            if let Some(props) = t.input_schema["properties"].as_object() {
                for p in props.keys() {
                    assert!(m.contains(&format!("- `{p}`")), "{}: {p}", t.spec.name);
                }
            }
            for q in &t.spec.queries {
                assert!(!m.contains(q.sql.trim()), "{} shows SQL", t.spec.name);
            }
        }
    }
}
