//! Tool and prompt files: the data model, parsing with source positions, and the
//! meta-schema check.
//!
//! This module is pure: it turns text into [`ToolSpec`] / [`PromptSpec`] or a list of
//! [`Diagnostic`]s. It knows nothing about templates, databases or MCP.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::diagnostic::{Code, Diagnostic, Position};

/// The JSON Schema of a tool file, as shipped in `schemas/`.
pub const TOOL_SPEC_SCHEMA: &str = include_str!("../schemas/tool-spec.schema.json");
/// The JSON Schema of a prompt file, as shipped in `schemas/`.
pub const PROMPT_SPEC_SCHEMA: &str = include_str!("../schemas/prompt-spec.schema.json");

static TOOL_META: LazyLock<jsonschema::Validator> =
    LazyLock::new(|| meta_validator(TOOL_SPEC_SCHEMA));
static PROMPT_META: LazyLock<jsonschema::Validator> =
    LazyLock::new(|| meta_validator(PROMPT_SPEC_SCHEMA));

fn meta_validator(text: &str) -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(text).expect("the embedded meta-schema is valid JSON");
    jsonschema::validator_for(&schema).expect("the embedded meta-schema compiles")
}

/// What a tool may do to the cluster, and therefore how it runs and when it is listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Safety {
    /// Runs in a READ ONLY transaction; always listed.
    ReadOnly,
    /// Read only, returns a plan and the exact arguments to approve; always listed.
    Plan,
    /// Writes; needs an approval token; listed only in admin mode with allow_execute.
    Execute,
}

/// The built-in group a tool belongs to; an operator serves a subset with `toolsets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Toolset {
    /// What the cluster is: nodes, tables, shards, colocation, plans.
    Inspect,
    /// What it is doing now: sessions, locks, background jobs.
    Monitor,
    /// What it needs: advisors, skew and drift reports.
    Advise,
    /// What changes it: approvals, rebalances, shard moves.
    Operate,
}

impl Toolset {
    /// Every built-in toolset, in the order the documentation lists them.
    pub const ALL: [Toolset; 4] = [
        Toolset::Inspect,
        Toolset::Monitor,
        Toolset::Advise,
        Toolset::Operate,
    ];

    /// The name used in tool files and the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Toolset::Inspect => "inspect",
            Toolset::Monitor => "monitor",
            Toolset::Advise => "advise",
            Toolset::Operate => "operate",
        }
    }

    /// The toolset of that name, if it is a built-in one.
    pub fn parse(name: &str) -> Option<Toolset> {
        Toolset::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// Where a tool's queries run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The coordinator, in one READ ONLY transaction with the tool's other queries.
    #[default]
    Coordinator,
    /// Every active primary worker, in parallel; rows carry their node.
    Workers,
    /// Every active primary node, coordinator included.
    AllNodes,
}

impl Target {
    /// The name used in tool files.
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Coordinator => "coordinator",
            Target::Workers => "workers",
            Target::AllNodes => "all_nodes",
        }
    }
}

/// How a query's rows become part of the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// A list of row objects.
    #[default]
    Many,
    /// The first row as an object, or null.
    One,
    /// The first column of the first row, or null.
    Value,
}

/// Per-tool limits; anything left out comes from the configuration.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_rows: Option<u32>,
    pub max_bytes: Option<u32>,
    pub timeout_ms: Option<u32>,
}

/// What the cluster must offer for the tool to work.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requires {
    /// A minimum Citus version such as `">=11.0"`; presence means the tool needs Citus.
    pub citus: Option<String>,
}

/// How a query pages through a long result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Paging {
    /// `page.size` and `page.offset` are given to the template; the result has `next_offset`.
    Offset,
    /// `page.size` and, on later pages, `page.after.<col>`; the result has `next_cursor`.
    Keyset(Vec<String>),
}

impl<'de> Deserialize<'de> for Paging {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Mode(String),
            Keyset { keyset: Vec<String> },
        }
        match Repr::deserialize(d)? {
            Repr::Mode(m) if m == "offset" => Ok(Paging::Offset),
            Repr::Mode(m) => Err(serde::de::Error::custom(format!(
                "unknown paging mode `{m}`, expected `offset` or `{{keyset: [columns]}}`"
            ))),
            Repr::Keyset { keyset } => Ok(Paging::Keyset(keyset)),
        }
    }
}

/// The error a query raises when it finds nothing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnEmpty {
    pub code: String,
    pub message: String,
    pub hint: Option<String>,
}

/// One templated statement of a tool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuerySpec {
    pub name: String,
    #[serde(default)]
    pub shape: Shape,
    pub sql: String,
    /// A template expression over the arguments; the query is skipped when it is false.
    pub when: Option<String>,
    pub paging: Option<Paging>,
    pub on_empty: Option<OnEmpty>,
    /// Where this query runs; the tool's `target` when left out.
    pub target: Option<Target>,
    /// Whether the rows appear in the result; `false` for a query whose rows only feed
    /// later queries (through `results.<name>`).
    #[serde(default = "yes")]
    pub output: bool,
    /// A node-health check: each row names a node (`nodeid`, `node`) and says whether it
    /// answered (`reachable`, optionally with a `message`); the engine lists every node that
    /// did not in the result's `node_errors` (NODE_UNREACHABLE), so numbers computed without
    /// it never look complete.
    #[serde(default)]
    pub node_health: bool,
    /// For a plugin's query: template variables to render it with in lint (the plugin
    /// supplies them at run time, and runs the query only when it asks for it).
    pub example: Option<Map<String, Value>>,
    /// Columns holding other sessions' statement texts: the engine masks the secrets in
    /// them (`redact::secrets`) before the rows go anywhere. Each must be a column of the
    /// result.
    #[serde(default)]
    pub redact: Vec<String>,
}

fn yes() -> bool {
    true
}

/// What an example promises, checked by the generic example test.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// At least this many rows per `many` query.
    #[serde(default)]
    pub min_rows: BTreeMap<String, u64>,
    /// At most this many rows per `many` query (0: the query answers nothing here).
    #[serde(default)]
    pub max_rows: BTreeMap<String, u64>,
    /// The call fails with this error code.
    pub error: Option<String>,
}

/// One example call of a tool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Example {
    pub title: Option<String>,
    #[serde(default = "empty_object")]
    pub args: Value,
    #[serde(default)]
    pub expect: Expect,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// A tool exposed as an MCP resource: `citus://tables/{table}` reads the tool with the
/// URI's variables (and `args`) as arguments.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSpec {
    /// A URI, or a URI template whose `{name}` parts are arguments of the tool.
    pub uri: String,
    pub name: String,
    pub title: Option<String>,
    pub description: Option<String>,
    /// Fixed arguments added to every read.
    #[serde(default)]
    pub args: serde_json::Map<String, Value>,
}

impl ResourceSpec {
    /// The `{name}` variables of the URI, in order.
    pub fn variables(&self) -> Vec<&str> {
        self.uri
            .split('{')
            .skip(1)
            .filter_map(|p| p.split_once('}').map(|(v, _)| v))
            .collect()
    }

    /// The variables of `uri` if it matches this resource's URI (template).
    pub fn matches(&self, uri: &str) -> Option<serde_json::Map<String, Value>> {
        let mut vars = serde_json::Map::new();
        let mut rest = uri;
        let mut template = self.uri.as_str();
        loop {
            match template.find('{') {
                None => return (rest == template).then_some(vars),
                Some(open) => {
                    let literal = &template[..open];
                    rest = rest.strip_prefix(literal)?;
                    let close = template[open..].find('}')? + open;
                    let name = &template[open + 1..close];
                    template = &template[close + 1..];
                    // A variable runs to the next literal character of the template (or the end).
                    let end = match template.chars().next() {
                        Some(c) => rest.find(c)?,
                        None => rest.len(),
                    };
                    if end == 0 {
                        return None;
                    }
                    let value =
                        percent_encoding::percent_decode_str(&rest[..end]).decode_utf8_lossy();
                    vars.insert(name.to_string(), Value::from(value.into_owned()));
                    rest = &rest[end..];
                }
            }
        }
    }
}

/// A parsed tool file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolSpec {
    pub name: String,
    pub title: Option<String>,
    /// What the tool is for and when to use it, in a few sentences: it is sent in every
    /// `tools/list`, so it costs context in every session.
    pub description: String,
    /// The manual (markdown): result columns, rules, caveats. Served on demand as the
    /// resource `citus://tools/{name}` and by `citus-mcp tools show`, never in `tools/list`.
    pub details: Option<String>,
    /// The built-in toolset the tool belongs to; a tool without one is served only when
    /// no toolsets are selected, or when a selected `toolset_groups` entry names it.
    pub toolset: Option<Toolset>,
    pub safety: Safety,
    #[serde(default = "default_input_schema")]
    pub input_schema: Value,
    #[serde(default)]
    pub limits: Limits,
    pub cache_ttl_s: Option<u64>,
    /// MCP's `idempotentHint`. `false` on a read_only or plan tool says that its calls act
    /// outside the database (the approval tool issues a token): it is then listed as
    /// neither read-only nor idempotent. Execute tools are not idempotent unless they say so.
    pub idempotent: Option<bool>,
    #[serde(default)]
    pub target: Target,
    #[serde(default)]
    pub requires: Requires,
    #[serde(default)]
    pub queries: Vec<QuerySpec>,
    /// A Rust implementation; its `queries` (if any) run only when the plugin asks.
    pub plugin: Option<String>,
    pub output_schema: Option<Value>,
    #[serde(default)]
    pub examples: Vec<Example>,
    /// MCP resources served by this tool.
    #[serde(default)]
    pub resources: Vec<ResourceSpec>,
}

fn default_input_schema() -> Value {
    serde_json::json!({"type": "object", "additionalProperties": false, "properties": {}})
}

/// A declared prompt argument.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptArgument {
    pub name: String,
    pub description: Option<String>,
    #[serde(default)]
    pub required: bool,
    /// The values the argument takes, offered as completions.
    #[serde(default, rename = "enum")]
    pub choices: Vec<String>,
}

/// Who speaks a prompt message; MCP allows only these two roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

/// One templated message of a prompt.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptMessage {
    pub role: Role,
    pub text: String,
}

/// A parsed prompt file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSpec {
    pub name: String,
    pub title: Option<String>,
    pub description: String,
    #[serde(default)]
    pub arguments: Vec<PromptArgument>,
    pub messages: Vec<PromptMessage>,
}

/// Parses a tool file; every problem found is returned, not just the first.
pub fn parse_tool(file: &str, text: &str) -> Result<ToolSpec, Vec<Diagnostic>> {
    parse(file, text, &TOOL_META)
}

/// Parses a prompt file; every problem found is returned, not just the first.
pub fn parse_prompt(file: &str, text: &str) -> Result<PromptSpec, Vec<Diagnostic>> {
    parse(file, text, &PROMPT_META)
}

/// Reads a built-in file from the JSON build.rs made of its YAML. No meta-schema check:
/// the tests lint every built-in file in full (`registry::tests`).
pub fn parse_builtin<T: serde::de::DeserializeOwned>(
    file: &str,
    json: &str,
) -> Result<T, Vec<Diagnostic>> {
    serde_json::from_str(json).map_err(|e| vec![Diagnostic::new(Code::E001, file, e.to_string())])
}

fn parse<T: serde::de::DeserializeOwned>(
    file: &str,
    text: &str,
    meta: &jsonschema::Validator,
) -> Result<T, Vec<Diagnostic>> {
    if bracket_depth(text) > MAX_NESTING {
        return Err(vec![Diagnostic::new(
            Code::E001,
            file,
            format!(
                "the file nests `[` and `{{` deeper than {MAX_NESTING} levels, which no tool or prompt file needs"
            ),
        )]);
    }
    let value: Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => return Err(vec![yaml_error(file, &e)]),
    };
    let problems: Vec<Diagnostic> = meta
        .iter_errors(&value)
        .map(|e| {
            let pointer = e.instance_path().to_string();
            let at = if pointer.is_empty() {
                String::new()
            } else {
                format!("{pointer}: ")
            };
            Diagnostic::new(Code::E002, file, format!("{at}{}", schema_message(&e)))
                .at(locate(text, &pointer))
        })
        .collect();
    if !problems.is_empty() {
        return Err(problems);
    }
    // The YAML is parsed once: the typed value comes from the JSON value just checked.
    T::deserialize(value).map_err(|e| vec![Diagnostic::new(Code::E001, file, e.to_string())])
}

/// How deep a file may nest `[` and `{`. The YAML parser takes time quadratic in that depth
/// before its own recursion limit stops it (a 200 KB file nested 100,000 deep took a minute
/// of CPU at every start and reload), so a deeper file is refused before it is parsed. The
/// built-in files nest at most a few levels, template tags included.
const MAX_NESTING: usize = 64;

/// The deepest nesting of `[` and `{` in `text`, inside quotes or not (an unbalanced
/// bracket in a string only counts as one level more).
fn bracket_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for b in text.bytes() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// A meta-schema error without the file's values (`masked`), and without keys that are not
/// key names: a file that is not a tool file at all (a link to `/etc/shadow` in a tools
/// folder, say) would otherwise have its lines echoed as "unexpected keys" to whoever reads
/// the diagnostics, MCP clients included.
fn schema_message(e: &jsonschema::ValidationError<'_>) -> String {
    let jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } = e.kind()
    else {
        return e.masked().to_string();
    };
    let is_key = |k: &&String| {
        k.len() <= 64
            && k.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && k.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let named: Vec<String> = unexpected
        .iter()
        .filter(is_key)
        .map(|k| format!("`{k}`"))
        .collect();
    let others = unexpected.len() - named.len();
    let mut message = String::from("keys not allowed here:");
    if !named.is_empty() {
        message.push_str(&format!(" {}", named.join(", ")));
    }
    if others > 0 {
        message.push_str(&format!(
            "{} {others} that are not key names (not shown)",
            if named.is_empty() { "" } else { " and" }
        ));
    }
    message
}

fn yaml_error(file: &str, e: &serde_yaml::Error) -> Diagnostic {
    let position = e.location().map(|l| Position {
        line: l.line(),
        column: l.column(),
    });
    // The location is already in the diagnostic; keep the message short.
    let message = e.to_string();
    let message = match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message,
    };
    Diagnostic::new(Code::E001, file, message).at(position)
}

/// Finds where a JSON pointer (as produced by jsonschema) lives in block-style YAML.
///
/// This is a best-effort text walk, not a YAML parser: it follows keys and `- ` list
/// items by indentation, and stops at the deepest segment it can find (which is
/// still the right neighbourhood for flow-style `{...}` mappings).
pub fn locate(text: &str, pointer: &str) -> Option<Position> {
    let lines: Vec<&str> = text.lines().collect();
    let mut range = 0..lines.len();
    let mut parent_indent: isize = -1;
    let mut found = None;
    for raw in pointer.split('/').skip(1) {
        let seg = raw.replace("~1", "/").replace("~0", "~");
        let hit = match seg.parse::<usize>() {
            Ok(index) => find_item(&lines, range.clone(), parent_indent, index),
            Err(_) => find_key(&lines, range.clone(), parent_indent, &seg),
        };
        let Some((line, indent)) = hit else { break };
        found = Some(Position {
            line: line + 1,
            column: indent as usize + 1,
        });
        // A list item's block ends at the next line indented no deeper than its dash.
        let block = if seg.parse::<usize>().is_ok() {
            indent_of(lines[line])
        } else {
            indent
        };
        let end = (line + 1..range.end)
            .find(|&l| {
                let t = lines[l].trim_start();
                !t.is_empty() && !t.starts_with('#') && indent_of(lines[l]) <= block
            })
            .unwrap_or(range.end);
        range = line..end;
        parent_indent = block;
    }
    found
}

fn indent_of(line: &str) -> isize {
    (line.len() - line.trim_start().len()) as isize
}

/// The indentation of the content of a line, looking through leading `- ` markers.
fn content_indent(line: &str) -> (isize, &str) {
    let mut indent = indent_of(line);
    let mut rest = line.trim_start();
    while let Some(r) = rest.strip_prefix("- ") {
        let r2 = r.trim_start();
        indent += 2 + (r.len() - r2.len()) as isize;
        rest = r2;
    }
    (indent, rest)
}

fn find_key(
    lines: &[&str],
    range: std::ops::Range<usize>,
    parent: isize,
    key: &str,
) -> Option<(usize, isize)> {
    let mut best: Option<(usize, isize)> = None;
    for l in range {
        let (indent, rest) = content_indent(lines[l]);
        if indent <= parent {
            continue;
        }
        let rest = rest.trim_start_matches(['"', '\'']);
        if rest.starts_with(key)
            && rest[key.len()..]
                .trim_start_matches(['"', '\''])
                .starts_with(':')
        {
            match best {
                Some((_, i)) if i <= indent => {}
                _ => best = Some((l, indent)),
            }
        }
    }
    best
}

fn find_item(
    lines: &[&str],
    range: std::ops::Range<usize>,
    parent: isize,
    index: usize,
) -> Option<(usize, isize)> {
    let mut item_indent = None;
    let mut seen = 0;
    for l in range {
        let line = lines[l];
        let indent = indent_of(line);
        if !line.trim_start().starts_with("- ") && line.trim() != "-" {
            continue;
        }
        if indent <= parent && !(parent >= 0 && indent == parent) {
            continue;
        }
        match item_indent {
            None => item_indent = Some(indent),
            Some(i) if i != indent => continue,
            Some(_) => {}
        }
        if seen == index {
            return Some((l, content_indent(line).0));
        }
        seen += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file nested deeper than any tool file needs is refused at once, before the YAML
    /// parser spends time quadratic in its depth on it.
    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = format!(
            "name: x\ninput_schema: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let err = parse_tool("deep.yaml", &deep).unwrap_err();
        assert!(err[0].to_string().contains("deeper than 64"), "{}", err[0]);
        assert_eq!(bracket_depth("a: [{b: [1]}, '{{ x }}']"), 3);
    }

    /// Keys a tool file may not have are named when they look like keys; a file that is
    /// no tool file (its lines read as keys) is not echoed.
    #[test]
    fn unexpected_keys_are_named_only_when_they_are_key_names() {
        let text = "name: x\ndescription: y\nsafety: read_only\ndescriptoin: z\n\
                    root:$6$salt$hash:20228:0:99999:7::\ndaemon:*:19000:0:99999:7::\n";
        let err = parse_tool("t.yaml", text).unwrap_err();
        let all: String = err.iter().map(ToString::to_string).collect();
        assert!(all.contains("`descriptoin`"), "{all}");
        assert!(all.contains("2 that are not key names"), "{all}");
        assert!(!all.contains("root") && !all.contains("salt"), "{all}");
    }

    const GOOD: &str = "name: demo\ndescription: d\nsafety: read_only\nqueries:\n  - name: a\n    sql: SELECT 1\n  - name: b\n    sql: SELECT 2\nexamples:\n  - args: {}\n";

    #[test]
    fn parses_a_minimal_tool() {
        let t = parse_tool("demo.yaml", GOOD).unwrap();
        assert_eq!(t.name, "demo");
        assert_eq!(t.queries.len(), 2);
        assert_eq!(t.queries[1].shape, Shape::Many);
        assert_eq!(t.safety, Safety::ReadOnly);
    }

    #[test]
    fn unknown_keys_are_errors_with_positions() {
        let text = GOOD.replace("    sql: SELECT 2", "    sql: SELECT 2\n    sqll: oops");
        let errs = parse_tool("demo.yaml", &text).unwrap_err();
        assert_eq!(errs[0].code, Code::E002);
        assert!(errs[0].message.contains("sqll"), "{}", errs[0].message);
        assert_eq!(errs[0].position.unwrap().line, 7);
    }

    #[test]
    fn every_problem_is_reported() {
        let text = "name: Bad Name\ndescription: 3\nsafety: maybe\n";
        let errs = parse_tool("x.yaml", text).unwrap_err();
        assert!(errs.len() >= 3, "{errs:?}");
    }

    /// What the meta-schema accepts, the typed spec takes: an error is the meta-schema's,
    /// with the key and its line (the typed spec is built from the checked value, whose
    /// own errors carry no position).
    #[test]
    fn out_of_range_numbers_are_schema_errors_with_positions() {
        for limit in [
            "max_rows: 4294967296",
            "max_bytes: 4294967296",
            "timeout_ms: 4294967296",
        ] {
            let text = GOOD.replace("examples:", &format!("limits: {{{limit}}}\nexamples:"));
            let errs = parse_tool("demo.yaml", &text).unwrap_err();
            assert_eq!(errs[0].code, Code::E002, "{limit}: {errs:?}");
            assert!(errs[0].message.contains("/limits/"), "{errs:?}");
            assert_eq!(errs[0].position.map(|p| p.line), Some(9), "{errs:?}");
        }
        let text = GOOD.replace("examples:", "limits: {max_rows: 4294967295}\nexamples:");
        assert!(parse_tool("demo.yaml", &text).is_ok());
    }

    #[test]
    fn yaml_syntax_errors_carry_line_and_column() {
        let errs = parse_tool("x.yaml", "name: [unclosed\n").unwrap_err();
        assert_eq!(errs[0].code, Code::E001);
        assert!(errs[0].position.is_some());
    }

    #[test]
    fn locate_follows_keys_and_items() {
        assert_eq!(
            locate(GOOD, "/queries/1/sql"),
            Some(Position { line: 8, column: 5 })
        );
        assert_eq!(
            locate(GOOD, "/queries/0/name"),
            Some(Position { line: 5, column: 5 })
        );
        assert_eq!(
            locate(GOOD, "/safety"),
            Some(Position { line: 3, column: 1 })
        );
    }

    #[test]
    fn resource_templates_match_uris() {
        let r: ResourceSpec =
            serde_yaml::from_str("{uri: 'citus://tables/{table}', name: t}").unwrap();
        assert_eq!(r.variables(), vec!["table"]);
        assert_eq!(
            r.matches("citus://tables/public.orders").unwrap()["table"],
            "public.orders"
        );
        assert_eq!(
            r.matches("citus://tables/my%20table").unwrap()["table"],
            "my table"
        );
        assert!(r.matches("citus://tables/").is_none());
        assert!(r.matches("citus://other/x").is_none());
        let fixed: ResourceSpec =
            serde_yaml::from_str("{uri: 'citus://cluster/summary', name: s}").unwrap();
        assert!(fixed.matches("citus://cluster/summary").unwrap().is_empty());
        assert!(fixed.matches("citus://cluster/summary/x").is_none());
    }

    #[test]
    fn paging_accepts_offset_and_keyset() {
        let p: Paging = serde_yaml::from_str("offset").unwrap();
        assert_eq!(p, Paging::Offset);
        let p: Paging = serde_yaml::from_str("{keyset: [a, b]}").unwrap();
        assert_eq!(p, Paging::Keyset(vec!["a".into(), "b".into()]));
        assert!(serde_yaml::from_str::<Paging>("sideways").is_err());
    }
}
