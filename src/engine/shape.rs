//! Rows → the result a client sees: a JSON object keyed by query name, and a compact
//! text rendering of the same data.

use serde_json::{Map, Value};

use crate::db::Rows;
use crate::spec::Shape;

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
}
