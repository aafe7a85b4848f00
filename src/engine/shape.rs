//! Rows → the result a client sees: a JSON object keyed by query name, and a compact
//! text rendering of the same data.
//!
//! A result is walked three times at most: its rows' JSON bytes counted against the byte
//! budget (nothing built), written as text straight into one buffer, and serialized as
//! JSON from where the rows lie ([`Structured`]); a JSON value is built of them only for
//! a transport that needs one.

use std::fmt::Write as _;

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Value};

use crate::db::{Column, Rows};
use crate::spec::{Shape, ToolSpec};

/// A successful tool call.
#[derive(Debug, Clone)]
pub struct ToolOutput {
    /// Always a JSON object (MCP requires it).
    pub structured: Value,
    /// The compact rendering for the model.
    pub text: String,
}

/// A successful tool call as the engine hands it to a transport: its structured result
/// not yet built ([`Answer::into_output`] builds it).
#[derive(Debug, Clone)]
pub struct Answer {
    pub structured: Structured,
    /// The compact rendering for the model.
    pub text: String,
}

/// A call's structured result (always a JSON object): a value, as plugins make it, or a
/// SQL tool's rows and page, which become JSON as they are serialized. Building one
/// object per row, with its own copy of every column name, to serialize it once and free
/// it, was a third of the CPU of a 1,000-row call (issue #8).
#[derive(Debug, Clone)]
pub enum Structured {
    Value(Value),
    Rows { parts: Vec<Part>, page: Page },
}

impl Structured {
    /// The result as a JSON value, its rows' values moved into it.
    pub fn into_value(self) -> Value {
        match self {
            Structured::Value(v) => v,
            Structured::Rows { parts, page } => structured(parts, page),
        }
    }

    /// The rows the result holds: a list's length, one for an object; what metrics
    /// count.
    pub fn rows(&self) -> u64 {
        fn of(v: &Value) -> u64 {
            match v {
                Value::Array(a) => a.len() as u64,
                Value::Object(_) => 1,
                _ => 0,
            }
        }
        match self {
            Structured::Value(Value::Object(obj)) => obj
                .iter()
                .filter(|(k, _)| k.as_str() != NODE_ERRORS)
                .map(|(_, v)| of(v))
                .sum(),
            Structured::Value(_) => 0,
            Structured::Rows { parts, .. } => parts
                .iter()
                .map(|p| match p.shape {
                    Shape::Many => p.rows.rows.len() as u64,
                    Shape::One => u64::from(!p.rows.rows.is_empty()),
                    Shape::Value => p.rows.rows.first().and_then(|r| r.first()).map_or(0, of),
                })
                .sum(),
        }
    }

    /// The nodes that failed (`{nodeid, node, code, message}`).
    pub fn node_errors(&self) -> &[Value] {
        match self {
            Structured::Value(v) => v
                .get(NODE_ERRORS)
                .and_then(Value::as_array)
                .map_or(&[], Vec::as_slice),
            Structured::Rows { page, .. } => &page.node_errors,
        }
    }
}

impl Serialize for Structured {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Structured::Value(v) => v.serialize(s),
            Structured::Rows { parts, page } => View(parts, page).serialize(s),
        }
    }
}

impl Answer {
    /// The answer with its structured result built as a JSON value.
    pub fn into_output(self) -> ToolOutput {
        ToolOutput {
            structured: self.structured.into_value(),
            text: self.text,
        }
    }
}

impl From<ToolOutput> for Answer {
    fn from(out: ToolOutput) -> Answer {
        Answer {
            structured: Structured::Value(out.structured),
            text: out.text,
        }
    }
}

/// One query's rows, shaped.
#[derive(Debug, Clone)]
pub struct Part {
    pub name: String,
    pub shape: Shape,
    pub rows: Rows,
}

impl Part {
    /// The part as JSON, leaving the part as it was (for templates of later queries).
    pub fn value(&self) -> Value {
        self.clone().into_value()
    }

    /// The part as JSON, its values moved rather than copied.
    fn into_value(self) -> Value {
        let Rows { columns, rows, .. } = self.rows;
        let mut rows = rows.into_iter();
        match self.shape {
            Shape::Many => {
                let keys = Keys::new(&columns);
                Value::Array(rows.map(|r| keys.object(&columns, r)).collect())
            }
            Shape::One => rows.next().map_or(Value::Null, |r| object(&columns, r)),
            Shape::Value => rows
                .next()
                .and_then(|r| r.into_iter().next())
                .unwrap_or(Value::Null),
        }
    }
}

fn object(columns: &[Column], row: Vec<Value>) -> Value {
    let mut m = Map::with_capacity(columns.len());
    for (c, v) in columns.iter().zip(row) {
        m.insert(c.name.clone(), v);
    }
    Value::Object(m)
}

/// The columns' names as a map made once, which each row's object copies: a copy takes
/// the map's hash table as it is, where inserting hashes every key of every row again.
struct Keys(Option<Map<String, Value>>);

impl Keys {
    fn new(columns: &[Column]) -> Keys {
        let m: Map<String, Value> = columns
            .iter()
            .map(|c| (c.name.clone(), Value::Null))
            .collect();
        // Two columns of one name make one key: those rows are built as before, the
        // later value winning.
        Keys((m.len() == columns.len()).then_some(m))
    }

    fn object(&self, columns: &[Column], row: Vec<Value>) -> Value {
        let Some(keys) = &self.0 else {
            return object(columns, row);
        };
        let mut m = keys.clone();
        for (slot, v) in m.values_mut().zip(row) {
            *slot = v;
        }
        Value::Object(m)
    }
}

/// A part serialized from where it lies, for measuring: the same JSON as
/// [`Part::into_value`] gives.
struct PartView<'a>(&'a Part);

/// One row as the object [`object`] makes of it.
struct RowView<'a>(&'a [Column], &'a [Value]);

impl Serialize for PartView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Rows { columns, rows, .. } = &self.0.rows;
        match self.0.shape {
            Shape::Many => {
                let mut seq = s.serialize_seq(Some(rows.len()))?;
                for r in rows {
                    seq.serialize_element(&RowView(columns, r))?;
                }
                seq.end()
            }
            Shape::One => match rows.first() {
                Some(r) => RowView(columns, r).serialize(s),
                None => s.serialize_unit(),
            },
            Shape::Value => match rows.first().and_then(|r| r.first()) {
                Some(v) => v.serialize(s),
                None => s.serialize_unit(),
            },
        }
    }
}

impl Serialize for RowView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (c, v) in self.0.iter().zip(self.1) {
            m.serialize_entry(&c.name, v)?;
        }
        m.end()
    }
}

/// The structured result of `parts` and `page`, serialized without being built.
struct View<'a>(&'a [Part], &'a Page);

impl Serialize for View<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let View(parts, page) = *self;
        let mut m = s.serialize_map(None)?;
        for p in parts {
            m.serialize_entry(&p.name, &PartView(p))?;
        }
        m.serialize_entry(TRUNCATED, &truncated(parts, page))?;
        if let Some(o) = page.next_offset {
            m.serialize_entry(NEXT_OFFSET, &o)?;
        }
        if let Some(c) = &page.next_cursor {
            m.serialize_entry(NEXT_CURSOR, c)?;
        }
        if let Some(h) = &page.how_to_get_more {
            m.serialize_entry(HOW_TO_GET_MORE, h)?;
        }
        if !page.node_errors.is_empty() {
            m.serialize_entry(NODE_ERRORS, &page.node_errors)?;
        }
        m.end()
    }
}

/// Bytes of JSON a value serializes to, counted as they are written.
pub fn json_len(v: &impl Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    // Counting cannot fail; a value that cannot serialize counts what it wrote.
    let _ = serde_json::to_writer(&mut n, v);
    n.0
}

fn truncated(parts: &[Part], page: &Page) -> bool {
    page.truncated || parts.iter().any(|p| p.rows.more && p.shape == Shape::Many)
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
const TRUNCATED: &str = "truncated";
const NEXT_OFFSET: &str = "next_offset";
const NEXT_CURSOR: &str = "next_cursor";
const NODE_ERRORS: &str = "node_errors";

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
        if matches!(arg.as_str(), "offset" | "cursor" | super::TOKEN_KEY) {
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
///
/// Each row is counted once ([`row_json_len`]); rows then go one at a time from whichever
/// part has the most, so the result keeps as much as fits.
pub fn fit(parts: &mut [Part], max_bytes: usize) -> bool {
    let sizes: Vec<Vec<usize>> = parts
        .iter()
        .map(|p| match p.shape {
            Shape::Many => p
                .rows
                .rows
                .iter()
                .map(|r| row_json_len(&p.rows.columns, r))
                .collect(),
            _ => Vec::new(),
        })
        .collect();
    let mut size = json_len(&View(&[], &Page::default()));
    for (p, rows) in parts.iter().zip(&sizes) {
        // `"name":` the part, and the comma before the next key.
        size += json_str_len(&p.name) + 2;
        size += match p.shape {
            // The brackets, the rows and the commas between them.
            Shape::Many => 2 + rows.iter().sum::<usize>() + rows.len().saturating_sub(1),
            _ => json_len(&PartView(p)),
        };
    }
    let mut keep: Vec<usize> = sizes.iter().map(Vec::len).collect();
    let mut cut = false;
    while size > max_bytes {
        let Some(i) = (0..parts.len())
            .filter(|&i| keep[i] > 0)
            .max_by_key(|&i| keep[i])
        else {
            break;
        };
        keep[i] -= 1;
        size -= sizes[i][keep[i]] + usize::from(keep[i] > 0);
        cut = true;
    }
    for ((p, rows), keep) in parts.iter_mut().zip(&sizes).zip(keep) {
        if keep < rows.len() {
            p.rows.rows.truncate(keep);
            p.rows.more = true;
        }
    }
    cut
}

/// The bytes of a row's JSON object, as serde_json writes it (compact), counted
/// without writing it.
fn row_json_len(columns: &[Column], row: &[Value]) -> usize {
    let fields: usize = columns
        .iter()
        .zip(row)
        .map(|(c, v)| json_str_len(&c.name) + 1 + json_value_len(v))
        .sum();
    2 + fields + row.len().min(columns.len()).saturating_sub(1)
}

/// The bytes of `v`'s compact JSON, as serde_json writes it.
fn json_value_len(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::String(s) => json_str_len(s),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => decimal_digits(u),
            (None, Some(i)) => 1 + decimal_digits(i.unsigned_abs()),
            _ => json_len(n),
        },
        Value::Array(items) => {
            2 + items.iter().map(json_value_len).sum::<usize>() + items.len().saturating_sub(1)
        }
        Value::Object(m) => {
            2 + m
                .iter()
                .map(|(k, v)| json_str_len(k) + 1 + json_value_len(v))
                .sum::<usize>()
                + m.len().saturating_sub(1)
        }
    }
}

fn decimal_digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// The bytes of `s` as a JSON string: its quotes, and the escapes serde_json writes
/// (`\"`, `\\` and the short forms of control characters take two bytes, the other
/// control characters six, as `\u00XX`; nothing else is escaped).
fn json_str_len(s: &str) -> usize {
    const EXTRA: [u8; 256] = {
        let mut t = [0u8; 256];
        let mut b = 0;
        while b < 0x20 {
            t[b] = 5;
            b += 1;
        }
        t[b'"' as usize] = 1;
        t[b'\\' as usize] = 1;
        t[0x08] = 1;
        t[0x0c] = 1;
        t[b'\n' as usize] = 1;
        t[b'\r' as usize] = 1;
        t[b'\t' as usize] = 1;
        t
    };
    2 + s.len()
        + s.bytes()
            .map(|b| usize::from(EXTRA[b as usize]))
            .sum::<usize>()
}

/// The client's result: the text, written now, and the parts, kept for the JSON.
pub fn finish(parts: Vec<Part>, page: Page) -> Answer {
    let text = text(&parts, &page);
    // A key written twice (two columns of one name, a query named like one of the
    // result's own keys or like another) is one key in a built value, the later value
    // winning: such a result is built, so that every transport writes the same JSON.
    let once = parts
        .iter()
        .enumerate()
        .all(|(i, p)| writes_each_key_once(p) && parts[..i].iter().all(|q| q.name != p.name));
    let structured = if once {
        Structured::Rows { parts, page }
    } else {
        Structured::Value(structured(parts, page))
    };
    Answer { structured, text }
}

/// The keys of a result besides its queries' (a query may not take one of these names).
pub const RESULT_KEYS: [&str; 5] = [
    TRUNCATED,
    NEXT_OFFSET,
    NEXT_CURSOR,
    HOW_TO_GET_MORE,
    NODE_ERRORS,
];

/// Whether [`View`] writes `part` as the built value has it: no key of its twice.
fn writes_each_key_once(part: &Part) -> bool {
    let columns = &part.rows.columns;
    !RESULT_KEYS.contains(&part.name.as_str())
        && (part.shape == Shape::Value
            || columns
                .iter()
                .enumerate()
                .all(|(i, c)| columns[..i].iter().all(|d| d.name != c.name)))
}

fn structured(parts: Vec<Part>, page: Page) -> Value {
    let truncated = truncated(&parts, &page);
    let mut obj = Map::with_capacity(parts.len() + 2);
    for p in parts {
        let name = p.name.clone();
        obj.insert(name, p.into_value());
    }
    obj.insert(TRUNCATED.into(), Value::Bool(truncated));
    if let Some(o) = page.next_offset {
        obj.insert(NEXT_OFFSET.into(), Value::from(o));
    }
    if let Some(c) = page.next_cursor {
        obj.insert(NEXT_CURSOR.into(), Value::from(c));
    }
    if let Some(h) = page.how_to_get_more {
        obj.insert(HOW_TO_GET_MORE.into(), Value::from(h));
    }
    if !page.node_errors.is_empty() {
        obj.insert(NODE_ERRORS.into(), Value::Array(page.node_errors));
    }
    Value::Object(obj)
}

/// The compact rendering: `name: value` lines for single values and rows, a header and
/// tab-separated lines for lists, then node errors and how to get what was cut.
pub fn text(parts: &[Part], page: &Page) -> String {
    let cells: usize = parts
        .iter()
        .map(|p| p.rows.rows.len() * p.rows.columns.len())
        .sum();
    let mut s = String::with_capacity(64 + cells * 12);
    for p in parts {
        let Rows {
            columns,
            rows,
            more,
        } = &p.rows;
        match p.shape {
            Shape::Value => {
                let _ = write!(s, "{}: ", p.name);
                if let Some(v) = rows.first().and_then(|r| r.first()) {
                    push_cell(&mut s, v);
                }
                s.push('\n');
            }
            Shape::One => {
                let _ = writeln!(s, "## {}", p.name);
                match rows.first() {
                    None => s.push_str("(none)\n"),
                    Some(row) => {
                        for (c, v) in columns.iter().zip(row) {
                            let _ = write!(s, "{}: ", c.name);
                            push_cell(&mut s, v);
                            s.push('\n');
                        }
                    }
                }
            }
            Shape::Many => {
                let n = rows.len();
                let plural = if n == 1 { "" } else { "s" };
                let more = if *more { ", more available" } else { "" };
                let _ = writeln!(s, "## {} ({n} row{plural}{more})", p.name);
                if n > 0 {
                    push_line(&mut s, columns.iter().map(|c| c.name.as_str()), |s, c| {
                        s.push_str(c)
                    });
                    for row in rows {
                        push_line(&mut s, row.iter(), push_cell);
                    }
                }
            }
        }
    }
    for e in &page.node_errors {
        s.push_str("node error ");
        push_cell(&mut s, &e["node"]);
        s.push_str(": ");
        push_cell(&mut s, &e["code"]);
        s.push(' ');
        push_cell(&mut s, &e["message"]);
        s.push('\n');
    }
    if truncated(parts, page) {
        s.push_str("truncated: true");
        if let Some(o) = page.next_offset {
            let _ = write!(s, " (next page: offset={o})");
        }
        if let Some(c) = &page.next_cursor {
            let _ = write!(s, " (next page: cursor={c})");
        }
        if let Some(h) = &page.how_to_get_more {
            let _ = write!(s, "\nhow to get more: {h}");
        }
    }
    s.truncate(s.trim_end().len());
    s
}

/// Writes `items` tab-separated, ending the line.
fn push_line<T>(
    s: &mut String,
    items: impl Iterator<Item = T>,
    mut push: impl FnMut(&mut String, T),
) {
    for (i, item) in items.enumerate() {
        if i > 0 {
            s.push('\t');
        }
        push(s, item);
    }
    s.push('\n');
}

/// A value as one cell of the text: null empty, a string with its backslashes, tabs and
/// line breaks escaped (a cell stays on its line), anything else as JSON.
fn push_cell(s: &mut String, v: &Value) {
    match v {
        Value::Null => {}
        Value::String(t) => {
            let mut rest = t.as_str();
            while let Some(i) = rest
                .bytes()
                .position(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r'))
            {
                s.push_str(&rest[..i]);
                s.push_str(match rest.as_bytes()[i] {
                    b'\\' => "\\\\",
                    b'\t' => "\\t",
                    b'\n' => "\\n",
                    _ => "\\r",
                });
                rest = &rest[i + 1..];
            }
            s.push_str(rest);
        }
        Value::Number(n) => {
            let _ = write!(s, "{n}");
        }
        other => {
            let _ = write!(s, "{other}");
        }
    }
}

fn cell(v: &Value) -> String {
    let mut s = String::new();
    push_cell(&mut s, v);
    s
}

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
            parts,
            Page {
                truncated: page.truncated || cut,
                ..page
            },
        )
        .into_output()
    }

    #[test]
    fn rows_become_objects_in_column_order() {
        assert_eq!(
            part(Shape::Many, 2).value(),
            json!([{"id": 0, "host": "h\t0"}, {"id": 1, "host": "h\t1"}])
        );
        // One name twice: one key, the later value, as a map built key by key has it.
        let mut twice = part(Shape::Many, 2);
        twice.rows.columns[1].name = "id".into();
        assert_eq!(twice.value(), json!([{"id": "h\t0"}, {"id": "h\t1"}]));
    }

    #[test]
    fn the_measured_size_is_the_size_sent() {
        let page = Page {
            truncated: true,
            node_errors: vec![json!({"nodeid": 2, "node": "w:5432", "code": "X", "message": "m"})],
            next_offset: Some(9),
            next_cursor: Some("c".into()),
            how_to_get_more: Some("call \"t\" again".into()),
        };
        for shape in [Shape::Many, Shape::One, Shape::Value] {
            for n in [0, 1, 3] {
                let mut count = part(Shape::Value, 1);
                count.name = "count".into();
                let parts = vec![part(shape, n), count];
                let measured = json_len(&View(&parts, &page));
                let answer = finish(parts, page.clone());
                let sent = serde_json::to_vec(&answer.structured).unwrap();
                assert_eq!(measured, sent.len(), "{shape:?} with {n} rows");
                // Written from the rows, it is the JSON the built value writes.
                let built = serde_json::to_vec(&answer.clone().into_output().structured);
                assert_eq!(sent, built.unwrap(), "{shape:?} with {n} rows");
                let counted = answer.structured.rows();
                let value = Structured::Value(answer.into_output().structured);
                assert_eq!(counted, value.rows(), "{shape:?} with {n} rows");
                assert_eq!(
                    Structured::Rows {
                        parts: vec![],
                        page: page.clone()
                    }
                    .node_errors(),
                    value.node_errors()
                );
            }
        }
    }

    /// Keys the rows would write twice (two columns of one name, a query named like one
    /// of the result's keys) are written once, as the built value has them.
    #[test]
    fn a_key_is_written_once() {
        let mut twice = part(Shape::Many, 2);
        twice.rows.columns[1].name = "id".into();
        let mut named_like_a_key = part(Shape::One, 1);
        named_like_a_key.name = "truncated".into();
        let page = Page {
            next_offset: Some(2),
            ..Page::default()
        };
        let again = part(Shape::Value, 1);
        for parts in [
            vec![twice],
            vec![part(Shape::Many, 1), named_like_a_key],
            vec![part(Shape::Many, 1), again],
        ] {
            let answer = finish(parts, page.clone());
            assert!(matches!(answer.structured, Structured::Value(_)));
            let sent = serde_json::to_vec(&answer.structured).unwrap();
            let built = serde_json::to_vec(&answer.into_output().structured).unwrap();
            assert_eq!(sent, built);
        }
        let mut count = part(Shape::Value, 1);
        count.name = "count".into();
        let answer = finish(vec![part(Shape::Many, 2), count], page);
        assert!(matches!(answer.structured, Structured::Rows { .. }));
    }

    /// The counted sizes are serde_json's own, byte for byte.
    #[test]
    fn counted_sizes_are_what_serde_json_writes() {
        let every_ascii: String = (0u8..0x80).map(char::from).collect();
        let values = [
            Value::Null,
            json!(true),
            json!(false),
            json!(0),
            json!(9),
            json!(10),
            json!(-1),
            json!(-10),
            json!(i64::MIN),
            json!(i64::MAX),
            json!(u64::MAX),
            json!(0.1),
            json!(-0.0),
            json!(1e300),
            json!(5e-324),
            json!(123456.789),
            json!(""),
            json!(every_ascii),
            json!("é, 中, 🐘, \u{7f}, \u{2028}"),
            json!([]),
            json!({}),
            json!([1, "a\"b", [null, {"k\n": [true]}]]),
            json!({"a": 1, "b\u{1}": {"c": []}}),
        ];
        for v in &values {
            let written = serde_json::to_string(v).unwrap().len();
            assert_eq!(json_value_len(v), written, "{v}");
        }
        let columns: Vec<Column> = ["id", "na\"me", "\u{1f}"]
            .iter()
            .map(|n| Column {
                name: n.to_string(),
                type_name: "text".into(),
            })
            .collect();
        for row in [vec![], vec![json!(1)], values[..3].to_vec()] {
            let written = json_len(&RowView(&columns, &row));
            assert_eq!(row_json_len(&columns, &row), written, "{row:?}");
        }
    }

    /// A cut result is as large as fits: one more row would not.
    #[test]
    fn a_cut_keeps_every_row_that_fits() {
        for max in [40, 100, 999, 2_000, 5_000] {
            let mut parts = vec![part(Shape::Many, 300), part(Shape::Many, 120)];
            parts[1].name = "other".into();
            let all = parts.clone();
            assert!(fit(&mut parts, max));
            let size = |p: &[Part]| json_len(&View(p, &Page::default()));
            assert!(size(&parts) <= max || parts.iter().all(|p| p.rows.rows.is_empty()));
            for (i, p) in parts.iter().enumerate() {
                let kept = p.rows.rows.len();
                assert!(p.rows.more, "part {i} was cut");
                let mut one_more = parts.clone();
                one_more[i].rows.rows = all[i].rows.rows[..kept + 1].to_vec();
                assert!(
                    size(&one_more) > max,
                    "part {i} could keep a row more at {max}"
                );
            }
        }
        let mut small = vec![part(Shape::Many, 3)];
        assert!(!fit(&mut small, 10_000));
        assert_eq!(small[0].rows.rows.len(), 3);
        assert!(!small[0].rows.more);
    }

    #[test]
    fn cells_escape_what_would_break_a_line() {
        assert_eq!(cell(&json!("a\tb\\c\nd\re")), "a\\tb\\\\c\\nd\\re");
        assert_eq!(cell(&json!("plain")), "plain");
        assert_eq!(cell(&Value::Null), "");
        assert_eq!(cell(&json!(1.5)), "1.5");
        assert_eq!(cell(&json!({"k": "v"})), r#"{"k":"v"}"#);
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
