//! Rows → the result a client sees: a JSON object keyed by query name, and a compact
//! text rendering of the same data.

use serde_json::{Map, Value};

use crate::db::Rows;
use crate::spec::{Shape, ToolSpec};

/// A successful tool call.
#[derive(Debug, Clone)]
pub struct ToolOutput {
    /// Always a JSON object (MCP requires it).
    pub structured: Value,
    /// The compact rendering for the model.
    pub text: String,
}

/// One query's rows, shaped.
#[derive(Debug, Clone)]
pub struct Part {
    pub name: String,
    pub shape: Shape,
    pub rows: Rows,
}

impl Part {
    pub fn value(&self) -> Value {
        match self.shape {
            Shape::Many => Value::Array(self.rows.rows.iter().map(|r| self.object(r)).collect()),
            Shape::One => self
                .rows
                .rows
                .first()
                .map_or(Value::Null, |r| self.object(r)),
            Shape::Value => self
                .rows
                .rows
                .first()
                .and_then(|r| r.first())
                .cloned()
                .unwrap_or(Value::Null),
        }
    }

    fn object(&self, row: &[Value]) -> Value {
        Value::Object(
            self.rows
                .columns
                .iter()
                .zip(row)
                .map(|(c, v)| (c.name.clone(), v.clone()))
                .collect(),
        )
    }
}

/// Paging and truncation facts of a result.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub truncated: bool,
    /// Nodes of a fan-out that failed: `{nodeid, node, code, message}`.
    pub node_errors: Vec<Value>,
    pub next_offset: Option<u64>,
    pub next_cursor: Option<String>,
    /// For a cut result: which arguments fetch what it left out ([`how_to_get_more`]).
    pub how_to_get_more: Option<String>,
}

/// The key of a cut result that says how to get the rest, in every tool's result.
pub const HOW_TO_GET_MORE: &str = "how_to_get_more";

/// What a cut result tells the model, in the tool's own arguments (issue #8: a result cut
/// to fit the context is only useful if the model knows how to get the rest). `args` are
/// the call's arguments with the schema's defaults applied.
///
/// A paged result names its next page exactly. Otherwise the tool's schema says what
/// narrows the call: filters it did not set (string and number arguments, and enums with
/// no default or set to `all`), caps on text (`*_max_chars`), sections it turned on
/// (`include_*`, `verbose`, `all`), and limits (`limit`, `*_limit`, `top_*`, `max_*`).
pub fn how_to_get_more(
    tool: &ToolSpec,
    args: &Map<String, Value>,
    page: &Page,
    max_bytes: usize,
) -> String {
    let name = &tool.name;
    if let Some(o) = page.next_offset {
        return format!("call {name} again with offset: {o} and the same other arguments");
    }
    if page.next_cursor.is_some() {
        return format!(
            "call {name} again with cursor set to next_cursor and the same other arguments"
        );
    }
    let props = tool
        .input_schema
        .get("properties")
        .and_then(Value::as_object);
    let (mut narrow, mut shorten, mut drop, mut fewer) = (vec![], vec![], vec![], vec![]);
    for (arg, schema) in props.into_iter().flatten() {
        let ty = schema.get("type").and_then(Value::as_str);
        let given = args.get(arg);
        let code = format!("`{arg}`");
        if matches!(arg.as_str(), "offset" | "cursor" | "approval_token") {
            continue;
        }
        if arg.ends_with("_max_chars") {
            shorten.push(code);
        } else if arg == "limit"
            || arg.ends_with("_limit")
            || arg.starts_with("top_")
            || arg.starts_with("max_")
        {
            fewer.push(code);
        } else if ty == Some("boolean") {
            let turned_on = given == Some(&Value::Bool(true));
            if turned_on && (arg.starts_with("include_") || arg == "verbose" || arg == "all") {
                drop.push(format!("`{arg}: false`"));
            }
        } else if schema.get("enum").is_some() {
            let filters = schema.get("default").is_none() || given == Some(&Value::from("all"));
            if filters && given.is_none_or(|v| v == "all") {
                narrow.push(code);
            }
        } else if matches!(ty, Some("string" | "integer" | "number") | None) && given.is_none() {
            narrow.push(code);
        }
    }
    let mut ways = Vec::new();
    if !narrow.is_empty() {
        ways.push(format!("narrow it with {}", narrow.join(", ")));
    }
    if !drop.is_empty() {
        ways.push(format!("leave sections out with {}", drop.join(", ")));
    }
    if !shorten.is_empty() {
        ways.push(format!("cut text shorter with {}", shorten.join(", ")));
    }
    if !fewer.is_empty() {
        ways.push(format!(
            "ask for fewer rows with a lower {}",
            fewer.join(", ")
        ));
    }
    if ways.is_empty() {
        return format!(
            "{name} has no argument that narrows or pages it: this is what fits the server's limits (max_rows, and max_text_bytes: {max_bytes} bytes here), which an operator can raise"
        );
    }
    format!(
        "to get the rest, call {name} again and {}",
        ways.join("; or ")
    )
}

/// Drops trailing rows of the largest `many` parts until the result's JSON fits
/// `max_bytes`; trimmed parts are marked as having more rows. Returns whether it cut.
pub fn fit(parts: &mut [Part], max_bytes: usize) -> bool {
    let mut cut = false;
    loop {
        let size = serde_json::to_vec(&structured(parts, &Page::default())).map_or(0, |v| v.len());
        if size <= max_bytes {
            return cut;
        }
        let Some(biggest) = parts
            .iter_mut()
            .filter(|p| p.shape == Shape::Many && !p.rows.rows.is_empty())
            .max_by_key(|p| p.rows.rows.len())
        else {
            return cut;
        };
        let n = biggest.rows.rows.len();
        let keep = ((n as f64) * (max_bytes as f64 / size as f64) * 0.95) as usize;
        biggest.rows.rows.truncate(keep.min(n - 1));
        biggest.rows.more = true;
        cut = true;
    }
}

/// The result object and its text.
pub fn finish(parts: &[Part], page: &Page) -> ToolOutput {
    ToolOutput {
        structured: structured(parts, page),
        text: text(parts, page),
    }
}

fn structured(parts: &[Part], page: &Page) -> Value {
    let mut obj = Map::new();
    for p in parts {
        obj.insert(p.name.clone(), p.value());
    }
    obj.insert(
        "truncated".into(),
        Value::Bool(page.truncated || parts.iter().any(|p| p.rows.more && p.shape == Shape::Many)),
    );
    if let Some(o) = page.next_offset {
        obj.insert("next_offset".into(), Value::from(o));
    }
    if let Some(c) = &page.next_cursor {
        obj.insert("next_cursor".into(), Value::from(c.clone()));
    }
    if let Some(h) = &page.how_to_get_more {
        obj.insert(HOW_TO_GET_MORE.into(), Value::from(h.clone()));
    }
    if !page.node_errors.is_empty() {
        obj.insert("node_errors".into(), Value::Array(page.node_errors.clone()));
    }
    Value::Object(obj)
}

/// A compact, token-cheap rendering: one tab-separated table per list.
pub fn text(parts: &[Part], page: &Page) -> String {
    let mut s = String::new();
    for p in parts {
        match p.shape {
            Shape::Value => {
                s.push_str(&format!("{}: {}\n", p.name, cell(&p.value())));
            }
            Shape::One => {
                s.push_str(&format!("## {}\n", p.name));
                match p.rows.rows.first() {
                    None => s.push_str("(none)\n"),
                    Some(row) => {
                        for (c, v) in p.rows.columns.iter().zip(row) {
                            s.push_str(&format!("{}: {}\n", c.name, cell(v)));
                        }
                    }
                }
            }
            Shape::Many => {
                let n = p.rows.rows.len();
                let more = if p.rows.more { ", more available" } else { "" };
                s.push_str(&format!(
                    "## {} ({n} row{}{more})\n",
                    p.name,
                    if n == 1 { "" } else { "s" }
                ));
                if n > 0 {
                    let header: Vec<&str> =
                        p.rows.columns.iter().map(|c| c.name.as_str()).collect();
                    s.push_str(&header.join("\t"));
                    s.push('\n');
                    for row in &p.rows.rows {
                        let cells: Vec<String> = row.iter().map(cell).collect();
                        s.push_str(&cells.join("\t"));
                        s.push('\n');
                    }
                }
            }
        }
    }
    for e in &page.node_errors {
        s.push_str(&format!(
            "node error {}: {} {}\n",
            cell(&e["node"]),
            cell(&e["code"]),
            cell(&e["message"])
        ));
    }
    let truncated = page.truncated || parts.iter().any(|p| p.rows.more && p.shape == Shape::Many);
    if truncated {
        s.push_str("truncated: true");
        if let Some(o) = page.next_offset {
            s.push_str(&format!(" (next page: offset={o})"));
        }
        if let Some(c) = &page.next_cursor {
            s.push_str(&format!(" (next page: cursor={c})"));
        }
        if let Some(h) = &page.how_to_get_more {
            s.push_str(&format!("\nhow to get more: {h}"));
        }
        s.push('\n');
    }
    s.trim_end().to_string()
}

/// A value as a table cell: strings bare (tabs and newlines escaped), null empty.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s
            .replace('\\', "\\\\")
            .replace('\t', "\\t")
            .replace('\n', "\\n")
            .replace('\r', "\\r"),
        other => other.to_string(),
    }
}

/// A plugin's JSON object as compact text: `key: value` lines, nested values as JSON.
pub fn object_text(v: &Value) -> String {
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}: {}", cell(v)))
            .collect::<Vec<_>>()
            .join("\n"),
        other => cell(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Column;
    use serde_json::json;

    fn part(shape: Shape, n: usize) -> Part {
        Part {
            name: "nodes".into(),
            shape,
            rows: Rows {
                columns: vec![
                    Column {
                        name: "id".into(),
                        type_name: "int4".into(),
                    },
                    Column {
                        name: "host".into(),
                        type_name: "text".into(),
                    },
                ],
                rows: (0..n)
                    .map(|i| vec![json!(i), json!(format!("h\t{i}"))])
                    .collect(),
                more: false,
            },
        }
    }

    fn assemble(mut parts: Vec<Part>, page: Page, max: usize) -> ToolOutput {
        let cut = fit(&mut parts, max);
        finish(
            &parts,
            &Page {
                truncated: page.truncated || cut,
                ..page
            },
        )
    }

    #[test]
    fn shapes_and_text() {
        let out = assemble(vec![part(Shape::Many, 2)], Page::default(), 10_000);
        assert_eq!(
            out.structured,
            json!({"nodes": [{"id": 0, "host": "h\t0"}, {"id": 1, "host": "h\t1"}], "truncated": false})
        );
        assert_eq!(out.text, "## nodes (2 rows)\nid\thost\n0\th\\t0\n1\th\\t1");
        let one = assemble(vec![part(Shape::One, 1)], Page::default(), 10_000);
        assert_eq!(one.structured["nodes"], json!({"id": 0, "host": "h\t0"}));
        let value = assemble(vec![part(Shape::Value, 0)], Page::default(), 10_000);
        assert_eq!(value.structured["nodes"], Value::Null);
    }

    #[test]
    fn byte_limit_trims_rows_and_says_so() {
        let out = assemble(vec![part(Shape::Many, 500)], Page::default(), 2_000);
        assert!(serde_json::to_vec(&out.structured).unwrap().len() <= 2_100);
        assert_eq!(out.structured["truncated"], json!(true));
        assert!(out.text.contains("more available"));
        assert!(!out.structured["nodes"].as_array().unwrap().is_empty());
    }

    fn spec(properties: &str) -> ToolSpec {
        crate::spec::parse_tool(
            "t.yaml",
            &format!(
                "name: t\ndescription: d\nsafety: read_only\ninput_schema: {{type: object, properties: {properties}}}\nqueries:\n  - name: q\n    sql: SELECT 1\nexamples:\n  - args: {{}}\n"
            ),
        )
        .unwrap()
    }

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn a_cut_result_names_the_arguments_that_get_the_rest() {
        let paged = spec("{limit: {type: integer}, offset: {type: integer}}");
        let page = Page {
            truncated: true,
            next_offset: Some(200),
            ..Page::default()
        };
        let hint = how_to_get_more(&paged, &args(json!({"limit": 100})), &page, 50_000);
        assert_eq!(
            hint,
            "call t again with offset: 200 and the same other arguments"
        );
        let cursor = Page {
            next_cursor: Some("abc".into()),
            ..Page::default()
        };
        assert!(how_to_get_more(&paged, &Map::new(), &cursor, 50_000).contains("cursor"));

        let wide = spec(
            "{table: {type: string}, nodeid: {type: integer}, state: {type: string, enum: [a, b]}, \
             metric: {type: string, enum: [x, y], default: x}, include_shards: {type: boolean}, \
             include_idle: {type: boolean}, query_max_chars: {type: integer}, limit: {type: integer}}",
        );
        let given = args(
            json!({"nodeid": 3, "include_shards": true, "include_idle": false, "metric": "x"}),
        );
        let hint = how_to_get_more(&wide, &given, &Page::default(), 50_000);
        assert_eq!(
            hint,
            "to get the rest, call t again and narrow it with `table`, `state`; \
             or leave sections out with `include_shards: false`; or cut text shorter with \
             `query_max_chars`; or ask for fewer rows with a lower `limit`"
        );

        let bare = spec("{}");
        let hint = how_to_get_more(&bare, &Map::new(), &Page::default(), 50_000);
        assert!(hint.contains("max_text_bytes"), "{hint}");
    }

    #[test]
    fn the_text_of_a_cut_result_says_how_to_get_more() {
        let out = assemble(
            vec![part(Shape::Many, 500)],
            Page {
                how_to_get_more: Some("call t again with offset: 7".into()),
                next_offset: Some(7),
                ..Page::default()
            },
            2_000,
        );
        assert_eq!(
            out.structured[HOW_TO_GET_MORE],
            "call t again with offset: 7"
        );
        assert!(
            out.text
                .ends_with("truncated: true (next page: offset=7)\nhow to get more: call t again with offset: 7"),
            "{}",
            out.text
        );
    }
}
