//! What the advisors share: a finding (severity, evidence, recommendation, the next tool to
//! call), reading query rows by column name, and running a tool file's queries so that one
//! failed check skips its rules instead of failing the whole call.
//!
//! Rules are plain functions over rows (`&[Record]`) that return findings; they do no I/O,
//! so each is unit-tested with rows written by hand. The SQL lives in the tool files.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::db::Rows;
use crate::engine::{PluginCall, ToolError};

/// One row of a query, by column name.
pub type Record = Map<String, Value>;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Something is broken or will break an operation now.
    Critical,
    /// Something degrades the cluster or blocks an operation someone is likely to run.
    Warning,
    /// Worth knowing; nothing to fix right away.
    Info,
}

/// The tool to call next, with its arguments.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NextTool {
    pub name: &'static str,
    pub arguments: Value,
}

/// One result of one rule.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub rule: &'static str,
    pub title: String,
    /// The numbers and names the finding rests on.
    pub evidence: Value,
    pub recommendation: String,
    pub next_tool: Option<NextTool>,
}

impl Finding {
    pub fn new(severity: Severity, rule: &'static str, title: impl Into<String>) -> Finding {
        Finding {
            severity,
            rule,
            title: title.into(),
            evidence: Value::Object(Map::new()),
            recommendation: String::new(),
            next_tool: None,
        }
    }

    pub fn evidence(mut self, evidence: Value) -> Finding {
        self.evidence = evidence;
        self
    }

    pub fn recommend(mut self, text: impl Into<String>) -> Finding {
        self.recommendation = text.into();
        self
    }

    pub fn next(mut self, name: &'static str, arguments: Value) -> Finding {
        self.next_tool = Some(NextTool { name, arguments });
        self
    }
}

/// Rows written by hand as a JSON array of objects, for the rules' unit tests.
#[cfg(test)]
pub fn test_records(v: Value) -> Vec<Record> {
    v.as_array()
        .expect("an array of rows")
        .iter()
        .map(|r| r.as_object().expect("a row object").clone())
        .collect()
}

/// Rows as records keyed by column name.
pub fn records(rows: &Rows) -> Vec<Record> {
    rows.rows
        .iter()
        .map(|r| {
            rows.columns
                .iter()
                .zip(r)
                .map(|(c, v)| (c.name.clone(), v.clone()))
                .collect()
        })
        .collect()
}

/// A number column as f64: PostgreSQL's numeric and very large bigints arrive as strings.
pub fn num(r: &Record, key: &str) -> Option<f64> {
    match r.get(key)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// An integer column; 0 when it is null or missing (counts and sizes).
pub fn int(r: &Record, key: &str) -> i64 {
    match r.get(key) {
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .unwrap_or(0),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(0),
        _ => 0,
    }
}

/// A text column; "" when it is null or missing.
pub fn text<'a>(r: &'a Record, key: &str) -> &'a str {
    r.get(key).and_then(Value::as_str).unwrap_or("")
}

/// A column's value (null when it is missing), for evidence.
pub fn val(r: &Record, key: &str) -> Value {
    r.get(key).cloned().unwrap_or(Value::Null)
}

/// A boolean column; false when it is null or missing.
pub fn flag(r: &Record, key: &str) -> bool {
    r.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// Bytes as PostgreSQL's pg_size_pretty would say them, for titles.
pub fn pretty_bytes(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["bytes", "kB", "MB", "GB", "TB"];
    let mut v = bytes;
    let mut unit = 0;
    while v.abs() >= 10240.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{} {}", v.round(), UNITS[unit])
}

/// The rows of a tool file's queries, and what went wrong while reading them.
#[derive(Default)]
pub struct Facts {
    rows: BTreeMap<&'static str, Vec<Record>>,
    /// Queries that returned their row cap: the rules saw only part of the rows.
    pub cut: Vec<&'static str>,
    /// `{query, code, message}` per query that failed; the rules over it were skipped.
    pub errors: Vec<Value>,
    /// Nodes of fan-out queries that did not answer.
    pub node_errors: Vec<Value>,
}

/// One query for [`Facts::gather`] to run.
pub struct Read {
    pub query: &'static str,
    /// The template variables the query is rendered with.
    pub vars: Value,
    /// Whether the query runs on every node (`target: workers` or `all_nodes`).
    pub fan_out: bool,
}

impl Read {
    /// A coordinator query.
    pub fn coordinator(query: &'static str, vars: Value) -> Read {
        Read {
            query,
            vars,
            fan_out: false,
        }
    }

    /// A fan-out query (no variables: fan-out queries take no binds).
    pub fn nodes(query: &'static str) -> Read {
        Read {
            query,
            vars: json!({}),
            fan_out: true,
        }
    }
}

impl Facts {
    /// The rows of `query`, or `None` when it failed or did not run.
    pub fn get(&self, query: &str) -> Option<&[Record]> {
        self.rows.get(query).map(Vec::as_slice)
    }

    /// Runs the queries at once (each read-only on its own connection, so one slow or
    /// failing check does not hold up or fail the others) and keeps their rows or errors.
    /// A cancelled call stops here: the caller no longer wants the answer.
    pub async fn gather(call: &PluginCall<'_>, reads: Vec<Read>) -> Result<Facts, ToolError> {
        let runs = reads.into_iter().map(|r| async move {
            let result = if r.fan_out {
                call.fan_out(r.query, r.vars)
                    .await
                    .map(|n| (n.rows, n.node_errors))
            } else {
                call.query(r.query, r.vars).await.map(|rows| (rows, vec![]))
            };
            (r.query, result)
        });
        let mut facts = Facts::default();
        for (query, result) in futures_util::future::join_all(runs).await {
            match result {
                Ok((rows, node_errors)) => {
                    // A fan-out check no node answered judged nothing: a failed check, not
                    // an empty one (its nodes are named in node_errors too).
                    let unanswered = rows.rows.is_empty() && !node_errors.is_empty();
                    if unanswered {
                        facts.errors.push(json!({
                            "query": query,
                            "code": node_errors[0]["code"],
                            "message": "no node answered this check (see node_errors)",
                        }));
                    }
                    for e in node_errors {
                        if !facts.node_errors.contains(&e) {
                            facts.node_errors.push(e);
                        }
                    }
                    if unanswered {
                        continue;
                    }
                    if rows.more {
                        facts.cut.push(query);
                    }
                    facts.rows.insert(query, records(&rows));
                }
                Err(e) if call.cancel.is_cancelled() => return Err(e),
                Err(e) => facts.errors.push(json!({
                    "query": query,
                    "code": e.code,
                    "message": e.message,
                })),
            }
        }
        Ok(facts)
    }
}

/// Why Citus cannot move this table's shards with logical replication, or `None` when
/// it can. Citus publishes a table when its replica identity is FULL or it has a replica
/// identity index (its primary key under DEFAULT, or the index named by USING INDEX);
/// a partitioned parent holds no rows and always qualifies (shard_transfer.c,
/// RelationCanPublishAllModifications).
pub fn replica_identity_gap(r: &Record) -> Option<&'static str> {
    if text(r, "relkind") == "p" {
        return None;
    }
    match text(r, "replica_identity") {
        "f" => None,
        "d" if flag(r, "has_primary_key") => None,
        "d" => Some("no primary key, and the replica identity is DEFAULT (the primary key)"),
        "i" if !text(r, "replica_identity_index").is_empty() => None,
        "i" => Some("the replica identity index no longer exists or is not valid"),
        "n" => Some("the replica identity is NOTHING"),
        _ => Some("the replica identity is unknown"),
    }
}

/// Whether the table is columnar. Columnar writes reach the WAL as whole-page images,
/// which logical decoding does not read: a shard moved by logical replication (what Citus
/// does in modes auto and force_logical whenever the replica identity allows) would miss
/// the rows written while it moves. A replica identity cannot fix that; block_writes can.
pub fn is_columnar(r: &Record) -> bool {
    text(r, "access_method") == "columnar"
}

/// Why a columnar table cannot move online, as a check or finding says it.
pub const COLUMNAR_GAP: &str = "columnar writes are not logically decoded, so rows written while a shard moves by logical replication would not reach the new copy";

/// How to move a columnar table's shards safely.
pub const COLUMNAR_FIX: &str = "move or rebalance it with shard_transfer_mode 'block_writes' (writes wait until each move ends); a primary key or replica identity would let Citus move it by logical replication, not make that safe";

/// Findings worst first (then by rule, keeping each rule's own order).
pub fn sort(findings: &mut [Finding]) {
    findings.sort_by(|a, b| a.severity.cmp(&b.severity).then(a.rule.cmp(b.rule)));
}

/// Counts by severity.
pub fn summary(findings: &[Finding]) -> Value {
    let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    json!({
        "critical": count(Severity::Critical),
        "warning": count(Severity::Warning),
        "info": count(Severity::Info),
    })
}

/// Findings as compact text for the model: one header line each, then its evidence,
/// recommendation and next tool on indented lines.
pub fn findings_text(findings: &[Finding]) -> String {
    let mut s = String::new();
    for f in findings {
        s.push_str(&format!(
            "[{}] {}: {}\n",
            serde_json::to_value(f.severity)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            f.rule,
            f.title
        ));
        if f.evidence.as_object().is_some_and(|m| !m.is_empty()) {
            s.push_str(&format!("  evidence: {}\n", f.evidence));
        }
        if !f.recommendation.is_empty() {
            s.push_str(&format!("  do: {}\n", f.recommendation));
        }
        if let Some(n) = &f.next_tool {
            s.push_str(&format!("  next: {} {}\n", n.name, n.arguments));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Column;

    #[test]
    fn records_read_numbers_text_and_flags_leniently() {
        let rows = Rows {
            columns: ["a", "b", "c", "d"]
                .iter()
                .map(|n| Column {
                    name: (*n).into(),
                    type_name: "text".into(),
                })
                .collect(),
            rows: vec![vec![json!(3), json!("12.5"), json!("x"), json!(true)]],
            more: false,
        };
        let r = &records(&rows)[0];
        assert_eq!(int(r, "a"), 3);
        assert_eq!(num(r, "b"), Some(12.5));
        assert_eq!(int(r, "b"), 0, "not an integer");
        assert_eq!(text(r, "c"), "x");
        assert!(flag(r, "d"));
        assert_eq!(int(r, "missing"), 0);
        assert_eq!(num(r, "c"), None);
        assert!(!flag(r, "c"));
    }

    #[test]
    fn sizes_read_like_pg_size_pretty() {
        assert_eq!(pretty_bytes(0.0), "0 bytes");
        assert_eq!(pretty_bytes(32768.0), "32 kB");
        assert_eq!(pretty_bytes(60_817_408.0), "58 MB");
    }

    #[test]
    fn findings_sort_worst_first_and_render_compactly() {
        let mut f = vec![
            Finding::new(Severity::Info, "b", "fine"),
            Finding::new(Severity::Critical, "a", "broken")
                .evidence(json!({"node": "h:1"}))
                .recommend("fix it")
                .next("list_nodes", json!({})),
        ];
        sort(&mut f);
        assert_eq!(f[0].severity, Severity::Critical);
        assert_eq!(summary(&f), json!({"critical": 1, "warning": 0, "info": 1}));
        let t = findings_text(&f);
        assert!(t.starts_with("[critical] a: broken\n  evidence: {\"node\":\"h:1\"}\n  do: fix it\n  next: list_nodes {}\n[info] b: fine"), "{t}");
    }
}
